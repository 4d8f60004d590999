import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from compat import torchvision_fix  # noqa: E402

torchvision_fix.apply()  # before a test imports diffusers or torchvision

MVTEC_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad"
DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "leaderboard.py"


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"MVTec AD bottle not found at {MVTEC_ROOT} (CI has it beside the project as ../shared)")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory) -> Path:
    """A fresh SQLite store runs MLflow's migrations (seconds): do it once, copy it per test."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(_migrated_mlflow_db, tmp_path, monkeypatch) -> str:
    import shutil

    import mlflow

    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copy(_migrated_mlflow_db, store / "mlflow.db")
    monkeypatch.chdir(tmp_path)  # run artifacts land in ./mlruns, beside the database
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on loopback (Debian's `postgresql` package; `.ci/run` installs it)."""
    from postgres_server import running_server, server_binaries

    if server_binaries() is None:
        pytest.skip("PostgreSQL server not installed (Debian package `postgresql`, which .ci/run installs)")
    with running_server() as url:
        yield url


@pytest.fixture(scope="session")
def tiny_ddpm_dir(tmp_path_factory) -> Path:
    """A local diffusers pipeline directory (unet/, scheduler/) holding the tiny UNet."""
    from diffusers import DDIMScheduler
    from tiny_models import build_tiny_unet

    directory = tmp_path_factory.mktemp("tiny-ddpm")
    build_tiny_unet().save_pretrained(directory / "unet")
    DDIMScheduler(clip_sample=False).save_pretrained(directory / "scheduler")
    return directory


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A local Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) at toy size."""
    from tiny_models import save_tiny_stable_diffusion

    directory = tmp_path_factory.mktemp("tiny-sd")
    save_tiny_stable_diffusion(directory)
    return directory


@pytest.fixture
def page(monkeypatch):
    """Runs the dashboard as `streamlit run dashboards/leaderboard.py -- --tracking-uri URI` would, with
    `session` preset (the section, the run...), in a new session whose reads are not cached by earlier ones."""
    import sys

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    def run(uri: str, **session) -> AppTest:
        st.cache_data.clear()
        monkeypatch.setattr(sys, "argv", [str(DASHBOARD), "--tracking-uri", uri])
        app = AppTest.from_file(str(DASHBOARD), default_timeout=120)
        for key, value in session.items():
            app.session_state[key] = value
        app.run()
        assert not app.exception, app.exception[0].message
        return app

    return run
