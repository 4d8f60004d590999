import numpy as np
import pytest
from skimage.measure import label as skimage_label
from sklearn.metrics import precision_recall_curve, roc_auc_score

from selection.localisation import aupro, binarise_masks, f1_max, pixel_auroc, pixel_f1_max, pro_curve
from selection.scoring import OneClassError

# ---------------------------------------------------------------- references, written from the definitions


def _f1_by_threshold_sweep(labels, scores):
    labels, scores = np.asarray(labels).ravel().astype(bool), np.asarray(scores).ravel()
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        fp = np.sum(predicted & ~labels)
        fn = np.sum(~predicted & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def _aupro_by_brute_force(masks, maps, fpr_limit):
    """Every distinct score a threshold, PRO and FPR recomputed from scratch at each, regions labelled per
    image by scikit-image (8-connectivity), the trapezoid cut at the limit by linear interpolation."""
    masks = np.asarray(masks, dtype=bool)
    regions = []  # (image index, region mask)
    for i, mask in enumerate(masks):
        labelled = skimage_label(mask, connectivity=2)
        regions += [(i, labelled == r) for r in range(1, labelled.max() + 1)]
    normal = ~masks
    curve = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        overlaps = [predicted[i][region].sum() / region.sum() for i, region in regions]
        curve.append(((predicted & normal).sum() / normal.sum(), np.mean(overlaps)))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(curve, curve[1:]):
        if f1 <= fpr_limit:
            area += (f1 - f0) * (p0 + p1) / 2
        else:
            if f0 < fpr_limit:
                p_at_limit = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
                area += (fpr_limit - f0) * (p0 + p_at_limit) / 2
            break
    return area / fpr_limit


def _random_masks_and_maps(seed, n=6, size=16, decimals=1):
    """Several rectangles per image (some overlapping or touching diagonally), some images normal;
    scores rounded so that many pixels tie, anomalous ones higher on average."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n - 2):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, 6, 2)
            masks[i, y:y + h, x:x + w] = True
    maps = np.round(rng.normal(size=masks.shape) + 1.2 * masks, decimals)
    return masks, maps


# ---------------------------------------------------------------- F1max


def test_f1_max_by_hand():
    # thresholds 0.8: TP 1 FP 0 -> 2/3; 0.4: TP 1 FP 1 -> 1/2; 0.35: TP 2 FP 1 -> 4/5; 0.1: TP 2 FP 2 -> 2/3
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8, abs=1e-15)


def test_f1_max_tied_scores_enter_together():
    # P = 2. t = 0.9 takes the anomaly and both tied normals: TP 1 FP 2 -> 2/(2+2+1) = 0.4;
    # t = 0.1: TP 1 FP 4 -> 2/7; t = 0.05: TP 2 FP 4 -> 4/8 = 0.5. Taking the tied anomaly alone
    # (TP 1 FP 0 -> 2/3) would be a threshold that does not exist.
    labels = [1, 0, 0, 0, 0, 1]
    scores = [0.9, 0.9, 0.9, 0.1, 0.1, 0.05]
    assert f1_max(labels, scores) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_agrees_with_a_threshold_sweep_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # ties
    expected = _f1_by_threshold_sweep(labels, scores)
    assert f1_max(labels, scores) == pytest.approx(expected, abs=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        assert f1_max(labels, scores) == pytest.approx(np.nanmax(2 * precision * recall / (precision + recall)))


def test_f1_max_accepts_boolean_labels_and_integer_scores():
    assert f1_max(np.array([False, True, True]), np.array([0, 2, 1])) == 1.0


# ---------------------------------------------------------------- P-AUROC and P-F1max

# Two 2x2 images; anomalous pixels score 0.8 and 0.4; normal pixels 0.4, 0.1 (image 0) and 0.3, 0.9, 0.2, 0.4
HAND_MASKS = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
HAND_MAPS = np.array([[[0.8, 0.4], [0.4, 0.1]], [[0.3, 0.9], [0.2, 0.4]]])


def test_pixel_auroc_by_hand_pools_every_pixel_and_counts_ties_half():
    # 0.8 beats 5 of the 6 normals (not 0.9); 0.4 beats 0.1, 0.3, 0.2 and ties both 0.4s: 3 + 2 * 1/2 = 4
    assert pixel_auroc(HAND_MASKS, HAND_MAPS) == pytest.approx(9 / 12, abs=1e-15)


def test_pixel_f1_max_by_hand():
    # P = 2. t = 0.9: TP 0; t = 0.8: TP 1 FP 1 -> 2/4; t = 0.4: TP 2 FP 3 (0.4, 0.9, 0.4) -> 4/7;
    # t = 0.3: TP 2 FP 4 -> 4/8; lower only adds false positives
    assert pixel_f1_max(HAND_MASKS, HAND_MAPS) == pytest.approx(4 / 7, abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_and_f1_max_agree_with_sklearn_and_a_sweep_on_flattened_pixels(seed):
    masks, maps = _random_masks_and_maps(seed)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_f1_max(masks, maps) == pytest.approx(_f1_by_threshold_sweep(masks, maps), abs=1e-12)


def test_probability_masks_are_binarised_at_one_half():
    probabilities = np.array([[[0.6, 0.5], [0.49, 0.0]], [[0.0, 0.2], [1.0, 0.1]]])
    binary = np.array([[[1, 1], [0, 0]], [[0, 0], [1, 0]]], dtype=bool)
    np.testing.assert_array_equal(binarise_masks(probabilities), binary)
    maps = np.array([[[0.9, 0.3], [0.7, 0.1]], [[0.2, 0.4], [0.8, 0.5]]])
    assert pixel_auroc(probabilities, maps) == pixel_auroc(binary, maps)
    assert aupro(probabilities, maps) == aupro(binary, maps)
    assert pixel_f1_max(probabilities, maps) == pixel_f1_max(binary.astype(np.uint8), maps)


# ---------------------------------------------------------------- PRO and AUPRO


def test_aupro_averages_over_regions_not_pixels():
    # Image 0 (2x4): a big region (top row, 4 px) scoring 0.9, 0.8, 0.55, 0.2; normals 0.7, 0.1, 0.1, 0.1.
    # Image 1 (2x4): a small region (2 px) scoring 0.95, 0.85; normals 0.6, 0.5, 0.4, 0.1, 0.1, 0.1.
    # 10 normal pixels: FPR steps of 0.1. PRO = (big overlap + small overlap) / 2:
    #   t=0.95 (0, 1/4)  t=0.9 (0, 3/8)  t=0.85 (0, 5/8)  t=0.8 (0, 3/4): the small region wholly, the big
    #   half (pixel-pooled TPR would be 4/6)  t=0.7 (0.1, 3/4)  t=0.6 (0.2, 3/4)  t=0.55 (0.2, 7/8)
    #   t=0.5 (0.3, 7/8).  Area to 0.3: 0.1 * 3/4 + 0.1 * 3/4 + 0.1 * 7/8 = 0.2375; / 0.3 = 19/24.
    masks = np.array([[[1, 1, 1, 1], [0, 0, 0, 0]], [[1, 1, 0, 0], [0, 0, 0, 0]]])
    maps = np.array([[[0.9, 0.8, 0.55, 0.2], [0.7, 0.1, 0.1, 0.1]],
                     [[0.95, 0.85, 0.6, 0.5], [0.4, 0.1, 0.1, 0.1]]])
    assert aupro(masks, maps) == pytest.approx(19 / 24, abs=1e-12)
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0, 0, 0.1, 0.2, 0.2, 0.3], atol=1e-15)
    np.testing.assert_allclose(pro, [0, 1 / 4, 3 / 8, 5 / 8, 3 / 4, 3 / 4, 3 / 4, 7 / 8, 7 / 8], atol=1e-15)


def test_aupro_tied_pixels_enter_the_curve_together():
    # One region of 2 px (0.9, 0.5) and 2 normals (0.5, 0.1): the tie at 0.5 takes a region pixel and a
    # normal at once, a straight segment (0, 1/2) -> (1/2, 1); at FPR 0.3 PRO = 1/2 + 0.3 = 0.8.
    # Area = 0.3 * (1/2 + 0.8) / 2 = 0.195; / 0.3 = 0.65 (anomalous-first would give 1, normal-first 0.5).
    masks = np.array([[[1, 1, 0, 0]]])
    maps = np.array([[[0.9, 0.5, 0.5, 0.1]]])
    assert aupro(masks, maps) == pytest.approx(0.65, abs=1e-12)


def test_aupro_interpolates_at_the_limit_when_the_fpr_jumps_past_it():
    # One region (0.7, 0.5), 4 normals (0.9, 0.5, 0.5, 0.1): points (0, 0), (1/4, 0), (1/4, 1/2),
    # (3/4, 1), (1, 1). FPR jumps from 1/4 to 3/4; on that segment PRO = FPR + 1/4, so PRO(0.3) = 0.55:
    #   limit 0.3: 0.05 * (0.5 + 0.55) / 2 = 0.02625; / 0.3 = 0.0875
    #   limit 0.5: 0.25 * (0.5 + 0.75) / 2 = 0.15625; / 0.5 = 0.3125
    #   limit 1:   0.5 * (0.5 + 1) / 2 + 0.25 * 1 = 0.625
    masks = np.array([[[0, 1, 1, 0, 0, 0]]])
    maps = np.array([[[0.9, 0.7, 0.5, 0.5, 0.5, 0.1]]])
    assert aupro(masks, maps) == pytest.approx(0.0875, abs=1e-12)
    assert aupro(masks, maps, fpr_limit=0.5) == pytest.approx(0.3125, abs=1e-12)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.625, abs=1e-12)
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 0.25, 0.25, 0.3], atol=1e-15)
    np.testing.assert_allclose(pro, [0, 0, 0.5, 0.55], atol=1e-15)


def test_a_constant_map_crosses_the_limit_on_its_first_step():
    # a single threshold takes every pixel: (0, 0) -> (1, 1); PRO(0.3) = 0.3, area 0.045, / 0.3 = 0.15
    masks = np.array([[[1, 0, 0, 0]]])
    assert aupro(masks, np.full((1, 1, 4), 0.5)) == pytest.approx(0.15, abs=1e-12)


def test_regions_are_8_connected_within_an_image_and_never_across_images():
    # Image 0: pixels (0,0) and (1,1) touch diagonally, one region of 2 (4-connectivity would make two).
    # Image 1: one pixel at (0,0), the same place as in image 0 but its own region.
    # At t = 0.9 only image 0's (0,0) is caught: PRO = (1/2 + 0) / 2 = 1/4
    # (4-connectivity: (1 + 0 + 0) / 3 = 1/3; regions merged across images: 1/3).
    masks = np.array([[[1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 0, 0]]])
    maps = np.array([[[0.9, 0.1, 0.1], [0.1, 0.5, 0.1]], [[0.5, 0.1, 0.1], [0.1, 0.1, 0.1]]])
    fpr, pro = pro_curve(masks, maps)
    assert (fpr[1], pro[1]) == (0.0, 0.25)
    assert pro[2] == 1.0  # t = 0.5 takes the rest of both regions, no normal pixel yet


def test_perfect_maps_score_one():
    masks, _ = _random_masks_and_maps(0)
    rng = np.random.default_rng(1)
    perfect = np.where(masks, rng.uniform(0.5, 1, masks.shape), rng.uniform(0, 0.5, masks.shape))
    for maps in (masks.astype(float), perfect):
        assert pixel_auroc(masks, maps) == 1.0
        assert aupro(masks, maps) == pytest.approx(1.0, abs=1e-12)
        assert pixel_f1_max(masks, maps) == 1.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_agrees_with_brute_force(seed, fpr_limit):
    masks, maps = _random_masks_and_maps(seed, decimals=1 if seed % 2 else 2)
    assert skimage_label(masks[0], connectivity=2).max() >= 1
    expected = _aupro_by_brute_force(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_does_not_depend_on_the_score_scale_or_dtype():
    masks, maps = _random_masks_and_maps(3, decimals=3)
    reference = aupro(masks, maps)
    assert aupro(masks, 1000 * maps - 7) == pytest.approx(reference, abs=1e-12)
    assert aupro(masks.astype(np.uint8), maps.astype(np.float32)) == pytest.approx(reference, abs=1e-12)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_f1_max, aupro])
def test_pixel_metrics_refuse_bad_inputs(metric):
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 1, 1] = True
    maps = np.random.default_rng(0).random((2, 3, 3))
    with pytest.raises(ValueError, match="differs from maps shape"):
        metric(masks, maps[:, :2])
    with pytest.raises(ValueError, match=r"must be \(N, H, W\)"):
        metric(masks[0], maps[0])
    for bad in (np.nan, np.inf):
        broken = maps.copy()
        broken[1, 2, 2] = bad
        with pytest.raises(ValueError, match="maps contain non-finite"):
            metric(masks, broken)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\].*divide by 255"):
        metric(masks.astype(np.uint8) * 255, maps)
    with pytest.raises(ValueError, match="masks contain non-finite"):
        metric(np.where(masks, np.nan, 0.0), maps)


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_f1_max, aupro])
def test_pixel_metrics_refuse_a_single_class(metric):
    maps = np.random.default_rng(0).random((2, 3, 3))
    with pytest.raises(OneClassError, match="my set has no anomalous pixel in its masks \\(2 images of 3x3\\)"):
        metric(np.zeros((2, 3, 3)), maps, set_name="my set")
    with pytest.raises(OneClassError, match="no normal pixel"):
        metric(np.full((2, 3, 3), 0.7), maps)


def test_f1_max_refuses_bad_inputs():
    with pytest.raises(OneClassError, match="has no anomalous image \\(3 images\\)"):
        f1_max([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(OneClassError, match="no normal image"):
        f1_max([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="differs from scores shape"):
        f1_max([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite"):
        f1_max([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        f1_max([0, 2], [0.1, 0.2])


@pytest.mark.parametrize("fpr_limit", [0, -0.1, 1.5])
def test_aupro_refuses_an_fpr_limit_outside_0_1(fpr_limit):
    masks = np.array([[[1, 0, 0, 0]]])
    with pytest.raises(ValueError, match="fpr_limit must be in"):
        aupro(masks, np.ones((1, 1, 4)), fpr_limit=fpr_limit)
