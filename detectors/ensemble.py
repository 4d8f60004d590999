"""A score ensemble of fitted detectors: the weighted mean of their standardised anomaly scores.

Deep kNN scores of different backbones live on unrelated scales (sums of squared distances in spaces of
different dimension), so each member's score is standardised by the mean and standard deviation of its
scores on held-out normal images: images of the normal class that are not in the member's bank (a bank
image is its own nearest neighbour and scores too low). A member then weighs what its weight says (all
alike unless given), not what its score scale happens to be.
"""

import json
from pathlib import Path

import numpy as np

from detectors.features import FeatureCache
from detectors.interface import Detector, load_detector, register_format

_FILE = "ensemble.json"
_FORMAT = "score_ensemble/1"


class ScoreEnsemble:
    """Weighted mean of standardised scores of fitted `members` (each with `anomaly_scores(images)` and
    `save(dir)`); `weights` (positive, one per member, equal by default) are normalised to sum to one."""

    def __init__(self, members: list[Detector], means: np.ndarray, stds: np.ndarray, weights=None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        means, stds = np.asarray(means, dtype=np.float64), np.asarray(stds, dtype=np.float64)
        weights = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
        if means.shape != (len(members),) or stds.shape != (len(members),) or weights.shape != (len(members),):
            raise ValueError(f"one mean, one std and one weight per member: {len(members)} members, "
                             f"{means.shape} means, {stds.shape} stds, {weights.shape} weights")
        if not (np.isfinite(stds).all() and (stds > 0).all()):
            raise ValueError("every member needs a positive, finite score std on the held-out normals")
        if not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError(f"member weights must be positive and finite, got {weights.tolist()}")
        self.members = list(members)
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()

    @classmethod
    def from_heldout_scores(cls, members: list[Detector], heldout_scores: list[np.ndarray],
                            weights=None) -> "ScoreEnsemble":
        """Standardise each member by its scores on held-out normal images (`heldout_scores[i]` for member i)."""
        if len(heldout_scores) != len(members):
            raise ValueError(f"{len(members)} members but {len(heldout_scores)} arrays of held-out scores")
        scores = [np.asarray(s, dtype=np.float64) for s in heldout_scores]
        if any(len(s) < 2 for s in scores):
            raise ValueError("standardising a member needs its scores on at least two held-out normal images")
        # the spread floor keeps a member that scores every normal alike from dominating the mean
        stds = np.array([max(s.std(), 1e-12 * max(abs(s.mean()), 1.0)) for s in scores])
        return cls(members, np.array([s.mean() for s in scores]), stds, weights)

    @property
    def backbone_keys(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys(key for member in self.members for key in member.backbone_keys))

    def combine(self, member_scores: list[np.ndarray]) -> np.ndarray:
        """The ensemble's scores from its members' scores on the same images, member by member."""
        stacked = np.stack([np.asarray(s, dtype=np.float64) for s in member_scores])
        return self.weights @ ((stacked - self.means[:, None]) / self.stds[:, None])

    def anomaly_scores(self, images) -> np.ndarray:
        """(N,) anomaly scores of `images`: higher = more anomalous."""
        return self.combine([member.anomaly_scores(images) for member in self.members])

    def save(self, directory) -> None:
        """Each member in members/<i>/ as it saves itself; the standardisation and weights in ensemble.json."""
        directory = Path(directory)
        for index, member in enumerate(self.members):
            member.save(directory / "members" / str(index))
        (directory / _FILE).write_text(json.dumps(
            {"format": _FORMAT, "means": self.means.tolist(), "stds": self.stds.tolist(),
             "weights": self.weights.tolist()}, indent=2))

    @classmethod
    def load(cls, directory, features: FeatureCache | None = None) -> "ScoreEnsemble":
        directory = Path(directory)
        try:
            spec = json.loads((directory / _FILE).read_text())
            if spec.get("format") != _FORMAT:
                raise ValueError(f"unsupported format (expected {_FORMAT})")
            members = [load_detector(directory / "members" / str(i), features) for i in range(len(spec["means"]))]
            return cls(members, spec["means"], spec["stds"], spec.get("weights"))  # saved without: equal
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"corrupt saved ScoreEnsemble in {directory}: {error}") from error


register_format(_FORMAT, ScoreEnsemble.load)
