"""SWSA end to end: task -> split -> synthetic validation sets -> candidates scored -> pick -> MLflow."""

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from compat.progress import progress
from detectors import FeatureCache
from selection import registry, tracking
from selection.candidates import Candidate, EnsembleCandidate, ensemble_candidate, largest_pretrained
from selection.config import SelectionConfig
from selection.confidence import Decision, decide, load_calibration
from selection.report import Report
from selection.evidence import (TRAINED_ON, ScoredCandidate, check_candidates, gather_evidence, score_candidate,
                                score_ensemble)
from selection.scoring import RankingComparison, compare_rankings
from selection.tasks import Task
from selection.validation_set import ValidationSet

MEAN = "mean"  # the combined synthetic score: mean AUROC over the generators' sets


@dataclass
class SelectionResult:
    task: Task
    leaderboard: pd.DataFrame
    pick: Candidate  # what the decision chose: the synthetic winner, or the prior
    decision: Decision
    validation_sets: list[ValidationSet]
    comparisons: dict[str, RankingComparison] = field(default_factory=dict)  # by generator, and MEAN
    warnings: list[str] = field(default_factory=list)
    promotion: registry.Promotion | None = None
    run_id: str | None = None
    features: FeatureCache | None = None
    scored: dict[str, ScoredCandidate] = field(default_factory=dict)  # by candidate name
    real_labels: np.ndarray | None = None


def run_selection(config: SelectionConfig) -> SelectionResult:
    features = FeatureCache(device=config.device, directory=config.feature_dir)
    candidates = config.candidates()
    check_candidates(candidates, features)
    ensemble = ensemble_candidate(config.ensemble, candidates)
    by_name = {c.name: c for c in candidates + ([ensemble] if ensemble else [])}
    if config.prior is not None and config.prior not in by_name:
        raise ValueError(f"the prior {config.prior!r} is not a candidate; candidates: {', '.join(sorted(by_name))}")
    tracking.configure(config.tracking_uri, config.experiment)  # an unreachable store fails here, in seconds
    interrupted = tracking.end_interrupted_runs(config.experiment)
    evidence = gather_evidence(config)

    scored = {candidate.name: score_candidate(candidate, evidence, features)
              for candidate in progress(candidates, desc="candidates")}
    if ensemble:
        scored[ensemble.name] = score_ensemble(ensemble, scored, evidence, features)
    leaderboard = _rank(pd.DataFrame([item.row for item in scored.values()]))
    baseline = largest_pretrained(candidates, features)
    prior = config.prior or (ensemble.name if ensemble else baseline.name if baseline else None)
    decision = decide(list(leaderboard["candidate"]), prior,
                      {vs.generator: vs.labels for vs in evidence.validation_sets},
                      {name: item.synthetic_scores for name, item in scored.items()}, config.confidence, config.seed,
                      load_calibration(config.generators, prior_kind(config, ensemble)))
    result = SelectionResult(evidence.task, leaderboard, by_name[decision.chosen], decision, evidence.validation_sets,
                             features=features, warnings=interrupted + evidence.notes + control_warnings(leaderboard),
                             scored=scored, real_labels=evidence.real_labels)
    if evidence.has_real_labels and len(candidates) > 1:
        result.comparisons = _compare(leaderboard, evidence.validation_sets, baseline)
    _record(config, result, by_name, scored[decision.chosen].detector)
    return result


def _rank(leaderboard: pd.DataFrame) -> pd.DataFrame:
    leaderboard = leaderboard.sort_values(["synthetic_auroc", "candidate"], ascending=[False, True], ignore_index=True)
    leaderboard.insert(0, "synthetic_rank", leaderboard["synthetic_auroc"].rank(ascending=False, method="min").astype(int))
    if "real_auroc" in leaderboard:
        leaderboard["real_rank"] = leaderboard["real_auroc"].rank(ascending=False, method="min").astype(int)
    return leaderboard


def prior_kind(config: SelectionConfig, ensemble: EnsembleCandidate | None) -> str | None:
    """What the default prior is, as calibrations are keyed: "ensemble/<members>" or "largest model", then
    " among <kinds>" unless the pool is deep kNN alone (how the first calibrations were keyed); None for a
    prior the user named. A calibration measured on one pool never applies to another."""
    if config.prior is not None:
        return None
    kind = f"ensemble/{config.ensemble}" if ensemble else "largest model"
    return kind if tuple(config.detectors) == ("knn",) else f"{kind} among {'+'.join(config.detectors)}"


def control_warnings(leaderboard: pd.DataFrame) -> list[str]:
    controls = leaderboard[leaderboard["control"]]
    pretrained = leaderboard[~leaderboard["control"] & ~leaderboard["ensemble"]]
    if controls.empty or pretrained.empty:
        return []
    best_control = controls.iloc[0]
    beaten = pretrained[pretrained["synthetic_auroc"] < best_control["synthetic_auroc"]]
    if beaten.empty:
        return []
    return [f"negative control {best_control['candidate']} (synthetic AUROC {best_control['synthetic_auroc']:.3f}) "
            f"outranks {len(beaten)} of {len(pretrained)} pretrained candidates: the synthetic validation set "
            "is suspect for this task"]


def _compare(leaderboard: pd.DataFrame, validation_sets, baseline: Candidate | None) -> dict[str, RankingComparison]:
    """How the synthetic ranking of the individual candidates (ensembles left out: they derive from them)
    predicts their real ranking, per generator and for the mean."""
    single = leaderboard[~leaderboard["ensemble"]]
    real = dict(zip(single["candidate"], single["real_auroc"]))
    pretrained = set(single.loc[~single["control"], "candidate"])
    columns = {vs.generator: f"synthetic_auroc/{vs.generator}" for vs in validation_sets}
    if len(validation_sets) > 1:
        columns[MEAN] = "synthetic_auroc"
    return {
        name: compare_rankings(dict(zip(single["candidate"], single[column])), real,
                               baseline.name if baseline else None, pretrained)
        for name, column in columns.items()
    }


def _record(config: SelectionConfig, result: SelectionResult, by_name: dict[str, Candidate], picked_detector) -> None:
    """Write everything to MLflow only once all scoring succeeded, so a failure records nothing partial."""
    params = {k: v for k, v in asdict(config).items() if k not in ("tracking_uri", "store", "feature_dir")}
    params = {k: ",".join(v) if isinstance(v, tuple) else v for k, v in params.items()}
    with tracking.parent_run(result.task.name, "selection", params, result.validation_sets) as run:
        result.run_id = run.info.run_id
        metric_columns = [c for c in result.leaderboard.columns if "auroc" in c or "aupro" in c]
        for row in result.leaderboard.to_dict("records"):
            candidate = by_name[row["candidate"]]
            tracking.log_candidate(result.task.name, candidate.name, candidate.params,
                                   {c: float(row[c]) for c in metric_columns}, result.validation_sets,
                                   candidate.is_control)
        metrics, tags = _summary(result)
        summary = tracking.Summary(result.leaderboard, metrics, tags, selection_report(result))
        pick = _pick(result, picked_detector) if config.register else None
        result.promotion = registry.record_and_promote(result.task.name, result.validation_sets, summary, pick,
                                                       config.model_name, config.confidence, config.seed)


def _pick(result: SelectionResult, detector) -> registry.Pick:
    chosen = result.leaderboard.set_index("candidate").loc[result.pick.name]
    evidence = result.decision.tags()
    if result.comparisons:
        main = result.comparisons.get(MEAN) or next(iter(result.comparisons.values()))
        evidence.update(kendall_tau=main.tau, kendall_p=main.p_value)
    return registry.Pick(result.pick.name, detector, float(chosen["synthetic_auroc"]),
                         result.scored[result.pick.name].synthetic_scores,
                         float(chosen["real_auroc"]) if result.comparisons else None, evidence)


def _summary(result: SelectionResult) -> tuple[dict[str, float], dict[str, str]]:
    decision = result.decision
    board = result.leaderboard.set_index("candidate")
    metrics = {"pick_synthetic_auroc": float(board.loc[result.pick.name, "synthetic_auroc"])}
    if decision.confidence is not None:
        metrics["confidence_over_prior"] = decision.confidence
    if decision.calibrated_confidence is not None:
        metrics["calibrated_confidence"] = decision.calibrated_confidence
    if decision.runner_up_confidence is not None:
        metrics["confidence_over_runner_up"] = decision.runner_up_confidence
    if (real := _pick_real_auroc_and_regret(result)) is not None:
        metrics["pick_real_auroc"], metrics["pick_regret"] = real
    tags = {"pick": result.pick.name, "synthetic_winner": decision.winner, "prior": decision.prior or "none",
            "decision": decision.reason, "warnings": " | ".join(result.warnings) or "none"}
    for name, comparison in result.comparisons.items():
        metrics.update({f"kendall_tau/{name}": comparison.tau, f"kendall_p/{name}": comparison.p_value,
                        f"regret/{name}": comparison.regret, f"pick_real_auroc/{name}": comparison.pick_real_auroc,
                        f"oracle_real_auroc/{name}": comparison.oracle_real_auroc})
        if comparison.pretrained_tau is not None:
            metrics[f"kendall_tau_pretrained/{name}"] = comparison.pretrained_tau
            metrics[f"kendall_p_pretrained/{name}"] = comparison.pretrained_p_value
        if comparison.baseline_regret is not None:
            metrics[f"largest_model_regret/{name}"] = comparison.baseline_regret
        tags[f"oracle/{name}"] = comparison.oracle
    return metrics, tags


def _pick_real_auroc_and_regret(result: SelectionResult) -> tuple[float, float] | None:
    """The pick's real AUROC and its regret against the best individual candidate (negative where an
    ensemble beats them all), where the task has real labels."""
    if "real_auroc" not in result.leaderboard:
        return None
    board = result.leaderboard.set_index("candidate")
    best_single = board.loc[~board["ensemble"], "real_auroc"].max()
    pick = board.loc[result.pick.name, "real_auroc"]
    return float(pick), float(best_single - pick)


def pixel_metrics_note(leaderboard: pd.DataFrame) -> str:
    """Which candidates have pixel metrics, on which sets: the ranking and the decision use image AUROC."""
    if "synthetic_pixel_auroc" not in leaderboard and "real_pixel_auroc" not in leaderboard:
        return "ranked on image AUROC; no candidate has both anomaly maps and a set with pixel masks"
    localised = leaderboard.filter(like="pixel_auroc").notna().any(axis=1)
    sets = [column.split("/", 1)[1] for column in leaderboard.columns if column.startswith("synthetic_pixel_auroc/")]
    sets += ["real"] if "real_pixel_auroc" in leaderboard else []
    return (f"ranked on image AUROC; pixel metrics (P-AUROC, AUPRO) on {', '.join(sets)} for the "
            f"{int(localised.sum())} candidates with anomaly maps; the other {int((~localised).sum())} "
            "(no maps) have image metrics only")


def own_family_notes(leaderboard: pd.DataFrame, generators: list[str]) -> list[str]:
    """For detectors trained on generated anomalies: which of them a synthetic set of their own training
    family also judges (there they meet anomalies of the kind they learned: an optimistic score)."""
    if TRAINED_ON not in leaderboard:
        return []
    trained = leaderboard.dropna(subset=[TRAINED_ON])
    return [f"{len(own)} candidate(s) trained on {family} anomalies are also judged on the {family} set, where "
            "they meet anomalies of the kind they learned: their score there is optimistic"
            for family in generators if len(own := trained[trained[TRAINED_ON] == family])]


def _tau_text(tau: float, p_value: float) -> str:
    if tau != tau:  # NaN: scipy's answer when one ranking is constant
        return "Kendall tau-b undefined (every candidate scored the same)"
    return f"Kendall tau-b {tau:.3f} (p={p_value:.2g})"


def format_report(result: SelectionResult) -> str:
    """The leaderboard and the selection's verdict as plain text."""
    return selection_report(result).text()


def selection_report(result: SelectionResult) -> Report:
    """The leaderboard and the selection's verdict (logged as leaderboard.md, in Markdown)."""
    table = result.leaderboard.copy()
    table["control"] = table["control"].map({True: "control", False: ""})
    table["ensemble"] = table["ensemble"].map({True: "ensemble", False: ""})
    lines = []
    for vs in result.validation_sets:
        lines.append(f"synthetic set {vs.generator}: {len(vs.labels) - vs.n_anomalies} held-out normals + "
                     f"{vs.n_anomalies} anomalies, digest {vs.digest} ({'reused' if vs.reused else 'generated'}; "
                     f"{vs.rejected} invisible draws rejected; "
                     f"{'pixel masks' if vs.has_masks else 'image labels only, no pixel masks'})")
    lines.append(pixel_metrics_note(result.leaderboard))
    lines += own_family_notes(result.leaderboard, [vs.generator for vs in result.validation_sets])
    decision = result.decision
    lines.append(f"synthetic winner: {decision.winner}"
                 + ("" if decision.runner_up_confidence is None else
                    f" (beats the runner-up {decision.runner_up} in {decision.runner_up_confidence:.0%} of "
                    "bootstrap resamples)"))
    if decision.prior:
        lines.append(f"prior: {decision.prior}; {decision.reason}")
    real = _pick_real_auroc_and_regret(result)
    lines.append(f"pick: {result.pick.name}"
                 + ("" if real is None else f" (real AUROC {real[0]:.4f}, regret {real[1]:.4f})"))
    for name, c in result.comparisons.items():
        lines.append(f"[{name}] synthetic ranking: {_tau_text(c.tau, c.p_value)}"
                     + ("" if c.pretrained_tau is None else
                        f", among pretrained {_tau_text(c.pretrained_tau, c.pretrained_p_value)}") + "; "
                     f"its winner's real AUROC {c.pick_real_auroc:.4f}; "
                     f"oracle {c.oracle} {c.oracle_real_auroc:.4f}; regret {c.regret:.4f}"
                     + (f"; largest model {c.baseline} regret {c.baseline_regret:.4f}" if c.baseline else ""))
    if len(table) == 1:
        lines.append("one candidate: nothing to rank")
    elif not result.comparisons:
        lines.append("no real labelled validation set: real AUROC, tau and regret are not available")
    lines += [f"WARNING: {w}" for w in result.warnings]
    return Report(f"Task {result.task.name}: {len(table)} candidates", table, lines)
