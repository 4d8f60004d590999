"""What `mlflow ui` serves after a selection: checked over HTTP against the real server."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from selection.pipeline import SelectionConfig, run_selection


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(url: str, payload: dict | None = None) -> str:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def _api(url: str, payload: dict | None = None) -> dict:
    return json.loads(_fetch(url, payload))


@pytest.fixture
def mlflow_ui(tracking_uri):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _fetch(f"{base}/health")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("mlflow ui did not start within 60 s")
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_mlflow_ui_shows_runs_dataset_and_champion(mvtec_root, tracking_uri, tmp_path, mlflow_ui):
    result = run_selection(SelectionConfig(
        task="mvtec/bottle", data_root=str(mvtec_root), backbones=(), n_anomalies=20,
        tracking_uri=tracking_uri, store=str(tmp_path / "synthetic"), experiment="ui-check"))

    assert "<html" in _fetch(f"{mlflow_ui}/").lower()
    experiment = _api(f"{mlflow_ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check")
    runs = _api(f"{mlflow_ui}/api/2.0/mlflow/runs/search",
                    {"experiment_ids": [experiment["experiment"]["experiment_id"]]})["runs"]
    assert len(runs) == 1 + len(result.leaderboard)
    parent = next(r for r in runs if r["info"]["run_id"] == result.run_id)
    digests = [d["dataset"]["digest"] for d in parent["inputs"]["dataset_inputs"]]
    assert digests == [result.validation_sets[0].digest]

    name = result.promotion.model_name
    champion = _api(f"{mlflow_ui}/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion")
    assert champion["model_version"]["version"] == result.promotion.version
