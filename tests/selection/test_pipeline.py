"""End to end on the real MVTec AD bottle data, with MLflow's real SQLite store and registry."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image
from sklearn.metrics import roc_auc_score

from selection.pipeline import SelectionConfig, control_warnings, format_report, run_selection
from selection.registry import CHALLENGER, CHAMPION
from selection.run import main


@pytest.fixture
def bottle_config(mvtec_root, tracking_uri, tmp_path):
    # deep kNN alone and no ensemble: these tests are about the pipeline; the default pool and prior have theirs
    return SelectionConfig(task="mvtec/bottle", data_root=str(mvtec_root), backbones=("mobilenet_v2",),
                           detectors=("knn",), ensemble="none", generators=("cutpaste",), n_anomalies=40,
                           tracking_uri=tracking_uri,
                           store=str(tmp_path / "synthetic"), experiment="e2e")


@pytest.mark.slow
def test_selection_on_bottle_records_everything_and_promotes_the_pick(bottle_config):
    result = run_selection(bottle_config)
    board = result.leaderboard
    assert len(board) == 6  # mobilenet_v2 imagenet x 2 layers, its random twin x 2, two pixel controls
    assert set(board["control"]) == {True, False}
    by_candidate = board.set_index("candidate")
    for name, scored in result.scored.items():  # the leaderboard's AUROCs are sklearn's on the candidates' scores
        synthetic = roc_auc_score(result.validation_sets[0].labels, scored.synthetic_scores["cutpaste"])
        assert by_candidate.loc[name, "synthetic_auroc"] == pytest.approx(synthetic)
        real = roc_auc_score(result.real_labels, scored.real_scores)
        assert by_candidate.loc[name, "real_auroc"] == pytest.approx(real)
    assert board["synthetic_auroc"].is_monotonic_decreasing
    pretrained, controls = board[~board["control"]], board[board["control"]]
    assert pretrained["real_auroc"].max() > 0.9  # MobileNetV2 features separate broken bottles well
    assert pretrained["real_auroc"].min() > controls["real_auroc"].max()  # measured 0.976 against 0.928
    decision = result.decision
    assert decision.winner == board.iloc[0]["candidate"] and result.pick.name == decision.chosen
    assert decision.winner == "knn/mobilenet_v2/imagenet/mid/avg/k3"  # CutPaste favours mid-level features
    assert decision.prior == "knn/mobilenet_v2/imagenet/last/avg/k3"  # the largest (only) pretrained, last layer
    # no calibration was measured for CutPaste against the largest model: the bootstrap confidence decides, at 0.95
    assert decision.calibrated_confidence is None and decision.threshold == 0.95

    comparison = result.comparisons["cutpaste"]
    assert comparison.tau > 0.5 and comparison.p_value < 0.05  # pretrained above the controls, synthetic and real
    assert comparison.regret == pytest.approx(board["real_auroc"].max() - comparison.pick_real_auroc)
    assert comparison.baseline == "knn/mobilenet_v2/imagenet/last/avg/k3"

    client = MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.data.tags["pick"] == result.pick.name
    assert "kendall_tau/cutpaste" in parent.data.metrics
    dataset_inputs = parent.inputs.dataset_inputs
    assert len(dataset_inputs) == 1
    assert dataset_inputs[0].dataset.digest == result.validation_sets[0].digest
    assert {t.key: t.value for t in dataset_inputs[0].tags}["mlflow.data.context"] == "validation"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert {c.data.tags["candidate"] for c in children} == set(board["candidate"])
    for child in children:
        assert set(child.data.metrics) >= {"synthetic_auroc", "real_auroc"}
        assert child.inputs.dataset_inputs[0].dataset.digest == result.validation_sets[0].digest
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"leaderboard.csv", "leaderboard.md"} <= artifacts

    assert result.promotion.alias == CHAMPION
    version = client.get_model_version_by_alias(result.promotion.model_name, CHAMPION)
    assert version.tags["dataset_digest"] == result.validation_sets[0].digest
    picked_real_auroc = float(board.set_index("candidate").loc[result.pick.name, "real_auroc"])
    assert float(version.tags["real_auroc"]) == pytest.approx(picked_real_auroc)
    assert version.tags["prior"] == decision.prior and version.tags["synthetic_winner"] == decision.winner
    model = mlflow.pyfunc.load_model(f"models:/{result.promotion.model_name}@champion")
    real = result.task.validation
    scores = model.predict([str(item.path) for item in real])
    labels = np.array([item.label for item in real])
    assert roc_auc_score(labels, scores) == pytest.approx(picked_real_auroc)


@pytest.mark.slow
def test_second_run_reuses_the_synthetic_set_and_keeps_the_champion(bottle_config):
    first = run_selection(bottle_config)
    second = run_selection(bottle_config)
    assert not first.validation_sets[0].reused and second.validation_sets[0].reused
    assert second.validation_sets[0].digest == first.validation_sets[0].digest
    assert second.leaderboard.equals(first.leaderboard)  # seeded end to end
    assert second.promotion.alias == CHALLENGER  # equal, not better, on the same set


@pytest.mark.slow
def test_different_seed_gives_a_different_synthetic_set(bottle_config):
    first = run_selection(bottle_config)
    bottle_config.seed = 1
    bottle_config.register = False
    second = run_selection(bottle_config)
    assert second.validation_sets[0].digest != first.validation_sets[0].digest


@pytest.mark.slow
def test_bad_input_fails_clearly_and_loses_nothing_recorded(bottle_config, mvtec_root, tmp_path, capsys):
    run_selection(bottle_config)
    runs_before = len(mlflow.search_runs(experiment_names=["e2e"]))

    data = tmp_path / "broken" / "bottle"
    shutil.copytree(mvtec_root / "bottle", data)
    (data / "train" / "good" / "005.png").write_bytes(b"not a png")
    args = ["--task", "mvtec/bottle", "--data-root", str(tmp_path / "broken"), "--tracking-uri",
            bottle_config.tracking_uri, "--experiment", "e2e", "--store", bottle_config.store]
    assert main(args) == 2
    assert "005.png" in capsys.readouterr().err

    assert main(["--task", "mvtec/bottle", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err

    assert len(mlflow.search_runs(experiment_names=["e2e"])) == runs_before
    assert str(MlflowClient().get_model_version_by_alias("anomaly-mvtec-bottle", CHAMPION).version) == "1"


@pytest.mark.parametrize("change, message", [
    ({"backbones": ("resnet_nonexistent",)}, "unknown backbone 'resnet_nonexistent'"),
    ({"prior": "knn/alexnet/imagenet/last/avg/k3"}, "the prior 'knn/alexnet/imagenet/last/avg/k3' is not a candidate"),
    ({"layers": ("top",)}, "has no layer 'top'"),
])
def test_bad_candidates_fail_before_any_work(bottle_config, change, message):
    with pytest.raises(ValueError, match=message):
        run_selection(replace(bottle_config, **change))
    assert not Path(bottle_config.store).exists()  # no synthetic set was generated


def test_a_control_above_a_pretrained_candidate_makes_the_set_suspect():
    board = pd.DataFrame({"candidate": ["good", "pixels", "weak", "ensemble/x"], "control": [False, True, False, False],
                          "ensemble": [False, False, False, True], "synthetic_auroc": [0.9, 0.8, 0.7, 0.6]})
    (warning,) = control_warnings(board)
    assert "pixels" in warning and "1 of 2 pretrained" in warning and "suspect" in warning
    assert control_warnings(board.assign(synthetic_auroc=[0.9, 0.6, 0.7, 0.65])) == []


@pytest.mark.slow
def test_diffstyle_and_cutpaste_sets_on_bottle_with_a_tiny_diffusion_model(bottle_config, tiny_ddpm_dir):
    config = replace(bottle_config, generators=("cutpaste", "diffstyle"), diffusion_model=str(tiny_ddpm_dir),
                     diffusion_steps=4, n_anomalies=12, controls=False, register=False)
    result = run_selection(config)
    diffstyle = next(vs for vs in result.validation_sets if vs.generator == "diffstyle")
    assert diffstyle.n_anomalies == 12 and not diffstyle.has_masks
    assert set(result.comparisons) == {"cutpaste", "diffstyle", "mean"}  # tau per generator and for the mean
    assert "image labels only, no pixel masks" in format_report(result)

    parent = MlflowClient().get_run(result.run_id)
    digests = {d.dataset.digest for d in parent.inputs.dataset_inputs}
    assert digests == {vs.digest for vs in result.validation_sets}
    assert (Path(config.store) / "inversions").is_dir()  # the inversions are cached beside the sets


@pytest.mark.slow
def test_a_cut_set_with_coarse_masks_on_bottle_with_a_tiny_stable_diffusion(bottle_config, tiny_sd_dir):
    options = {"cut": {"steps": 8, "resolution": 64, "max_iterations": 2}}
    config = replace(bottle_config, generators=("cutpaste", "cut"), sd_model=str(tiny_sd_dir),
                     anomalies=("broken", "cracked"), generator_options=options, n_anomalies=6, controls=False,
                     register=False)
    result = run_selection(config)
    cut = next(vs for vs in result.validation_sets if vs.generator == "cut")
    assert cut.n_anomalies == 6 and cut.has_masks
    anomalies = cut.manifest[cut.manifest["label"] == 1]
    for mask_path in anomalies["mask_path"]:
        mask = np.asarray(Image.open(mask_path))
        assert mask.shape == (256, 256) and mask.max() > mask.min()  # a probability map, not a binary footprint
    assert {json.loads(p)["anomaly"] for p in anomalies["parameters"]} == {"broken", "cracked"}
    assert json.loads((cut.directory / "generation.json").read_text())["params"]["object_name"] == "bottle"
    assert "cut" in result.comparisons and "synthetic_auroc/cut" in result.leaderboard

    parent = MlflowClient().get_run(result.run_id)
    assert cut.digest in {d.dataset.digest for d in parent.inputs.dataset_inputs}


def test_generator_options_reach_the_generator():
    from selection.run import parse_args

    config = parse_args(["--generator-option", "cutpaste.variant=scar", "--generator-option", "cut.steps=30",
                         "--generator-option", "cut.thresholds=[[0, 0.1]]"])
    assert config.generator_options == {"cutpaste": {"variant": "scar"}, "cut": {"steps": 30, "thresholds": [[0, 0.1]]}}
    with pytest.raises(SystemExit):
        parse_args(["--generator-option", "steps=30"])


@pytest.mark.slow
def test_an_ensemble_is_ranked_and_decided_on_like_a_candidate(bottle_config):
    config = replace(bottle_config, backbones=("mobilenet_v2", "efficientnet_lite0"), controls=False,
                     generators=("cutpaste", "perlin"), ensemble="last", prior="ensemble/last-2", register=False)
    result = run_selection(config)
    board = result.leaderboard.set_index("candidate")
    assert board.loc["ensemble/last-2", "ensemble"] and board["ensemble"].sum() == 1
    labels = result.validation_sets[0].labels
    normals = labels == 0
    backbones = ("mobilenet_v2", "efficientnet_lite0")
    members = [result.scored[f"knn/{b}/imagenet/last/avg/k3"].synthetic_scores["cutpaste"] for b in backbones]
    sizes = np.array([result.features.backbone(b, "imagenet").n_params for b in backbones])
    assert sizes[1] > 1.4 * sizes[0]  # the members really weigh differently
    np.testing.assert_allclose(result.scored["ensemble/last-2"].detector.weights, sizes / sizes.sum())
    standardised = np.average([(s - s[normals].mean()) / s[normals].std() for s in members], axis=0, weights=sizes)
    expected = roc_auc_score(labels, standardised)
    assert board.loc["ensemble/last-2", "synthetic_auroc/cutpaste"] == pytest.approx(expected)
    assert result.decision.prior == "ensemble/last-2"
    comparison = result.comparisons["cutpaste"]  # ranks the individual candidates only
    assert "ensemble/last-2" not in {comparison.pick, comparison.oracle}
    best_single = board.loc[~board["ensemble"], "real_auroc"].max()
    assert f"regret {best_single - board.loc[result.pick.name, 'real_auroc']:.4f}" in format_report(result)


PATCHCORE = "patchcore/mobilenet_v2/imagenet/early+mid/c0.1/p3/k1"


@pytest.mark.slow
def test_the_default_pool_ranks_patchcore_beside_knn_with_pixel_metrics_and_a_patchcore_pick_maps(bottle_config):
    assert SelectionConfig().detectors == ("knn", "patchcore")
    config = replace(bottle_config, detectors=SelectionConfig.detectors, controls=False, ensemble="none",
                     max_support=60, max_validation=40, prior=PATCHCORE, confidence=1.0)
    result = run_selection(config)
    board = result.leaderboard.set_index("candidate")
    assert set(board.index) == {"knn/mobilenet_v2/imagenet/last/avg/k3", "knn/mobilenet_v2/imagenet/mid/avg/k3",
                                PATCHCORE}
    knn = board.index.str.startswith("knn/")
    assert board.loc[knn, ["synthetic_pixel_auroc/cutpaste", "real_pixel_auroc", "real_aupro"]].isna().all().all()
    patchcore = board.loc[PATCHCORE]
    assert patchcore["real_pixel_auroc"] > 0.9 and 0.5 < patchcore["real_aupro"] <= 1  # localises broken bottles
    assert patchcore["synthetic_pixel_auroc"] == patchcore["synthetic_pixel_auroc/cutpaste"] > 0.8
    assert "for the 1 candidates with anomaly maps; the other 2 (no maps) have image metrics only" in format_report(result)

    child = MlflowClient().search_runs([mlflow.get_experiment_by_name("e2e").experiment_id],
                                       filter_string=f"tags.candidate = '{PATCHCORE}'")[0]
    assert child.data.metrics["real_aupro"] == pytest.approx(patchcore["real_aupro"])

    assert result.pick.name == PATCHCORE and result.promotion.alias == CHAMPION
    model = mlflow.pyfunc.load_model(f"models:/{result.promotion.model_name}@champion")
    real = result.task.validation
    paths = [str(item.path) for item in real]
    scores = model.predict(paths)
    assert roc_auc_score([item.label for item in real], scores) == pytest.approx(patchcore["real_auroc"])
    with_maps = model.predict(paths[:3], params={"maps": True})
    np.testing.assert_allclose(with_maps["score"], scores[:3], rtol=1e-6)
    image = np.asarray(Image.open(paths[0]))
    assert with_maps["map"][0].shape == image.shape[:2] and with_maps["map"][0].dtype == np.float32
