"""How fast the dashboard's leaderboard page renders on a store with many runs, against the floor of MLflow
itself listing those runs.

Fills a fresh SQLite store, through selection's own tracking functions, with 20 selection runs of 50 candidates
each (1,000 candidate runs; three generator families, real AUROC, the summary metrics and tags and the
leaderboard artefact a selection records; the AUROCs are random, no image is scored), then measures:

- floor: `MlflowClient.search_runs` listing the 1,000 candidate runs;
- cold render: the page (streamlit's AppTest, the server's side of a first render, no browser) with every
  cached read cleared, so it reads the store;
- cached render: the page again within the cache's lifetime, as a second visitor or a rerun gets it;
- AppTest's own cost, a one-line page, which each render above includes (most of it: AppTest scans the
  installed packages' metadata for components on every run); the page's own time is the render minus it.

Each is the median of --repeats runs in one warm process (imports and MLflow's store connection made
beforehand). Target: cached render within 2x the floor.

    python benchmarks/dashboard_speed.py [--runs 20] [--candidates 50] [--repeats 5] [--store-dir DIR]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "leaderboard.py"
GENERATORS = ("cutpaste", "perlin", "nsa")


def fill_store(uri: str, runs: int, candidates: int, seed: int = 0) -> None:
    from selection import tracking
    from selection.report import Report

    rng = np.random.default_rng(seed)
    tracking.configure(uri, "dashboard-speed")
    for run in range(runs):
        names = [f"knn/backbone_{i // 4}/{'random' if i % 4 == 3 else 'imagenet'}/{('last', 'mid')[i % 2]}/avg/k{run % 5 + 1}"
                 for i in range(candidates)]
        table = pd.DataFrame({"candidate": names, "control": ["/random/" in name for name in names],
                              "ensemble": False,
                              **{f"synthetic_auroc/{g}": rng.uniform(0.5, 1.0, candidates) for g in GENERATORS},
                              "real_auroc": rng.uniform(0.5, 1.0, candidates)})
        table["synthetic_auroc"] = table[[f"synthetic_auroc/{g}" for g in GENERATORS]].mean(axis=1)
        table = table.sort_values("synthetic_auroc", ascending=False, ignore_index=True)
        table.insert(0, "synthetic_rank", np.arange(1, candidates + 1))
        table["real_rank"] = table["real_auroc"].rank(ascending=False, method="min").astype(int)
        pick, oracle = table["candidate"].iloc[0], table.loc[table["real_auroc"].idxmax(), "candidate"]
        regret = float(table["real_auroc"].max() - table["real_auroc"].iloc[0])
        metrics = {"pick_synthetic_auroc": float(table["synthetic_auroc"].iloc[0]), "pick_regret": regret,
                   "pick_real_auroc": float(table["real_auroc"].iloc[0]), "confidence_over_prior": 0.8,
                   **{f"{name}/{family}": value for family in (*GENERATORS, "mean")
                      for name, value in (("kendall_tau", 0.3), ("kendall_p", 0.01), ("regret", regret),
                                          ("largest_model_regret", 0.01))}}
        tags = {"pick": pick, "synthetic_winner": pick, "prior": table["candidate"].iloc[1],
                "decision": "benchmark data", "warnings": "none", "oracle/mean": oracle}
        params = {"task": "benchmark/speed", "generators": ",".join(GENERATORS), "seed": run, "confidence": 0.95}
        with tracking.parent_run("benchmark/speed", "selection", params, [], tags):
            for row in table.to_dict("records"):
                tracking.log_candidate("benchmark/speed", row["candidate"], {"candidate": row["candidate"]},
                                       {k: v for k, v in row.items() if "auroc" in k}, [], row["control"])
            tracking.log_summary(tracking.Summary(table, metrics, tags, Report("benchmark", table, [])))


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=50, help="candidate runs per selection run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--store-dir", type=Path, help="where the store goes (default: a temporary directory)")
    args = parser.parse_args(argv)

    import streamlit as st
    from mlflow import MlflowClient
    from streamlit.testing.v1 import AppTest

    directory = args.store_dir or Path(tempfile.mkdtemp(prefix="dashboard-speed-"))
    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory.resolve() / 'mlflow.db'}"
    started = time.perf_counter()
    fill_store(uri, args.runs, args.candidates)
    print(f"filled {uri} with {args.runs} selection runs x {args.candidates} candidates in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("dashboard-speed").experiment_id

    def list_candidate_runs() -> None:
        listed, token = 0, None
        while True:
            page = client.search_runs([experiment], "tags.kind = 'candidate'", max_results=1000, page_token=token)
            listed, token = listed + len(page), page.token
            if not token:
                break
        assert listed == args.runs * args.candidates, listed

    sys.argv = [str(DASHBOARD), "--tracking-uri", uri]

    def render(clear: bool) -> None:
        if clear:
            st.cache_data.clear()
        app = AppTest.from_file(str(DASHBOARD), default_timeout=300)
        app.run()
        assert not app.exception and len(app.dataframe[0].value) == args.candidates, "the leaderboard did not render"

    def one_line_page() -> None:
        AppTest.from_string("import streamlit as st\nst.write('x')").run()

    render(clear=True)  # imports, MLflow's store connection
    floor = median_seconds(list_candidate_runs, args.repeats)
    overhead = median_seconds(one_line_page, args.repeats)
    cold = median_seconds(lambda: render(clear=True), args.repeats)
    cached = median_seconds(lambda: render(clear=False), args.repeats)
    print(f"| measure ({args.runs} selection runs, {args.runs * args.candidates} candidate runs; median of "
          f"{args.repeats}) | seconds | x floor | the page alone (minus AppTest's cost), s | x floor |")
    print("|---|---|---|---|---|")
    print(f"| floor: MLflow lists the candidate runs | {floor:.3f} | 1.00 | | |")
    print(f"| AppTest's own cost (a one-line page) | {overhead:.3f} | {overhead / floor:.2f} | | |")
    for name, seconds in (("leaderboard page, cold", cold), ("leaderboard page, cached", cached)):
        print(f"| {name} | {seconds:.3f} | {seconds / floor:.2f} | {seconds - overhead:.3f} | "
              f"{(seconds - overhead) / floor:.2f} |")
    print(f"\ncached render {'within' if cached <= 2 * floor else 'ABOVE'} 2x the floor")


if __name__ == "__main__":
    main()
