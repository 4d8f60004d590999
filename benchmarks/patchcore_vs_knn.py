"""PatchCore against deep kNN on the same backbones, on real labels: from the leaderboards the selection-
quality benchmark records (`selection_quality.py ... --selection-args "--detectors knn,patchcore"` writes
leaderboards.csv into its --out-dir), per task the mean over its runs of each pretrained candidate's real
image AUROC and, where the task has masks, real P-AUROC and AUPRO.

    python benchmarks/patchcore_vs_knn.py docs/selection-quality-patchcore/leaderboards.csv [--out FILE]
"""

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from selection_quality import markdown

METRICS = {"real_auroc": "I-AUROC", "real_pixel_auroc": "P-AUROC", "real_aupro": "AUPRO"}


def comparison(boards: pd.DataFrame) -> pd.DataFrame:
    """One row per task and backbone: kNN at its last and mid layer, PatchCore; each metric the task has."""
    single = boards[~boards["control"] & ~boards["ensemble"]].copy()
    parts = single["candidate"].str.split("/")
    single["family"], single["backbone"] = parts.str[0], parts.str[1]
    single["detector"] = single["family"].where(single["family"] != "knn", "knn " + parts.str[3])
    metrics = [m for m in METRICS if m in single and single[m].notna().any()]
    table = single.groupby(["task", "backbone", "detector"], sort=False)[metrics].mean().unstack("detector")
    table.columns = [f"{METRICS[metric]}: {detector}" for metric, detector in table.columns]
    return table.dropna(axis="columns", how="all").round(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("leaderboards", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table, with the command, as Markdown")
    args = parser.parse_args()
    boards = pd.read_csv(args.leaderboards)
    table = comparison(boards).reset_index()
    text = markdown(table.astype(object).where(table.notna(), ""))
    runs = boards.groupby("task")["seed"].nunique()
    measured = ", ".join(f"{task} ({n} run{'s' if n > 1 else ''})" for task, n in runs.items())
    print(f"{measured}\n\n{text}")
    if args.out:
        command = shlex.join(["python", "benchmarks/patchcore_vs_knn.py", *sys.argv[1:]])
        args.out.write_text("<!-- Written by benchmarks/patchcore_vs_knn.py; do not edit it by hand. -->\n"
                            f"Produced by `{command}`; real labels, means over each task's runs: {measured}.\n\n"
                            f"{text}\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
