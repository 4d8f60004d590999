"""How close a selection run comes to its compute floor: the backbones' forward passes.

Runs the selection exactly as `python -m selection.run --task mvtec/bottle --data-root ../shared/data/mvtec_ad`
(tracking into a temporary MLflow store) and prints, per backbone, the forward passes per distinct image
(goal: exactly 1) and the seconds in forward passes, then the whole run against that floor (goal: <= 1.5x).

    python benchmarks/forward_floor.py [--task mvtec/bottle] [--data-root ../shared/data/mvtec_ad]
"""

import argparse
import tempfile
import time
from pathlib import Path

from selection.pipeline import run_selection
from selection.run import parse_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mvtec/bottle")
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_args(["--task", args.task, "--data-root", args.data_root,
                             "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--store", f"{tmp}/synthetic",
                             "--feature-dir", f"{tmp}/features"])
        start = time.perf_counter()
        result = run_selection(config)
        total = time.perf_counter() - start

    cache = result.features
    print(f"task {args.task}: {len(result.leaderboard)} candidates, whole run {total:.1f} s\n")
    print("| backbone | weights | distinct images | forward passes | passes per image |")
    print("|---|---|---|---|---|")
    for (backbone, weights), passes in sorted(cache.forward_counts.items()):
        images = cache.n_images(backbone, weights)
        print(f"| {backbone} | {weights} | {images} | {passes} | {passes / images:.2f} |")
    print("\n| forward floor (s) | whole run (s) | whole / floor |")
    print("|---|---|---|")
    print(f"| {cache.forward_seconds:.1f} | {total:.1f} | {total / cache.forward_seconds:.2f} |")


if __name__ == "__main__":
    main()
