"""What the page says where it cannot show a leaderboard: a short message, never a traceback (the `page`
fixture fails on any exception the script raised)."""

import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from mlflow import MlflowClient
from servers import free_port


def messages(app, kind: str) -> list[str]:
    return [element.value for element in getattr(app, kind)]


def test_a_store_not_created_yet_says_what_to_run_first_and_stays_uncreated(tmp_path, page):
    database = tmp_path / "mlruns" / "mlflow.db"
    app = page(f"sqlite:///{database}")
    (info,) = messages(app, "info")
    assert info.startswith(f"No selection or search is recorded in `sqlite:///{database}` yet (no database at")
    assert "python -m selection.run --task mvtec/bottle" in info
    assert not database.exists() and not database.parent.exists()


def test_an_empty_store_says_what_to_run_first(tracking_uri, page):
    (info,) = messages(page(tracking_uri), "info")
    assert info.startswith(f"No selection or search is recorded in `{tracking_uri}` yet. Run one first")


def test_an_unreachable_tracking_server_is_one_sentence_and_answers_at_once(page):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    app = page(uri)
    assert messages(app, "error") == [f"cannot reach the MLflow tracking server {uri}: is it running, and is the "
                                      "address right?"]
    assert time.monotonic() - started < 30  # no minutes of retries


def test_a_wrong_tracking_uri_is_one_sentence(tmp_path, page):
    (error,) = messages(page("nosuch://store"), "error")
    assert error.startswith("cannot read the MLflow store nosuch://store: ") and len(error) < 300
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("not a database")
    (error,) = messages(page(f"sqlite:///{not_a_database}"), "error")
    assert error.startswith(f"cannot read the MLflow store sqlite:///{not_a_database}: ") and "not a database" in error


def test_a_run_without_a_leaderboard_says_so(tracking_uri, page):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("unfinished")
    run = client.create_run(experiment, tags={"task": "mvtec/bottle", "kind": "selection"},
                            run_name="select mvtec/bottle")  # a selection that never got to its summary
    app = page(tracking_uri)
    assert messages(app, "error") == [f"run {run.info.run_id} has no leaderboard (leaderboard.csv is not among its "
                                      "artefacts: the run did not finish, or the artefact was deleted)"]
    assert messages(app, "info") == ["This run is RUNNING: what it recorded may be incomplete."]


def _artifact_dir(uri: str, run_id: str) -> Path:
    return Path(unquote(urlparse(MlflowClient(uri).get_run(run_id).info.artifact_uri).path))


@pytest.mark.slow
def test_a_deleted_leaderboard_artefact_says_so(filled_store, page, hide):
    run_id = filled_store.selection.run_id
    hide(_artifact_dir(filled_store.uri, run_id) / "leaderboard.csv")
    app = page(filled_store.uri, run=run_id)
    assert messages(app, "error") == [f"run {run_id} has no leaderboard (leaderboard.csv is not among its "
                                      "artefacts: the run did not finish, or the artefact was deleted)"]
    assert not app.dataframe


@pytest.mark.slow
def test_a_deleted_synthetic_set_says_so_and_the_other_families_still_show(filled_store, page, hide):
    cutpaste, perlin = filled_store.selection.validation_sets
    hide(cutpaste.directory)
    app = page(filled_store.uri, section="Synthetic sets")
    assert messages(app, "error") == [f"the synthetic set's images are not at {cutpaste.directory} (deleted, or "
                                      "stored on another machine)"]
    assert len(app.image) == 2 * 4  # perlin's first page
    assert any(f"digest `{cutpaste.digest}`" in caption for caption in messages(app, "caption"))
