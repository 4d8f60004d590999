"""What a search trial costs, and what a search finds against the fixed grid of `python -m selection.run`.

1. Per backbone: a trial that needs the backbone's features computed (an empty cache: a forward pass over
   every bank, synthetic and real image) against trials that change only k, pooling or normalisation (cached
   features), with and without logging the trial to MLflow. Goal: cached trials at least 100x faster.
2. `python -m selection.search --task mvtec/bottle --trials 50` (into temporary stores): wall time, and its
   best synthetic AUROC (with that candidate's real AUROC) against the best of the grid of pretrained
   candidates that `selection.run` scores (4 backbones x 2 layers, avg pooling, k = 3).

    python benchmarks/search_speed.py [--task mvtec/bottle] [--data-root ../shared/data/mvtec_ad] [--trials 50]
"""

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import mlflow
import optuna

from detectors import FeatureCache
from selection import tracking
from selection.candidates import CandidatePool, default_candidates
from selection.evidence import gather_evidence, score_candidate
from selection.search import parse_args
from selection.study import TrialObjective, run_search

CACHED_VARIANTS = list(itertools.product(("avg", "max"), (1, 3, 5, 10, 20), ("none", "l2")))


def trial_costs(config, parent_run_id: str) -> list[dict]:
    evidence = gather_evidence(config.selection)
    rows = []
    for backbone in config.selection.backbones:
        features = FeatureCache()
        objective = TrialObjective(config, evidence, features, parent_run_id)
        study = optuna.create_study(direction="maximize")
        for i, (pooling, k, normalize) in enumerate(CACHED_VARIANTS):
            study.enqueue_trial({"backbone": backbone, "layer": "last", "pooling": pooling, "k": k,
                                 "normalize": normalize})
        study.optimize(objective, n_trials=len(CACHED_VARIANTS))
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]
        started = time.perf_counter()
        for trial in study.trials[1:]:
            objective.log_trial(study, trial)
        logging = (time.perf_counter() - started) / (len(study.trials) - 1)
        cold, cached = durations[0], sum(durations[1:]) / (len(durations) - 1)
        rows.append({"backbone": backbone, "cold": cold, "cached": cached, "logged": cached + logging})
    return rows


def grid_best(config) -> tuple[str, float, float]:
    evidence = gather_evidence(config.selection)
    features = FeatureCache(directory=config.selection.feature_dir)
    rows = [score_candidate(c, evidence, features).row
            for c in default_candidates(CandidatePool(config.selection.backbones, config.selection.layers, controls=False))]
    best = max(rows, key=lambda row: (row["synthetic_auroc"], row["candidate"]))
    return best["candidate"], best["synthetic_auroc"], best.get("real_auroc", float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mvtec/bottle")
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad"))
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_args(["--task", args.task, "--data-root", args.data_root, "--trials", str(args.trials),
                             "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--store", f"{tmp}/synthetic",
                             "--storage", f"sqlite:///{tmp}/optuna.db", "--feature-dir", f"{tmp}/features",
                             "--no-register"])
        started = time.perf_counter()
        result = run_search(config)
        search_seconds = time.perf_counter() - started
        grid = grid_best(config)
        tracking.configure(config.selection.tracking_uri, "trial-costs")
        with mlflow.start_run(run_name="trial costs") as parent:
            costs = trial_costs(config, parent.info.run_id)

    print(f"## Trial cost, {args.task} ({len(CACHED_VARIANTS) - 1} cached trials per backbone)\n")
    print("| backbone | trial computing features (s) | cached trial (s) | speed-up | cached trial + MLflow run (s) "
          "| speed-up |")
    print("|---|---|---|---|---|---|")
    for row in costs:
        print(f"| {row['backbone']} | {row['cold']:.2f} | {row['cached']:.4f} | {row['cold'] / row['cached']:.0f}x "
              f"| {row['logged']:.4f} | {row['cold'] / row['logged']:.0f}x |")
    best = result.trials.iloc[0]
    print(f"\n## Search ({args.trials} trials, 1 worker) against the grid of selection.run\n")
    print("| | candidate | synthetic AUROC | real AUROC |")
    print("|---|---|---|---|")
    print(f"| grid (8 pretrained) | {grid[0]} | {grid[1]:.4f} | {grid[2]:.4f} |")
    print(f"| search best | {result.best.name} | {best['synthetic_auroc']:.4f} | {best.get('real_auroc', float('nan')):.4f} |")
    print(f"\nsearch wall time: {search_seconds:.0f} s for {len(result.trials)} trials")


if __name__ == "__main__":
    main()
