"""How good the selection is, against real labels, over tasks and seeds: the SWSA protocol through the
product's own `run_selection` with its defaults (CutPaste, Perlin and NSA sets; deep kNN k = 3 over the
offline backbones with ImageNet and random weights, last and mid layers, two pixel baselines; the score
ensemble of the pretrained last layers, weighted by backbone size; the calibrated confidence rule).

Per task (mean ± std over seeds; each seed draws its own split and anomalies) and overall: Kendall tau of
the synthetic ranking of the individual candidates against the real one, over all of them and over the
pretrained ones (with the median p-value), and the regret and pick rate of four ways to choose: naive SWSA
(the synthetic winner among the individual candidates), the product's default decision, the largest
pretrained model, and a random pretrained candidate (its expectation). Regret is the best individual
candidate's real AUROC minus the pick's (below zero where an ensemble beats them all); the pick rate is
the share of runs with regret <= 0. Calibration: of the runs whose synthetic winner differed from the
prior, how often the winner was really better, per level of bootstrap confidence; `--write-calibration`
stores that as the product's calibration (`selection/calibration.json`) for these generators. The same
calibration is also checked out of sample: each task's runs judged with the other tasks' calibration.

Writes the table (table.md), the runs (runs.csv) and the figures (synthetic_vs_real.png, regret.png) into
--out-dir (docs/selection-quality), and every run's per-image scores into --scores-dir (for
benchmarks/decision_rules.py); every selection is an MLflow run, and a summary run carries the table and
figures.

    python benchmarks/selection_quality.py [--tasks mvtec/bottle,elpv,...] [--seeds 5] [--data-root ...]

Tasks by default: mvtec/bottle (from --data-root), elpv, textile and the ten Fashion-MNIST one-vs-rest tasks
(those three subsampled to 240 support and 200 validation images, as the embedded default task is).
Features are cached in --feature-dir: the first run computes them (hours on 2 CPU cores), a re-run takes
minutes.
"""

import argparse
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from quality_plots import regret_by_method, synthetic_vs_real
from selection import tracking
from selection.confidence import CALIBRATION_FILE, DEFAULT_CONFIDENCE, Calibration, calibration_key
from selection.candidates import ensemble_candidate
from selection.pipeline import MEAN, prior_kind, run_selection
from selection.run import DEFAULT_TASK_LIMITS, parse_args
from selection.tasks import FASHION_MNIST_CLASSES

DEFAULT_TASKS = ("mvtec/bottle", "elpv", "textile", *(f"fashion-mnist/{c}" for c in FASHION_MNIST_CLASSES))
METHODS = {"naive": "naive SWSA", "default": "default decision", "largest": "largest model",
           "random_pretrained": "random pretrained"}
CALIBRATION_LEVELS = (0.0, 0.5, 0.9, 0.95, 0.99)  # 0: every contested run, so any confidence has a measure


def one_run(task: str, seed: int, data_root: str, tracking_uri: str, store: str, feature_dir: str,
            extra_args: list[str], dump_dir: Path) -> tuple[dict, pd.DataFrame]:
    """One selection: its summary row and its leaderboard (with task, seed and which row is the prior)."""
    argv = ["--task", task, "--seed", str(seed), "--tracking-uri", tracking_uri, "--store", store,
            "--feature-dir", feature_dir, "--no-register", "--experiment", "selection-quality", *extra_args]
    if task.startswith(("mvtec/", "visa/")):
        argv += ["--data-root", data_root]
    else:  # the pip and Debian data sets are large: subsampled as the embedded default task is
        argv += ["--max-support", str(DEFAULT_TASK_LIMITS["max_support"]),
                 "--max-validation", str(DEFAULT_TASK_LIMITS["max_validation"])]
    result = run_selection(parse_args(argv))
    dump_scores(result, dump_dir / f"{task.replace('/', '_')}_seed{seed}.npz")
    board = result.leaderboard.set_index("candidate")
    single = board[~board["ensemble"]]
    best = single["real_auroc"].max()
    pretrained = single[~single["control"]]
    comparison = result.comparisons.get(MEAN) or next(iter(result.comparisons.values()))
    decision = result.decision
    regret = {"naive": best - single.loc[comparison.pick, "real_auroc"],
              "default": best - board.loc[decision.chosen, "real_auroc"],
              "largest": best - single.loc[comparison.baseline, "real_auroc"],
              "random_pretrained": float((best - pretrained["real_auroc"]).mean())}
    row = {"task": task, "seed": seed, "tau": comparison.tau, "p": comparison.p_value,
           "tau_pretrained": comparison.pretrained_tau, "p_pretrained": comparison.pretrained_p_value,
           **{f"regret_{m}": value for m, value in regret.items()},
           "pick_default": decision.chosen, "prior": decision.prior, "winner": decision.winner,
           "overruled": decision.chosen != decision.prior, "confidence": decision.confidence,
           "calibrated_confidence": decision.calibrated_confidence,
           "winner_really_better": bool(board.loc[decision.winner, "real_auroc"]
                                         > board.loc[decision.prior, "real_auroc"])}
    leaderboard = result.leaderboard.assign(task=task, seed=seed,
                                            prior=result.leaderboard["candidate"] == comparison.baseline)
    return row, leaderboard


def seeds_for(task: str, default: int, overrides: list[str]) -> int:
    for override in overrides:
        prefix, _, count = override.partition("=")
        if not count.isdigit():
            raise SystemExit(f"error: --task-seeds wants PREFIX=N, got {override!r}")
        if task.startswith(prefix):
            return int(count)
    return default


def dump_scores(result, path: Path) -> None:
    """The individual candidates' anomaly scores on every synthetic set and on the real set, for offline
    analysis of decision rules: `names`, `control`, `real_labels`, `real_scores` (candidates x images), and
    per generator `labels/<g>` and `scores/<g>`."""
    names = [name for name, item in result.scored.items() if not item.row["ensemble"]]
    arrays = {"names": np.array(names), "control": np.array([result.scored[n].row["control"] for n in names]),
              "real_labels": result.real_labels,
              "real_scores": np.stack([result.scored[n].real_scores for n in names])}
    for vs in result.validation_sets:
        arrays[f"labels/{vs.generator}"] = vs.labels
        arrays[f"scores/{vs.generator}"] = np.stack([result.scored[n].synthetic_scores[vs.generator] for n in names])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task, group in list(runs.groupby("task", sort=False)) + [("all tasks", runs)]:
        row = {"task": task, "runs": len(group)}
        for column in ("tau", "tau_pretrained"):
            row[column] = f"{group[column].mean():.3f} ± {group[column].std(ddof=0):.3f}"
        row["median p (pretrained)"] = f"{group['p_pretrained'].median():.2f}"
        for method, label in METHODS.items():
            regrets = group[f"regret_{method}"]
            row[f"regret: {label}"] = f"{regrets.mean():.4f} ± {regrets.std(ddof=0):.4f}"
        for method in ("naive", "default", "largest"):
            row[f"pick rate: {METHODS[method]}"] = f"{(group[f'regret_{method}'] <= 1e-12).mean():.0%}"
        row["overruled (really better)"] = _overrules(group)
        rows.append(row)
    return pd.DataFrame(rows)


def _overrules(group: pd.DataFrame) -> str:
    overruled = group[group["overruled"]]
    if overruled.empty:
        return f"0/{len(group)}"
    return f"{len(overruled)}/{len(group)} ({overruled['winner_really_better'].mean():.0%})"


def tasks_against_largest(runs: pd.DataFrame) -> str:
    per_task = runs.groupby("task", sort=False)[["regret_default", "regret_largest"]].mean()
    at_or_below = int((per_task["regret_default"] <= per_task["regret_largest"] + 1e-9).sum())
    below = int((per_task["regret_default"] < per_task["regret_largest"] - 1e-9).sum())
    return (f"default decision against the largest model, mean regret per task: at or below on {at_or_below} "
            f"of {len(per_task)} tasks, strictly below on {below}")


def calibration_levels(runs: pd.DataFrame) -> list[list]:
    """[level, runs, winner really better] over runs whose synthetic winner was not the prior."""
    contested = runs[runs["winner"] != runs["prior"]]
    return [[level, int((contested["confidence"] >= level).sum()),
             int(contested.loc[contested["confidence"] >= level, "winner_really_better"].sum())]
            for level in CALIBRATION_LEVELS]


def held_out_calibration(runs: pd.DataFrame, threshold: float = DEFAULT_CONFIDENCE) -> str:
    """The calibration checked out of sample: each task's contested runs get the calibrated confidence that
    the other tasks' runs would state, compared with how often their winner really was better."""
    stated, right = [], []
    for task, group in runs.groupby("task"):
        others = Calibration((), tuple(map(tuple, calibration_levels(runs[runs["task"] != task]))), "")
        contested = group[group["winner"] != group["prior"]]
        stated += [others.calibrated(confidence)[0] for confidence in contested["confidence"]]
        right += list(contested["winner_really_better"])
    if not stated:
        return "calibration left out task by task: no run's synthetic winner differed from the prior"
    stated, right = np.array(stated), np.array(right, dtype=bool)
    confident = stated >= threshold
    return (f"calibration left out task by task (each task's runs judged with the other tasks' calibration): "
            f"{len(stated)} contested runs, stated confidence {stated.mean():.0%} on average (at most "
            f"{stated.max():.0%}), winner really better in {right.mean():.0%}; stated >= {threshold:.0%} in "
            f"{confident.sum()} runs" + (f", really better in {right[confident].sum()}" if confident.any() else ""))


def calibration_text(levels: list[list]) -> str:
    lines = ["| bootstrap confidence at least | runs | winner really better |", "|---|---|---|"]
    lines += [f"| {level:.0%} | {n} | {right}" + (f" ({right / n:.0%})" if n else "") + " |"
              for level, n, right in levels]
    return "\n".join(lines)


def write_calibration(key: str, levels: list[list], measured_on: str, path: Path = CALIBRATION_FILE) -> None:
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[key] = {"levels": levels, "measured_on": measured_on}
    path.write_text(json.dumps(table, indent=2) + "\n")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds per task (default 5)")
    parser.add_argument("--task-seeds", action="append", default=[], metavar="PREFIX=N",
                        help="fewer or more seeds for the tasks whose name starts with PREFIX, e.g. "
                             "fashion-mnist=3; repeatable")
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"))
    parser.add_argument("--tracking-uri", help="MLflow store for the runs (default: the product's, under mlruns/)")
    parser.add_argument("--feature-dir", default="mlruns/features", help="cached features: a re-run takes minutes")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/selection-quality"),
                        help="where the table, the figures and the runs go")
    parser.add_argument("--scores-dir", type=Path, default=Path("mlruns/selection-quality-scores"),
                        help="where every run's per-image scores go (for benchmarks/decision_rules.py)")
    parser.add_argument("--selection-args", default="", help="extra `selection.run` options for every run, "
                                                             "e.g. '--generators cutpaste'")
    parser.add_argument("--write-calibration", action="store_true",
                        help="store the measured calibration as the product's, for these generators")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = args.tracking_uri or tracking.DEFAULT_TRACKING_URI
    config = parse_args(args.selection_args.split())
    prior = prior_kind(config, ensemble_candidate(config.ensemble, config.candidates()))
    if args.write_calibration and prior is None:
        raise SystemExit("error: no calibration for a prior named in --selection-args")
    rows, boards = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for seed in range(seeds_for(task, args.seeds, args.task_seeds)):
                row, board = one_run(task, seed, args.data_root, tracking_uri, f"{tmp}/synthetic", args.feature_dir,
                                     args.selection_args.split(), args.scores_dir)
                rows.append(row)
                boards.append(board)
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    runs, boards = pd.DataFrame(rows), pd.concat(boards, ignore_index=True)
    levels = calibration_levels(runs)
    report = "\n\n".join([markdown(summary(runs)), tasks_against_largest(runs),
                          "calibration (runs whose synthetic winner was not the prior):\n" + calibration_text(levels),
                          held_out_calibration(runs)])
    print("\n" + report)
    runs.to_csv(args.out_dir / "runs.csv", index=False)
    (args.out_dir / "table.md").write_text(report + "\n")
    synthetic_vs_real(boards[~boards["ensemble"]], args.out_dir / "synthetic_vs_real.png")
    regret_by_method(runs, {f"regret_{m}": label for m, label in METHODS.items()}, args.out_dir / "regret.png")
    if args.write_calibration:
        write_calibration(calibration_key(config.generators, prior), levels,
                          f"{len(runs)} runs over {runs['task'].nunique()} tasks (benchmarks/selection_quality.py)")
    _log_summary(tracking_uri, runs, args.out_dir)


def _log_summary(tracking_uri: str, runs: pd.DataFrame, out_dir: Path) -> None:
    tracking.configure(tracking_uri, "selection-quality")
    with mlflow.start_run(run_name="selection quality summary", tags={"kind": "benchmark"}):
        mlflow.log_metrics({f"mean_regret/{m}": float(runs[f"regret_{m}"].mean()) for m in METHODS}
                           | {"mean_tau": float(runs["tau"].mean()),
                              "mean_tau_pretrained": float(runs["tau_pretrained"].mean())})
        mlflow.log_params({"tasks": ",".join(dict.fromkeys(runs["task"])), "runs": len(runs)})
        for name in ("table.md", "runs.csv", "synthetic_vs_real.png", "regret.png"):
            mlflow.log_artifact(str(out_dir / name))


if __name__ == "__main__":
    main()
