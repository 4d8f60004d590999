"""What each CPU generator costs per synthetic anomaly, against CutPaste (the cheapest) in the same run.

Generates `--n` anomalies with CutPaste, Perlin and NSA (each with its defaults) from the first 20 training
images of a category, repeats it `--repeats` times, and prints per generator the median seconds per kept
sample, the draws rejected as invisible, and the time as a multiple of CutPaste's.

    python benchmarks/generator_speed.py [--category bottle] [--data-root ../shared/data/mvtec_ad] [--n 100]
"""

import argparse
import statistics
import time
from pathlib import Path

from detectors import load_rgb
from generation import create_generator

GENERATORS = ("cutpaste", "perlin", "nsa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"))
    parser.add_argument("--n", type=int, default=100, help="anomalies per generator and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = Path(args.data_root) / args.category / "train" / "good"
    paths = sorted(folder.glob("*.png"))[:20]
    if not paths:
        raise SystemExit(f"no training images in {folder}")
    images = [load_rgb(path) for path in paths]

    rows = {}
    for name in GENERATORS:
        seconds, rejected = [], 0
        for repeat in range(args.repeats):
            start = time.perf_counter()
            synthetic = create_generator(name).generate(images, args.n, seed=repeat)
            seconds.append((time.perf_counter() - start) / args.n)
            rejected += synthetic.rejected
        rows[name] = (statistics.median(seconds), rejected)

    height, width = images[0].shape[:2]
    print(f"{args.category}: {len(images)} seed images of {height}x{width} px, {args.n} anomalies x "
          f"{args.repeats} repeats\n")
    print("| generator | ms per anomaly (median) | rejected draws | x CutPaste |")
    print("|---|---|---|---|")
    for name, (per_sample, rejected) in rows.items():
        print(f"| {name} | {1000 * per_sample:.1f} | {rejected} | {per_sample / rows['cutpaste'][0]:.1f} |")


if __name__ == "__main__":
    main()
