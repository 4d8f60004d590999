"""An Optuna search over one detector kind's space, scored on synthetic AUROC.

Any number of worker processes, on one machine (`workers`) or many (the same command pointed at one
PostgreSQL `storage`), share one study. `n_trials` is the study's total of completed trials, whoever runs
them: a worker starts a trial only while completed plus running trials are below it, and a trial that
races past it is pruned before any work. Heartbeats mark a killed worker's trial failed after a grace period,
and the others take over its share. Running the same command again resumes the study.
"""

import multiprocessing
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from compat.progress import progress
from detectors import FeatureCache
from selection import registry, tracking
from selection.candidates import Candidate, default_candidates, largest_pretrained
from selection.environment import temporary_environment
from selection.processes import this_process
from selection.evidence import (Evidence, check_candidates, evidence_digest, gather_evidence, score_candidate,
                                synthetic_auroc)
from selection.config import PRUNERS, SearchConfig, SelectionConfig
from selection.confidence import Decision, decide
from selection.scoring import RankingComparison, compare_rankings
from selection.report import Report
from selection.search_space import SpaceBounds, get_search_space

RUN_ID_ATTR = "mlflow_run_id"
DIGEST_ATTR = "evidence_digest"
SURPLUS = "surplus"  # user attribute of a trial stopped because the study already had its total
PRUNER_STARTUP = 5  # trials the median pruner lets finish before it compares
REPORT_EVERY = 5  # epochs between reports: scoring the synthetic sets costs several epochs of training
# selection settings a search does not use (its trials choose k; it ranks no controls, ensembles or prior)
_NOT_SEARCH_PARAMS = ("tracking_uri", "store", "feature_dir", "k", "controls", "ensemble", "prior")


@dataclass
class SearchResult:
    study_name: str
    trials: pd.DataFrame  # completed trials, best first
    best: Candidate
    best_trial: int
    new_trials: int  # completed by this invocation's workers
    comparison: RankingComparison | None  # synthetic vs real ranking of the distinct trial candidates
    worker_failures: list[str]
    run_id: str
    promotion: registry.Promotion | None = None
    decision: Decision | None = None  # the best trial against the space's prior, where it was registered
    notes: list[str] = field(default_factory=list)  # warnings: interrupted runs it ended, images it resized


def run_search(config: SearchConfig) -> SearchResult:
    selection = config.selection
    if config.n_trials < 1 or config.workers < 1:
        raise ValueError(f"need at least one trial and one worker, got {config.n_trials} and {config.workers}")
    space = get_search_space(config.space)
    features = FeatureCache(device=selection.device, directory=selection.feature_dir)
    check_candidates(default_candidates(replace(selection.candidate_pool(), controls=False), (config.space,)), features)
    tracking.configure(selection.tracking_uri, selection.experiment)  # an unreachable store fails in seconds
    interrupted = tracking.end_interrupted_runs(selection.experiment)
    evidence = gather_evidence(selection)
    study, run_id = _open_study(config, evidence)
    completed_before, finished_before = _count(study, TrialState.COMPLETE), _finished(study)

    if config.workers == 1:
        objective = TrialObjective(config, evidence, features, run_id)
        with progress(total=config.n_trials, initial=finished_before, desc="trials") as bar:
            work(study, objective, config.n_trials, config.heartbeat_seconds,
                 on_trial=lambda _study, _trial: bar.update(_finished(study) - bar.n))
        failures = []
    else:
        failures = _run_worker_processes(config, study, run_id, finished_before)

    unlogged = log_unlogged_trials(study, TrialObjective(config, evidence, features, run_id))
    trials = trials_table(study)
    if trials.empty:
        raise RuntimeError(f"study {study.study_name} has no completed trial; " + "; ".join(failures))
    best = study.best_trial
    bounds = space_bounds(selection, evidence)
    best_candidate = space(optuna.trial.FixedTrial(best.params), bounds)
    result = SearchResult(study.study_name, trials, best_candidate, best.number,
                          _count(study, TrialState.COMPLETE) - completed_before,
                          _compare(trials) if evidence.has_real_labels else None, failures, run_id,
                          notes=interrupted + unlogged + evidence.notes)
    _record(config, result, evidence, features)
    return result


def space_bounds(selection: SelectionConfig, evidence: Evidence) -> SpaceBounds:
    return SpaceBounds(selection.backbones, selection.layers, len(evidence.bank), selection.clip_models,
                       selection.prompt_object)


class TrialObjective:
    """Scores one trial's candidate on the synthetic sets; as an Optuna callback, logs completed trials to
    MLflow as children of the search's run."""

    def __init__(self, config: SearchConfig, evidence: Evidence, features: FeatureCache, parent_run_id: str):
        self.space = get_search_space(config.space)
        self.bounds = space_bounds(config.selection, evidence)
        self.n_trials = config.n_trials
        self.evidence = evidence
        self.features = features
        self.parent_run_id = parent_run_id
        self.storage = _display_url(config.storage_url)

    def __call__(self, trial: optuna.Trial) -> float:
        if _trials_ahead(trial) >= self.n_trials:
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned(f"over the study's total of {self.n_trials} trials")
        trial.set_user_attr("worker", this_process())
        candidate = self.space(trial, self.bounds)
        trial.set_user_attr("candidate", candidate.name)
        row = score_candidate(candidate, self.evidence, self.features, on_epoch=self._report_to(trial)).row
        for key, value in row.items():
            if "auroc" in key:
                trial.set_user_attr(key, value)
        return row["synthetic_auroc"]

    def _report_to(self, trial: optuna.Trial):
        """For detectors trained in epochs: after every REPORT_EVERY-th, the synthetic AUROC reported to the
        trial, which the study's pruner may stop."""
        def report(epoch: int, detector) -> None:
            if (epoch + 1) % REPORT_EVERY:
                return
            value = synthetic_auroc(detector, self.evidence)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"synthetic AUROC {value:.4f} after epoch {epoch + 1}")
        return report

    def log_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A completed trial as an MLflow child run with its metrics; a pruned one with its last reported
        synthetic AUROC, tagged pruned."""
        if trial.state == TrialState.COMPLETE:
            metrics, state = {key: value for key, value in trial.user_attrs.items() if "auroc" in key}, {}
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            epoch = max(trial.intermediate_values)
            metrics = {"synthetic_auroc": trial.intermediate_values[epoch]}
            state = {"optuna.state": "pruned", "pruned_after_epochs": str(epoch + 1)}
        else:
            return
        candidate = self.space(optuna.trial.FixedTrial(trial.params), self.bounds)
        tracking.log_candidate(
            self.evidence.task.name, f"trial {trial.number} {candidate.name}", candidate.params, metrics,
            self.evidence.validation_sets, candidate.is_control, parent_run_id=self.parent_run_id,
            tags={"kind": "trial", "optuna.study": study.study_name, "optuna.trial": str(trial.number),
                  "optuna.storage": self.storage, **state})


def log_unlogged_trials(study: optuna.Study, objective: TrialObjective) -> list[str]:
    """Completed trials with no finished MLflow run (their worker was killed between Optuna's commit and
    MLflow's run), logged now from what the study holds, any unfinished run of theirs discarded; a note each."""
    logged = tracking.child_runs_by_tag(objective.parent_run_id, "optuna.trial")
    notes = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        runs = logged.get(str(trial.number), [])
        if any(run.info.status == "FINISHED" for run in runs):
            continue
        for run in runs:
            tracking.discard_run(run.info.run_id)
        objective.log_trial(study, trial)
        notes.append(f"trial {trial.number} was completed but not logged (its worker {trial.user_attrs.get('worker')} "
                     "ended first): logged now")
    return notes


def work(study: optuna.Study, objective: TrialObjective, n_trials: int, heartbeat_seconds: int,
         on_trial=None) -> None:
    """One worker's loop: run trials until the study has `n_trials` finished ones (completed or pruned)."""
    callbacks = [objective.log_trial] + ([on_trial] if on_trial else [])
    while True:
        _fail_stale_trials(study)
        finished, running = _finished(study), _count(study, TrialState.RUNNING)
        if finished >= n_trials:
            return
        if finished + running >= n_trials:  # the rest is running elsewhere; take over if one of them dies
            time.sleep(min(1.0, heartbeat_seconds))
            continue
        study.optimize(objective, n_trials=1, callbacks=callbacks)


def open_storage(url: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # SQLite serialises writers: wait for the lock rather than fail when several workers write at once.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
                                          grace_period=3 * heartbeat_seconds)


def default_study_name(task: str, space: str, digest: str) -> str:
    return f"{task}/{space}/{digest[:12]}"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    rows = [{"trial": t.number, "candidate": t.user_attrs.get("candidate"), "synthetic_auroc": t.value,
             **{k: v for k, v in t.user_attrs.items() if "auroc" in k and k != "synthetic_auroc"},
             "worker": t.user_attrs.get("worker"),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["synthetic_auroc", "trial"], ascending=[False, True], ignore_index=True)


def format_search_report(result: SearchResult) -> str:
    return search_report(result).text()


def search_report(result: SearchResult) -> Report:
    """The top ten distinct candidates and the best trial (logged as trials.md, in Markdown)."""
    distinct = result.trials.drop_duplicates("candidate")  # the sampler revisits good configurations
    table = distinct.drop(columns=["worker", "seconds"]).head(10).assign(
        trials=lambda t: t["candidate"].map(result.trials["candidate"].value_counts()))
    best = result.trials.iloc[0]
    title = (f"Study {result.study_name}: {len(result.trials)} completed trials ({result.new_trials} new) of "
             f"{len(distinct)} distinct candidates; the top 10:")
    lines = [f"best: trial {result.best_trial} {result.best.name}: synthetic AUROC {best['synthetic_auroc']:.4f}"
             + (f", real AUROC {best['real_auroc']:.4f}" if "real_auroc" in best else "")]
    if result.comparison:
        c = result.comparison
        lines.append(f"over the {result.trials['candidate'].nunique()} distinct candidates tried: Kendall tau-b "
                     f"{c.tau:.3f} (p={c.p_value:.2g}); oracle {c.oracle} {c.oracle_real_auroc:.4f}; "
                     f"regret {c.regret:.4f}")
    if result.decision:
        lines.append(f"registered: {result.decision.chosen} (prior {result.decision.prior}; {result.decision.reason})")
    lines += [f"WARNING: {warning}" for warning in result.notes + result.worker_failures]
    return Report(title, table, lines)


def _open_study(config: SearchConfig, evidence: Evidence) -> tuple[optuna.Study, str]:
    """The study, created with its MLflow parent run by whichever process comes first, or loaded."""
    digest = evidence_digest(evidence.validation_sets)
    name = config.study_name or default_study_name(evidence.task.name, config.space, digest)
    storage = open_storage(config.storage_url, config.heartbeat_seconds)
    sampler, pruner = optuna.samplers.TPESampler(seed=config.selection.seed), make_pruner(config.pruner)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        if study.user_attrs.get(DIGEST_ATTR, digest) != digest:
            raise ValueError(f"study {name!r} was scored on other synthetic evidence "
                             f"({study.user_attrs[DIGEST_ATTR]}, now {digest}): give another --study-name")
        return study, _wait_for_run_id(study)
    params = {"space": config.space, "n_trials": config.n_trials, "study": name,
              **{k: ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(config.selection).items()
                 if k not in _NOT_SEARCH_PARAMS}}
    tags = {"optuna.study": name, "optuna.storage": _display_url(config.storage_url)}
    with tracking.parent_run(evidence.task.name, "search", params, evidence.validation_sets, tags) as run:
        run_id = run.info.run_id  # the trials and the summary join it later
    study.set_user_attr(DIGEST_ATTR, digest)
    study.set_user_attr(RUN_ID_ATTR, run_id)
    return study, run_id


def _wait_for_run_id(study: optuna.Study, timeout_seconds: float = 120) -> str:
    """The study's MLflow run, which the process that created the study may still be starting."""
    deadline = time.monotonic() + timeout_seconds
    while RUN_ID_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {study.study_name} has no MLflow run after {timeout_seconds:.0f} s")
        time.sleep(0.5)
    return study.user_attrs[RUN_ID_ATTR]


@dataclass(frozen=True)
class _WorkerJob:
    config: SearchConfig
    study_name: str
    run_id: str
    index: int
    torch_threads: int


def _run_worker_processes(config: SearchConfig, study: optuna.Study, run_id: str, finished_before: int) -> list[str]:
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    context = multiprocessing.get_context("spawn")  # no forked torch or database state
    processes = [context.Process(target=_worker_main, name=f"search-worker-{i}",
                                 args=(_WorkerJob(config, study.study_name, run_id, i, threads),))
                 for i in range(config.workers)]
    # A spawned worker reads these as it imports: only the launcher shows progress, and each worker's numpy,
    # scikit-learn and torch thread pools get its share of the cores instead of all of them each.
    thread_limits = {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    with temporary_environment(TQDM_DISABLE="1", **thread_limits):
        for process in processes:
            process.start()
    with progress(total=config.n_trials, initial=finished_before, desc=f"trials ({config.workers} workers)") as bar:
        while any(process.is_alive() for process in processes):
            time.sleep(1)
            bar.update(_finished(study) - bar.n)
    return [f"worker {p.name} (pid {p.pid}) exited with code {p.exitcode}; its trial, if any, was marked failed"
            for p in processes if p.exitcode != 0]


def _worker_main(job: _WorkerJob) -> None:
    torch.set_num_threads(job.torch_threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    selection = job.config.selection
    tracking.configure(selection.tracking_uri, selection.experiment)
    features = FeatureCache(device=selection.device, directory=selection.feature_dir)
    evidence = gather_evidence(selection)  # the launcher stored the synthetic sets: this reads them
    sampler = optuna.samplers.TPESampler(seed=selection.seed + 1 + job.index)  # workers must not draw alike
    study = optuna.load_study(study_name=job.study_name, sampler=sampler, pruner=make_pruner(job.config.pruner),
                              storage=open_storage(job.config.storage_url, job.config.heartbeat_seconds))
    work(study, TrialObjective(job.config, evidence, features, job.run_id), job.config.n_trials,
         job.config.heartbeat_seconds)


def _count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def _finished(study: optuna.Study) -> int:
    """Trials that count toward the study's total: completed, and pruned for lagging (not for surplus)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if not t.user_attrs.get(SURPLUS))


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Optuna's pruner by name (config.PRUNERS): the median one waits for PRUNER_STARTUP trials and judges from
    the second report on."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP, n_warmup_steps=REPORT_EVERY)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")


def _trials_ahead(trial: optuna.Trial) -> int:
    """Finished trials, and running ones that started before this one: the trials that count first."""
    others = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return sum(1 for t in others if not t.user_attrs.get(SURPLUS)
               and (t.state != TrialState.RUNNING or t.number < trial.number))


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _display_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _compare(trials: pd.DataFrame) -> RankingComparison | None:
    distinct = trials.drop_duplicates("candidate")
    if len(distinct) < 2:
        return None
    return compare_rankings(dict(zip(distinct["candidate"], distinct["synthetic_auroc"])),
                            dict(zip(distinct["candidate"], distinct["real_auroc"])))


def _record(config: SearchConfig, result: SearchResult, evidence: Evidence, features: FeatureCache) -> None:
    """The study's summary into its MLflow run and, if this invocation completed trials, the best one
    through the registry's champion/challenger promotion."""
    best = result.trials.iloc[0]
    real_auroc = float(best["real_auroc"]) if "real_auroc" in best else None
    metrics = {"best_synthetic_auroc": float(best["synthetic_auroc"]), "completed_trials": float(len(result.trials))}
    if real_auroc is not None:
        metrics["best_real_auroc"] = real_auroc
    if result.comparison:
        metrics.update(kendall_tau=result.comparison.tau, kendall_p=result.comparison.p_value,
                       regret=result.comparison.regret)
    # decided before the summary is written, so that trials.md says what was registered
    pick = _decided_pick(config, result, evidence, features) if config.selection.register and result.new_trials else None
    summary = tracking.Summary(result.trials, metrics, {"best": result.best.name, "best_trial": str(result.best_trial)},
                               search_report(result), name="trials")
    with tracking.resumed_run(result.run_id):
        result.promotion = registry.record_and_promote(evidence.task.name, evidence.validation_sets, summary, pick,
                                                       config.selection.model_name, config.selection.confidence,
                                                       config.selection.seed)


def _decided_pick(config: SearchConfig, result: SearchResult, evidence: Evidence,
                  features: FeatureCache) -> registry.Pick:
    """The best trial against the space's prior (its kind's standard configuration on the largest backbone),
    decided as `selection.run` decides: the prior is kept unless the synthetic evidence is confident that
    the best trial beats it. Sets `result.decision`."""
    selection = config.selection
    prior = largest_pretrained(default_candidates(replace(selection.candidate_pool(), controls=False),
                                                  (config.space,)), features)
    scored = {c.name: score_candidate(c, evidence, features) for c in (result.best, prior)}
    ranking = sorted(scored, key=lambda name: (-scored[name].row["synthetic_auroc"], name))
    result.decision = decide(ranking, prior.name, {vs.generator: vs.labels for vs in evidence.validation_sets},
                             {name: item.synthetic_scores for name, item in scored.items()}, selection.confidence,
                             selection.seed)
    chosen = scored[result.decision.chosen]
    return registry.Pick(result.decision.chosen, chosen.detector, chosen.row["synthetic_auroc"],
                         chosen.synthetic_scores, chosen.row.get("real_auroc"),
                         {"optuna_study": result.study_name, "optuna_trial": result.best_trial,
                          **result.decision.tags()})
