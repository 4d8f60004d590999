"""What `mlflow ui` serves after a selection: checked over HTTP against the real server."""

import sys

import pytest
from servers import api, fetch, free_port, serving

from selection.pipeline import SelectionConfig, run_selection


@pytest.fixture
def mlflow_ui(tracking_uri):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                  "--host", "127.0.0.1", "--port", str(port)], f"{base}/health"):
        yield base


@pytest.mark.slow
def test_mlflow_ui_shows_runs_dataset_and_champion(mvtec_root, tracking_uri, tmp_path, mlflow_ui):
    result = run_selection(SelectionConfig(
        task="mvtec/bottle", data_root=str(mvtec_root), backbones=(), n_anomalies=20,
        tracking_uri=tracking_uri, store=str(tmp_path / "synthetic"), experiment="ui-check"))

    assert "<html" in fetch(f"{mlflow_ui}/").lower()
    experiment = api(f"{mlflow_ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check")
    runs = api(f"{mlflow_ui}/api/2.0/mlflow/runs/search",
                    {"experiment_ids": [experiment["experiment"]["experiment_id"]]})["runs"]
    assert len(runs) == 1 + len(result.leaderboard)
    parent = next(r for r in runs if r["info"]["run_id"] == result.run_id)
    digests = [d["dataset"]["digest"] for d in parent["inputs"]["dataset_inputs"]]
    assert sorted(digests) == sorted(vs.digest for vs in result.validation_sets)  # the default generators' sets
    assert len(digests) == len(SelectionConfig.generators)

    name = result.promotion.model_name
    champion = api(f"{mlflow_ui}/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion")
    assert champion["model_version"]["version"] == result.promotion.version
