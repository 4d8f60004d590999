"""VLAD candidates: one per training family on each backbone plus a random-weight control; a selection on
bottle trains them, ranks them with pixel metrics and registers a pick that loads and returns scores and
maps; the search space draws valid candidates and `--space vlad` runs."""

import mlflow
import numpy as np
import optuna
import pytest
from PIL import Image

from selection.candidates import CandidatePool, default_candidates
from selection.kinds.vlad import FAMILIES, VladCandidate
from selection.pipeline import SelectionConfig, format_report, run_selection
from selection.registry import CHAMPION
from selection.search import parse_args
from selection.search_space import SpaceBounds, get_search_space
from selection.study import run_search

SMALL_BOTTLE = dict(task="mvtec/bottle", backbones=("mobilenet_v2",), detectors=("vlad",), ensemble="none",
                    generators=("cutpaste", "perlin"), n_anomalies=20, max_support=60, max_validation=30)


def test_the_default_candidates_are_one_per_family_and_backbone_and_a_control():
    names = [c.name for c in default_candidates(CandidatePool(backbones=("a", "b")), ("vlad",))]
    assert names == [VladCandidate(b, family=f).name for b in ("a", "b") for f in FAMILIES] + [
        VladCandidate("a", "random").name]
    assert VladCandidate("a", family="perlin").is_standard and not VladCandidate("a", epochs=5).is_standard


def test_the_vlad_space_draws_valid_candidates():
    space = get_search_space("vlad")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space(study.ask(), SpaceBounds(("mobilenet_v2",), ("last",), 50)) for _ in range(20)]
    assert {c.family for c in drawn} == set(FAMILIES) and all(1e-4 <= c.lr <= 1e-2 for c in drawn)
    assert all(c.detector(None).get_params()["layers"] == list(c.layers) for c in drawn)


@pytest.mark.slow
def test_a_selection_trains_ranks_and_registers_a_vlad_that_scores_and_maps(mvtec_root, tracking_uri, tmp_path,
                                                                             page):
    result = run_selection(SelectionConfig(**SMALL_BOTTLE, data_root=str(mvtec_root), tracking_uri=tracking_uri,
                                           store=str(tmp_path / "synthetic"), experiment="vlad"))
    board = result.leaderboard.set_index("candidate")
    assert set(board.index) == {VladCandidate("mobilenet_v2", family=f).name for f in FAMILIES} | {
        VladCandidate("mobilenet_v2", "random").name}
    assert board[["synthetic_auroc", "real_auroc", "synthetic_pixel_auroc", "real_pixel_auroc"]].notna().all().all()
    pretrained = board[~board["control"]]
    assert pretrained["real_auroc"].min() > 0.9  # on real bottle defects, trained only on generated ones
    assert dict(board["trained_on"]) == {name: name.split("/")[3] for name in board.index}
    report = format_report(result)
    assert "2 candidate(s) trained on cutpaste anomalies are also judged on the cutpaste set" in report  # + control
    assert "1 candidate(s) trained on perlin anomalies are also judged on the perlin set" in report
    assert "trained on nsa" not in report  # no NSA set judges here
    shown = page(tracking_uri).dataframe[0].value.set_index("candidate")  # the dashboard's leaderboard
    own = VladCandidate("mobilenet_v2", family="perlin").name
    assert "judged on its training family perlin" in shown.loc[own, "mark"] and shown.loc[own, "trained_on"] == "perlin"
    assert "judged on its training family" not in shown.loc[VladCandidate("mobilenet_v2", family="nsa").name, "mark"]

    assert result.promotion.alias == CHAMPION
    model = mlflow.pyfunc.load_model(f"models:/{result.promotion.model_name}@champion")
    paths = [str(item.path) for item in result.task.validation]
    np.testing.assert_allclose(model.predict(paths), result.scored[result.pick.name].real_scores, rtol=1e-5)
    with_maps = model.predict(paths[:2], params={"maps": True})
    assert with_maps["map"][0].shape == np.asarray(Image.open(paths[0])).shape[:2]


@pytest.mark.slow
def test_the_vlad_space_is_searched(mvtec_root, tracking_uri, tmp_path):
    config = parse_args(["--task", "mvtec/bottle", "--data-root", str(mvtec_root), "--max-support", "60",
                         "--max-validation", "30", "--n-anomalies", "20", "--backbones", "mobilenet_v2",
                         "--generators", "cutpaste", "--space", "vlad", "--trials", "3", "--tracking-uri",
                         tracking_uri, "--store", str(tmp_path / "synthetic"), "--storage",
                         f"sqlite:///{tmp_path / 'optuna.db'}", "--no-register"])
    result = run_search(config)
    assert result.new_trials == 3 and all(name.startswith("vlad/") for name in result.trials["candidate"])


@pytest.mark.slow
def test_a_lagging_vlad_trial_reports_each_epoch_is_pruned_and_marked_in_mlflow(mvtec_root, tracking_uri, tmp_path):
    from mlflow import MlflowClient

    from detectors import FeatureCache
    from selection.evidence import gather_evidence
    from selection.study import TrialObjective

    config = parse_args(["--task", "mvtec/bottle", "--data-root", str(mvtec_root), "--max-support", "60",
                         "--max-validation", "30", "--n-anomalies", "20", "--backbones", "mobilenet_v2",
                         "--generators", "cutpaste", "--space", "vlad", "--tracking-uri", tracking_uri,
                         "--store", str(tmp_path / "synthetic")])
    mlflow.set_experiment("vlad-pruning")
    with mlflow.start_run() as parent:
        pass
    objective = TrialObjective(config, gather_evidence(config.selection), FeatureCache(), parent.info.run_id)
    # a bar no detector reaches, judged from the second report (epoch 10) on: every trial reports, then is pruned
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01, n_warmup_steps=5),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"backbone": "mobilenet_v2", "family": "perlin", "stages": "mid+last", "epochs": 15,
                         "lr": 1e-3, "omega": 6.0, "beta": 1.0, "memory": 1000})
    study.optimize(objective, n_trials=1, callbacks=[objective.log_trial])
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and sorted(trial.intermediate_values) == [4, 9]
    assert all(0.5 < value <= 1 for value in trial.intermediate_values.values())  # synthetic AUROC, every 5 epochs
    (run,) = MlflowClient().search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert run.data.tags["optuna.state"] == "pruned" and run.data.tags["pruned_after_epochs"] == "10"
    assert run.data.metrics["synthetic_auroc"] == pytest.approx(trial.intermediate_values[9])
