"""A selection killed (SIGKILL, a real child process) while it generates a synthetic set, while it extracts
features, while it scores (a PatchCore coreset is written) and while it records in MLflow, each time run
again with the same command: the last run ends with
the leaderboard of an uninterrupted run, reusing what was complete; the run the kill left RUNNING is marked
KILLED; the killed writer's staging folder is gone; every model version carries its evidence and the
champion alias points at one that does."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from selection.config import CHAMPION

REPO = Path(__file__).resolve().parents[2]
SELECTION = ["--task", "mvtec/bottle", "--max-support", "60", "--max-validation", "30", "--n-anomalies", "20",
             "--backbones", "mobilenet_v2", "--detectors", "knn,patchcore", "--ensemble", "none", "--generators",
             "cutpaste,perlin", "--experiment", "killed"]
EVIDENCE_TAGS = ("candidate", "dataset_digest", "synthetic_auroc", "promotion", "synthetic_scores")


def _command(mvtec_root, place: Path) -> list[str]:
    return [sys.executable, "-m", "selection.run", *SELECTION, "--data-root", str(mvtec_root),
            "--tracking-uri", f"sqlite:///{place / 'mlflow.db'}", "--store", str(place / "synthetic"),
            "--feature-dir", str(place / "features")]


def _running_selection(database: Path) -> bool:
    if not database.exists():
        return False
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.1) as connection:
            return bool(connection.execute("SELECT 1 FROM runs WHERE status = 'RUNNING'").fetchall())
    except sqlite3.OperationalError:  # the tables are not made yet, or the writer holds the lock
        return False


TRIGGERS = {  # what shows the process is in that phase, seen from outside
    "generation": lambda place: any(p.name.startswith(".") for p in (place / "synthetic").glob(".*")),
    "features": lambda place: any((place / "features").rglob("*.npz")),
    "scoring": lambda place: any((place / "features" / "coresets").glob("*.npy")),
    "recording": lambda place: _running_selection(place / "mlflow.db"),
}


def _kill_when(phase: str, command: list[str], place: Path, timeout: float = 300) -> None:
    process = subprocess.Popen(command, cwd=place, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not TRIGGERS[phase](place):
            if process.poll() is not None:
                pytest.fail(f"the selection ended (code {process.returncode}) before {phase} was seen: "
                            f"{process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{phase} not seen in {timeout} s")
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -9


def _finish(command: list[str], place: Path) -> str:
    finished = subprocess.run(command, cwd=place, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout


def _leaderboard(place: Path) -> pd.DataFrame:
    client = MlflowClient(f"sqlite:///{place / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("killed")
    (run,) = client.search_runs([experiment.experiment_id], "tags.kind = 'selection' and attributes.status = 'FINISHED'")
    local = client.download_artifacts(run.info.run_id, "leaderboard.csv", str(place / "downloaded"))
    return pd.read_csv(local).set_index("candidate").sort_index()[["synthetic_auroc", "real_auroc", "control"]]


@pytest.mark.slow
def test_a_selection_killed_in_each_phase_resumes_to_the_uninterrupted_result(mvtec_root, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    _finish(_command(mvtec_root, reference), reference)

    command = _command(mvtec_root, killed)
    _kill_when("generation", command, killed)
    staging = [p for p in (killed / "synthetic").glob(".*")]
    assert staging  # what the killed writer left
    _kill_when("features", command, killed)
    assert not any(p.exists() for p in staging)  # removed by the next run: its writer is gone
    _kill_when("scoring", command, killed)
    _kill_when("recording", command, killed)
    out = _finish(command, killed)

    assert "was left RUNNING by process" in out and "marked KILLED" in out
    pd.testing.assert_frame_equal(_leaderboard(killed), _leaderboard(reference), rtol=1e-6)
    assert not [p for p in (killed / "synthetic").glob(".*")]

    client = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}
    interrupted = [run for run in runs if run.info.status == "KILLED"]
    assert interrupted and all("interrupted" in run.data.tags for run in interrupted)
    versions = client.search_model_versions("name = 'anomaly-mvtec-bottle'")
    assert versions and all(set(EVIDENCE_TAGS) <= set(version.tags) for version in versions)
    champion = client.get_model_version_by_alias("anomaly-mvtec-bottle", CHAMPION)
    assert set(EVIDENCE_TAGS) <= set(champion.tags)
