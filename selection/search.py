"""`python -m selection.search`: an Optuna search over a detector kind's hyper-parameters, scored on the
synthetic validation set, with its trials in MLflow and the best one promoted like a selection's pick."""

import argparse
import sys

from selection.config import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, PRUNERS, SearchConfig
from selection.run import add_selection_arguments, integer_option, selection_config
from selection.search_space import list_search_spaces


def parse_args(argv=None) -> SearchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m selection.search",
        description="Search detector hyper-parameters with Optuna, scored on synthetic AUROC (SWSA); every trial "
                    "is an MLflow run and the best is registered with champion/challenger promotion.",
    )
    add_selection_arguments(parser)
    parser.add_argument("--space", default="knn", choices=list_search_spaces(), help="search space (default knn)")
    parser.add_argument("--trials", type=integer_option(1), default=50,
                        help="finished (completed or pruned) trials the study should have in total, over all "
                             "workers and resumptions (default 50)")
    parser.add_argument("--workers", type=integer_option(1), default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--storage", help=f"Optuna storage URL, e.g. postgresql://user:pass@host/db "
                                          f"(default {DEFAULT_STORAGE})")
    parser.add_argument("--study-name", help="default: <task>/<space>/<synthetic set digest>")
    parser.add_argument("--heartbeat-seconds", type=integer_option(1), default=10,
                        help="trial heartbeat; a trial silent for 3x this long is marked failed (default 10)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median",
                        help="stops trials whose synthetic AUROC lags after an epoch, for detectors trained in "
                             "epochs (VLAD): Optuna's median or Hyperband pruner, or none (default median)")
    args = vars(parser.parse_args(argv))
    return SearchConfig(selection=selection_config(args), space=args["space"], n_trials=args["trials"],
                        workers=args["workers"], storage=args["storage"], study_name=args["study_name"],
                        heartbeat_seconds=args["heartbeat_seconds"], pruner=args["pruner"])


def main(argv=None) -> int:
    config = parse_args(argv)
    import optuna  # with torch and MLflow: once the arguments are good

    from selection.study import format_search_report, run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and the report say it all
    try:
        result = run_search(config)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's, not the input's: a full disk, a lost mount
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_search_report(result))
    if result.promotion:
        print(result.promotion)
    elif not result.new_trials:
        print("no new trials: the study already had its total; nothing registered")
    print(f"MLflow run {result.run_id}; browse with: mlflow ui --backend-store-uri "
          f"{config.selection.tracking_uri or DEFAULT_TRACKING_URI}; trials with: optuna-dashboard {config.storage_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
