"""VLAD in prototype mode against PatchCore and deep kNN on the same backbone, its costs, and a pruned search.

1. Quality: per task, a selection with `--detectors knn,patchcore,vlad` on one backbone (no ensemble, not
   registered): each pretrained candidate's real I-AUROC (and P-AUROC, AUPRO where the task has masks), its
   synthetic AUROC and its synthetic and real rank.
2. Cost, on the first task: VLAD's seconds per training epoch and per image at train and test time (features
   cached), against one forward pass per image.
3. Search: `--space vlad` for --trials trials with the median pruner and without, on the first task: how many
   were pruned, the best trial's synthetic and real AUROC, seconds, and the share spent in backbone forwards.

    python benchmarks/vlad_quality.py [--tasks mvtec/bottle,elpv,textile] [--backbone mobilenet_v2] [--trials 20]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from selection_quality import markdown

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {"real_auroc": "I-AUROC", "real_pixel_auroc": "P-AUROC", "real_aupro": "AUPRO",
           "synthetic_auroc": "synthetic AUROC", "synthetic_rank": "synthetic rank", "real_rank": "real rank"}


def task_args(task: str, data_root: str) -> list[str]:
    from selection.run import DEFAULT_TASK_LIMITS

    if task.startswith(("mvtec/", "visa/")):
        return ["--task", task, "--data-root", data_root]
    return ["--task", task, "--max-support", str(DEFAULT_TASK_LIMITS["max_support"]),
            "--max-validation", str(DEFAULT_TASK_LIMITS["max_validation"])]


def quality(args, directory: Path) -> pd.DataFrame:
    from selection.pipeline import run_selection
    from selection.run import parse_args

    rows = []
    for task in args.tasks.split(","):
        result = run_selection(parse_args([
            *task_args(task, args.data_root), "--detectors", "knn,patchcore,vlad", "--backbones", args.backbone,
            "--ensemble", "none", "--no-register", "--tracking-uri", f"sqlite:///{directory / 'mlflow.db'}",
            "--store", str(directory / "synthetic"), "--feature-dir", str(directory / "features")]))
        board = result.leaderboard[~result.leaderboard["control"]]
        for row in board.to_dict("records"):
            rows.append({"task": task, "candidate": row["candidate"],
                         **{label: row.get(column) for column, label in COLUMNS.items()}})
    return pd.DataFrame(rows)


def costs(args, directory: Path) -> dict:
    from detectors import VLAD, FeatureCache
    from selection.evidence import gather_evidence
    from selection.run import parse_args

    config = parse_args([*task_args(args.tasks.split(",")[0], args.data_root), "--backbones", args.backbone,
                         "--store", str(directory / "synthetic")])
    evidence = gather_evidence(config)
    features = FeatureCache(directory=directory / "features")
    started = time.perf_counter()
    detector = VLAD(backbone=args.backbone, features=features)
    epoch_times, last = [], [time.perf_counter()]

    def tick(_epoch, _detector):
        epoch_times.append(time.perf_counter() - last[0])
        last[0] = time.perf_counter()

    detector.fit(evidence.bank, on_epoch=tick)
    fit_seconds = time.perf_counter() - started
    images = evidence.real_images or evidence.synthetic_images[evidence.validation_sets[0].generator]
    detector.anomaly_scores(images[:4])  # features of these cached
    started = time.perf_counter()
    detector.scores_and_maps(images)
    test_seconds = (time.perf_counter() - started) / len(images)
    forward = FeatureCache()
    started = time.perf_counter()
    forward.feature_maps(args.backbone, "imagenet", detector.layers, images[:16])
    forward_seconds = (time.perf_counter() - started) / 16
    trained_on = 2 * len(evidence.bank)
    # per-epoch timing includes the callback's bookkeeping (the memory refreshed for scoring)
    return {"training images (bank + generated)": trained_on, "epochs": detector.epochs,
            "seconds per epoch": round(float(np.median(epoch_times)), 3),
            "seconds per training image per epoch": round(float(np.median(epoch_times)) / trained_on, 5),
            "fit seconds (forwards of generated anomalies + training)": round(fit_seconds, 1),
            "test seconds per image, features cached (score + map)": round(test_seconds, 4),
            "one forward pass per image": round(forward_seconds, 4)}


def search(args, directory: Path, pruner: str) -> dict:
    import optuna

    from selection.search import parse_args
    from selection.study import run_search

    config = parse_args([*task_args(args.tasks.split(",")[0], args.data_root), "--backbones", args.backbone,
                         "--space", "vlad", "--trials", str(args.trials), "--pruner", pruner, "--no-register",
                         "--tracking-uri", f"sqlite:///{directory / 'mlflow.db'}", "--store", str(directory / "synthetic"),
                         "--feature-dir", str(directory / "features"), "--study-name", f"vlad-{pruner}",
                         "--storage", f"sqlite:///{directory / 'optuna.db'}", *args.search_args.split()])
    spent = _time_features()
    started = time.perf_counter()
    result = run_search(config)
    seconds = time.perf_counter() - started
    trials = optuna.load_study(study_name=f"vlad-{pruner}", storage=config.storage_url).trials
    best = result.trials.iloc[0]
    return {"pruner": pruner, "seconds": round(seconds, 1),
            "share getting features (forwards, cache reads)": f"{spent[0] / seconds:.0%}",
            "completed": sum(t.state.name == "COMPLETE" for t in trials),
            "pruned": sum(t.state.name == "PRUNED" and not t.user_attrs.get("surplus") for t in trials),
            "best synthetic AUROC": round(float(best["synthetic_auroc"]), 4),
            "its real AUROC": round(float(best.get("real_auroc", np.nan)), 4), "best": result.best.name}


def _time_features() -> list[float]:
    """Accumulate the seconds every FeatureCache spends getting features not yet in memory (forward passes
    and reads of its directory) into the returned one-element list."""
    from detectors.features import FeatureCache

    spent = [0.0]
    original = FeatureCache._compute_missing

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    FeatureCache._compute_missing = timed
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mvtec/bottle,elpv,textile")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    parser.add_argument("--search-args", default="", help="more selection.search options for the searches, e.g. "
                                                           "'--max-support 80 --n-anomalies 30'")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: quality, costs, search")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if "quality" not in skip:
            table = quality(args, directory)
            print(markdown(table.astype(object).where(table.notna(), "")), "\n", flush=True)
        if "costs" not in skip:
            print(markdown(pd.DataFrame([costs(args, directory)]).T.reset_index().set_axis(["", "value"], axis=1)),
                  "\n", flush=True)
        if "search" not in skip:
            print(markdown(pd.DataFrame([search(args, directory, "median"), search(args, directory, "none")])),
                  flush=True)


if __name__ == "__main__":
    main()
