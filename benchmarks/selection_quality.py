"""How good the selection is, against real labels, over tasks and seeds: the SWSA protocol through the
product's own `run_selection` (CutPaste set, deep kNN k = 3 over the offline backbones with ImageNet and
random weights, last and mid layers, two pixel baselines).

Per task (mean ± std over seeds; each seed draws its own split and anomalies) and overall: Kendall tau over
all candidates and over the pretrained ones, and the real-AUROC regret of four ways to choose:
naive SWSA (the synthetic winner), the default confidence-aware rule, the largest pretrained model, and a
random pretrained candidate (its expected regret). Calibration: of the runs where the rule overruled the
prior, how often the winner really was better. Every run is also an MLflow run (`--tracking-uri`).

    python benchmarks/selection_quality.py [--tasks mvtec/bottle,elpv,...] [--seeds 5] [--data-root ...]

Tasks by default: mvtec/bottle (from --data-root), elpv, textile and the ten Fashion-MNIST one-vs-rest tasks
(those three subsampled to 240 support and 200 validation images, as the embedded default task is).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from selection.pipeline import run_selection
from selection.run import DEFAULT_TASK_LIMITS, parse_args
from selection.tasks import FASHION_MNIST_CLASSES


DEFAULT_TASKS = ("mvtec/bottle", "elpv", "textile", *(f"fashion-mnist/{c}" for c in FASHION_MNIST_CLASSES))


def one_run(task: str, seed: int, data_root: str, tracking_uri: str, store: str, feature_dir: str,
            extra_args: list[str], dump_dir: str | None) -> dict:
    argv = ["--task", task, "--seed", str(seed), "--tracking-uri", tracking_uri, "--store", store,
            "--feature-dir", feature_dir, "--no-register", "--experiment", "selection-quality", *extra_args]
    if task.startswith(("mvtec/", "visa/")):
        argv += ["--data-root", data_root]
    else:  # the pip and Debian data sets are large: subsampled as the embedded default task is
        argv += ["--max-support", str(DEFAULT_TASK_LIMITS["max_support"]),
                 "--max-validation", str(DEFAULT_TASK_LIMITS["max_validation"])]
    result = run_selection(parse_args(argv))
    if dump_dir:
        dump_scores(result, Path(dump_dir) / f"{task.replace('/', '_')}_seed{seed}.npz")
    board = result.leaderboard.set_index("candidate")
    real = board["real_auroc"]
    pretrained = board[~board["control"]]
    comparison = result.comparisons["cutpaste"]
    decision = result.decision
    return {
        "task": task, "seed": seed,
        "tau": comparison.tau, "tau_pretrained": comparison.pretrained_tau,
        "p_pretrained": comparison.pretrained_p_value,
        "regret_naive": real.max() - real[decision.winner],
        "regret_rule": real.max() - real[decision.chosen],
        "regret_largest": real.max() - real[decision.prior],
        "regret_random_pretrained": float((real.max() - pretrained["real_auroc"]).mean()),
        "overruled": decision.chosen != decision.prior,
        "winner_really_better": bool(real[decision.winner] > real[decision.prior]),
        "confidence": decision.confidence,
    }


def dump_scores(result, path: Path) -> None:
    """Every candidate's anomaly scores on every synthetic set and on the real set, for offline analysis of
    decision rules: `names`, `control`, `real_labels`, `real_scores` (candidates x images), and per generator
    `labels/<g>` and `scores/<g>`."""
    names = list(result.scored)
    arrays = {"names": np.array(names), "control": np.array([result.scored[n].row["control"] for n in names]),
              "real_labels": result.real_labels,
              "real_scores": np.stack([result.scored[n].real_scores for n in names])}
    for vs in result.validation_sets:
        arrays[f"labels/{vs.generator}"] = vs.labels
        arrays[f"scores/{vs.generator}"] = np.stack([result.scored[n].synthetic_scores[vs.generator] for n in names])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    columns = ["tau", "tau_pretrained", "regret_naive", "regret_rule", "regret_largest", "regret_random_pretrained"]
    rows = []
    for task, group in list(runs.groupby("task", sort=False)) + [("all tasks", runs)]:
        row = {"task": task, "runs": len(group)}
        for column in columns:
            row[column] = f"{group[column].mean():.3f} ± {group[column].std(ddof=0):.3f}"
        overruled = group[group["overruled"]]
        row["overruled"] = f"{len(overruled)}/{len(group)}"
        row["overruled rightly"] = (f"{overruled['winner_really_better'].mean():.0%}" if len(overruled) else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"))
    parser.add_argument("--tracking-uri", help="MLflow store for the runs (default: a temporary one)")
    parser.add_argument("--feature-dir", default="mlruns/features", help="cached features: a re-run takes minutes")
    parser.add_argument("--dump-dir", help="write every run's per-image anomaly scores here (npz)")
    parser.add_argument("--selection-args", default="", help="extra `selection.run` options for every run, "
                                                             "e.g. '--generators cutpaste,perlin'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tracking_uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        rows = []
        for task in args.tasks.split(","):
            for seed in range(args.seeds):
                rows.append(one_run(task, seed, args.data_root, tracking_uri, f"{tmp}/synthetic", args.feature_dir,
                                    args.selection_args.split(), args.dump_dir))
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                      flush=True)
    runs = pd.DataFrame(rows)
    print()
    print(markdown(summary(runs)))
    confident = runs[runs["overruled"]]
    if len(confident):
        print(f"\ncalibration: the rule overruled the prior in {len(confident)} runs, stating a mean confidence of "
              f"{np.mean(confident['confidence']):.0%}; the winner was really better in "
              f"{confident['winner_really_better'].mean():.0%} of them")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
