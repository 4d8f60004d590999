"""The selection-quality benchmark's figures: synthetic against real AUROC per task, and regret per method."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def synthetic_vs_real(boards: pd.DataFrame, path: Path) -> None:
    """One panel per task: every candidate of every seed at (synthetic AUROC, real AUROC); pretrained
    candidates, negative controls and the prior told apart."""
    tasks = list(dict.fromkeys(boards["task"]))
    columns = min(4, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for axis, task in zip(axes.flat, tasks):
        board = boards[boards["task"] == task]
        kinds = (("negative control", board["control"], "tab:gray", "x"),
                 ("pretrained", ~board["control"] & ~board["prior"], "tab:blue", "o"),
                 ("prior (largest)", board["prior"], "tab:red", "*"))
        for label, selected, colour, marker in kinds:
            axis.scatter(board.loc[selected, "synthetic_auroc"], board.loc[selected, "real_auroc"], s=14,
                         c=colour, marker=marker, alpha=0.7, label=label)
        axis.set_title(task, fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in axes.flat[len(tasks):]:
        axis.axis("off")
    for axis in axes[:, 0]:
        axis.set_ylabel("real AUROC", fontsize=8)
    for axis in axes[-1, :]:
        axis.set_xlabel("synthetic AUROC", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def regret_by_method(runs: pd.DataFrame, methods: dict[str, str], path: Path) -> None:
    """Mean regret (± std over seeds) of each method on each task; `methods` maps a column to its label."""
    tasks = list(dict.fromkeys(runs["task"]))
    means = runs.groupby("task", sort=False)[list(methods)].mean().loc[tasks]
    spreads = runs.groupby("task", sort=False)[list(methods)].std(ddof=0).loc[tasks]
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(max(8.0, 0.9 * len(tasks)), 4.0))
    for index, (column, label) in enumerate(methods.items()):
        positions = [t + (index - (len(methods) - 1) / 2) * width for t in range(len(tasks))]
        axis.bar(positions, means[column], width, yerr=spreads[column], label=label, capsize=2,
                 error_kw={"elinewidth": 0.6})
    axis.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right", fontsize=8)
    axis.set_ylabel("regret (real AUROC below the best candidate)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
