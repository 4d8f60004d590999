"""PatchCore's parts against brute force and hand-computed cases, its behaviour on planted defects, and (slow)
the method on the real MVTec AD bottle images."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from detectors import FeatureCache, PatchCore, load_detector
from detectors import patchcore
from detectors.banked import BANK_FILE
from detectors.maps import MAP_SIGMA, anomaly_maps
from detectors.patchcore import (cached_coreset, coreset_projection, greedy_coreset,
                                 greedy_k_center, nearest_neighbours, patch_features, reweighted_scores)

SIDE = 64


# --- greedy k-center coreset -------------------------------------------------------------------------------

def brute_force_k_center(points: np.ndarray, size: int, start: int) -> list[int]:
    """The rule itself, in float64 with plain differences and no pruning: `start`, then repeatedly the first
    not-yet-chosen row whose distance to its nearest chosen row is the largest."""
    points = np.asarray(points, dtype=np.float64)
    chosen = [start]
    nearest = np.linalg.norm(points - points[start], axis=1)
    while len(chosen) < size:
        candidates = nearest.copy()
        candidates[chosen] = -np.inf
        index = int(np.argmax(candidates))  # the first of tied rows
        chosen.append(index)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[index], axis=1))
    return chosen


def _blobs(rng, n, dim, centres=12, spread=0.05):
    """Clustered points, where the triangle-inequality pruning skips most rows."""
    middles = rng.normal(0, 1, (centres, dim))
    return (middles[rng.integers(centres, size=n)] + rng.normal(0, spread, (n, dim))).astype(np.float32)


@pytest.mark.parametrize("case", ["gaussian", "blobs", "high-dim"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_k_center_is_the_brute_force_rule(case, seed):
    rng = np.random.default_rng(seed)
    points = {"gaussian": lambda: rng.normal(0, 1, (400, 8)).astype(np.float32),
              "blobs": lambda: _blobs(rng, 1500, 16),
              "high-dim": lambda: rng.normal(0, 1, (300, 160)).astype(np.float32)}[case]()
    start = int(rng.integers(len(points)))
    size = len(points) // 5
    threads = torch.get_num_threads()
    chosen = greedy_k_center(torch.from_numpy(points), size, start)
    assert torch.get_num_threads() == threads  # one thread inside, set back after
    assert chosen.dtype == np.int64 and chosen.shape == (size,)
    assert chosen.tolist() == brute_force_k_center(points, size, start)


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_k_center_with_ties_and_duplicates(seed):
    # Small integer coordinates: squared distances are exact in float32, so ties are real ties (the first row
    # wins), and 27 distinct points among 200 rows: past 27 centres every remaining row is at distance 0
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 3, (200, 3)).astype(np.float32)
    assert len(np.unique(points, axis=0)) == 27
    for size in (5, 27, 60, 200):
        chosen = greedy_k_center(torch.from_numpy(points), size, 7)
        assert chosen.tolist() == brute_force_k_center(points, size, 7)
        assert len(set(chosen.tolist())) == size  # never the same row twice
    first27 = greedy_k_center(torch.from_numpy(points), 27, 7)
    assert len(np.unique(points[first27], axis=0)) == 27  # every distinct point before any duplicate


def test_greedy_k_center_refuses_impossible_sizes():
    points = torch.zeros((4, 2))
    for size in (0, 5):
        with pytest.raises(ValueError, match="coreset of"):
            greedy_k_center(points, size, 0)


def test_greedy_coreset_is_seeded_and_projects_wide_features():
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (500, 300)).astype(np.float32)
    first = greedy_coreset(features, 50, seed=3)
    np.testing.assert_array_equal(greedy_coreset(features, 50, seed=3), first)
    other = greedy_coreset(features, 50, seed=4)
    assert other[0] != first[0]  # another seed, another random start
    projected, start = coreset_projection(features, 3)
    assert projected.shape == (500, patchcore.PROJECTION_DIM) and start == first[0]
    np.testing.assert_array_equal(greedy_k_center(projected, 50, start), first)
    # Gaussian random projection: distances kept within a few tens of percent (Johnson-Lindenstrauss; at 128
    # dimensions the ratio's standard deviation is about 1/sqrt(256) = 6%)
    pairs = rng.integers(500, size=(200, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    ratio = (np.linalg.norm(projected.numpy()[pairs[:, 0]] - projected.numpy()[pairs[:, 1]], axis=1)
             / np.linalg.norm(features[pairs[:, 0]] - features[pairs[:, 1]], axis=1))
    assert 0.97 < np.median(ratio) < 1.03 and ratio.min() > 0.7 and ratio.max() < 1.3
    narrow = features[:, :100]
    points, _ = coreset_projection(narrow, 3)
    np.testing.assert_array_equal(points.numpy(), narrow)  # at most 128 dimensions: used as they are



def test_cached_coreset_is_kept_by_content_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    features = np.random.default_rng(1).normal(0, 1, (400, 200)).astype(np.float32)
    first = cached_coreset(features, 40, 2, tmp_path)
    np.testing.assert_array_equal(first, greedy_coreset(features, 40, 2))
    [entry] = tmp_path.glob("*.npy")
    assert not list(tmp_path.glob("*.tmp"))
    chosen = []
    original = patchcore.greedy_coreset
    monkeypatch.setattr(patchcore, "greedy_coreset", lambda *args: chosen.append(args) or original(*args))
    np.testing.assert_array_equal(cached_coreset(features, 40, 2, tmp_path), first)
    assert chosen == []  # read back, not chosen again
    cached_coreset(features, 40, 3, tmp_path)
    cached_coreset(features, 41, 2, tmp_path)
    changed = features.copy()
    changed[0, 0] += 1
    cached_coreset(changed, 40, 2, tmp_path)
    assert len(chosen) == 3 and len(list(tmp_path.glob("*.npy"))) == 4  # seed, size and content key it
    for damage in (b"not an array", np.save):
        if damage is np.save:
            np.save(entry, np.full(40, 400, dtype=np.int64))  # a valid file, but indices out of range
        else:
            entry.write_bytes(damage)
        with pytest.warns(UserWarning, match="damaged coreset cache entry"):
            np.testing.assert_array_equal(cached_coreset(features, 40, 2, tmp_path), first)
        np.testing.assert_array_equal(np.load(entry), first)  # rewritten
    np.testing.assert_array_equal(cached_coreset(features, 40, 2, None), first)  # no directory: chosen, not kept
    assert not (tmp_path / "None").exists()


def test_fit_reuses_the_coreset_a_feature_directory_keeps(tmp_path, monkeypatch):
    cache = FeatureCache(directory=tmp_path)
    first = PatchCore(backbone="mobilenet_v2", coreset_ratio=0.25, features=cache).fit(_normals(4, 1))
    assert len(list((tmp_path / "coresets").glob("*.npy"))) == 1
    monkeypatch.setattr(patchcore, "greedy_coreset", lambda *args: pytest.fail("the coreset was chosen again"))
    again = PatchCore(backbone="mobilenet_v2", coreset_ratio=0.25, k=2, features=FeatureCache(directory=tmp_path))
    np.testing.assert_array_equal(again.fit(_normals(4, 1)).bank_, first.bank_)

# --- nearest neighbours --------------------------------------------------------------------------------------

def brute_force_neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int):
    distances = torch.cdist(queries.double(), bank.double(), compute_mode="donot_use_mm_for_euclid_dist")
    distances, indices = distances.sort(dim=1, stable=True)
    return distances[:, :k], indices[:, :k]


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_neighbours_is_brute_force_in_any_chunking(k, monkeypatch):
    rng = np.random.default_rng(k)
    bank = torch.from_numpy(rng.normal(0, 1, (53, 12)).astype(np.float32))
    queries = torch.from_numpy(rng.normal(0, 1, (30, 12)).astype(np.float32))
    expected_distances, expected_indices = brute_force_neighbours(bank, queries, k)
    whole = nearest_neighbours(bank, queries, k)  # one block: the defaults exceed both sizes
    results = [whole]
    for query_chunk, bank_chunk in [(7, 5), (4, 2), (1, 1), (30, 53)]:  # bank chunks smaller than k included
        monkeypatch.setattr(patchcore, "QUERY_CHUNK", query_chunk)
        monkeypatch.setattr(patchcore, "BANK_CHUNK", bank_chunk)
        results.append(nearest_neighbours(bank, queries, k))
    for distances, indices in results:
        assert distances.dtype == torch.float32 and indices.dtype == torch.int64
        assert distances.shape == indices.shape == (30, k)
        np.testing.assert_array_equal(indices.numpy(), expected_indices.numpy())
        np.testing.assert_allclose(distances.numpy(), expected_distances.numpy(), rtol=1e-5)
        # bit for bit whatever the chunks: a patch's score depends on nothing but the patch and the bank
        np.testing.assert_array_equal(distances.numpy(), whole[0].numpy())
    alone = nearest_neighbours(bank, queries[11:12], k)
    np.testing.assert_array_equal(alone[0].numpy(), whole[0][11:12].numpy())


def test_nearest_neighbours_shares_blocks_among_threads_with_the_same_result():
    rng = np.random.default_rng(5)
    bank = torch.from_numpy(rng.normal(0, 1, (3000, 20)).astype(np.float32))
    queries = torch.from_numpy(rng.normal(0, 1, (2500, 20)).astype(np.float32))
    threads = torch.get_num_threads()
    try:
        results = []
        for workers in (1, 3):  # one block after another; three Python threads sharing 3 blocks of 834
            torch.set_num_threads(workers)
            results.append(nearest_neighbours(bank, queries, 2))
            assert torch.get_num_threads() == workers  # set back after the search, which runs torch on one
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(results[0][1].numpy(), results[1][1].numpy())
    np.testing.assert_array_equal(results[0][0].numpy(), results[1][0].numpy())
    empty = nearest_neighbours(bank, queries[:0], 2)
    assert empty[0].shape == empty[1].shape == (0, 2)


def test_nearest_neighbours_needs_k_bank_rows():
    with pytest.raises(ValueError, match="k=3 .* at least 3 bank patches, got 2"):
        nearest_neighbours(torch.zeros((2, 4)), torch.zeros((1, 4)), 3)


# --- eq. 7 reweighting ---------------------------------------------------------------------------------------

def test_reweighted_scores_by_hand():
    # One-dimensional bank 0, 1, 3. Image 0 has patches 0.2 (nearest bank patch 0, d = 0.2) and 5 (nearest 3,
    # d = 2): x* = 5, m* = 3, and with b = 2 the bank patches nearest to m* are 3 (d 0) and 1 (d 2), at
    # distances 2 and 4 from x*. Image 1: patches 1.5 (nearest 1, d = 0.5) and 0.1 (nearest 0, d = 0.1):
    # x* = 1.5, m* = 1, N_2(1) = {1, 0} (d 0 and 1; 3 is at 2), at distances 0.5 and 1.5 from x*.
    bank = torch.tensor([[0.0], [1.0], [3.0]])
    patches = torch.tensor([[[0.2], [5.0]], [[1.5], [0.1]]])
    distances, indices = nearest_neighbours(bank, patches.reshape(-1, 1), 1)
    patch_scores = distances[:, 0].reshape(2, 2)
    nearest = indices[:, 0].reshape(2, 2)
    np.testing.assert_array_equal(nearest.numpy(), [[0, 2], [1, 0]])
    scores = reweighted_scores(bank, patches, patch_scores, nearest, neighbours=2)
    expected = [2.0 * (1 - math.exp(2) / (math.exp(2) + math.exp(4))),
                0.5 * (1 - math.exp(0.5) / (math.exp(0.5) + math.exp(1.5)))]
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    # b = 3: every bank patch is in N_b(m*); for image 0 the third is 0, at distance 5 from x*
    scores = reweighted_scores(bank, patches, patch_scores, nearest, neighbours=3)
    np.testing.assert_allclose(scores[0], 2.0 * (1 - math.exp(2) / (math.exp(2) + math.exp(4) + math.exp(5))),
                               rtol=1e-6)


# --- patch features ------------------------------------------------------------------------------------------

def test_neighbourhood_average_leaves_padding_out():
    grid = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)  # 0 1 2 / 3 4 5 / 6 7 8
    features = patch_features([grid], neighbourhood=3, dim=None)
    assert features.shape == (1, 3, 3, 1) and features.dtype == np.float32
    assert features[0, 0, 0, 0] == (0 + 1 + 3 + 4) / 4  # a corner: 4 cells, not 9 with zeros
    assert features[0, 0, 1, 0] == (0 + 1 + 2 + 3 + 4 + 5) / 6  # an edge: 6 cells
    assert features[0, 1, 1, 0] == 4.0  # the centre: all 9
    np.testing.assert_array_equal(patch_features([grid], neighbourhood=1, dim=None)[..., 0], grid[:, 0])


def test_coarse_map_is_upsampled_to_the_finer_grid():
    fine = np.zeros((1, 2, 4, 4), dtype=np.float32)
    fine[0, 1] = 7
    coarse = np.array([[[[0, 4], [8, 12]]]], dtype=np.float32)
    # order: where the zeros, the sevens and the upsampled coarse map land (channels follow the layers' order)
    for maps, order in (([fine, coarse], [0, 1, 2]), ([coarse, fine], [1, 2, 0])):
        features = patch_features(maps, neighbourhood=1, dim=None)
        assert features.shape == (1, 4, 4, 3)
        upsampled = features[0, :, :, order[2]]
        # bilinear, half-pixel centres: output i samples the input at (i + 0.5) / 2 - 0.5, clamped at the edges:
        # 0, 0.25, 0.75, 1 along each axis, so row 0 is 0, 1, 3, 4 and column 0 is 0, 2, 6, 8
        np.testing.assert_allclose(upsampled[0], [0, 1, 3, 4])
        np.testing.assert_allclose(upsampled[:, 0], [0, 2, 6, 8])
        assert upsampled[1, 1] == 3 and upsampled[3, 3] == 12 and upsampled[2, 1] == 7
        np.testing.assert_array_equal(features[0, :, :, order[0]], 0)
        np.testing.assert_array_equal(features[0, :, :, order[1]], 7)


def test_dimension_reduction_averages_channels():
    maps = [np.broadcast_to(np.arange(6, dtype=np.float32)[None, :, None, None], (2, 6, 5, 5)).copy()]
    reduced = patch_features(maps, neighbourhood=3, dim=4)
    assert reduced.shape == (2, 5, 5, 4) and reduced.dtype == np.float32
    # adaptive average pooling of 6 channels into 4 bins: [0, 2), [1, 3), [3, 5), [4, 6)
    np.testing.assert_allclose(reduced[1, 2, 3], [0.5, 1.5, 3.5, 4.5])
    assert patch_features(maps, neighbourhood=3, dim=6).shape == (2, 5, 5, 6)  # dim >= D: untouched
    assert patch_features(maps, neighbourhood=3, dim=99).shape == (2, 5, 5, 6)


# --- the detector on planted defects ------------------------------------------------------------------------

def _normals(n, seed):
    """Smooth horizontal ramps with mild noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 180, SIDE)[None, :, None]
    return [np.clip(ramp + rng.normal(0, 4, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


DEFECT_BOXES = [(8, 24, 40, 56), (40, 56, 8, 24), (24, 40, 24, 40), (44, 60, 44, 60)]  # top, bottom, left, right


def _with_defects(images):
    broken = []
    for image, (top, bottom, left, right) in zip(images, DEFECT_BOXES):
        image = image.copy()
        image[top:bottom, left:right] = [240, 30, 30]  # a red square
        broken.append(image)
    return broken


@pytest.fixture(scope="module")
def shared_features():
    return FeatureCache()


@pytest.fixture(scope="module")
def fitted(shared_features):
    return PatchCore(backbone="mobilenet_v2", coreset_ratio=0.25, features=shared_features).fit(_normals(6, 1))


def test_planted_defects_score_higher_and_peak_inside_the_defect(fitted):
    normals, defects = _normals(4, 2), _with_defects(_normals(4, 3))
    scores, maps = fitted.scores_and_maps(normals + defects)
    assert scores[4:].min() > scores[:4].max()
    assert maps.shape == (8, SIDE, SIDE) and maps.dtype == np.float32
    np.testing.assert_array_equal(scores, fitted.anomaly_scores(normals + defects))
    for anomaly_map, (top, bottom, left, right) in zip(maps[4:], DEFECT_BOXES):
        row, column = np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)
        assert top <= row < bottom and left <= column < right
    assert maps[4:].max() > maps[:4].max()


def test_reweighting_keeps_the_ranking_and_shrinks_scores(shared_features):
    detector = PatchCore(backbone="mobilenet_v2", coreset_ratio=0.25, reweight=True, k=2,
                         features=shared_features).fit(_normals(6, 1))
    plain = PatchCore(backbone="mobilenet_v2", coreset_ratio=0.25, k=2, features=shared_features).fit(_normals(6, 1))
    images = _normals(4, 2) + _with_defects(_normals(4, 3))
    scores, reference = detector.anomaly_scores(images), plain.anomaly_scores(images)
    assert scores[4:].min() > scores[:4].max()
    assert (0 < scores).all() and (scores < reference).all()  # eq. 7 scales by a weight in (0, 1)


# --- anomaly maps --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size", [(256, 256), (900, 900), (300, 200)])
def test_smoothing_before_the_last_resize_matches_smoothing_at_image_size(image_size):
    """The maps smooth with sigma 4 px at the network input S, then resize to H x W; the reference resizes
    first and smooths at the image with sigma 4 H / S by 4 W / S. Both approximate the same continuous
    operation, the Gaussian of the bilinear patch-score surface; the gap is the bilinear interpolation error of
    the smoothed surface at S, at most h^2 / 8 (|f_yy| + |f_xx|) with h = 1 px, and for f = G * g
    |f_xx| <= ||G''||_1 max|g - c| = 4 / (sigma^2 sqrt(2 pi e)) * range / 2 = 0.030 range at sigma = 4: so at
    most 0.76% of the patch scores' range. White-noise patch scores are the worst case for curvature. The
    tolerance, 1% of the range, leaves a margin for the discrete Gaussians; smoothing with 4 px at the image
    instead, the mistake the module docstring warns about, is off by 4.3% at 256 px and 33% at 900 (measured:
    the maps themselves are within 0.36-0.42%)."""
    height, width = image_size
    rng = np.random.default_rng(height + width)
    scores = torch.from_numpy(rng.random((2, 28, 28)).astype(np.float32))
    maps = anomaly_maps(scores, 224, image_size)
    assert maps.shape == (2, height, width) and maps.dtype == np.float32
    upsampled = F.interpolate(scores[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
    upsampled = upsampled.double().numpy()
    sigma = (0, MAP_SIGMA * height / 224, MAP_SIGMA * width / 224)
    reference = gaussian_filter(upsampled, sigma=sigma, mode="reflect", truncate=4.0)
    spread = float(scores.max() - scores.min())
    assert np.abs(maps - reference).max() <= 0.01 * spread
    unscaled = gaussian_filter(upsampled, sigma=(0, MAP_SIGMA, MAP_SIGMA), mode="reflect",
                               truncate=4.0)
    assert np.abs(unscaled - reference).max() > 0.03 * spread  # the tolerance does tell the two apart


# --- saving, loading, refusing -------------------------------------------------------------------------------

def test_saved_and_loaded_it_scores_and_maps_bit_for_bit(shared_features, tmp_path):
    detector = PatchCore(backbone="mobilenet_v2", coreset_ratio=0.25, k=3, reweight=True, neighbourhood=5, dim=64,
                         seed=4, features=shared_features).fit(_normals(6, 1))
    assert detector.bank_.shape[1] == 64
    detector.save(tmp_path / "saved")
    loaded = load_detector(tmp_path / "saved", features=FeatureCache())
    assert isinstance(loaded, PatchCore) and loaded.get_params() == detector.get_params()
    np.testing.assert_array_equal(loaded.bank_, detector.bank_)
    images = _normals(2, 8) + _with_defects(_normals(2, 9))
    first, second = detector.scores_and_maps(images), loaded.scores_and_maps(images)
    np.testing.assert_array_equal(second[0], first[0])
    np.testing.assert_array_equal(second[1], first[1])


@pytest.mark.parametrize("corrupt, problem", [
    (lambda bank: bank.astype(np.float64), "float64 array of shape"),
    (lambda bank: np.where(np.arange(len(bank))[:, None] == 3, np.nan, bank).astype(np.float32), "non-finite"),
    (lambda bank: bank[:2], "bank holds 2 patches, fewer than k=3"),
    (lambda bank: bank[:, 0], "not \\(patches, D\\) float32"),
    (lambda bank: np.concatenate([bank, bank], axis=1), "more than dim=64"),
])
def test_a_corrupt_bank_is_refused_naming_the_problem(corrupt, problem, tmp_path):
    detector = PatchCore(backbone="mobilenet_v2", k=3, dim=64)
    detector.bank_ = np.random.default_rng(0).normal(0, 1, (10, 64)).astype(np.float32)
    detector.save(tmp_path)
    np.save(tmp_path / BANK_FILE, corrupt(np.load(tmp_path / BANK_FILE)))
    with pytest.raises(ValueError, match=problem):
        PatchCore.load(tmp_path)


@pytest.mark.parametrize("params, problem", [
    ({"backbone": "no_such_net"}, "unknown backbone 'no_such_net'"),
    ({"backbone": 3}, "backbone must be a backbone name"),
    ({"weights": "none"}, "takes weights 'imagenet' or 'random', not 'none'"),
    ({"layers": ["early", "deepest"]}, "layers must be distinct layers of 'efficientnet_lite0'"),
    ({"layers": ["mid", "mid"]}, "layers must be distinct"),
    ({"layers": []}, "non-empty list"),
    ({"layers": "mid"}, "non-empty list"),
    ({"backbone": "pixels_16", "weights": "none"}, "layers must be distinct layers of 'pixels_16'"),
    ({"coreset_ratio": 0}, "coreset_ratio must be a number in \\(0, 1\\]"),
    ({"coreset_ratio": 1.5}, "coreset_ratio"),
    ({"coreset_ratio": True}, "coreset_ratio"),
    ({"coreset_ratio": "0.1"}, "coreset_ratio"),
    ({"neighbourhood": 2}, "neighbourhood must be an odd positive integer"),
    ({"neighbourhood": 0}, "neighbourhood"),
    ({"k": 0}, "k must be a positive integer"),
    ({"dim": 0}, "dim must be None or a positive integer"),
    ({"reweight": 1}, "reweight must be True or False"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_hyper_parameters_are_refused_before_any_feature_work(params, problem, monkeypatch):
    def no_features(*args, **kwargs):
        raise AssertionError("feature work started before the hyper-parameters were checked")

    monkeypatch.setattr("detectors.features.create_backbone", no_features)
    monkeypatch.setattr(FeatureCache, "feature_maps", no_features)
    with pytest.raises(ValueError, match=problem):
        PatchCore(**params, features=FeatureCache())


def test_bad_saved_hyper_parameters_are_refused(tmp_path):
    detector = PatchCore(backbone="mobilenet_v2")
    detector.bank_ = np.zeros((4, 128), dtype=np.float32)
    detector.save(tmp_path)
    params = (tmp_path / "params.json").read_text().replace('"neighbourhood": 3', '"neighbourhood": 4')
    (tmp_path / "params.json").write_text(params)
    with pytest.raises(ValueError, match="neighbourhood must be an odd positive integer"):
        load_detector(tmp_path)


# --- the shared feature cache --------------------------------------------------------------------------------

def test_a_shared_cache_runs_the_backbone_once_per_image():
    cache = FeatureCache()
    network = cache.backbone("mobilenet_v2", "imagenet")
    seen = []
    forward = network.feature_maps

    def counted(batch):
        seen.append(len(batch))
        return forward(batch)

    network.feature_maps = counted
    detector = PatchCore(backbone="mobilenet_v2", coreset_ratio=0.25, features=cache).fit(_normals(4, 1))
    assert sum(seen) == 4
    images = _normals(3, 2) + _with_defects(_normals(2, 3))
    scores, maps = detector.scores_and_maps(images)
    assert sum(seen) == 9
    np.testing.assert_array_equal(detector.anomaly_scores(images), scores)
    np.testing.assert_array_equal(detector.anomaly_maps(images), maps)
    other = PatchCore(backbone="mobilenet_v2", coreset_ratio=0.5, neighbourhood=1, features=cache).fit(_normals(4, 1))
    other.anomaly_scores(images)
    assert sum(seen) == 9  # every image's maps came from the one pass


# --- real data -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_defaults_on_real_mvtec_bottle(mvtec_root):
    """PatchCore's defaults (efficientnet_lite0, ImageNet weights, early + mid, 10% coreset) fitted on all 209
    bottle training images and scored on all 83 test images (masks resized to the images, here both 256 px).
    The paper reports 100.0 image AUROC on bottle with WRN-50 (pixel AUROC 98.1 and PRO 93.4 over MVTec AD);
    measured here: image AUROC 1.0, pixel AUROC 0.980, AUPRO 0.918, in 35-45 s on 2 cores."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from detectors import load_rgb
    from selection.localisation import aupro, pixel_auroc
    from selection.tasks import load_task

    task = load_task("mvtec/bottle", mvtec_root)
    train = [load_rgb(path) for path in task.support]
    test = [load_rgb(item.path) for item in task.validation]
    labels = np.array([item.label for item in task.validation])
    height, width = test[0].shape[:2]

    def mask(item):
        if item.mask_path is None:
            return np.zeros((height, width), dtype=bool)
        with Image.open(item.mask_path) as image:
            return np.asarray(image.convert("L").resize((width, height), Image.NEAREST)) >= 128

    masks = np.stack([mask(item) for item in task.validation])
    started = time.perf_counter()
    detector = PatchCore().fit(train)
    scores, maps = detector.scores_and_maps(test)
    seconds = time.perf_counter() - started
    image_auroc, pixel, pro = roc_auc_score(labels, scores), pixel_auroc(masks, maps), aupro(masks, maps)
    print(f"bottle: image AUROC {image_auroc:.4f}, pixel AUROC {pixel:.4f}, AUPRO {pro:.4f}, "
          f"bank {detector.bank_.shape}, fit + score {seconds:.1f} s")
    assert len(train) == 209 and len(test) == 83 and labels.sum() == 63
    assert image_auroc >= 0.99
    assert pixel >= 0.95
    assert pro >= 0.85
