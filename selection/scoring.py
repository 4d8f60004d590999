"""Detection metrics and the comparison of synthetic with real rankings (SWSA's evaluation)."""

from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau
from sklearn.metrics import roc_auc_score


class OneClassError(ValueError):
    """AUROC (or any threshold) is undefined on a set with a single class."""


def require_two_classes(labels, set_name: str) -> None:
    classes = np.unique(np.asarray(labels))
    if len(classes) < 2:
        raise OneClassError(
            f"{set_name} has only class {classes.tolist()} ({len(labels)} images): "
            "AUROC needs both normal and anomalous images"
        )


def auroc(labels, scores, set_name: str = "validation set") -> float:
    labels = np.asarray(labels)
    require_two_classes(labels, set_name)
    scores = np.asarray(scores, dtype=float)
    if not np.isfinite(scores).all():
        raise ValueError(f"non-finite anomaly scores on the {set_name}")
    return float(roc_auc_score(labels, scores))


@dataclass(frozen=True)
class RankingComparison:
    """How well the synthetic ranking of candidates predicts their real ranking."""

    tau: float  # Kendall's tau-b between synthetic and real AUROC
    p_value: float
    pick: str  # argmax of synthetic AUROC
    pick_real_auroc: float
    oracle: str  # argmax of real AUROC
    oracle_real_auroc: float
    regret: float  # oracle - pick, in real AUROC
    baseline: str | None  # the largest pretrained model: what a user picks without evidence
    baseline_regret: float | None
    pretrained_tau: float | None = None  # tau among the pretrained candidates only: can it tell good from better?
    pretrained_p_value: float | None = None


def _kendall(synthetic: dict[str, float], real: dict[str, float], names: list[str]) -> tuple[float, float]:
    tau, p_value = kendalltau([synthetic[n] for n in names], [real[n] for n in names], variant="b")
    return float(tau), float(p_value)


def compare_rankings(
    synthetic: dict[str, float], real: dict[str, float], baseline: str | None = None,
    pretrained: set[str] | None = None,
) -> RankingComparison:
    """`synthetic` and `real` map candidate names to AUROC over the same candidates; `pretrained` names the
    candidates that are not negative controls."""
    if set(synthetic) != set(real):
        raise ValueError("synthetic and real AUROC must cover the same candidates")
    if len(synthetic) < 2:
        raise ValueError("ranking comparison needs at least two candidates")
    names = sorted(synthetic)
    tau, p_value = _kendall(synthetic, real, names)
    pretrained_names = sorted(set(names) & (pretrained or set()))
    pretrained_tau, pretrained_p = (
        _kendall(synthetic, real, pretrained_names) if len(pretrained_names) >= 2 else (None, None))
    pick = max(names, key=synthetic.__getitem__)
    oracle = max(names, key=real.__getitem__)
    return RankingComparison(
        tau=tau,
        p_value=p_value,
        pick=pick,
        pick_real_auroc=real[pick],
        oracle=oracle,
        oracle_real_auroc=real[oracle],
        regret=real[oracle] - real[pick],
        baseline=baseline,
        baseline_regret=None if baseline is None else real[oracle] - real[baseline],
        pretrained_tau=pretrained_tau,
        pretrained_p_value=pretrained_p,
    )
