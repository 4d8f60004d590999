"""Ways to turn synthetic evidence into a pick, compared on the recorded scores of the selection-quality
benchmark (`selection_quality.py`, which writes them to mlruns/selection-quality-scores).

Each dump holds, for one task and seed, every candidate's anomaly scores on each synthetic set and on the
real validation set, so every rule below is evaluated on exactly the same evidence, in seconds:

- baselines: the largest pretrained model (the prior), a random pretrained candidate (expected regret);
- naive SWSA on each generator family and on their mean AUROC, and Borda rank aggregation over families;
- the bootstrap rule (overrule the prior when P(winner beats prior) >= t) on the mean of the families, and
  with every family required to be confident on its own;
- candidate consensus (the pretrained candidate whose synthetic scores agree best with the others' mean);
- score ensembles (detectors.ScoreEnsemble, members weighted by backbone size as the product weighs them)
  of all pretrained candidates, of those at the last layer, and of the three best by synthetic AUROC; the
  last-layer ensemble with equal weights; and the last-layer ensemble as the prior, overruled only when
  every family is 99% confident.

First, how well each generator family (and the mean of the families) ranks the pretrained candidates:
Kendall tau-b of their synthetic AUROC against the real one, mean and spread over runs, then per task.

Regret is measured against the best individual candidate (an ensemble can go below zero). Per rule: mean
regret over tasks, the number of tasks where its mean regret is at or below the largest model's and
strictly below it, its worst excess over the largest model, and, for rules that overrule a prior, how
often an overrule really was better.

    python benchmarks/decision_rules.py [SCORES_DIR] [--anomalies K] [--out FILE]

Prints both tables and writes them, with the command and the runs they were measured on, to --out
(default docs/selection-quality/decision-rules.md, which the study page docs/selection-quality.md embeds:
regenerate the page afterwards with `python benchmarks/selection_quality.py --from-runs
docs/selection-quality/runs.csv`). Point --out elsewhere for any other set of dumps.

Several draws of one family: with the held-out normals shared, the mean AUROC over k draws of n anomalies is
the AUROC on their k n anomalies pooled, so a benchmark run with `--n-anomalies 300` judged in full is
"three draws", and judged with `--anomalies 100` is one.
"""

import argparse
import shlex
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import roc_auc_score

from detectors import ScoreEnsemble, create_backbone
from selection.confidence import bootstrap_beats
from selection_quality import markdown

PRIOR = "knn/efficientnet_lite2/imagenet/last/avg/k3"  # the largest offline backbone at its last layer
PATCHCORE_PRIOR = "patchcore/efficientnet_lite2/imagenet/early+mid/c0.1/p3/k1"  # PatchCore's, where it ran
N_BOOTSTRAP = 400


class Run:
    """One dumped selection run, with candidates' (and extra ensembles') synthetic and real AUROC."""

    def __init__(self, path: Path, anomalies: int | None = None):
        """`anomalies`: keep only the first that many anomalies of each synthetic set (all held-out normals)."""
        data = np.load(path, allow_pickle=False)
        self.task, seed = path.stem.rsplit("_seed", 1)
        self.seed = int(seed)
        self.names = [str(n) for n in data["names"]]
        self.pretrained = [i for i, control in enumerate(data["control"]) if not control]
        self.real_labels = data["real_labels"]
        self.real_scores = list(data["real_scores"])
        self.generators = sorted(key.split("/", 1)[1] for key in data.files if key.startswith("labels/"))
        kept = {g: _first_anomalies(data[f"labels/{g}"], anomalies) for g in self.generators}
        self.labels = {g: data[f"labels/{g}"][kept[g]] for g in self.generators}
        self.scores = {g: list(data[f"scores/{g}"][:, kept[g]]) for g in self.generators}
        self.prior = self.names.index(PRIOR)
        self.n_single = len(self.names)
        real = [roc_auc_score(self.real_labels, s) for s in self.real_scores]
        self.best_real = max(real)

    def synthetic(self, i: int, generators=None) -> float:
        return float(np.mean([roc_auc_score(self.labels[g], self.scores[g][i]) for g in generators or self.generators]))

    def real(self, i: int) -> float:
        return roc_auc_score(self.real_labels, self.real_scores[i])

    def regret(self, i: int) -> float:
        return self.best_real - self.real(i)

    def add_ensemble(self, members: list[int], weigh_by_size: bool = True) -> int:
        """Append the score ensemble of `members` as one more candidate; returns its index."""
        first = self.generators[0]
        normals = self.labels[first] == 0
        weights = [backbone_size(self.names[i].split("/")[1]) for i in members] if weigh_by_size else None
        ensemble = ScoreEnsemble.from_heldout_scores(members, [self.scores[first][i][normals] for i in members],
                                                     weights)
        for g in self.generators:
            self.scores[g].append(ensemble.combine([self.scores[g][i] for i in members]))
        self.real_scores.append(ensemble.combine([self.real_scores[i] for i in members]))
        return len(self.real_scores) - 1

    def beats(self, first: int, second: int, generators) -> float:
        return bootstrap_beats({g: self.labels[g] for g in generators}, {g: self.scores[g][first] for g in generators},
                               {g: self.scores[g][second] for g in generators}, N_BOOTSTRAP, seed=self.seed)


def _first_anomalies(labels: np.ndarray, anomalies: int | None) -> np.ndarray:
    """Which entries to keep: every normal and the first `anomalies` anomalies (all where None)."""
    is_anomaly = labels == 1
    if anomalies is None:
        return np.ones(len(labels), dtype=bool)
    if anomalies < 1 or anomalies > is_anomaly.sum():
        raise SystemExit(f"--anomalies must lie in 1..{is_anomaly.sum()} (the anomalies each set holds)")
    return ~is_anomaly | (np.cumsum(is_anomaly) <= anomalies)


@cache
def backbone_size(name: str) -> int:
    return create_backbone(name, "imagenet").n_params


def best(run: Run, pool: list[int], generators=None) -> int:
    return max(pool, key=lambda i: run.synthetic(i, generators))


def confident_overrule(run: Run, pool: list[int], prior: int, threshold: float, every_family: bool) -> tuple[int, int]:
    """(the synthetic winner of `pool` if the bootstrap says it beats `prior` with `threshold`, else `prior`;
    the prior)."""
    winner = best(run, pool)
    if winner == prior:
        return prior, prior
    if every_family:
        confidence = min(run.beats(winner, prior, [g]) for g in run.generators)
    else:
        confidence = run.beats(winner, prior, run.generators)
    return (winner if confidence >= threshold else prior), prior


def borda(run: Run) -> int:
    ranks = np.mean([np.argsort(np.argsort([-run.synthetic(i, [g]) for i in run.pretrained]))
                     for g in run.generators], axis=0)
    return run.pretrained[int(np.argmin(ranks))]


def consensus(run: Run) -> int:
    first = run.generators[0]
    normals = run.labels[first] == 0
    standardised = {i: np.concatenate([(run.scores[g][i] - run.scores[first][i][normals].mean())
                                       / run.scores[first][i][normals].std() for g in run.generators])
                    for i in run.pretrained}
    agreement = {i: spearmanr(standardised[i], np.mean([standardised[j] for j in run.pretrained if j != i], axis=0))[0]
                 for i in run.pretrained}
    return max(agreement, key=agreement.get)


def family_taus(runs: list[Run]) -> pd.DataFrame:
    """Kendall tau of each family's (and the families' mean) synthetic ranking of the pretrained candidates
    against the real ranking: one row per run and family."""
    rows = []
    for run in runs:
        real = [roc_auc_score(run.real_labels, run.real_scores[i]) for i in run.pretrained]
        for family, generators in [(g, [g]) for g in run.generators] + [("mean of families", None)]:
            tau = kendalltau([run.synthetic(i, generators) for i in run.pretrained], real, variant="b")[0]
            rows.append({"task": run.task, "seed": run.seed, "family": family, "tau": tau})
    return pd.DataFrame(rows)


def tau_table(taus: pd.DataFrame) -> pd.DataFrame:
    """Per task (rows) and family (columns) the mean tau; last, every run's mean ± std."""
    per_task = taus.groupby(["task", "family"])["tau"].mean().unstack("family").map(lambda tau: f"{tau:.2f}")
    overall = taus.groupby("family")["tau"].agg(["mean", "std"])
    per_task.loc["all runs"] = [f"{overall.loc[f, 'mean']:.3f} ± {overall.loc[f, 'std']:.3f}" for f in per_task]
    return per_task


def rules(run: Run) -> dict[str, tuple[int, int | None]]:
    """Every rule's pick, and the prior it may overrule (None for a rule without one)."""
    last = [i for i in run.pretrained if "/last/" in run.names[i]]
    top3 = sorted(run.pretrained, key=lambda i: -run.synthetic(i))[:3]
    ensembles = {"ensemble of all pretrained": run.add_ensemble(run.pretrained),
                 "ensemble of the last layers": run.add_ensemble(last),
                 "ensemble of the last layers, equal weights": run.add_ensemble(last, weigh_by_size=False),
                 "ensemble of the synthetic top 3": run.add_ensemble(top3)}
    picks = {"largest model": (run.prior, None)}
    for g in run.generators:
        picks[f"naive SWSA, {g}"] = (best(run, list(range(run.n_single)), [g]), None)
    picks["naive SWSA, mean of families"] = (best(run, list(range(run.n_single))), None)
    picks["Borda over families"] = (borda(run), None)
    for threshold in (0.95, 0.99):
        picks[f"bootstrap >= {threshold}, mean"] = confident_overrule(run, run.pretrained, run.prior, threshold, False)
        picks[f"bootstrap >= {threshold}, every family"] = confident_overrule(run, run.pretrained, run.prior,
                                                                             threshold, True)
    picks["candidate consensus"] = (consensus(run), None)
    picks.update({name: (index, None) for name, index in ensembles.items()})
    for threshold in (0.95, 0.99):
        picks[f"last-layer ensemble, overruled at {threshold} by every family"] = confident_overrule(
            run, run.pretrained + [ensembles["ensemble of the last layers"]], ensembles["ensemble of the last layers"],
            threshold, True)
    patchcore = [i for i in run.pretrained if run.names[i].startswith("patchcore/")]
    if patchcore:
        picks.update(cross_family_rules(run, last, patchcore))
    return picks


def cross_family_rules(run: Run, last_knn: list[int], patchcore: list[int]) -> dict[str, tuple[int, int | None]]:
    """Priors when PatchCore candidates stand beside deep kNN: PatchCore's standard configuration on the
    largest backbone, the ensemble of the PatchCore candidates, and the ensemble across families (the
    last-layer kNN candidates with the PatchCore ones); each alone and overruled at 0.95 by every family."""
    priors = {"largest PatchCore": run.names.index(PATCHCORE_PRIOR),
              "PatchCore ensemble": run.add_ensemble(patchcore),
              "cross-family ensemble": run.add_ensemble(last_knn + patchcore)}
    picks = {}
    for name, prior in priors.items():
        picks[name] = (prior, None)
        picks[f"{name}, overruled at 0.95 by every family"] = confident_overrule(
            run, run.pretrained + [prior], prior, 0.95, True)
    return picks


def evaluate(runs: list[Run], rule_picks: Callable[[Run], dict[str, tuple[int, int | None]]] = rules) -> pd.DataFrame:
    rows = []
    for run in runs:
        random_regret = float(np.mean([run.regret(i) for i in run.pretrained]))
        for name, (pick, prior) in rule_picks(run).items():
            overruled = prior is not None and pick != prior
            rows.append({"task": run.task, "seed": run.seed, "rule": name, "regret": run.regret(pick),
                         "real": run.real(pick), "overruled": overruled,
                         "right": overruled and run.regret(pick) < run.regret(prior)})
        rows.append({"task": run.task, "seed": run.seed, "rule": "random pretrained", "regret": random_regret,
                     "real": float(np.mean([run.real(i) for i in run.pretrained])), "overruled": False,
                     "right": False})
    return pd.DataFrame(rows)


def table(results: pd.DataFrame) -> pd.DataFrame:
    per_task = results.groupby(["rule", "task"])["regret"].mean().unstack("task")
    largest = per_task.loc["largest model"]
    summary = pd.DataFrame({
        "mean regret": per_task.mean(axis=1),
        "mean real AUROC of the pick": results.groupby(["rule", "task"])["real"].mean().unstack("task").mean(axis=1),
        "tasks <= largest": (per_task.le(largest + 1e-9, axis=1)).sum(axis=1).astype(int),
        "tasks < largest": (per_task.lt(largest - 1e-9, axis=1)).sum(axis=1).astype(int),
        "worst excess over largest": per_task.sub(largest, axis=1).max(axis=1),
    })
    overrules = results[results["overruled"]].groupby("rule")["right"].agg(["size", "mean"])
    summary["overrules (right)"] = [
        f"{int(overrules.loc[r, 'size'])} ({overrules.loc[r, 'mean']:.0%})" if r in overrules.index else "-"
        for r in summary.index]
    return summary.sort_values("mean regret")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump_dir", type=Path, nargs="?", default=Path("mlruns/selection-quality-scores"))
    parser.add_argument("--anomalies", type=int, help="judge on the first this many anomalies of each synthetic "
                        "set only (e.g. one draw's worth of a run made with --n-anomalies 300)")
    parser.add_argument("--out", type=Path, default=Path("docs/selection-quality/decision-rules.md"),
                        help="where the tables go, as Markdown (default docs/selection-quality/decision-rules.md, "
                             "the record the study page embeds)")
    args = parser.parse_args()
    runs = [Run(path, args.anomalies) for path in sorted(args.dump_dir.glob("*.npz"))]
    if not runs:
        raise SystemExit(f"no score dumps in {args.dump_dir}: run benchmarks/selection_quality.py first")
    measured = f"{len(runs)} runs over {len({run.task for run in runs})} tasks"
    taus = markdown(tau_table(family_taus(runs)).reset_index())
    decisions = markdown(table(evaluate(runs)).reset_index().round(4))
    print(f"{measured}\n\nKendall tau among the pretrained candidates, per family:\n\n{taus}\n\n"
          f"Decision rules:\n\n{decisions}")
    command = shlex.join(["python", "benchmarks/decision_rules.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "<!-- Written by benchmarks/decision_rules.py; do not edit it by hand. -->\n"
        f"Produced by `{command}` on the score dumps in `{args.dump_dir.as_posix()}`: {measured}"
        + (f", each synthetic set judged on its first {args.anomalies} anomalies" if args.anomalies else "")
        + ".\n\n**Kendall tau among the pretrained candidates, per family** (synthetic AUROC against real; per "
        "task the mean over its runs, last the mean ± std over every run):\n\n"
        f"{taus}\n\n**Decision rules** (regret against the best individual candidate; per rule the mean over "
        "tasks of each task's mean regret):\n\n"
        f"{decisions}\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
