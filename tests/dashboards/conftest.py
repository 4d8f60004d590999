"""One MLflow store filled by a real small search and then a real small selection on MVTec AD bottle (built
once per session and shared; tests that change it work on a copy), and the dashboard run on a store."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from selection.config import SearchConfig, SelectionConfig
from selection.pipeline import SelectionResult, run_selection
from selection.study import SearchResult, run_search

@dataclass(frozen=True)
class FilledStore:
    uri: str
    directory: Path  # the database in mlruns/, the artefacts beside it, synthetic/, features/, optuna.db
    search: SearchResult
    selection: SelectionResult  # the newest run: the page opens on it

    @property
    def database(self) -> Path:
        return self.directory / "mlruns" / "mlflow.db"


@pytest.fixture(scope="session")
def filled_store(mvtec_root, _migrated_mlflow_db, tmp_path_factory) -> FilledStore:
    directory = tmp_path_factory.mktemp("dashboard-store")
    (directory / "mlruns").mkdir()
    shutil.copy(_migrated_mlflow_db, directory / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{directory / 'mlruns' / 'mlflow.db'}"
    # two generator families, one backbone under deep kNN (two layers) and PatchCore (pixel metrics), their
    # random twins and pixel controls, and the ensemble of the pretrained three as the prior: every kind of
    # leaderboard row, in about a minute on two cores
    config = SelectionConfig(task="mvtec/bottle", data_root=str(mvtec_root), generators=("cutpaste", "perlin"),
                             detectors=("knn", "patchcore"), backbones=("mobilenet_v2",), ensemble="pretrained",
                             n_anomalies=30, max_support=80,
                             max_validation=40, tracking_uri=uri, experiment="dashboard",
                             store=str(directory / "synthetic"), feature_dir=str(directory / "features"))
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)  # run artefacts land in ./mlruns, beside the database
        search = run_search(SearchConfig(selection=config, n_trials=5, storage=f"sqlite:///{directory / 'optuna.db'}"))
        selection = run_selection(config)
    mlflow.set_tracking_uri(previous_uri)
    return FilledStore(uri, directory, search, selection)


@pytest.fixture
def store_copy(filled_store, tmp_path) -> str:
    """A copy of the filled store's database, for a test that writes (its artefacts stay where they are)."""
    shutil.copy(filled_store.database, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def hide():
    """hide(path): `path` moved away until the test ends, as if deleted; then back, for the tests that share it."""
    moved = []

    def move(path: Path) -> None:
        hidden = path.with_name(path.name + ".hidden")
        path.rename(hidden)
        moved.append((hidden, path))

    yield move
    for hidden, path in reversed(moved):
        hidden.rename(path)
