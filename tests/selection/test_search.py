"""The Optuna search end to end on real bottle images: MLflow's real SQLite store, Optuna's real storages
(SQLite, and a real PostgreSQL server shared by worker processes)."""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FixedTrial, TrialState
from servers import api, free_port, serving

from detectors import FeatureCache
from selection.evidence import gather_evidence
from selection.config import CHAMPION
from selection.search import parse_args
from selection.kinds.knn import MAX_K
from selection.search_space import SpaceBounds, get_search_space, list_search_spaces, search_space
from selection.study import SearchConfig, TrialObjective, run_search

SMALL_BOTTLE = ["--task", "mvtec/bottle", "--max-support", "80", "--max-validation", "40", "--n-anomalies", "30",
                "--backbones", "mobilenet_v2", "--generators", "cutpaste"]


def _config(mvtec_root, tmp_path, tracking_uri, *extra: str) -> SearchConfig:
    return parse_args([*SMALL_BOTTLE, "--data-root", str(mvtec_root), "--tracking-uri", tracking_uri,
                       "--store", str(tmp_path / "synthetic"), "--feature-dir", str(tmp_path / "features"),
                       "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--experiment", "search", *extra])


def _trial_runs(parent_run_id: str):
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=1000)


def test_the_knn_space_draws_valid_candidates_within_its_bounds():
    assert "knn" in list_search_spaces()
    space = get_search_space("knn")
    bounds = SpaceBounds(("mobilenet_v2", "efficientnet_lite0"), ("last", "mid"), bank_size=5)
    candidate = space(FixedTrial({"backbone": "efficientnet_lite0", "layer": "mid", "pooling": "max", "k": 4,
                                  "normalize": "l2"}), bounds)
    assert candidate.name == "knn/efficientnet_lite0/imagenet/mid/max/k4/l2" and not candidate.is_control
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    ks = [space(study.ask(), bounds).k for _ in range(40)]
    assert min(ks) >= 1 and max(ks) <= 5  # k never exceeds the bank
    wide_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    wide = [space(wide_study.ask(), SpaceBounds(("mobilenet_v2",), ("last",), 500)).k for _ in range(200)]
    assert max(wide) <= MAX_K and len(set(wide)) > 5
    with pytest.raises(ValueError, match="unknown search space 'svdd'; known: clip, knn, patchcore, vlad"):
        get_search_space("svdd")


def test_a_new_space_is_one_registered_function():
    @search_space("knn-last-only")
    def last_layer_knn(trial, bounds):
        return get_search_space("knn")(trial, SpaceBounds(bounds.backbones, ("last",), bounds.bank_size))

    try:
        assert "knn-last-only" in list_search_spaces()
        with pytest.raises(ValueError, match="already registered"):
            search_space("knn-last-only")(last_layer_knn)
    finally:
        from selection import search_space as module
        module._SPACES.pop("knn-last-only")


@pytest.mark.slow
def test_trials_that_change_only_k_pooling_or_normalisation_run_no_forward_pass(mvtec_root, tmp_path,
                                                                               tracking_uri):
    config = _config(mvtec_root, tmp_path, tracking_uri, "--layers", "last")
    evidence = gather_evidence(config.selection)
    features = FeatureCache()
    objective = TrialObjective(config, evidence, features, parent_run_id=None)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    objective.log_trial = lambda study, trial: None  # this test is about the features only
    study.optimize(objective, n_trials=8)
    images = len(evidence.bank) + sum(len(v) for v in evidence.synthetic_images.values()) + len(evidence.real_images)
    assert features.forward_counts == {("mobilenet_v2", "imagenet"): images}  # one pass per image, 8 trials
    assert len({t.user_attrs["candidate"] for t in study.trials}) > 4


@pytest.mark.slow
def test_search_records_trials_promotes_the_best_and_resumes(mvtec_root, tmp_path, tracking_uri):
    config = _config(mvtec_root, tmp_path, tracking_uri, "--trials", "6")
    result = run_search(config)
    assert len(result.trials) == 6 and result.new_trials == 6
    assert result.trials["synthetic_auroc"].is_monotonic_decreasing
    assert result.best.name == result.trials.iloc[0]["candidate"]
    # pretrained MobileNetV2 features separate broken bottles almost perfectly whatever k, pooling or layer
    # (measured 0.98 to 1.00 over 9 trials); scores out of step with the labels give about 0.5
    assert (result.trials["real_auroc"] > 0.95).all()

    runs = _trial_runs(result.run_id)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == list(range(6))
    for run in runs:
        assert run.data.tags["kind"] == "trial" and run.data.tags["optuna.study"] == result.study_name
        assert {"synthetic_auroc", "real_auroc"} <= set(run.data.metrics)
        (dataset_input,) = run.inputs.dataset_inputs
        assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "validation"
    parent = MlflowClient().get_run(result.run_id)
    assert parent.data.tags["best"] == result.best.name
    assert parent.data.metrics["best_synthetic_auroc"] == pytest.approx(result.trials.iloc[0]["synthetic_auroc"])

    # the best trial is registered only if the synthetic evidence is confident it beats the space's prior,
    # as selection.run decides
    decision = result.decision
    assert decision.winner == result.best.name and decision.prior == "knn/mobilenet_v2/imagenet/last/avg/k3"
    assert decision.chosen == (decision.winner if decision.confidence is None or decision.confidence >= 0.95
                               else decision.prior)
    version = MlflowClient().get_model_version_by_alias("anomaly-mvtec-bottle", CHAMPION)
    assert version.tags["candidate"] == decision.chosen and version.tags["decision"] == decision.reason
    assert version.tags["optuna_trial"] == str(result.best_trial)
    assert f"registered: {decision.chosen}" in mlflow.artifacts.load_text(f"runs:/{result.run_id}/trials.md")
    model = mlflow.pyfunc.load_model("models:/anomaly-mvtec-bottle@champion")
    assert len(model.predict([str(p) for p in list(Path(mvtec_root, "bottle/test/good").glob("*.png"))[:2]])) == 2

    resumed = run_search(_config(mvtec_root, tmp_path, tracking_uri, "--trials", "9"))
    assert resumed.study_name == result.study_name and resumed.run_id == result.run_id
    assert resumed.new_trials == 3 and len(resumed.trials) == 9
    if resumed.decision.chosen == decision.chosen:  # the same detector cannot beat itself with confidence
        assert resumed.promotion.alias == "challenger" and "better in 50%" in resumed.promotion.reason
    assert len(_trial_runs(result.run_id)) == 9

    again = run_search(_config(mvtec_root, tmp_path, tracking_uri, "--trials", "9"))
    assert again.new_trials == 0 and again.promotion is None  # nothing new, nothing registered


@pytest.mark.slow
def test_a_study_name_cannot_be_reused_on_other_evidence(mvtec_root, tmp_path, tracking_uri):
    run_search(_config(mvtec_root, tmp_path, tracking_uri, "--trials", "1", "--study-name", "mine", "--no-register"))
    with pytest.raises(ValueError, match="other synthetic evidence"):
        run_search(_config(mvtec_root, tmp_path, tracking_uri, "--trials", "2", "--study-name", "mine",
                           "--seed", "1"))


def _kill_the_first_worker_seen_running(storage_url: str, study_name: str, killed: list, stop: threading.Event):
    storage = optuna.storages.RDBStorage(storage_url)
    while not stop.is_set():
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.05)
            continue
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" in trial.user_attrs:
                pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, trial.number))
                return
        time.sleep(0.02)


@pytest.mark.slow
def test_two_workers_on_postgresql_complete_the_trials_and_survive_a_killed_worker(
        mvtec_root, tmp_path, tracking_uri, postgres_url):
    n_trials, study_name = 12, "bottle-on-postgres"
    command = [sys.executable, "-m", "selection.search", *SMALL_BOTTLE, "--data-root", str(mvtec_root),
               "--tracking-uri", tracking_uri, "--store", str(tmp_path / "synthetic"),
               "--feature-dir", str(tmp_path / "features"), "--storage", postgres_url, "--study-name", study_name,
               "--trials", str(n_trials), "--workers", "2", "--heartbeat-seconds", "1", "--experiment", "search"]
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_the_first_worker_seen_running,
                              args=(postgres_url, study_name, killed, stop))
    killer.start()
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                  cwd=Path(__file__).resolve().parents[2])
    finally:
        stop.set()
        killer.join()
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert killed, "no running trial was seen to kill"
    killed_pid, killed_trial = killed[0]
    assert f"pid {killed_pid}) exited with code -9" in finished.stdout

    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    states = {t.number: t.state for t in study.trials}
    completed = sorted(n for n, state in states.items() if state == TrialState.COMPLETE)
    assert len(completed) == n_trials  # none lost: the survivor took over the killed worker's share
    assert states[killed_trial] == TrialState.FAIL  # the killed trial was failed by its stopped heartbeat
    assert TrialState.RUNNING not in states.values()
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # two processes shared the study
    assert not any(t.user_attrs["worker"].endswith(f":{killed_pid}")
                   for t in study.trials if t.state == TrialState.COMPLETE)

    runs = _trial_runs(study.user_attrs["mlflow_run_id"])
    logged = sorted(int(r.data.tags["optuna.trial"]) for r in runs)
    assert logged == completed  # each completed trial logged once: none duplicated, no failed one logged


@pytest.mark.slow
def test_optuna_dashboard_serves_the_study(mvtec_root, tmp_path, tracking_uri):
    config = _config(mvtec_root, tmp_path, tracking_uri, "--trials", "3", "--no-register")
    result = run_search(config)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([str(Path(sys.executable).with_name("optuna-dashboard")), config.storage_url, "--host", "127.0.0.1",
                  "--port", str(port)], f"{base}/api/studies"):
        (study,) = [s for s in api(f"{base}/api/studies")["study_summaries"] if s["study_name"] == result.study_name]
        detail = api(f"{base}/api/studies/{study['study_id']}")
    assert sorted(t["number"] for t in detail["trials"] if t["state"] == "Complete") == [0, 1, 2]


@pytest.mark.slow
def test_a_storage_password_reaches_no_run_tag_artefact_report_or_page(mvtec_root, tmp_path, tracking_uri,
                                                                       postgres_url, page):
    from selection.study import format_search_report

    password = "pw-never-shown-4711"
    storage = postgres_url.replace("postgres@", f"postgres:{password}@")  # the test server trusts any password
    config = _config(mvtec_root, tmp_path, tracking_uri, "--trials", "3")
    result = run_search(replace(config, storage=storage))
    assert password not in format_search_report(result)

    client = MlflowClient()
    experiment = client.get_experiment_by_name("search")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == 4  # the search and its three trials
    recorded = [str(run.data.params) + str(run.data.tags) for run in runs]
    for run in runs:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / run.info.run_id)))
        recorded += [path.read_text(errors="replace") for path in local.rglob("*")
                     if path.is_file() and path.suffix in (".md", ".json", ".csv", ".txt", ".yaml", "")]
    recorded += [str(version.tags) for version in client.search_model_versions()]
    assert "postgresql" in " ".join(recorded)  # where the storage is recorded, it is recorded masked
    assert not [text for text in recorded if password in text]
    app = page(tracking_uri, run=result.run_id)
    shown = [str(element.value) for kind in ("markdown", "caption", "info", "warning", "dataframe")
             for element in getattr(app, kind)]
    assert shown and not [text for text in shown if password in text]


@pytest.mark.slow
def test_a_completed_trial_its_worker_did_not_log_is_logged_once_at_the_end(mvtec_root, tmp_path, tracking_uri,
                                                                             monkeypatch):
    log_trial, left_unfinished = TrialObjective.log_trial, []

    def killed_while_logging_trial_1(objective, study, trial):
        if trial.number == 1 and not left_unfinished:  # the worker dies inside MLflow's run: RUNNING, no metrics
            run = MlflowClient().create_run(
                MlflowClient().get_run(objective.parent_run_id).info.experiment_id,
                tags={"mlflow.parentRunId": objective.parent_run_id, "optuna.trial": "1"})
            left_unfinished.append(run.info.run_id)
            return
        log_trial(objective, study, trial)

    monkeypatch.setattr(TrialObjective, "log_trial", killed_while_logging_trial_1)
    result = run_search(_config(mvtec_root, tmp_path, tracking_uri, "--trials", "3", "--no-register"))
    assert any(note.startswith("trial 1 was completed but not logged") for note in result.notes)
    runs = _trial_runs(result.run_id)
    assert sorted(int(run.data.tags["optuna.trial"]) for run in runs) == [0, 1, 2]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert MlflowClient().get_run(left_unfinished[0]).info.lifecycle_stage == "deleted"
