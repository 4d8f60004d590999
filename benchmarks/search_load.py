"""Load on one shared study: `selection.search --workers N` on a PostgreSQL study, on cached features, for T
trials; then the same with one running worker killed (SIGKILL) every K seconds. Prints per run: seconds,
trials per second, completed, failed (a killed worker's trial, failed by its stopped heartbeat) and lost
trials (asked for, never completed), and whether MLflow holds each completed trial once.

    python benchmarks/search_load.py [--storage postgresql+psycopg2://user@host/db] [--workers 8] [--trials 200]
                                     [--kill-every 30] [--task mvtec/bottle --data-root ../shared/data/mvtec_ad]

Without --storage it starts a throwaway PostgreSQL server on loopback (Debian's `postgresql` package, as the
tests do). A first small search computes the features and the synthetic set, so the measured runs only score.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SELECTION = ["--max-support", "80", "--max-validation", "40", "--n-anomalies", "30", "--backbones", "mobilenet_v2",
             "--generators", "cutpaste", "--no-register", "--heartbeat-seconds", "2"]


def search(args, directory: Path, storage: str, study: str, trials: int, workers: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "selection.search", "--task", args.task, "--data-root", args.data_root, *SELECTION,
               "--tracking-uri", f"sqlite:///{directory / 'mlflow.db'}", "--store", str(directory / "synthetic"),
               "--feature-dir", str(directory / "features"), "--storage", storage, "--study-name", study,
               "--trials", str(trials), "--workers", str(workers), "--experiment", "load"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_workers(storage: str, study_name: str, every: float, stop: threading.Event, killed: list) -> None:
    """Every `every` seconds, SIGKILL the worker process of one running trial."""
    import optuna
    from optuna.trial import TrialState

    while not stop.wait(every):
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            continue
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = int(trial.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if pid and pid not in killed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
                break


def measure(args, directory: Path, storage: str, study_name: str, kill_every: float | None) -> dict:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_workers, args=(storage, study_name, kill_every, stop, killed)) \
        if kill_every else None
    started = time.perf_counter()
    process = search(args, directory, storage, study_name, args.trials, args.workers)
    if killer:
        killer.start()
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    if killer:
        killer.join()
    if process.returncode != 0:
        raise SystemExit(f"the search failed ({process.returncode}): {err[-3000:]}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = [trial.state for trial in study.trials]
    completed = states.count(TrialState.COMPLETE)
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    parent = study.user_attrs["mlflow_run_id"]
    logged = client.search_runs([client.get_run(parent).info.experiment_id],
                                f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)
    numbers = [int(run.data.tags["optuna.trial"]) for run in logged]
    complete_numbers = sorted(trial.number for trial in study.trials if trial.state == TrialState.COMPLETE)
    return {"workers killed": len(killed), "seconds": round(seconds, 1),
            "trials per second": round(completed / seconds, 2), "completed": completed,
            "failed": states.count(TrialState.FAIL), "lost": args.trials - completed,
            "MLflow: each completed trial once": sorted(numbers) == complete_numbers,
            "trial runs in MLflow": len(numbers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="a PostgreSQL SQLAlchemy URL (default: a throwaway local server)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills in the second run")
    parser.add_argument("--task", default="mvtec/bottle")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    args = parser.parse_args()
    if args.storage:
        server = nullcontext(args.storage)
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from postgres_server import running_server

        server = running_server()
    with server as storage, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        warm = search(args, directory, storage, "warm-up", 2, 1)
        if warm.wait() != 0:
            raise SystemExit(f"the warm-up search failed: {warm.stderr.read()[-3000:]}")
        rows = {"steady": measure(args, directory, storage, "steady", None),
                f"a worker killed every {args.kill_every:g} s": measure(args, directory, storage, "killed",
                                                                          args.kill_every)}
    print(f"{args.workers} workers, {args.trials} trials, one PostgreSQL study each, features cached; "
          f"{os.cpu_count()} CPU cores\n")
    keys = list(next(iter(rows.values())))
    print("| run | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row[key]) for key in keys) + " |")


if __name__ == "__main__":
    main()
