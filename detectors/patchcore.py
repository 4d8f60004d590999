"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distances of locally aggregated patch features to a
coreset of the normal images' patches; the image score is the largest patch score, the anomaly map the patch
scores upsampled to the image and smoothed.

Patch features: the feature maps of two mid-level layers of a frozen backbone ("early" at stride 8 and "mid"
at stride 16 by default, the paper's layer2 + layer3), each averaged over a p x p neighbourhood (stride 1,
zero padding left out of the average), the coarser map bilinearly upsampled to the finer grid and the two
concatenated per position; optionally each vector is reduced to at most `dim` channels by adaptive average
pooling over channels. The memory bank is every normal patch vector, subsampled by the greedy k-center
coreset: start from a random patch (seeded) and repeatedly add the patch farthest from those chosen, with
distances on a seeded Gaussian random projection to 128 dimensions (none when the features have at most 128);
the bank keeps the chosen patches at full dimension. The selection is the brute-force rule's (distances as
plain float32 differences; ties go to the first patch, and no patch is chosen twice, even among duplicates)
but prunes with the triangle inequality: a patch whose nearest chosen centre a has d(a, new centre) >=
2 d(patch, a) cannot come closer to the new centre, so only the others are measured. Bottle's 163,856
training patches give a 16,386-patch coreset in about 12 s on one core (benchmarks/patchcore_speed.py).
A FeatureCache with a directory also keeps each coreset's indices there (`coresets/`, keyed by the patches'
content, the size and the seed), so fitting again on the same patches skips it.

Scoring: a patch's score is the mean L2 distance to its k nearest bank patches (k = 1: the paper's nearest
neighbour distance); the image score is the largest patch score, scaled when `reweight` by the paper's eq. 7:
1 - exp(d(x*, m*)) / sum over m in N_b(m*) of exp(d(x*, m)), with x* the highest-scoring patch, m* its
nearest bank patch and N_b(m*) the b = 9 bank patches nearest to m* (m* itself among them, as anomalib has it).

Anomaly map (detectors/maps.py, shared with other detectors that localise): the patch scores on the feature
grid, bilinearly upsampled to the backbone's input (S x S), Gaussian-smoothed with sigma = 4 px there, then
bilinearly resized to the image (H x W). Sigma is the paper's 4 px at its 224 px network input: half a
stride-8 feature cell, the same whatever the image's size. At the image's own resolution that is sigma = 4 H /
S px vertically and 4 W / S horizontally (16 px on a 900 px MVTec bottle at S = 224); 4 px at the image
resolution would smooth a 900 px image four times less, relative to the object and to the feature grid, than
the paper does. Smoothing before the last resize is the same linear operation up to interpolation error
(checked in the tests), at a fraction of the cost on large images.

Nearest-neighbour engine: exact, exhaustive torch search in blocks of at most 1,024 queries x 2,048 bank
patches (8 MiB of distances: twice as fast here as 1,024 x 8,192; bank norms precomputed, one addmm per block,
a running top-k), then the distances of the chosen neighbours recomputed as plain differences, so that a score
does not depend on the blocks or on the other images in the call. Which patch is nearest is decided on the
float32 expansion |b|^2 - 2 q.b: among near-ties it may pick one a hair farther (in the benchmark, at most 3
of 3,136 queries, by at most 2e-4 relative). No queries x bank matrix is ever formed: memory stays bounded
(under 200 MiB above the bank at 10^6 patches). Chosen on measurement: see `ENGINE_NOTE`.

Threads: torch's intra-op threads meet at a barrier after every operation, and on a machine whose cores
other processes also use (this project's 2-core machines, parallel search workers) a barrier waits for a
descheduled thread: in the benchmark, with another process busy, the coreset ran 3 to 80 times and the
search 5 times slower on torch's 2 threads than on one. So the coreset (thousands of small steps: two
threads gained at most 1.5x in any run measured here) runs torch on one thread, and the search shares its
query blocks out among torch.get_num_threads() Python threads, each running torch on one thread: they never
wait for each other, and can still use every core of an idle machine. The thread setting is process-wide
while they run, and set back after.

Defaults: efficientnet_lite0 (on MVTec bottle, fitted on all 209 training images and scored on the 83 test
images, every offline backbone reaches image AUROC 1.0; pixel AUROC / AUPRO: mobilenet_v2 0.979 / 0.911,
efficientnet_lite0 0.980 / 0.918, lite1 0.981 / 0.920 and lite2 0.981 / 0.929, the last two at larger inputs,
240 and 260 px; the slow test checks lite0), layers early + mid (the paper's strides 8 and 16), coreset_ratio
0.1 (anomalib's default; the paper uses 1-10%), neighbourhood 3 and k 1 (the paper's), dim None (no
reduction: the offline backbones give 168 channels or fewer, well under the paper's 1,024), reweight False
(the plain maximum, which the maps share), seed 0.
"""

import contextlib
import hashlib
import math
import numbers
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import NotFittedError

from detectors.backbones import backbone_layers, backbone_weights
from detectors.banked import load_banked, save_banked
from detectors.features import FeatureCache, ScoresThroughFeatures
from detectors.interface import register_format
from detectors.maps import ScoresAndMaps, anomaly_maps, check_one_size

_FORMAT = "patchcore/1"
PROJECTION_DIM = 128
REWEIGHT_NEIGHBOURS = 9  # b in the paper's eq. 7
IMAGE_BATCH = 32  # images whose patches are scored together
QUERY_CHUNK = 1024  # query patches x bank patches per distance block: 1024 x 2048 float32 = 8 MiB, which
BANK_CHUNK = 2048  # searches twice as fast as 1024 x 8192 here (benchmarks/patchcore_speed.py)
ENGINE_NOTE = (
    "exact chunked torch search, chosen on benchmarks/patchcore_speed.py (3,136 query patches of 4 bottle test "
    "images, D = 152, banks of 1e4/1e5/1e6 patches, 2 cores with another process busy): 0.026/0.20/2.2 s per "
    "image; faiss IndexFlatL2 on its default 2 threads 0.76/2.3/2.0x torch's time and on one thread "
    "0.62/0.81/0.66x, copying the bank (599 MiB at 1e6); scikit-learn brute force 2.0-2.5x, kd-tree 4-6x, "
    "ball-tree 8x. faiss on one thread was at most 1.6x faster, not enough for a new dependency."
)


class PatchCore(ScoresThroughFeatures, ScoresAndMaps):
    """PatchCore anomaly detector with anomaly maps (see the module docstring for the method and defaults).

    `features` is an optional shared FeatureCache (as for DeepKNN): detectors that share it compute each
    image's feature maps once. It is not a hyper-parameter.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers=("early", "mid"), coreset_ratio: float = 0.1, neighbourhood: int = 3, k: int = 1,
                 dim: int | None = None, reweight: bool = False, seed: int = 0,
                 features: FeatureCache | None = None):
        _check_params(backbone, weights, layers, coreset_ratio, neighbourhood, k, dim, reweight, seed)
        self.backbone = backbone
        self.weights = weights
        self.layers = list(layers)
        self.coreset_ratio = coreset_ratio
        self.neighbourhood = neighbourhood
        self.k = k
        self.dim = dim
        self.reweight = reweight
        self.seed = seed
        self.features = features

    def get_params(self, deep: bool = True) -> dict:
        return {"backbone": self.backbone, "weights": self.weights, "layers": list(self.layers),
                "coreset_ratio": self.coreset_ratio, "neighbourhood": self.neighbourhood, "k": self.k,
                "dim": self.dim, "reweight": self.reweight, "seed": self.seed}

    @property
    def backbone_keys(self) -> list[tuple[str, str]]:
        return [(self.backbone, self.weights)]

    def __repr__(self) -> str:
        return "PatchCore(" + ", ".join(f"{name}={value!r}" for name, value in self.get_params().items()) + ")"

    def fit(self, normal_images) -> "PatchCore":
        """Keep the coreset of the patch features of `normal_images` (uint8 HxWx3 arrays) as `bank_`."""
        images = list(normal_images)
        if not images:
            raise ValueError("no normal images to fit PatchCore on")
        patches = np.concatenate([grid.reshape(-1, grid.shape[-1]) for grid in self._patch_grids(images)])
        if len(patches) < self.k:
            raise ValueError(f"k={self.k} nearest neighbours need at least {self.k} normal patches, got {len(patches)}")
        size = min(len(patches), max(self.k, math.ceil(self.coreset_ratio * len(patches))))
        if size < len(patches):
            directory = None if self.features is None or self.features.directory is None \
                else self.features.directory / "coresets"
            patches = patches[cached_coreset(patches, size, self.seed, directory)]
        self.bank_ = np.ascontiguousarray(patches, dtype=np.float32)
        return self

    def scores_and_maps(self, images, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The image scores (N,) and, if `maps`, the anomaly maps (N, H, W) float32, from one search."""
        if not hasattr(self, "bank_"):
            raise NotFittedError("this PatchCore is not fitted yet: call fit(normal_images) first")
        images = list(images)
        if maps:
            check_one_size(images)
        bank = torch.from_numpy(self.bank_)
        bank_norms = _squared_norms(bank)
        scores, all_maps = [], []
        for start in range(0, len(images), IMAGE_BATCH):
            batch = images[start:start + IMAGE_BATCH]
            grids = self._patch_grids(batch)
            n, h, w, d = grids.shape
            if d != bank.shape[1]:
                raise ValueError(f"patch features have {d} dimensions, the bank {bank.shape[1]}: "
                                 "the detector was fitted with other features")
            queries = torch.from_numpy(grids.reshape(-1, d))
            distances, indices = nearest_neighbours(bank, queries, self.k, bank_norms)
            patch_scores = distances.mean(dim=1).reshape(n, h * w)
            if self.reweight:
                scores.append(reweighted_scores(bank, queries.reshape(n, h * w, d), patch_scores,
                                                indices[:, 0].reshape(n, h * w), bank_norms))
            else:
                scores.append(patch_scores.amax(dim=1).double().numpy())
            if maps:
                size = self._input_size()
                all_maps.append(anomaly_maps(patch_scores.reshape(n, h, w), size, batch[0].shape[:2]))
        return np.concatenate(scores), (np.concatenate(all_maps) if maps else None)

    def _patch_grids(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, h, w, D) float32 patch features of `images`, computed IMAGE_BATCH images at a time."""
        cache = self._cache()
        grids = []
        for start in range(0, len(images), IMAGE_BATCH):
            maps = cache.feature_maps(self.backbone, self.weights, self.layers, images[start:start + IMAGE_BATCH])
            grids.append(patch_features([maps[layer] for layer in self.layers], self.neighbourhood, self.dim))
        self._forget_unshared()
        return np.concatenate(grids)

    def save(self, directory) -> None:
        """Write the hyper-parameters (params.json) and the memory bank (bank.npy) into `directory`."""
        save_banked(self, directory, _FORMAT)

    @classmethod
    def load(cls, directory, features: FeatureCache | None = None) -> "PatchCore":
        """A detector written by `save`, scoring through `features` if given."""
        detector, bank = load_banked(cls, directory, _FORMAT, features)
        problem = _bank_problem(bank, detector)
        if problem:
            raise ValueError(f"corrupt saved PatchCore in {directory}: {problem}")
        detector.bank_ = bank
        return detector


def _bank_problem(bank: np.ndarray, detector: PatchCore) -> str | None:
    if bank.ndim != 2 or bank.dtype != np.float32 or bank.shape[1] < 1:
        return f"bank is a {bank.dtype} array of shape {bank.shape}, not (patches, D) float32"
    if len(bank) < detector.k:
        return f"bank holds {len(bank)} patches, fewer than k={detector.k}"
    if detector.dim is not None and bank.shape[1] > detector.dim:
        return f"bank has {bank.shape[1]} dimensions, more than dim={detector.dim}"
    if not np.isfinite(bank).all():
        return "bank holds non-finite values"
    return None


def _check_params(backbone, weights, layers, coreset_ratio, neighbourhood, k, dim, reweight, seed) -> None:
    if not isinstance(backbone, str):
        raise ValueError(f"backbone must be a backbone name, got {backbone!r}")
    known_layers, known_weights = backbone_layers(backbone), backbone_weights(backbone)  # unknown name: ValueError
    if weights not in known_weights:
        raise ValueError(f"backbone {backbone!r} takes weights {' or '.join(map(repr, known_weights))}, not {weights!r}")
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    if len(set(layers)) != len(layers) or any(layer not in known_layers for layer in layers):
        raise ValueError(f"layers must be distinct layers of {backbone!r} ({', '.join(known_layers)}), got {layers!r}")
    if (isinstance(coreset_ratio, bool) or not isinstance(coreset_ratio, numbers.Real)
            or not 0 < coreset_ratio <= 1):
        raise ValueError(f"coreset_ratio must be a number in (0, 1], got {coreset_ratio!r}")
    if not _is_int(neighbourhood) or neighbourhood < 1 or neighbourhood % 2 == 0:
        raise ValueError(f"neighbourhood must be an odd positive integer, got {neighbourhood!r}")
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if dim is not None and (not _is_int(dim) or dim < 1):
        raise ValueError(f"dim must be None or a positive integer, got {dim!r}")
    if not isinstance(reweight, bool):
        raise ValueError(f"reweight must be True or False, got {reweight!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def patch_features(maps: list[np.ndarray], neighbourhood: int, dim: int | None) -> np.ndarray:
    """(N, h, w, D) float32 patch features from feature maps [(N, C_i, h_i, w_i)]: each averaged over its
    neighbourhood x neighbourhood window (stride 1; padding not counted), all brought to the finest grid
    (bilinear) and concatenated; reduced to at most `dim` channels by adaptive average pooling."""
    tensors = [torch.from_numpy(np.asarray(m, dtype=np.float32)) for m in maps]
    grid = max((t.shape[-2:] for t in tensors), key=lambda size: size[0] * size[1])
    aggregated = []
    for tensor in tensors:
        if neighbourhood > 1:
            tensor = F.avg_pool2d(tensor, neighbourhood, stride=1, padding=neighbourhood // 2,
                                  count_include_pad=False)
        if tensor.shape[-2:] != grid:
            tensor = F.interpolate(tensor, size=tuple(grid), mode="bilinear", align_corners=False)
        aggregated.append(tensor)
    features = torch.cat(aggregated, dim=1).permute(0, 2, 3, 1)  # (N, h, w, D)
    if dim is not None and features.shape[-1] > dim:
        n, h, w, d = features.shape
        features = F.adaptive_avg_pool1d(features.reshape(-1, 1, d), dim).reshape(n, h, w, dim)
    return np.ascontiguousarray(features.numpy(), dtype=np.float32)


def _squared_norms(rows: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,ij->i", rows, rows)


def coreset_projection(features: np.ndarray, seed: int) -> tuple[torch.Tensor, int]:
    """(the rows of `features` (n, D) as the greedy coreset measures them, the seeded random start): a Gaussian
    random projection to PROJECTION_DIM dimensions, computed in chunks, when D exceeds it; else the rows as
    they are."""
    rng = np.random.default_rng(seed)
    start = int(rng.integers(len(features)))
    rows = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if rows.shape[1] <= PROJECTION_DIM:
        return rows, start
    projection = torch.from_numpy(
        rng.standard_normal((rows.shape[1], PROJECTION_DIM), dtype=np.float32) / np.float32(math.sqrt(PROJECTION_DIM)))
    projected = torch.empty((len(rows), PROJECTION_DIM), dtype=torch.float32)
    for chunk in range(0, len(rows), 65536):
        torch.mm(rows[chunk:chunk + 65536], projection, out=projected[chunk:chunk + 65536])
    return projected, start


def greedy_coreset(features: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of `size` rows of `features` (n, D) chosen by the greedy k-center rule on the seeded random
    projection (see `coreset_projection`), in the order chosen."""
    points, start = coreset_projection(features, seed)
    return greedy_k_center(points, size, start)


def cached_coreset(features: np.ndarray, size: int, seed: int, directory: Path | None) -> np.ndarray:
    """`greedy_coreset(features, size, seed)`, kept in `directory` (None: not kept) as `<digest>.npy`, keyed by
    the content of `features` with `size`, `seed` and the projection, so that a detector fitted again on the
    same patches (a re-run, a search trial that changes only k or reweighting) skips the coreset, which costs
    several times the forward passes. An entry that is not a valid index array is chosen again and rewritten,
    with a warning."""
    if directory is None:
        return greedy_coreset(features, size, seed)
    features = np.ascontiguousarray(features, dtype=np.float32)
    digest = hashlib.sha256(f"greedy-k-center/1|{PROJECTION_DIM}|{seed}|{size}|{features.shape}".encode())
    digest.update(memoryview(features).cast("B"))
    path = directory / f"{digest.hexdigest()[:32]}.npy"
    if path.is_file():
        try:
            chosen = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            chosen = None
        if (chosen is not None and chosen.shape == (size,) and chosen.dtype == np.int64
                and 0 <= chosen.min() and chosen.max() < len(features) and len(np.unique(chosen)) == size):
            return chosen
        warnings.warn(f"damaged coreset cache entry {path}: choosing the coreset again", stacklevel=2)
    chosen = greedy_coreset(features, size, seed)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as file:
        np.save(file, chosen)
    os.replace(file.name, path)
    return chosen


def greedy_k_center(points: torch.Tensor, size: int, start: int) -> np.ndarray:
    """Indices of `size` distinct rows of `points` (n, d): `start`, then repeatedly the row farthest (L2) from
    those chosen (the first such row on ties; once every row left is at distance 0, the first row not chosen).
    Exact to float32 rounding of plain differences; rows that the triangle inequality shows cannot come closer
    to the new centre than to their nearest chosen one are not measured. Runs on one thread (see the module
    docstring)."""
    n = len(points)
    if not 1 <= size <= n:
        raise ValueError(f"a coreset of {size} rows cannot be chosen from {n}")
    with _one_thread():
        return _greedy_k_center(points, size, start)


def _greedy_k_center(points: torch.Tensor, size: int, start: int) -> np.ndarray:
    n = len(points)
    norms = _squared_norms(points)
    nearest = torch.full((n,), math.inf)  # squared distance to the nearest chosen row; -inf once chosen
    owner = torch.zeros(n, dtype=torch.long)  # which chosen row (by order) that is
    # A row is measured against a new centre c only if d(owner, c)^2 < 4 nearest: else d(row, c) >= d(owner, c)
    # - d(row, owner) >= d(row, owner). `reach` is that bound, widened by 1% and by the rounding of the
    # centre-to-centre distances (computed from norms, absolute error a few float32 ulps of the largest norm).
    reach = torch.full((n,), math.inf)
    slack = 1e-5 * float(norms.max())
    centres = torch.empty((size, points.shape[1]))
    centre_norms = torch.empty(size)
    chosen = np.empty(size, dtype=np.int64)
    index = start
    for order in range(size):
        chosen[order] = index
        centre = points[index]
        centres[order], centre_norms[order] = centre, norms[index]
        if order == 0:
            rows = torch.arange(n)
        else:
            between = centre_norms[:order] - 2 * (centres[:order] @ centre) + norms[index]  # to every centre
            measured = between.index_select(0, owner) < reach
            rows = torch.from_numpy(np.flatnonzero(measured.numpy()))  # numpy's: 4x faster than torch.nonzero
        distances = _squared_distances(points, rows, centre)
        closer = distances < nearest[rows]
        rows, distances = rows[closer], distances[closer]
        nearest[rows] = distances
        reach[rows] = 4.04 * distances + slack
        owner[rows] = order
        nearest[index] = reach[index] = -math.inf
        index = int(nearest.numpy().argmax())  # the first maximum (numpy's argmax is several times faster)
    return chosen


def _squared_distances(points: torch.Tensor, rows: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances of `points[rows]` to `centre`, as plain differences (no cancellation between large
    norms), 65,536 rows at a time."""
    parts = [(points.index_select(0, rows[first:first + 65536]) - centre).square_().sum(dim=1)
             for first in range(0, len(rows), 65536)]
    return torch.cat(parts) if len(parts) != 1 else parts[0]


@contextlib.contextmanager
def _one_thread():
    """torch on one intra-op thread inside the block (the setting is process-wide; restored on the way out)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nearest_neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int,
                       bank_norms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (q, k) float32, indices (q, k) int64) of the `k` nearest rows of `bank` (L2) to each row of
    `queries`, nearest first: an exhaustive search in blocks of at most QUERY_CHUNK x BANK_CHUNK, the query
    blocks shared out among torch.get_num_threads() Python threads that each run torch on one thread (see the
    module docstring), then the chosen neighbours' distances recomputed as plain differences (exact to float32,
    whatever the blocks)."""
    if k > len(bank):
        raise ValueError(f"k={k} nearest neighbours need at least {k} bank patches, got {len(bank)}")
    bank_norms = _squared_norms(bank) if bank_norms is None else bank_norms
    workers = max(1, torch.get_num_threads())
    size = max(1, min(QUERY_CHUNK, math.ceil(len(queries) / workers)))
    blocks = [queries[start:start + size] for start in range(0, len(queries), size)]
    workers = min(workers, len(blocks))
    with _one_thread():
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(lambda block: _nearest_in_bank(bank, bank_norms, block, k), blocks))
        else:
            found = [_nearest_in_bank(bank, bank_norms, block, k) for block in blocks]
        indices = torch.cat(found) if found else torch.zeros((0, k), dtype=torch.long)
        distances = torch.linalg.vector_norm(queries[:, None, :] - bank[indices], dim=2)
        distances, order = distances.sort(dim=1, stable=True)
    return distances, indices.gather(1, order)


def _nearest_in_bank(bank: torch.Tensor, bank_norms: torch.Tensor, block: torch.Tensor, k: int) -> torch.Tensor:
    """(len(block), k) indices of the bank rows nearest to each row of `block`, by BANK_CHUNK rows at a time
    (for k = 1, the first of rows at the same computed distance)."""
    best = torch.full((len(block), k), math.inf)
    best_indices = torch.zeros((len(block), k), dtype=torch.long)
    for first in range(0, len(bank), BANK_CHUNK):
        # |q|^2 is the same for every bank row: left out, it does not change which rows are nearest
        partial = torch.addmm(bank_norms[first:first + BANK_CHUNK], block, bank[first:first + BANK_CHUNK].T,
                              alpha=-2)
        if k == 1:
            values, indices = partial.min(dim=1, keepdim=True)
        else:
            values, indices = partial.topk(min(k, partial.shape[1]), dim=1, largest=False)
        values = torch.cat([best, values], dim=1)
        indices = torch.cat([best_indices, indices + first], dim=1)
        order = values.topk(k, dim=1, largest=False).indices if k > 1 else values.argmin(dim=1, keepdim=True)
        best, best_indices = values.gather(1, order), indices.gather(1, order)
    return best_indices


def reweighted_scores(bank: torch.Tensor, patches: torch.Tensor, patch_scores: torch.Tensor,
                      nearest: torch.Tensor, bank_norms: torch.Tensor | None = None,
                      neighbours: int = REWEIGHT_NEIGHBOURS) -> np.ndarray:
    """(N,) float64 image scores by the paper's eq. 7: each image's largest patch score times
    1 - exp(d(x*, m*)) / sum over m in N_b(m*) of exp(d(x*, m)), where x* is its highest-scoring patch
    (`patches` (N, P, D), `patch_scores` (N, P)), m* the bank patch nearest to it (`nearest` (N, P) holds each
    patch's nearest bank index) and N_b(m*) the b = `neighbours` bank patches nearest to m*, m* among them."""
    top_patch = patch_scores.argmax(dim=1)
    rows = torch.arange(len(top_patch))
    worst_patches, anchors = patches[rows, top_patch], nearest[rows, top_patch]
    _, support = nearest_neighbours(bank, bank[anchors], min(neighbours, len(bank)), bank_norms)  # (N, b)
    distances = torch.linalg.vector_norm(worst_patches[:, None, :] - bank[support], dim=2).double()
    to_anchor = torch.linalg.vector_norm(worst_patches - bank[anchors], dim=1).double()
    # m* is among its own nearest bank patches (or, where b duplicates of it tie, they stand for it at the
    # same distance); exponentials shifted by the largest distance, which cancels
    top = torch.maximum(distances.amax(dim=1), to_anchor)
    weights = 1 - torch.exp(to_anchor - top) / torch.exp(distances - top[:, None]).sum(dim=1)
    return (weights * patch_scores[rows, top_patch].double()).numpy()


register_format(_FORMAT, PatchCore.load)
