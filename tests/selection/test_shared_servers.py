"""Several processes at once against shared real servers: an MLflow tracking server on loopback (PostgreSQL
backend store, artefacts served by it) taking two selections and a two-worker search (Optuna on PostgreSQL)
at the same time, on one synthetic-set store and one feature cache. Nothing is lost, duplicated or
interleaved: each selection has its own candidates once, the search its completed trials once, every model
version its evidence, and the champion loads through the server."""

import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from servers import free_port, serving

from selection.config import CHAMPION

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--task", "mvtec/bottle", "--max-support", "40", "--max-validation", "20", "--n-anomalies", "12",
         "--backbones", "mobilenet_v2", "--generators", "cutpaste", "--experiment", "shared"]
EVIDENCE_TAGS = ("candidate", "dataset_digest", "synthetic_auroc", "promotion", "synthetic_scores")
TRIALS = 6


def _database(postgres_url: str) -> str:
    """A new database on the test server, for MLflow's backend store; its SQLAlchemy URL."""
    import sqlalchemy

    name = f"mlflow_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def tracking_server(postgres_url, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", _database(postgres_url),
               "--artifacts-destination", (tmp_path / "served-artefacts").as_uri(), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    with serving(command, f"http://127.0.0.1:{port}/health", timeout_seconds=180):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_two_selections_and_a_search_at_once_on_a_tracking_server_lose_and_mix_nothing(
        mvtec_root, tmp_path, postgres_url, tracking_server):
    shared = ["--data-root", str(mvtec_root), "--tracking-uri", tracking_server, "--store", str(tmp_path / "synthetic"),
              "--feature-dir", str(tmp_path / "features")]
    commands = [[sys.executable, "-m", "selection.run", *SMALL, *shared, "--detectors", "knn", "--ensemble", "none"]] * 2
    commands.append([sys.executable, "-m", "selection.search", *SMALL, *shared, "--trials", str(TRIALS), "--workers", "2",
                     "--storage", postgres_url, "--study-name", "shared-search"])
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in commands]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]

    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("shared")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert {run.info.status for run in runs} == {"FINISHED"}
    parents = {run.info.run_id: run for run in runs if run.data.tags.get("kind") in ("selection", "search")}
    children = {}
    for run in runs:
        children.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
    selections = [run for run in parents.values() if run.data.tags["kind"] == "selection"]
    assert len(selections) == 2
    for selection in selections:
        names = [child.data.tags["candidate"] for child in children[selection.info.run_id]]
        board = client.download_artifacts(selection.info.run_id, "leaderboard.csv", str(tmp_path / selection.info.run_id))
        expected = [line.split(",")[1] for line in Path(board).read_text().splitlines()[1:]]
        assert sorted(names) == sorted(expected)  # each candidate once, under its own selection
    (search,) = [run for run in parents.values() if run.data.tags["kind"] == "search"]
    study = optuna.load_study(study_name="shared-search", storage=postgres_url)
    completed = sorted(t.number for t in study.trials if t.state == TrialState.COMPLETE)
    assert len(completed) == TRIALS
    assert sorted(int(child.data.tags["optuna.trial"]) for child in children[search.info.run_id]) == completed

    versions = client.search_model_versions("name = 'anomaly-mvtec-bottle'")
    assert len(versions) == 3 and all(set(EVIDENCE_TAGS) <= set(version.tags) for version in versions)
    champion = client.get_model_version_by_alias("anomaly-mvtec-bottle", CHAMPION)
    assert set(EVIDENCE_TAGS) <= set(champion.tags)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server)
    try:
        model = mlflow.pyfunc.load_model(f"models:/anomaly-mvtec-bottle@{CHAMPION}")  # artefacts through the server
    finally:
        mlflow.set_tracking_uri(previous)
    images = sorted((mvtec_root / "bottle" / "test" / "broken_large").glob("*.png"))[:2]
    assert np.isfinite(model.predict([str(path) for path in images])).all()
