"""PatchCore's costs on this machine, as ratios within one run.

1. Nearest-neighbour engines: the exact k = 1 search of `--images` test images' patches (784 per image at the
   default backbone's 28 x 28 grid, D = its early + mid channels) against banks of `--bank-sizes` patches, by
   detectors.patchcore.nearest_neighbours (chunked torch: "torch" as the module runs it, "torch-1thread" with
   torch on one thread), scikit-learn's NearestNeighbors (brute force, and kd-tree / ball-tree up to
   `--tree-max-bank`) and faiss IndexFlatL2 on its default threads and on one, where faiss is importable (it is
   not a dependency: `pip install faiss-cpu` to include it). Each search runs in a subprocess: its time (the
   fastest of up to 3 runs, index building apart), its peak memory above the loaded arrays (the peak resident
   size, reset before the search), and its agreement with the torch engine (other nearest patches, their exact
   distances against torch's choice's, the error of the distances it reports).
2. Fitting and scoring against the backbone's forward floor: the forward passes of the training images, the
   patch features, the greedy coreset (10%), and per test image the search and the anomaly map, on MVTec AD
   bottle with the defaults (efficientnet_lite0, ImageNet weights, early + mid).
3. Scaling: the coreset's time for 1e4..1e6 training patches, and (from part 1) the search time per image
   for banks of 1e4..1e6 patches.
4. The greedy coreset on one thread, as the module runs it, against torch's default thread count.

Banks and training patches come from bottle's real patch features: sampled without replacement up to the
patches there are (209 x 784), beyond that drawn with replacement plus Gaussian jitter (5% of each channel's
spread), so that the 1e6 case keeps the real data's structure. Without the data, Gaussian features.

    python benchmarks/patchcore_speed.py [--data-root ../shared/data/mvtec_ad] [--images 4]
        [--bank-sizes 10000,100000,1000000] [--coreset-sizes 10000,100000,1000000] [--train-images 209]
        [--engines torch,torch-1thread,sklearn-brute,sklearn-kd_tree,sklearn-ball_tree,faiss,faiss-1thread]
        [--tree-max-bank 100000] [--timeout 300] [--quick]

`--quick` shrinks everything (banks up to 1e5, 50 training images) to check the script in about a minute.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINES = ("torch", "torch-1thread", "sklearn-brute", "sklearn-kd_tree", "sklearn-ball_tree", "faiss", "faiss-1thread")
BACKBONE, WEIGHTS, LAYERS = "efficientnet_lite0", "imagenet", ("early", "mid")
JITTER = 0.05
REPEATS, REPEAT_SECONDS = 3, 20  # each search runs up to 3 times, not starting another after 20 s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"))
    parser.add_argument("--images", type=int, default=4, help="test images whose patches are the queries")
    parser.add_argument("--bank-sizes", default="10000,100000,1000000")
    parser.add_argument("--coreset-sizes", default="10000,100000,1000000",
                        help="training patches to choose a coreset from (10%%; 1%% from 1e6 on)")
    parser.add_argument("--train-images", type=int, default=209)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--tree-max-bank", type=int, default=100000, help="largest bank the trees are built on")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one engine's search may take")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "BANK", "QUERIES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.quick:
        args.bank_sizes, args.coreset_sizes, args.train_images = "10000,100000", "10000,100000", 50
    engines = [engine for engine in args.engines.split(",") if engine]
    unknown = set(engines) - set(ENGINES)
    if unknown or "torch" not in engines:
        parser.error(f"--engines: choose from {', '.join(ENGINES)}, torch included (the reference)")
    if not _importable("faiss") and any(engine.startswith("faiss") for engine in engines):
        print("faiss is not installed (pip install faiss-cpu to include it): left out\n")
        engines = [engine for engine in engines if not engine.startswith("faiss")]

    import torch

    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} on {torch.get_num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.2f} at the start\n")
    real = real_features(Path(args.data_root), args.train_images, args.images)
    train, queries = real["train"], real["queries"]
    print(f"D = {train.shape[1]} ({BACKBONE} {' + '.join(LAYERS)}), {len(queries)} query patches "
          f"({args.images} images), {len(train)} real training patches\n")

    with tempfile.TemporaryDirectory() as tmp:
        engine_rows = compare_engines(Path(tmp), train, queries, _sizes(args.bank_sizes), engines,
                                      args.tree_max_bank, args.timeout)
    print_engine_tables(engine_rows, args.images)
    if real["fit"]:
        print_fit_and_score(real["fit"])
    print_scaling(train, _sizes(args.coreset_sizes), engine_rows, args.images, real["fit"])
    print_coreset_threads(train)
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other processes share these cores)")


def _sizes(text: str) -> list[int]:
    return [int(float(size)) for size in text.split(",") if size]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- data ------------------------------------------------------------------------------------------------------

def real_features(data_root: Path, n_train: int, n_queries: int) -> dict:
    """The training patches and query patches (real where the data is there) and, on real data, the costs of
    fitting and scoring PatchCore's defaults."""
    from compat import torchvision_fix

    torchvision_fix.apply()
    import torch

    from detectors import FeatureCache, PatchCore, load_rgb
    from detectors.patchcore import anomaly_maps, greedy_coreset, nearest_neighbours, patch_features
    from selection.tasks import TaskError, load_task

    try:
        task = load_task("mvtec/bottle", data_root)
    except TaskError as error:
        print(f"no MVTec AD bottle ({error}): Gaussian features instead, and no fit/score timings\n")
        rng = np.random.default_rng(0)
        return {"train": rng.normal(0, 1, (n_train * 784, 152)).astype(np.float32),
                "queries": rng.normal(0, 1, (n_queries * 784, 152)).astype(np.float32), "fit": None}
    support = task.subsample(n_train, None, 0).support
    tests = [item for item in task.validation]
    step = max(1, len(tests) // n_queries)
    test_images = [load_rgb(item.path) for item in tests[::step][:n_queries]]  # normals and defects alike
    train_images = [load_rgb(path) for path in support]

    cache = FeatureCache()
    cache.backbone(BACKBONE, WEIGHTS)  # built before timing
    detector = PatchCore(BACKBONE, WEIGHTS, LAYERS, features=cache)
    started = time.perf_counter()
    maps = cache.feature_maps(BACKBONE, WEIGHTS, LAYERS, train_images)
    fit_maps = time.perf_counter() - started
    forward_train = cache.forward_seconds
    started = time.perf_counter()
    grids = patch_features([maps[layer] for layer in LAYERS], detector.neighbourhood, detector.dim)
    fit_patch = time.perf_counter() - started
    train = grids.reshape(-1, grids.shape[-1])
    size = math.ceil(detector.coreset_ratio * len(train))
    started = time.perf_counter()
    chosen = greedy_coreset(train, size, detector.seed)
    fit_coreset = time.perf_counter() - started
    detector.bank_ = np.ascontiguousarray(train[chosen])

    forward_before = cache.forward_seconds
    started = time.perf_counter()
    test_maps = cache.feature_maps(BACKBONE, WEIGHTS, LAYERS, test_images)
    forward_test = cache.forward_seconds - forward_before
    test_grids = patch_features([test_maps[layer] for layer in LAYERS], detector.neighbourhood, detector.dim)
    features_test = time.perf_counter() - started
    queries = test_grids.reshape(-1, test_grids.shape[-1])
    bank = torch.from_numpy(detector.bank_)
    started = time.perf_counter()
    nearest_neighbours(bank, torch.from_numpy(queries), 1)
    search = time.perf_counter() - started
    started = time.perf_counter()
    anomaly_maps(torch.rand(len(test_images), *test_grids.shape[1:3]), cache.backbone(BACKBONE, WEIGHTS).input_size,
                 test_images[0].shape[:2])
    maps_seconds = time.perf_counter() - started
    fit = {"train_images": len(train_images), "test_images": len(test_images), "forward_train": forward_train,
           "load_train": fit_maps - forward_train, "patch_train": fit_patch, "coreset": fit_coreset,
           "patches": len(train), "bank": size, "forward_test": forward_test,
           "patch_test": features_test - forward_test, "search": search, "maps": maps_seconds}
    return {"train": train, "queries": queries, "fit": fit}


def bank_of(train: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`size` patches like the real ones: sampled without replacement while there are enough, else drawn with
    replacement and jittered by Gaussian noise of JITTER times each channel's spread."""
    rng = np.random.default_rng(seed)
    if size <= len(train):
        return np.ascontiguousarray(train[rng.choice(len(train), size, replace=False)])
    spread = train.std(axis=0).astype(np.float32)
    bank = train[rng.integers(len(train), size=size)]
    bank += JITTER * spread * rng.standard_normal(bank.shape, dtype=np.float32)
    return bank


# --- part 1: engines ---------------------------------------------------------------------------------------------

def compare_engines(tmp: Path, train, queries, bank_sizes, engines, tree_max_bank, timeout) -> list[dict]:
    np.save(tmp / "queries.npy", queries)
    rows = []
    for size in bank_sizes:
        bank = bank_of(train, size)
        np.save(tmp / "bank.npy", bank)
        reference = None
        for engine in engines:
            if engine.startswith("sklearn-") and engine.endswith("_tree") and size > tree_max_bank:
                rows.append({"bank": size, "engine": engine, "skipped": f"bank > --tree-max-bank {tree_max_bank}"})
                continue
            out = tmp / f"{engine}.npz"
            command = [sys.executable, __file__, "--child", engine, str(tmp / "bank.npy"), str(tmp / "queries.npy"),
                       str(out)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
            except subprocess.TimeoutExpired:
                rows.append({"bank": size, "engine": engine, "skipped": f"over {timeout:.0f} s"})
                continue
            except subprocess.CalledProcessError as error:
                rows.append({"bank": size, "engine": engine, "skipped": error.stderr.strip().splitlines()[-1]})
                continue
            row = {"bank": size, "engine": engine, **json.loads(done.stdout.strip().splitlines()[-1])}
            with np.load(out) as result:
                distances, indices = result["distances"], result["indices"]
            # the chosen patches' exact distances (float64), which tell a better choice from a worse one
            exact = np.linalg.norm(queries.astype(np.float64) - bank[indices[:, 0]].astype(np.float64), axis=1)
            if reference is None:
                reference = exact, indices[:, 0]
            differs = indices[:, 0] != reference[1]
            gap = (exact - reference[0]) / np.maximum(reference[0], 1e-12)
            row.update(other_nearest=int(differs.sum()), worse=float(gap.max()), better=float(gap.min()),
                       reported_error=float(np.max(np.abs(distances[:, 0] - exact) / np.maximum(exact, 1e-12))))
            rows.append(row)
            print(f"  bank {size:>9,}  {engine:<18} {row['search']:8.2f} s", flush=True)
    print()
    return rows


def child(engine: str, bank_path: str, queries_path: str, out: str) -> None:
    """One engine's search in a fresh process: prints {build, search, peak_mib} as JSON, writes the result."""
    bank, queries = np.load(bank_path), np.load(queries_path)
    # imported before the baseline: the libraries are not the search's memory
    engine, _, threads = engine.partition("-1")  # torch-1thread, faiss-1thread: on one thread
    if engine == "torch":
        import torch

        from detectors.patchcore import _squared_norms, nearest_neighbours
        if threads:
            torch.set_num_threads(1)
    elif engine == "faiss":
        import faiss
        if threads:
            faiss.omp_set_num_threads(1)
    else:
        from sklearn.neighbors import NearestNeighbors
    baseline = _reset_peak_memory()
    started = time.perf_counter()
    if engine == "torch":
        bank_t, queries_t = torch.from_numpy(bank), torch.from_numpy(queries)
        norms = _squared_norms(bank_t)

        def search():
            distances, indices = nearest_neighbours(bank_t, queries_t, 1, norms)
            return distances.numpy(), indices.numpy()
    elif engine == "faiss":
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(bank)

        def search():
            squared, indices = index.search(queries, 1)
            return np.sqrt(np.maximum(squared, 0)), indices
    else:
        model = NearestNeighbors(n_neighbors=1, algorithm=engine.removeprefix("sklearn-")).fit(bank)

        def search():
            return model.kneighbors(queries)
    built = time.perf_counter()
    times = []
    while len(times) < REPEATS and sum(times) < REPEAT_SECONDS:  # the fastest of a few: other load comes and goes
        begun = time.perf_counter()
        distances, indices = search()
        times.append(time.perf_counter() - begun)
    peak = _peak_memory()
    np.savez(out, distances=np.asarray(distances, dtype=np.float64), indices=np.asarray(indices, dtype=np.int64))
    print(json.dumps({"build": built - started, "search": min(times), "runs": len(times),
                      "peak_mib": (peak - baseline) / 1024}))


def _reset_peak_memory() -> int:
    """The resident memory now (KiB), with the peak reset to it where Linux allows (writing 5 to clear_refs),
    so that the peak measured after is the search's own; elsewhere the peak so far (ru_maxrss)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_memory() -> int:
    try:
        return _status_kib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _status_kib(field: str) -> int:
    lines = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(lines[field].split()[0])


def print_engine_tables(rows: list[dict], n_images: int) -> None:
    print("### Nearest-neighbour engines (k = 1, exact; search: the fastest of up to 3 runs, index built apart)\n")
    print("Exactness: the queries whose nearest patch differs from torch's, the range of (exact distance to the "
          "engine's choice / to torch's) - 1 (negative: the engine found a nearer patch), and the largest relative "
          "error of the distances the engine reports (exact: float64 plain differences).\n")
    print("| bank patches | engine | build (s) | search (s) | per image (s) | search / torch | peak memory (MiB) "
          "| other nearest | exact distance vs torch's | reported distance error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    torch_search = {row["bank"]: row["search"] for row in rows if row["engine"] == "torch" and "search" in row}
    for row in rows:
        if "skipped" in row:
            print(f"| {row['bank']:,} | {row['engine']} | - | - | - | - | - | - | - | - ({row['skipped']}) |")
            continue
        ratio = row["search"] / torch_search[row["bank"]] if row["bank"] in torch_search else float("nan")
        print(f"| {row['bank']:,} | {row['engine']} | {row['build']:.2f} | {row['search']:.2f} | "
              f"{row['search'] / n_images:.3f} | {ratio:.2f} | {row['peak_mib']:.0f} | {row['other_nearest']} | "
              f"{row['better']:+.1e} .. {row['worse']:+.1e} | {row['reported_error']:.1e} |")
    print()


# --- parts 2 and 3: fitting, scoring, scaling ------------------------------------------------------------------

def print_fit_and_score(fit: dict) -> None:
    forward = fit["forward_train"] / fit["train_images"]
    print(f"### Fit and score against the forward floor (bottle, defaults; {fit['train_images']} training images, "
          f"{fit['patches']:,} patches, coreset {fit['bank']:,})\n")
    print("| step | seconds | per image (s) | / forward pass |")
    print("|---|---|---|---|")
    steps = [("fit: forward passes", fit["forward_train"]), ("fit: resizing, caching", fit["load_train"]),
             ("fit: patch features", fit["patch_train"]), ("fit: greedy coreset (10%)", fit["coreset"])]
    for name, seconds in steps:
        print(f"| {name} | {seconds:.2f} | {seconds / fit['train_images']:.4f} | "
              f"{seconds / fit['forward_train']:.2f} |")
    n = fit["test_images"]
    forward_test = fit["forward_test"] / n
    for name, seconds in [("score: forward pass", fit["forward_test"]), ("score: patch features", fit["patch_test"]),
                          ("score: nearest-neighbour search", fit["search"]), ("score: anomaly map", fit["maps"])]:
        print(f"| {name} | {seconds:.2f} | {seconds / n:.4f} | {seconds / n / forward_test:.2f} |")
    print(f"\nforward pass: {forward * 1000:.0f} ms per training image (batches of 32), "
          f"{forward_test * 1000:.0f} ms per test image (a batch of {n})\n")


def print_scaling(train: np.ndarray, sizes: list[int], engine_rows: list[dict], n_images: int,
                  fit: dict | None) -> None:
    from detectors.patchcore import greedy_coreset

    forward = fit["forward_train"] / fit["train_images"] if fit else float("nan")
    print("### Scaling: greedy coreset by training patches, search by bank patches\n")
    print("| training patches | coreset ratio | coreset | coreset time (s) | per training image (s, 784 patches) "
          "| / forward pass |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        ratio = 0.1 if size < 1_000_000 else 0.01
        features = bank_of(train, size, seed=1)
        chosen = math.ceil(ratio * size)
        started = time.perf_counter()
        greedy_coreset(features, chosen, 0)
        seconds = time.perf_counter() - started
        per_image = seconds / (size / 784)
        print(f"| {size:,} | {ratio:.0%} | {chosen:,} | {seconds:.2f} | {per_image:.4f} | "
              f"{per_image / forward:.2f} |", flush=True)
    print("\n| bank patches | search per image (s, torch) | / forward pass |")
    print("|---|---|---|")
    for row in engine_rows:
        if row["engine"] == "torch" and "search" in row:
            per_image = row["search"] / n_images
            print(f"| {row['bank']:,} | {per_image:.3f} | {per_image / forward:.2f} |")
    print()


def print_coreset_threads(train: np.ndarray, size: int = 20000) -> None:
    """The greedy coreset on one thread, as the module runs it, against torch's default thread count."""
    import contextlib

    import torch

    from detectors import patchcore

    features = bank_of(train, size, seed=2)
    seconds = {}
    for name, context in (("one thread (the module)", patchcore._one_thread),
                          (f"{torch.get_num_threads()} threads (torch's default)", contextlib.nullcontext)):
        original = patchcore._one_thread
        patchcore._one_thread = context
        try:
            started = time.perf_counter()
            patchcore.greedy_coreset(features, size // 10, 0)
            seconds[name] = time.perf_counter() - started
        finally:
            patchcore._one_thread = original
    print(f"### Greedy coreset threads ({size:,} patches, 10%)\n")
    print("| threads | seconds | / one thread |")
    print("|---|---|---|")
    first = next(iter(seconds.values()))
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {value / first:.2f} |")
    print()


if __name__ == "__main__":
    main()
