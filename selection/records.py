"""What selections and searches recorded in MLflow, read back as frames and small records for the dashboard.

Reads only: runs, metrics, tags and artefacts through `MlflowClient` (a local store or a tracking server),
the synthetic validation sets' images from the folders their MLflow datasets name, and a search's Optuna
storage where it can be reached. Nothing is scored again. Whatever is missing or unreachable raises
`RecordError` with a one-sentence message.
"""

import io
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from selection.containment import first_outside
from selection.redaction import hide_password, without_password


# what reading a store can raise: MLflow's own errors, a database that is not one, a server that does not answer
_READ_ERRORS = (MlflowException, SQLAlchemyError, OSError)
MEAN = "mean"  # the pipeline's name for the mean over the generators' sets
KINDS = ("selection", "search")
_PAGE = 1000  # runs per MLflow search request
_TRIAL_PREFIX = re.compile(r"^trial \d+ ")
# version tags that hold numbers ("n/a" where not defined)
NUMERIC_VERSION_TAGS = ("synthetic_auroc", "real_auroc", "kendall_tau", "kendall_p", "confidence_over_prior",
                        "calibrated_confidence", "confidence_threshold")
_LEADING_VERSION_TAGS = ("candidate", "synthetic_auroc", "real_auroc", "kendall_tau", "kendall_p", "dataset_digest",
                         "promotion", "promoted_by", "promoted_at", "promoted_why", "promoted_from")


class RecordError(Exception):
    """Something the dashboard needs is missing or unreachable; the message says what in one sentence."""


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of an SQLite URI (a relative one is relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def _run_search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=_PAGE, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


# --- the store and its runs -------------------------------------------------------------------------------

def parent_runs(tracking_uri: str) -> pd.DataFrame:
    """Every selection and search (their parent runs) in the store's active experiments, newest first: when
    (UTC, as every time here), what was asked (generators, seed) and what came out (the pick, or a search's
    best trial; its synthetic and real AUROC; tau; regret). An empty frame for a store without any, and for an
    SQLite file not created yet; RecordError where the store cannot be read."""
    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():  # opening it would create an empty store
        return _runs_frame([])
    try:
        client = _client(tracking_uri)
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs = [run for kind in KINDS for run in _run_search(client, experiment_ids, f"tags.kind = '{kind}'")]
    except _READ_ERRORS as error:
        if tracking_uri.startswith(("http://", "https://")):
            raise RecordError(f"cannot reach the MLflow tracking server {without_password(tracking_uri)}: is it "
                              "running, and is the address right?") from error
        raise RecordError(f"cannot read the MLflow store {without_password(tracking_uri)}: "
                          f"{hide_password(_short(error), tracking_uri)}") from error
    return _runs_frame(runs)


def _runs_frame(runs: list) -> pd.DataFrame:
    columns = ["run_id", "task", "kind", "started", "status", "generators", "seed", "pick",
               "pick_synthetic_auroc", "pick_real_auroc", "tau", "regret"]
    frame = pd.DataFrame([_run_row(run) for run in runs], columns=columns)
    return frame.sort_values("started", ascending=False, ignore_index=True)


def _run_row(run) -> dict:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    generators = params.get("generators", "")
    if tags["kind"] == "search":
        pick, synthetic, real = tags.get("best"), metrics.get("best_synthetic_auroc"), metrics.get("best_real_auroc")
        tau, regret = metrics.get("kendall_tau"), metrics.get("regret")
    else:
        family = MEAN if "," in generators else generators
        pick, synthetic, real = tags.get("pick"), metrics.get("pick_synthetic_auroc"), metrics.get("pick_real_auroc")
        tau, regret = metrics.get(f"kendall_tau/{family}"), metrics.get("pick_regret")
    return {"run_id": run.info.run_id, "task": tags.get("task", ""),
            "kind": tags["kind"], "started": pd.Timestamp(run.info.start_time, unit="ms"),
            "status": run.info.status, "generators": generators, "seed": params.get("seed", ""), "pick": pick,
            "pick_synthetic_auroc": synthetic, "pick_real_auroc": real, "tau": tau, "regret": regret}


def _run(tracking_uri: str, run_id: str):
    try:
        return _client(tracking_uri).get_run(run_id)
    except _READ_ERRORS as error:
        raise RecordError(f"cannot read run {run_id}: {_short(error)}") from error


def _artifact_text(tracking_uri: str, run_id: str, path: str, what: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = _client(tracking_uri).download_artifacts(run_id, path, tmp)
            return Path(local).read_text()
        except _READ_ERRORS as error:
            raise RecordError(f"run {run_id} has no {what} ({path} is not among its artefacts: the run did "
                              "not finish, or the artefact was deleted)") from error


# --- a selection: its leaderboard and how well the synthetic ranking agreed with the real one ----------------

@dataclass(frozen=True)
class Leaderboard:
    """One row per candidate, in synthetic rank order: `role` (pretrained, control, ensemble), `mark`
    (pick, prior, synthetic winner), the synthetic AUROC per generator family (`synthetic_auroc/<family>`)
    and their mean (`synthetic_auroc`), and where the task has real labels `real_auroc`, `real_rank` and
    `rank_change` (synthetic rank minus real rank: above zero, the real labels rank it higher)."""
    table: pd.DataFrame
    families: list[str]
    pick: str
    synthetic_winner: str
    prior: str

    @property
    def has_real(self) -> bool:
        return "real_auroc" in self.table


def leaderboard(tracking_uri: str, run_id: str) -> Leaderboard:
    tags = _run(tracking_uri, run_id).data.tags
    text = _artifact_text(tracking_uri, run_id, "leaderboard.csv", "leaderboard")
    table = pd.read_csv(io.StringIO(text))
    pick, winner, prior = tags.get("pick", ""), tags.get("synthetic_winner", ""), tags.get("prior", "none")
    table.insert(1, "role", np.select([table["control"], table["ensemble"]], ["control", "ensemble"], "pretrained"))
    families = [column.split("/", 1)[1] for column in table.columns if column.startswith("synthetic_auroc/")]
    trained_on = table["trained_on"] if "trained_on" in table else pd.Series("", index=table.index)
    marks = {name: ", ".join(label for label, marked in (
        ("pick", name == pick), ("prior", name == prior), ("synthetic winner", name == winner),
        (f"judged on its training family {family}", family in families)) if marked)
        for name, family in zip(table["candidate"], trained_on.fillna(""))}
    table.insert(2, "mark", table["candidate"].map(marks))
    if "real_rank" in table:
        table["rank_change"] = table["synthetic_rank"] - table["real_rank"]
    return Leaderboard(table.drop(columns=["control", "ensemble"]), families, pick, winner, prior)


@dataclass(frozen=True)
class Agreement:
    """How the synthetic ranking agreed with the real one, and what the decision was.

    `taus`: per generator family and for the mean, Kendall tau-b and its p-value over all individual candidates
    and over the pretrained ones. `choices`: regret in real AUROC of three ways to choose (the decision's pick,
    naive SWSA = the synthetic winner among the individual candidates, the largest pretrained model) and
    whether each picked the best individual candidate. Both empty without real labels."""
    taus: pd.DataFrame
    choices: pd.DataFrame
    oracle: str | None
    decision: str
    bootstrap_confidence: float | None
    calibrated_confidence: float | None
    threshold: float | None
    warnings: list[str]


def agreement(tracking_uri: str, run_id: str) -> Agreement:
    run = _run(tracking_uri, run_id)
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    families = [key.split("/", 1)[1] for key in metrics if key.startswith("kendall_tau/")]
    taus = pd.DataFrame([{"family": family, "tau": metrics[f"kendall_tau/{family}"],
                          "p": metrics.get(f"kendall_p/{family}"),
                          "tau_pretrained": metrics.get(f"kendall_tau_pretrained/{family}"),
                          "p_pretrained": metrics.get(f"kendall_p_pretrained/{family}")}
                         for family in sorted(families, key=lambda f: (f == MEAN, f))],
                        columns=["family", "tau", "p", "tau_pretrained", "p_pretrained"])
    main = MEAN if MEAN in families else (families[0] if families else None)
    regrets = {"the pick (the decision)": metrics.get("pick_regret"),
               "naive SWSA (the synthetic winner)": metrics.get(f"regret/{main}"),
               "the largest pretrained model": metrics.get(f"largest_model_regret/{main}")}
    choices = pd.DataFrame([{"way": way, "regret": regret, "picked the best": bool(regret <= 1e-12)}
                            for way, regret in regrets.items() if regret is not None and main is not None],
                           columns=["way", "regret", "picked the best"])
    warnings = [] if tags.get("warnings", "none") == "none" else tags["warnings"].split(" | ")
    threshold = params.get("confidence")
    return Agreement(taus, choices, tags.get(f"oracle/{main}"), tags.get("decision", ""),
                     metrics.get("confidence_over_prior"), metrics.get("calibrated_confidence"),
                     float(threshold) if threshold not in (None, "None") else None, warnings)


# --- a search: its trials and what mattered ------------------------------------------------------------------

@dataclass(frozen=True)
class Search:
    """A search's completed trials in trial order (`trial`, `candidate`, `synthetic_auroc` = the objective,
    `best_so_far`, `real_auroc` (recorded, never steering), the per-family AUROCs and the parameters) and
    its summary: the best trial and tau over its distinct candidates."""
    trials: pd.DataFrame
    parameters: list[str]
    study: str
    storage: str
    best: str | None
    tau: float | None
    p_value: float | None


def search(tracking_uri: str, run_id: str) -> Search:
    run = _run(tracking_uri, run_id)
    try:
        children = _run_search(_client(tracking_uri), [run.info.experiment_id],
                               f"tags.mlflow.parentRunId = '{run_id}'")
    except _READ_ERRORS as error:
        raise RecordError(f"cannot read the trials of run {run_id}: {_short(error)}") from error
    rows, parameters = [], {}
    for child in children:
        if "optuna.trial" not in child.data.tags:
            continue
        parameters.update(dict.fromkeys(child.data.params))
        rows.append({"trial": int(child.data.tags["optuna.trial"]),
                     "candidate": _TRIAL_PREFIX.sub("", child.data.tags.get("candidate", "")),
                     **child.data.metrics, **{f"param/{k}": v for k, v in child.data.params.items()}})
    if not rows:
        raise RecordError(f"search run {run_id} has no completed trial recorded yet")
    trials = pd.DataFrame(rows).sort_values("trial", ignore_index=True)
    trials.insert(3, "best_so_far", trials["synthetic_auroc"].cummax())
    tags, metrics = run.data.tags, run.data.metrics
    return Search(trials, list(parameters), tags.get("optuna.study", ""), tags.get("optuna.storage", ""),
                  tags.get("best"), metrics.get("kendall_tau"), metrics.get("kendall_p"))


@dataclass(frozen=True)
class Importances:
    values: dict[str, float]  # parameter -> importance (fANOVA, summing to 1)
    source: str  # where the trials came from: the study's storage, or MLflow's records


def param_importances(tracking_uri: str, run_id: str) -> Importances:
    """fANOVA parameter importances of a search: on its Optuna study where the storage can be reached (an
    SQLite file that exists here, or a server URL with its password), else on an in-memory study rebuilt
    from the trials MLflow recorded, with each parameter's range taken from the values tried."""
    import optuna

    recorded = search(tracking_uri, run_id)
    study = _stored_study(recorded.storage, recorded.study)
    source = f"Optuna study {recorded.study} in {recorded.storage}"
    if study is None:
        study = _rebuilt_study(recorded)
        source = "rebuilt from the trials MLflow recorded (the Optuna storage is not reachable from here)"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as error:
        raise RecordError(f"no parameter importances for this search: {_short(error)}") from error
    return Importances({name: float(value) for name, value in values.items()}, source)


def _stored_study(storage: str, study_name: str):
    import optuna

    database = sqlite_path(storage)
    if not storage or "***" in storage or (database is not None and not database.is_file()):
        return None
    engine_kwargs = {} if database is not None else {"connect_args": {"connect_timeout": 5}}
    try:
        storage = optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs, skip_table_creation=True,
                                             skip_compatibility_check=True)
        return optuna.load_study(study_name=study_name, storage=storage)
    except (SQLAlchemyError, KeyError, ImportError, OSError):
        return None


def _rebuilt_study(recorded: Search):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    columns, distributions = {}, {}
    for name in recorded.parameters:
        values = recorded.trials[f"param/{name}"]
        if values.nunique() < 2:  # one value tried: says nothing about importance
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            columns[name], distributions[name] = values.tolist(), CategoricalDistribution(sorted(values.unique()))
        elif (numbers == numbers.round()).all():
            columns[name] = numbers.astype(int).tolist()
            distributions[name] = IntDistribution(min(columns[name]), max(columns[name]))
        else:
            columns[name] = numbers.tolist()
            distributions[name] = FloatDistribution(min(columns[name]), max(columns[name]))
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(recorded.trials["synthetic_auroc"]):
        study.add_trial(optuna.trial.create_trial(params={name: column[i] for name, column in columns.items()},
                                                  distributions=distributions, value=value))
    return study


# --- the synthetic validation sets -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticSet:
    """One generator family's set, as the run recorded it: digest, folder, rejected draws and how it was made
    (generation.json: generator, parameters, seed, number of anomalies)."""
    generator: str
    digest: str
    folder: Path
    rejected: int | None
    generation: dict | None


def synthetic_sets(tracking_uri: str, run_id: str) -> list[SyntheticSet]:
    run = _run(tracking_uri, run_id)
    sets = []
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        if tags.get("mlflow.data.context") != "validation":
            continue
        generator = tags.get("generator") or dataset_input.dataset.name.rsplit("/", 1)[-1]
        rejected = tags.get("rejected_invisible")
        try:
            generation = json.loads(_artifact_text(tracking_uri, run_id, f"validation_sets/{generator}/generation.json",
                                                   "generation record"))
        except RecordError:
            generation = None
        sets.append(SyntheticSet(generator, dataset_input.dataset.digest, _source_folder(dataset_input.dataset.source),
                                 int(rejected) if rejected is not None else None, generation))
    return sets


def _source_folder(source: str) -> Path:
    uri = json.loads(source).get("uri", "")
    return Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)


def anomalies(folder: str | Path) -> pd.DataFrame:
    """The set's synthetic anomalies (manifest rows with label 1: path, mask_path, source_image, parameters)."""
    manifest = Path(folder) / "manifest.csv"
    try:
        table = pd.read_csv(manifest, keep_default_na=False)
    except OSError as error:
        raise RecordError(f"the synthetic set's images are not at {folder} (deleted, or stored on another "
                          "machine)") from error
    table = table[table["label"] == 1].reset_index(drop=True)
    if outside := first_outside([*table["path"], *table["mask_path"]], folder):
        raise RecordError(f"the synthetic set's manifest at {folder} names {outside}, outside the set")
    return table


@dataclass(frozen=True)
class Sample:
    """One synthetic anomaly as thumbnails: the image, its mask (None for image-level labels) and the
    normal image it was made from."""
    image: np.ndarray
    mask: np.ndarray | None
    source: np.ndarray


def samples(folder: str | Path, first: int, count: int, size: int = 256) -> list[Sample]:
    """Anomalies `first` .. `first + count - 1` of the set in `folder`, as thumbnails at most `size` px."""
    rows = anomalies(folder).iloc[first:first + count]
    try:
        return [Sample(_thumbnail(row["path"], "RGB", size),
                       _thumbnail(row["mask_path"], "L", size) if row["mask_path"] else None,
                       _thumbnail(row["source_image"], "RGB", size))
                for row in rows.to_dict("records")]
    except OSError as error:
        raise RecordError(f"an image of the synthetic set is missing: {_short(error)}") from error


def _thumbnail(path: str, mode: str, size: int) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert(mode)
        image.thumbnail((size, size))
        return np.asarray(image)


# --- the registry -------------------------------------------------------------------------------------------

def model_versions(tracking_uri: str, task: str) -> pd.DataFrame:
    """Every registered version of the task's models, newest first: `model`, `version`, `aliases`, `created`
    and the evidence tags (`candidate`, `synthetic_auroc`, ... then the rest; NUMERIC_VERSION_TAGS as numbers),
    with the tags of promotions by hand."""
    try:
        client = _client(tracking_uri)
        versions = list(client.search_model_versions(f"tags.task = '{task}'"))
        aliases = {name: client.get_registered_model(name).aliases for name in {v.name for v in versions}}
    except _READ_ERRORS as error:
        raise RecordError(f"cannot read the model registry of {without_password(tracking_uri)}: "
                          f"{hide_password(_short(error), tracking_uri)}") from error
    rows = []
    for version in versions:
        held = sorted(alias for alias, number in aliases[version.name].items() if str(number) == str(version.version))
        rows.append({"model": version.name, "version": int(version.version), "aliases": ", ".join(held),
                     "created": pd.Timestamp(version.creation_timestamp, unit="ms"), **version.tags,
                     "run_id": version.run_id})
    if not rows:
        return pd.DataFrame(columns=["model", "version", "aliases", "created"])
    table = pd.DataFrame(rows)
    for column in set(NUMERIC_VERSION_TAGS) & set(table):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    leading = ["model", "version", "aliases", "created", *[t for t in _LEADING_VERSION_TAGS if t in table]]
    table = table[leading + [column for column in table.columns if column not in leading]]
    return table.sort_values(["model", "version"], ascending=[True, False], ignore_index=True)


def alias_holder(versions: pd.DataFrame, model: str, alias: str) -> int | None:
    """The version of `model` holding `alias` (CHAMPION, CHALLENGER) in a `model_versions` frame."""
    held = versions[(versions["model"] == model) & versions["aliases"].str.split(", ").apply(lambda a: alias in a)]
    return int(held["version"].iloc[0]) if len(held) else None

