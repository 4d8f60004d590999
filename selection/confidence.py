"""How sure the synthetic evidence is, and whether it is sure enough to overrule a prior choice.

Among good candidates a synthetic validation set is weak evidence: its ranking of them is close to chance,
while the prior (by default the ensemble of the pretrained backbones' last layers, see pipeline) is a
strong default. The synthetic winner replaces the prior only when the evidence is confident it is better.

Two numbers say how confident. The *bootstrap* confidence is the probability that the winner's synthetic
AUROC beats the prior's over stratified bootstrap resamples, taken on each generator family's set on its
own and then the smallest over families: every family must agree. It measures the synthetic sets' noise
only, not their bias (a family that favours mid-level features favours them in every resample), so it is
overconfident. The *calibrated* confidence says how often, over the tasks of the selection-quality
benchmark, a winner with at least this bootstrap confidence really beat the prior on real labels:
(right + 1) / (runs + 2) over those runs, from `calibration.json`, measured for one set of generator
families and one kind of prior (the ensemble, or the largest model). The threshold (default 0.95) applies
to the calibrated confidence where one was measured for the run's generators and prior, else to the
bootstrap one. Threshold 0 is naive SWSA: always the synthetic winner.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CONFIDENCE = 0.95
N_BOOTSTRAP = 1000
CALIBRATION_FILE = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class Calibration:
    """For each bootstrap level: of the benchmark runs whose winner differed from the prior with at least
    that bootstrap confidence, how many, and in how many the winner really was better."""

    generators: tuple[str, ...]
    levels: tuple[tuple[float, int, int], ...]  # (bootstrap level, runs, winner really better), levels ascending
    measured_on: str

    def calibrated(self, bootstrap: float) -> tuple[float, int]:
        """(right + 1) / (runs + 2) at the highest level the bootstrap confidence reaches, and its runs."""
        reached = [(runs, right) for level, runs, right in self.levels if bootstrap >= level]
        runs, right = reached[-1] if reached else (0, 0)
        return (right + 1) / (runs + 2), runs


def calibration_key(generators, prior_kind: str) -> str:
    return f"{','.join(sorted(generators))} against {prior_kind}"


def load_calibration(generators, prior_kind: str | None, path: Path = CALIBRATION_FILE) -> Calibration | None:
    """The calibration measured for exactly these generator families against this kind of prior (e.g.
    "ensemble/pretrained", "largest model"), or None; a prior the user named has none."""
    if prior_kind is None:
        return None
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text()).get(calibration_key(generators, prior_kind))
        if entry is None:
            return None
        return Calibration(tuple(sorted(generators)), tuple(tuple(level) for level in entry["levels"]),
                           entry["measured_on"])
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"corrupt calibration file {path}: {error!r}; restore it or re-measure it with "
                         "benchmarks/selection_quality.py --write-calibration") from error


@dataclass(frozen=True)
class Decision:
    winner: str  # the best synthetic AUROC
    prior: str | None  # what is kept without strong evidence
    chosen: str
    confidence: float | None  # bootstrap P(winner beats prior), the smallest over families; None if they are one
    runner_up: str | None
    runner_up_confidence: float | None  # bootstrap P(winner beats the second best)
    threshold: float
    calibrated_confidence: float | None = None  # how often such a winner was really better, over the benchmark
    calibration_runs: int | None = None  # benchmark runs behind the calibrated confidence

    def tags(self) -> dict[str, str | float]:
        """The decision as a registered version records it."""
        return {"synthetic_winner": self.winner, "prior": self.prior or "none",
                "confidence_over_prior": "n/a" if self.confidence is None else self.confidence,
                "calibrated_confidence": "n/a" if self.calibrated_confidence is None else self.calibrated_confidence,
                "confidence_threshold": self.threshold, "decision": self.reason}

    @property
    def reason(self) -> str:
        if self.prior is None:
            return "no prior: the synthetic winner"
        if self.winner == self.prior:
            return "the synthetic winner is the prior"
        verdict = "overrules" if self.chosen == self.winner else "does not overrule"
        text = (f"the synthetic evidence {verdict} the prior: the winner beats it in {self.confidence:.0%} of "
                "bootstrap resamples (every generator family)")
        if self.calibrated_confidence is None:
            return text + f", no benchmark calibration for these generators (threshold {self.threshold:.0%})"
        return (text + f"; calibrated: such winners were really better in {self.calibrated_confidence:.0%} "
                f"(over {self.calibration_runs} benchmark runs; threshold {self.threshold:.0%})")


def bootstrap_beats(labels: dict[str, np.ndarray], first: dict[str, np.ndarray], second: dict[str, np.ndarray],
                    n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> float:
    """P(mean AUROC of `first` > that of `second`; ties count half) over stratified bootstrap resamples of each
    set. `labels`, `first` and `second` map a generator to its labels and each candidate's scores."""
    rng = np.random.default_rng(seed)
    difference = np.zeros(n_bootstrap)
    for generator, y in labels.items():
        y = np.asarray(y)
        normals, anomalies = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        picks = np.concatenate([rng.choice(normals, (n_bootstrap, len(normals))),
                                rng.choice(anomalies, (n_bootstrap, len(anomalies)))], axis=1)
        difference += (_auroc_rows(np.asarray(first[generator])[picks], len(normals))
                       - _auroc_rows(np.asarray(second[generator])[picks], len(normals)))
    return float(np.mean(difference > 0) + 0.5 * np.mean(difference == 0))


def _auroc_rows(scores: np.ndarray, n_normals: int) -> np.ndarray:
    """AUROC of each row of `scores`, whose first `n_normals` columns are normals (Mann-Whitney, ties halved)."""
    from scipy.stats import rankdata  # scipy.stats takes a second to import: only where it is used

    ranks = rankdata(scores, axis=1)
    n_anomalies = scores.shape[1] - n_normals
    anomaly_rank_sum = ranks[:, n_normals:].sum(axis=1)
    return (anomaly_rank_sum - n_anomalies * (n_anomalies + 1) / 2) / (n_normals * n_anomalies)


def every_family_beats(labels: dict[str, np.ndarray], first: dict[str, np.ndarray], second: dict[str, np.ndarray],
                       seed: int = 0) -> float:
    """The smallest over generator families of the bootstrap P(`first` beats `second`) on that family's set."""
    return min(bootstrap_beats({g: labels[g]}, {g: first[g]}, {g: second[g]}, seed=seed) for g in labels)


def decide(ranking: list[str], prior: str | None, labels: dict[str, np.ndarray],
           scores: dict[str, dict[str, np.ndarray]], threshold: float = DEFAULT_CONFIDENCE,
           seed: int = 0, calibration: Calibration | None = None) -> Decision:
    """`ranking`: candidate names, best synthetic AUROC first; `scores[name][generator]`: anomaly scores."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"the confidence threshold must lie in [0, 1], got {threshold}")
    winner = ranking[0]
    runner_up = ranking[1] if len(ranking) > 1 else None
    runner_up_confidence = (every_family_beats(labels, scores[winner], scores[runner_up], seed)
                            if runner_up else None)
    if prior is None or prior == winner:
        return Decision(winner, prior, winner, None, runner_up, runner_up_confidence, threshold)
    confidence = every_family_beats(labels, scores[winner], scores[prior], seed)
    calibrated, runs = calibration.calibrated(confidence) if calibration else (None, None)
    deciding = confidence if calibrated is None else calibrated
    chosen = winner if deciding >= threshold else prior
    return Decision(winner, prior, chosen, confidence, runner_up, runner_up_confidence, threshold, calibrated, runs)
