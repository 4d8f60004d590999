"""PatchCore against deep kNN on the same backbones, on real labels: from the leaderboards the selection-
quality benchmark records (`selection_quality.py ... --selection-args "--detectors knn,patchcore"` writes
leaderboards.csv into its --out-dir), per task the mean over its runs of each pretrained candidate's real
image AUROC and, where the task has masks, real P-AUROC and AUPRO; and, across the two families, how the
synthetic sets order them against the real labels: over every pair of a pretrained deep-kNN and a pretrained
PatchCore candidate of one run, how often each ranking puts PatchCore above, and tau over those pairs only
(concordant minus discordant pairs over all of them).

    python benchmarks/patchcore_vs_knn.py docs/selection-quality-patchcore/leaderboards.csv [--out FILE]
"""

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
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


def across_families(boards: pd.DataFrame) -> pd.DataFrame:
    """One row per task (and one over all): the kNN x PatchCore pairs of its runs, the share the synthetic and
    the real AUROC each order PatchCore first, and the pairs' tau (a tie on either side counts as neither)."""
    single = boards[~boards["control"] & ~boards["ensemble"]].assign(family=lambda b: b["candidate"].str.split("/").str[0])
    pairs = single[single["family"] == "knn"].merge(single[single["family"] == "patchcore"], on=["task", "seed"],
                                                     suffixes=("_knn", "_patchcore"))
    synthetic = np.sign(pairs["synthetic_auroc_patchcore"] - pairs["synthetic_auroc_knn"])
    real = np.sign(pairs["real_auroc_patchcore"] - pairs["real_auroc_knn"])
    pairs = pairs.assign(synthetic_first=synthetic > 0, real_first=real > 0, agreement=synthetic * real)
    rows = [(task, group) for task, group in pairs.groupby("task", sort=False)] + [("all tasks", pairs)]
    return pd.DataFrame([{"task": task, "pairs": len(group),
                          "synthetic puts PatchCore first": f"{group['synthetic_first'].mean():.0%}",
                          "real puts PatchCore first": f"{group['real_first'].mean():.0%}",
                          "tau across families": round(group["agreement"].mean(), 3)} for task, group in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("leaderboards", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table, with the command, as Markdown")
    args = parser.parse_args()
    boards = pd.read_csv(args.leaderboards)
    table = comparison(boards).reset_index()
    text = (markdown(table.astype(object).where(table.notna(), "")) + "\n\nAcross the families, pretrained "
            "candidates only:\n\n" + markdown(across_families(boards)))
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
