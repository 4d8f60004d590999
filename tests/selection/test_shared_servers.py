"""Several processes at once on shared stores: two selections on one local SQLite store; and an MLflow
tracking server on loopback (PostgreSQL backend store, artefacts served by it) taking two selections and a
two-worker search (Optuna on PostgreSQL) at the same time. Each time on one synthetic-set store and one
feature cache. Nothing is lost, duplicated or interleaved: each selection has its own candidates once, the
search its completed trials once, every model version its evidence, and the champion loads."""

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


def _run_at_once(commands: list[list[str]], cwd: Path) -> None:
    processes = [subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in commands]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]


def _selections_are_whole(client: MlflowClient, runs, tmp_path: Path, expected: int) -> dict[str, list]:
    """Every run FINISHED, `expected` selections each with its leaderboard's candidates once; the child runs
    by parent run id."""
    assert {run.info.status for run in runs} == {"FINISHED"}
    children = {}
    for run in runs:
        children.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
    selections = [run for run in runs if run.data.tags.get("kind") == "selection"]
    assert len(selections) == expected
    for selection in selections:
        names = [child.data.tags["candidate"] for child in children[selection.info.run_id]]
        board = client.download_artifacts(selection.info.run_id, "leaderboard.csv", str(tmp_path / selection.info.run_id))
        assert sorted(names) == sorted(line.split(",")[1] for line in Path(board).read_text().splitlines()[1:])
    return children


def _versions_carry_their_evidence(client: MlflowClient, expected: int) -> None:
    versions = client.search_model_versions("name = 'anomaly-mvtec-bottle'")
    assert len(versions) == expected and all(set(EVIDENCE_TAGS) <= set(version.tags) for version in versions)
    assert set(EVIDENCE_TAGS) <= set(client.get_model_version_by_alias("anomaly-mvtec-bottle", CHAMPION).tags)


@pytest.mark.slow
def test_two_selections_at_once_on_one_sqlite_store(mvtec_root, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "selection.run", *SMALL, "--data-root", str(mvtec_root), "--tracking-uri", uri,
               "--store", str(tmp_path / "synthetic"), "--feature-dir", str(tmp_path / "features"),
               "--detectors", "knn", "--ensemble", "none"]
    _run_at_once([command, command], tmp_path)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000)
    _selections_are_whole(client, runs, tmp_path, expected=2)
    _versions_carry_their_evidence(client, expected=2)


@pytest.mark.slow
def test_two_selections_and_a_search_at_once_on_a_tracking_server_lose_and_mix_nothing(
        mvtec_root, tmp_path, postgres_url, tracking_server):
    shared = ["--data-root", str(mvtec_root), "--tracking-uri", tracking_server, "--store", str(tmp_path / "synthetic"),
              "--feature-dir", str(tmp_path / "features")]
    commands = [[sys.executable, "-m", "selection.run", *SMALL, *shared, "--detectors", "knn", "--ensemble", "none"]] * 2
    commands.append([sys.executable, "-m", "selection.search", *SMALL, *shared, "--trials", str(TRIALS), "--workers", "2",
                     "--storage", postgres_url, "--study-name", "shared-search"])
    _run_at_once(commands, tmp_path)
    client = MlflowClient(tracking_server)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000)
    children = _selections_are_whole(client, runs, tmp_path, expected=2)
    (search,) = [run for run in runs if run.data.tags.get("kind") == "search"]
    study = optuna.load_study(study_name="shared-search", storage=postgres_url)
    completed = sorted(t.number for t in study.trials if t.state == TrialState.COMPLETE)
    assert len(completed) == TRIALS
    assert sorted(int(child.data.tags["optuna.trial"]) for child in children[search.info.run_id]) == completed

    _versions_carry_their_evidence(client, expected=3)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server)
    try:
        model = mlflow.pyfunc.load_model(f"models:/anomaly-mvtec-bottle@{CHAMPION}")  # artefacts through the server
    finally:
        mlflow.set_tracking_uri(previous)
    images = sorted((mvtec_root / "bottle" / "test" / "broken_large").glob("*.png"))[:2]
    assert np.isfinite(model.predict([str(path) for path in images])).all()
