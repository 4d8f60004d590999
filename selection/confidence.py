"""How sure the synthetic evidence is, and whether it is sure enough to overrule a prior choice.

Among good candidates a synthetic validation set is weak evidence: its ranking of them is close to chance,
while "take the largest pretrained model" is a strong default. So the synthetic winner replaces the prior
only when the synthetic set is confident that it is better: the probability that the winner's synthetic
AUROC beats the prior's, over bootstrap resamples of the synthetic set(s) (normals and anomalies resampled
separately, the mean AUROC over generators as in the ranking), must reach a threshold (default 0.95).
Threshold 0 is naive SWSA: always the synthetic winner.
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

DEFAULT_CONFIDENCE = 0.95
N_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Decision:
    winner: str  # the best synthetic AUROC
    prior: str | None  # what is kept without strong evidence: the largest pretrained model, or the user's choice
    chosen: str
    confidence: float | None  # P(winner beats prior) under the bootstrap; None when they are the same
    runner_up: str | None
    runner_up_confidence: float | None  # P(winner beats the second best)
    threshold: float

    @property
    def reason(self) -> str:
        if self.prior is None:
            return "no prior: the synthetic winner"
        if self.winner == self.prior:
            return "the synthetic winner is the prior"
        verdict = "overrules" if self.chosen == self.winner else "does not overrule"
        return (f"the synthetic evidence {verdict} the prior: the winner beats it in {self.confidence:.0%} of "
                f"bootstrap resamples (threshold {self.threshold:.0%})")


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
    ranks = rankdata(scores, axis=1)
    n_anomalies = scores.shape[1] - n_normals
    anomaly_rank_sum = ranks[:, n_normals:].sum(axis=1)
    return (anomaly_rank_sum - n_anomalies * (n_anomalies + 1) / 2) / (n_normals * n_anomalies)


def decide(ranking: list[str], prior: str | None, labels: dict[str, np.ndarray],
           scores: dict[str, dict[str, np.ndarray]], threshold: float = DEFAULT_CONFIDENCE,
           seed: int = 0) -> Decision:
    """`ranking`: candidate names, best synthetic AUROC first; `scores[name][generator]`: anomaly scores."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"the confidence threshold must lie in [0, 1], got {threshold}")
    winner = ranking[0]
    runner_up = ranking[1] if len(ranking) > 1 else None
    runner_up_confidence = (bootstrap_beats(labels, scores[winner], scores[runner_up], seed=seed)
                            if runner_up else None)
    if prior is None or prior == winner:
        return Decision(winner, prior, winner, None, runner_up, runner_up_confidence, threshold)
    confidence = bootstrap_beats(labels, scores[winner], scores[prior], seed=seed)
    chosen = winner if confidence >= threshold else prior
    return Decision(winner, prior, chosen, confidence, runner_up, runner_up_confidence, threshold)
