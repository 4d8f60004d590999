"""How well anomaly scores detect, and anomaly maps localise, anomalies: F1max, P-AUROC and AUPRO.

Definitions (ALGORITHMS.md, "Metrics"; anomalib is the reference implementation):

- ``f1_max(labels, scores)``: the best F1 over all thresholds of the precision-recall curve, a threshold
  ``t`` calling anomalous every sample with score >= t (tied scores fall on the same side). I-F1max on image
  labels and scores; ``pixel_f1_max`` is the same on every pixel of every image pooled (P-F1max).
- ``pixel_auroc(masks, maps)``: ROC AUC over every pixel of every image pooled; tied scores count one half
  (the trapezoid over the ROC curve, as sklearn's ``roc_auc_score``).
- ``aupro(masks, maps, fpr_limit=0.3)``: the regions are the connected components (8-connectivity) of each
  image's ground-truth mask; at a threshold, a region's overlap is the share of its pixels predicted
  anomalous, PRO is the mean overlap over all regions of all images, and the false-positive rate is over the
  normal pixels of all images (images without anomalies included). AUPRO is the area under PRO against FPR
  for FPR from 0 to ``fpr_limit`` (the curve linearly interpolated at exactly ``fpr_limit``), divided by
  ``fpr_limit``. ``pro_curve`` returns that curve. Computed exactly (every distinct score is a threshold).

Inputs: ``masks`` and ``maps`` are (N, H, W) arrays of the same shape; maps are real and finite, higher =
more anomalous. Masks are boolean, 0/1 integers, or probabilities in [0, 1] (some generators produce coarse
probability-valued masks): a pixel is anomalous where its mask value is >= 0.5 (``MASK_THRESHOLD``). A set
with no anomalous or no normal sample raises ``OneClassError``: these metrics are undefined there, and are
never computed silently.

Against anomalib 2.7 (AUPRO, F1Max, AUROC): the same definitions (8-connected regions per image, the global
FPR, a point per distinct score, the curve cut at the limit by linear interpolation) and the same numbers to
float32 precision (differences <= 1e-7 on random cases with ties). Differences, all on purpose: anomalib
computes in float32, these exactly in float64; its F1 adds 1e-10 to the denominator; on a single-class set
it returns AUPRO 0 and F1max 0 or 1 where these raise; it makes masks integer by truncation (only 1.0 is
anomalous), where these binarise at 0.5.
"""

import math

import numpy as np
from scipy import ndimage

from selection.scoring import OneClassError

MASK_THRESHOLD = 0.5  # a mask value >= this is an anomalous pixel
DEFAULT_FPR_LIMIT = 0.3


def binarise_masks(masks) -> np.ndarray:
    """Boolean anomalous-pixel masks from boolean, 0/1 integer or [0, 1] probability masks (>= 0.5)."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    if masks.dtype.kind not in "iuf":
        raise ValueError(f"masks must be boolean or numeric; got dtype {masks.dtype}")
    if masks.size == 0:
        return masks.astype(bool)
    if masks.dtype.kind == "f" and not np.isfinite(masks).all():
        raise ValueError("masks contain non-finite values (NaN or inf)")
    low, high = masks.min(), masks.max()
    if low < 0 or high > 1:
        raise ValueError(
            f"mask values must lie in [0, 1] (boolean, 0/1 or probabilities); got values from {low} to {high}"
            + (" (0/255 image masks: divide by 255 first)" if high == 255 else ""))
    return masks >= MASK_THRESHOLD


def f1_max(labels, scores, set_name: str = "validation set") -> float:
    """I-F1max: the best F1 over every threshold; ``labels`` 0/1 or boolean (1 = anomalous)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels shape {labels.shape} differs from scores shape {scores.shape}")
    positive = _binary_labels(labels).ravel()
    scores = _finite_scores(scores, "scores").ravel()
    n_positive = int(np.count_nonzero(positive))
    _require_two_classes(n_positive, positive.size - n_positive, set_name, "images", "F1max")
    return _f1_max(scores[positive], scores[~positive])


def pixel_f1_max(masks, maps, set_name: str = "validation set") -> float:
    """P-F1max: ``f1_max`` over every pixel of every image pooled."""
    anomalous, maps = _pixel_inputs(masks, maps)
    _require_two_pixel_classes(anomalous, set_name, "P-F1max")
    return _f1_max(maps[anomalous], maps[~anomalous])


def pixel_auroc(masks, maps, set_name: str = "validation set") -> float:
    """P-AUROC: ROC AUC over every pixel of every image pooled (ties count one half)."""
    anomalous, maps = _pixel_inputs(masks, maps)
    _require_two_pixel_classes(anomalous, set_name, "P-AUROC")
    return _auroc(maps[anomalous], maps[~anomalous])


def pro_curve(masks, maps, fpr_limit: float = DEFAULT_FPR_LIMIT,
              set_name: str = "validation set") -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve (fpr, pro) from FPR 0 to ``fpr_limit``: one point per distinct score (highest first)
    whose FPR is within the limit, starting at (0, 0) and ending at exactly ``fpr_limit`` (interpolated)."""
    fpr_limit = _check_fpr_limit(fpr_limit)
    anomalous, maps = _pixel_inputs(masks, maps)
    _require_two_pixel_classes(anomalous, set_name, "AUPRO")
    # one connected-component labelling over the stack; the structure links pixels within an image only
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, n_regions = ndimage.label(anomalous, structure=structure)
    region_weight = np.zeros(n_regions + 1)
    region_weight[1:] = 1.0 / np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    n_normal = anomalous.size - int(np.count_nonzero(anomalous))

    # Only thresholds down to the first one whose FPR passes the limit matter: that threshold is the k-th
    # highest normal score, k the smallest count of false positives whose FPR exceeds the limit.
    k = _first_count_above(fpr_limit, n_normal)
    if k is None:
        selected = slice(None)
    else:
        normal_scores = maps[~anomalous]
        cutoff = np.partition(normal_scores, n_normal - k)[n_normal - k]
        del normal_scores
        selected = maps >= cutoff
    scores = maps[selected].ravel()
    labels = regions[selected].ravel()
    del regions, selected

    order = np.argsort(scores)[::-1]
    scores = scores[order]
    # a threshold takes all pixels with score >= t: the curve has a point at the end of each tie group
    ends = np.append(np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1)
    del scores
    labels = labels[order]
    del order
    false_positives = np.cumsum(labels == 0)[ends]
    overlap_sums = np.cumsum(region_weight[labels])[ends]
    fpr = np.concatenate([[0.0], false_positives / n_normal])
    pro = np.concatenate([[0.0], np.minimum(overlap_sums / n_regions, 1.0)])

    beyond = int(np.searchsorted(fpr, fpr_limit, side="right"))  # first point with FPR > limit
    if beyond == fpr.size or fpr[beyond - 1] == fpr_limit:
        return fpr[:beyond], pro[:beyond]
    f0, f1, p0, p1 = fpr[beyond - 1], fpr[beyond], pro[beyond - 1], pro[beyond]
    pro_at_limit = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
    return np.append(fpr[:beyond], fpr_limit), np.append(pro[:beyond], pro_at_limit)


def aupro(masks, maps, fpr_limit: float = DEFAULT_FPR_LIMIT, set_name: str = "validation set") -> float:
    """AUPRO: the area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit."""
    fpr, pro = pro_curve(masks, maps, fpr_limit, set_name)
    return float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1])) / 2 / fpr_limit)


def _f1_max(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    # The best threshold is always some anomalous sample's score: lowering a threshold to the next
    # anomalous score below adds true positives, raising it to the next one above drops false positives only.
    positive = np.sort(positive_scores)
    negative = np.sort(negative_scores)
    n_positive = positive.size
    true_positives = n_positive - np.searchsorted(positive, positive, side="left")
    false_positives = negative.size - np.searchsorted(negative, positive, side="left")
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)
    return float(np.max(2.0 * true_positives / (true_positives + false_positives + n_positive)))


def _auroc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    # Mann-Whitney: the share of (anomalous, normal) pairs ordered right, ties one half; integer counts, exact
    positive = np.sort(positive_scores)
    negative = np.sort(negative_scores)
    below = np.searchsorted(negative, positive, side="left")
    below_or_tied = np.searchsorted(negative, positive, side="right")
    twice_wins = int(below.sum(dtype=np.int64)) + int(below_or_tied.sum(dtype=np.int64))
    return twice_wins / (2 * positive.size * negative.size)


def _first_count_above(fpr_limit: float, n_normal: int) -> int | None:
    """The smallest false-positive count c with c / n_normal > fpr_limit (as the curve computes it)."""
    count = math.floor(fpr_limit * n_normal)
    while count > 0 and count / n_normal > fpr_limit:
        count -= 1
    while count <= n_normal and count / n_normal <= fpr_limit:
        count += 1
    return count if count <= n_normal else None


def _check_fpr_limit(fpr_limit) -> float:
    fpr_limit = float(fpr_limit)
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    return fpr_limit


def _binary_labels(labels: np.ndarray) -> np.ndarray:
    if labels.dtype == bool:
        return labels
    if labels.dtype.kind not in "iuf":
        raise ValueError(f"labels must be boolean or 0/1 numbers; got dtype {labels.dtype}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1; got values {np.unique(labels)[:5].tolist()}")
    return labels == 1


def _finite_scores(scores: np.ndarray, what: str) -> np.ndarray:
    if scores.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be real numbers; got dtype {scores.dtype}")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain non-finite values (NaN or inf)")
    return scores


def _pixel_inputs(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks), np.asarray(maps)
    for name, array in (("masks", masks), ("maps", maps)):
        if array.ndim != 3:
            raise ValueError(f"{name} must be (N, H, W); got shape {array.shape}")
    if masks.shape != maps.shape:
        raise ValueError(f"masks shape {masks.shape} differs from maps shape {maps.shape}")
    if maps.size == 0:
        raise ValueError(f"no pixels: masks and maps have shape {maps.shape}")
    return binarise_masks(masks), _finite_scores(maps, "maps")


def _require_two_classes(n_positive: int, n_negative: int, set_name: str, unit: str, metric: str) -> None:
    if n_positive == 0 or n_negative == 0:
        missing = "anomalous" if n_positive == 0 else "normal"
        raise OneClassError(
            f"{set_name} has no {missing} {unit[:-1]} ({n_positive + n_negative} {unit}): "
            f"{metric} needs both normal and anomalous {unit}")


def _require_two_pixel_classes(anomalous: np.ndarray, set_name: str, metric: str) -> None:
    n_anomalous = int(np.count_nonzero(anomalous))
    if n_anomalous == 0 or n_anomalous == anomalous.size:
        n, h, w = anomalous.shape
        missing = "anomalous" if n_anomalous == 0 else "normal"
        raise OneClassError(
            f"{set_name} has no {missing} pixel in its masks ({n} images of {h}x{w}): "
            f"{metric} needs both normal and anomalous pixels")
