"""Everything selection records in MLflow: the selection's parent run, a child run per candidate, the
synthetic validation sets as MLflow datasets, and the leaderboard. The only module that logs runs."""

import json
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.data.dataset_source_registry import resolve_dataset_source

from selection.config import DEFAULT_TRACKING_URI
from selection.environment import temporary_environment
from selection.processes import ended_on_this_host, this_process
from selection.redaction import hide_password, without_password
from selection.report import Report
from selection.validation_set import ValidationSet


def configure(tracking_uri: str | None, experiment: str) -> str:
    """Point MLflow at the store and its experiment (created if absent); the local default keeps database and
    artifacts under ./mlruns. A store that does not answer at once is a ValueError: called before any
    expensive work, so an unreachable server fails in seconds, not after the forward passes."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    try:
        with (temporary_environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"),
              _creating_alone(database)):
            mlflow.set_experiment(experiment)
    except Exception as error:  # whatever the store's client raises: connection, authentication, database
        message = hide_password(str(error).splitlines()[0] if str(error) else type(error).__name__, uri)
        raise ValueError(f"cannot use the MLflow store {without_password(uri)}: {message}") from None
    return uri


@contextmanager
def _creating_alone(database: Path | None):
    """Around the first use of a local SQLite store: one process at a time, since MLflow creates and migrates
    the database on first use and two processes doing so at once collide ("duplicate column name")."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock, as before
        fcntl = None
    if database is None or fcntl is None:
        yield
        return
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


PROCESS_TAG = "process"  # host:pid of the process that opened a run: a later one can tell it was killed


def end_interrupted_runs(experiment: str) -> list[str]:
    """Runs of `experiment` left RUNNING by a process of this host that no longer exists (killed,
    or out of memory) are marked KILLED, with a tag saying which process found them; returns a note per
    run. Runs opened on other hosts are left alone: whether their processes live cannot be seen from here."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment)
    notes = []
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        owner = run.data.tags.get(PROCESS_TAG, "")
        if not ended_on_this_host(owner):
            continue
        client.set_tag(run.info.run_id, "interrupted", f"its process ended without closing it; marked KILLED by "
                                                       f"{this_process()}")
        client.set_terminated(run.info.run_id, "KILLED")
        notes.append(f"run {run.info.run_id} ({run.info.run_name}) was left RUNNING by process {owner}, which no "
                     "longer exists: marked KILLED")
    return notes


def as_mlflow_dataset(validation_set: ValidationSet, task: str):
    return mlflow.data.from_pandas(
        validation_set.manifest,
        source=resolve_dataset_source(validation_set.directory.resolve().as_uri()),
        name=f"{task}/{validation_set.generator}",
        digest=validation_set.digest,
        targets="label",
    )


def log_validation_input(validation_set: ValidationSet, task: str) -> None:
    """Log the set as an input of the active run, with context "validation"."""
    with warnings.catch_warnings():
        # MLflow registers its local artifact source under two schemes and calls a path ambiguous (both resolve
        # to the same class); its schema inference hints that integer columns cannot hold missing values
        # (the manifest has none).
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        mlflow.log_input(as_mlflow_dataset(validation_set, task), context="validation",
                         tags={"generator": validation_set.generator,
                               "rejected_invisible": str(validation_set.rejected)})


@contextmanager
def parent_run(task: str, kind: str, params: dict, validation_sets: list[ValidationSet],
               tags: dict[str, str] | None = None):
    """The parent run of one selection or search (`kind`); the validation sets are logged as its inputs."""
    tags = {"task": task, "kind": kind, PROCESS_TAG: this_process(), **(tags or {})}
    with mlflow.start_run(run_name=f"{'select' if kind == 'selection' else kind} {task}", tags=tags) as run:
        mlflow.log_params(params)  # the tags came with the run: a run is never without its process
        for validation_set in validation_sets:
            log_validation_input(validation_set, task)
            mlflow.log_artifact(str(validation_set.directory / "generation.json"),
                                artifact_path=f"validation_sets/{validation_set.generator}")
        yield run


def log_candidate(task: str, name: str, params: dict, metrics: dict[str, float],
                  validation_sets: list[ValidationSet], is_control: bool,
                  parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """A child run of the active run, or of `parent_run_id` (a search's trials, logged from worker
    processes); returns its run id."""
    tags = {"task": task, "kind": "candidate", "candidate": name, "negative_control": str(is_control).lower(),
            PROCESS_TAG: this_process(), **(tags or {})}
    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_run_id, tags=tags) as run:
        now = int(time.time() * 1000)
        MlflowClient().log_batch(  # one request: a search logs many of these
            run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if v == v])  # NaN: not defined here
        for validation_set in validation_sets:
            log_validation_input(validation_set, task)
        return run.info.run_id


def child_runs_by_tag(parent_run_id: str, tag: str) -> dict[str, list]:
    """The child runs of `parent_run_id`, by their value of `tag` (those without it left out)."""
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=50000)
    grouped = {}
    for run in runs:
        if tag in run.data.tags:
            grouped.setdefault(run.data.tags[tag], []).append(run)
    return grouped


def discard_run(run_id: str) -> None:
    """Delete a run (MLflow keeps deleted runs until garbage-collected: nothing is lost at once)."""
    MlflowClient().delete_run(run_id)


@contextmanager
def resumed_run(run_id: str):
    """The run `run_id` active again (a search's parent run, once its workers are done)."""
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tag(PROCESS_TAG, this_process())  # whoever has it RUNNING now
        yield run


@dataclass(frozen=True)
class Summary:
    """The outcome of a selection or search: `table` logged as `<name>.csv` and `report` as `<name>.md`."""
    table: pd.DataFrame
    metrics: dict[str, float]
    tags: dict[str, str]
    report: Report
    name: str = "leaderboard"


def log_summary(summary: Summary) -> None:
    """Into the active run: the summary's metrics (NaN left out) and tags, its table and its report."""
    mlflow.log_metrics({k: v for k, v in summary.metrics.items() if v == v})
    mlflow.set_tags(summary.tags)
    with tempfile.TemporaryDirectory() as tmp:
        summary.table.to_csv(Path(tmp) / f"{summary.name}.csv", index=False)
        (Path(tmp) / f"{summary.name}.md").write_text(summary.report.markdown())
        mlflow.log_artifact(str(Path(tmp) / f"{summary.name}.csv"))
        mlflow.log_artifact(str(Path(tmp) / f"{summary.name}.md"))
    mlflow.log_text(json.dumps(summary.tags, indent=2), "summary.json")
