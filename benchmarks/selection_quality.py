"""How good the selection is, against real labels, over tasks and seeds: the SWSA protocol through the
product's own `run_selection` with its defaults (CutPaste, Perlin and NSA sets; the default candidate pool:
deep kNN k = 3 over the offline backbones with ImageNet and random weights, last and mid layers, two pixel
baselines, and PatchCore's standard configuration on each backbone with one random-weight control; the score
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

Per run it also records Kendall tau within each detector family and, over the candidates with anomaly maps,
of synthetic against real P-AUROC and AUPRO, and the real AUROC of the default pick and of the largest model.

Writes the table (table.md), the runs (runs.csv), every candidate of every run (leaderboards.csv) and the
figures (synthetic_vs_real.png, regret.png) into
--out-dir (docs/selection-quality), the study page beside it (--page, default docs/selection-quality.md:
the tables with the prose that explains them, every number in it formatted from the runs; it embeds
decision-rules.md from --out-dir, which benchmarks/decision_rules.py writes), and every run's per-image
scores into --scores-dir (for benchmarks/decision_rules.py); every selection is an MLflow run, and a
summary run carries the table, the page and the figures.

    python benchmarks/selection_quality.py [--tasks mvtec/bottle,elpv,...] [--seeds 5] [--data-root ...]

`--from-runs docs/selection-quality/runs.csv` makes no selection: it rewrites table.md, regret.png and the
page from the recorded runs, in seconds (synthetic_vs_real.png needs every candidate's AUROC, which
runs.csv does not hold, so it is left as the full run wrote it).

Tasks by default: mvtec/bottle (from --data-root), elpv, textile and the ten Fashion-MNIST one-vs-rest tasks
(those three subsampled to 240 support and 200 validation images, as the embedded default task is).
Features are cached in --feature-dir: the first run computes them (hours on 2 CPU cores), a re-run takes
minutes.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from selection.confidence import CALIBRATION_FILE, DEFAULT_CONFIDENCE, Calibration, calibration_key
from selection.tasks import FASHION_MNIST_CLASSES, FASHION_MNIST_SIDE

# MLflow, torch (through selection.pipeline) and matplotlib are imported where they are needed, so --help and
# --from-runs start in seconds.

DEFAULT_TASKS = ("mvtec/bottle", "elpv", "textile", *(f"fashion-mnist/{c}" for c in FASHION_MNIST_CLASSES))
METHODS = {"naive": "naive SWSA", "default": "default decision", "largest": "largest model",
           "random_pretrained": "random pretrained"}
CALIBRATION_LEVELS = (0.0, 0.5, 0.9, 0.95, 0.99)  # 0: every contested run, so any confidence has a measure


def one_run(task: str, seed: int, data_root: str, tracking_uri: str, store: str, feature_dir: str,
            extra_args: list[str], dump_dir: Path) -> tuple[dict, pd.DataFrame]:
    """One selection: its summary row and its leaderboard (with task, seed and which row is the prior)."""
    from selection.pipeline import MEAN, run_selection
    from selection.run import DEFAULT_TASK_LIMITS, parse_args

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
           **family_taus(pretrained), **{f"regret_{m}": value for m, value in regret.items()},
           "real_default": float(board.loc[decision.chosen, "real_auroc"]),
           "real_largest": float(single.loc[comparison.baseline, "real_auroc"]),
           "pick_default": decision.chosen, "prior": decision.prior, "winner": decision.winner,
           "overruled": decision.chosen != decision.prior, "confidence": decision.confidence,
           "calibrated_confidence": decision.calibrated_confidence,
           "winner_really_better": bool(board.loc[decision.winner, "real_auroc"]
                                         > board.loc[decision.prior, "real_auroc"])}
    leaderboard = result.leaderboard.assign(task=task, seed=seed,
                                            prior=result.leaderboard["candidate"] == comparison.baseline)
    return row, leaderboard


def family_taus(pretrained: pd.DataFrame) -> dict[str, float]:
    """Kendall tau-b of the mean synthetic against the real ranking of the pretrained individual candidates
    within each detector family (the name's first part: knn, patchcore), where a family has two or more; and,
    over the candidates with anomaly maps, of synthetic against real P-AUROC and AUPRO (NaN where undefined)."""
    from scipy.stats import kendalltau

    def tau(frame: pd.DataFrame, synthetic: str, real: str) -> float:
        frame = frame[[synthetic, real]].dropna() if {synthetic, real} <= set(frame) else frame.iloc[:0]
        return float(kendalltau(frame[synthetic], frame[real], variant="b")[0]) if len(frame) >= 2 else float("nan")

    family = pretrained.index.str.split("/").str[0]
    taus = {f"tau_{name}": tau(pretrained[family == name], "synthetic_auroc", "real_auroc")
            for name in sorted(set(family))}
    taus["tau_pixel_auroc"] = tau(pretrained, "synthetic_pixel_auroc", "real_pixel_auroc")
    taus["tau_aupro"] = tau(pretrained, "synthetic_aupro", "real_aupro")
    return taus


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


def against_largest(runs: pd.DataFrame) -> dict:
    """The default decision against the largest model, by each task's mean regret."""
    per_task = runs.groupby("task", sort=False)[["regret_default", "regret_largest"]].mean()
    return {"tasks": len(per_task),
            "at_or_below": int((per_task["regret_default"] <= per_task["regret_largest"] + 1e-9).sum()),
            "below": int((per_task["regret_default"] < per_task["regret_largest"] - 1e-9).sum()),
            "per_task_default": per_task["regret_default"]}


def tasks_against_largest(runs: pd.DataFrame) -> str:
    counts = against_largest(runs)
    return (f"default decision against the largest model, mean regret per task: at or below on "
            f"{counts['at_or_below']} of {counts['tasks']} tasks, strictly below on {counts['below']}")


def calibration_levels(runs: pd.DataFrame) -> list[list]:
    """[level, runs, winner really better] over runs whose synthetic winner was not the prior."""
    contested = runs[runs["winner"] != runs["prior"]]
    return [[level, int((contested["confidence"] >= level).sum()),
             int(contested.loc[contested["confidence"] >= level, "winner_really_better"].sum())]
            for level in CALIBRATION_LEVELS]


def held_out(runs: pd.DataFrame, threshold: float = DEFAULT_CONFIDENCE) -> dict | None:
    """The calibration checked out of sample: each task's contested runs get the calibrated confidence that
    the other tasks' runs would state, compared with how often their winner really was better. None when no
    run was contested."""
    stated, right = [], []
    for task, group in runs.groupby("task"):
        others = Calibration((), tuple(map(tuple, calibration_levels(runs[runs["task"] != task]))), "")
        contested = group[group["winner"] != group["prior"]]
        stated += [others.calibrated(confidence)[0] for confidence in contested["confidence"]]
        right += list(contested["winner_really_better"])
    if not stated:
        return None
    stated, right = np.array(stated), np.array(right, dtype=bool)
    confident = stated >= threshold
    return {"runs": len(stated), "stated_mean": stated.mean(), "stated_max": stated.max(),
            "really_better": right.mean(), "threshold": threshold, "confident": int(confident.sum()),
            "confident_right": int(right[confident].sum())}


def held_out_calibration(runs: pd.DataFrame, threshold: float = DEFAULT_CONFIDENCE) -> str:
    check = held_out(runs, threshold)
    if check is None:
        return "calibration left out task by task: no run's synthetic winner differed from the prior"
    return (f"calibration left out task by task (each task's runs judged with the other tasks' calibration): "
            f"{check['runs']} contested runs, stated confidence {check['stated_mean']:.0%} on average (at most "
            f"{check['stated_max']:.0%}), winner really better in {check['really_better']:.0%}; stated >= "
            f"{threshold:.0%} in {check['confident']} runs"
            + (f", really better in {check['confident_right']}" if check["confident"] else ""))


def calibration_text(levels: list[list]) -> str:
    lines = ["| bootstrap confidence at least | runs | winner really better |", "|---|---|---|"]
    lines += [f"| {level:.0%} | {n} | {right}" + (f" ({right / n:.0%})" if n else "") + " |"
              for level, n, right in levels]
    return "\n".join(lines)


def write_calibration(key: str, levels: list[list], measured_on: str, path: Path = CALIBRATION_FILE) -> None:
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[key] = {"levels": levels, "measured_on": measured_on}
    partial = path.with_name(f".{path.name}.partial")  # renamed into place: the product never reads half a file
    partial.write_text(json.dumps(table, indent=2) + "\n")
    os.replace(partial, path)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def report(runs: pd.DataFrame) -> str:
    """table.md: the per-task table, the tasks against the largest model and both calibrations."""
    return "\n\n".join([markdown(summary(runs)), tasks_against_largest(runs),
                        "calibration (runs whose synthetic winner was not the prior):\n"
                        + calibration_text(calibration_levels(runs)),
                        held_out_calibration(runs)])


# The study page. Its prose is static; every number in it is formatted from the runs (or comes from the
# decision-rules record it embeds, which benchmarks/decision_rules.py writes).

STRETCH_GOAL = 0.01  # the regret the default decision should stay at or below on every task
REPO = Path(__file__).resolve().parents[1]


def _num(value: float, digits: int) -> str:
    """A number in prose: a real minus sign."""
    return f"{value:.{digits}f}".replace("-", "\u2212")


def _short(task: str) -> str:
    return task.rsplit("/", 1)[-1]


def _link(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target.resolve(), page.resolve().parent)).as_posix()


def _describe_tasks(tasks: list[str]) -> str:
    fashion = [task for task in tasks if task.startswith("fashion-mnist/")]
    named = [f"`{task}`" for task in tasks if task not in fashion]
    if len(fashion) > 1:
        named.append(f"the {len(fashion)} Fashion-MNIST one-vs-rest tasks")
    else:
        named += [f"`{task}`" for task in fashion]
    return ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]


def _describe_seeds(runs: pd.DataFrame) -> str:
    counts = runs.groupby("task", sort=False).size()
    if counts.min() == counts.max():
        return f"{counts.min()} seed{'s' if counts.min() > 1 else ''} each"
    return f"{counts.min()} to {counts.max()} seeds per task (the table's `runs` column)"


def _shipped_calibration(levels: list[list]) -> str | None:
    """The key under which selection/calibration.json ships exactly these levels, if it does."""
    if not CALIBRATION_FILE.is_file():
        return None
    for key, entry in json.loads(CALIBRATION_FILE.read_text()).items():
        if [list(level) for level in entry.get("levels", [])] == [list(level) for level in levels]:
            return key
    return None


def measuring_command(runs: pd.DataFrame, selection_args: str) -> str:
    """The benchmark command that made these runs: the default tasks and seeds write the shipped calibration."""
    tasks = list(dict.fromkeys(runs["task"]))
    seeds = runs.groupby("task")["seed"].nunique()
    command = "python benchmarks/selection_quality.py"
    if tasks != list(DEFAULT_TASKS):
        command += f" --tasks {','.join(tasks)}"
    if seeds.nunique() == 1 and seeds.iloc[0] != 5:
        command += f" --seeds {seeds.iloc[0]}"
    if selection_args:
        return command + f" --selection-args {shlex.quote(selection_args)}"
    return command + " --write-calibration"


def page(runs: pd.DataFrame, out_dir: Path, page_path: Path, command: str, selection_args: str = "") -> str:
    """The study page (Markdown) for these runs."""
    from selection.run import DEFAULT_TASK_LIMITS

    tasks = list(dict.fromkeys(runs["task"]))
    n_runs = len(runs)
    mean = {m: runs[f"regret_{m}"].mean() for m in METHODS}
    counts = against_largest(runs)
    levels = calibration_levels(runs)
    contested_runs, contested_right = levels[0][1], levels[0][2]
    at_threshold = next((level for level in levels if level[0] == DEFAULT_CONFIDENCE), None)
    overruled = int(runs["overruled"].sum())
    priors = list(dict.fromkeys(runs["prior"]))
    subsampled = [task for task in tasks if not task.startswith(("mvtec/", "visa/"))]
    link = lambda name: _link(out_dir / name, page_path)  # noqa: E731
    measure = measuring_command(runs, selection_args)
    out = []

    out.append(f"""<!-- Written by benchmarks/selection_quality.py; do not edit it by hand. Regenerate it with:
     {command} -->

# Selection quality across tasks

What the synthetic ranking is worth against real labels, and what the default decision of
`python -m selection.run` gains over "take the largest model". Measured with:

```
{measure}
python benchmarks/decision_rules.py
```

The first command (it needs the test extra and Debian's `dataset-fashion-mnist`) runs the SWSA protocol
through `run_selection` with the product's defaults on {_describe_tasks(tasks)}, {_describe_seeds(runs)};
every seed draws its own split and anomalies.""")
    if subsampled:
        out[-1] += (f" {_describe_tasks(subsampled)} are subsampled to {DEFAULT_TASK_LIMITS['max_support']} "
                    f"support / {DEFAULT_TASK_LIMITS['max_validation']} validation images, as the default task is.")
    if selection_args:
        out[-1] += f" Every selection also had `{selection_args}`."
    out.append(f"""It writes `{out_dir.as_posix()}/` (the table below as [table.md]({link('table.md')}), the runs as
[runs.csv]({link('runs.csv')}) and two figures) and this page,{" stores the calibration of the decision (`selection/calibration.json`)," if "--write-calibration" in measure else ""}
and logs every selection plus a summary run to MLflow. The first run
computes the backbones' features (hours on a small CPU machine, most of it Fashion-MNIST: each
{FASHION_MNIST_SIDE} px image is upscaled to the backbones' input size; the measured time is in
[benchmarks.md]({_link(REPO / 'docs' / 'benchmarks.md', page_path)}#selection-quality-benchmark)); they are
cached under `mlruns/features`, and a re-run takes minutes. The
second command compares many ways to decide on the per-image scores the first one recorded, in seconds,
and writes [decision-rules.md]({link('decision-rules.md')}).

`python benchmarks/selection_quality.py --from-runs {out_dir.as_posix()}/runs.csv` rewrites the table, the
regret figure and this page from the recorded runs without running a selection.""")

    prior_text = (f"here always the prior `{priors[0]}`" if overruled == 0 and len(priors) == 1
                  else f"the prior in {n_runs - overruled} of {n_runs} runs")
    out.append(f"""## The table

Tau and p over the individual candidates, the ensemble left out; regret against the best individual
candidate, so an ensemble can go below zero; "default decision" is what `python -m selection.run` picks,
{prior_text}; "all tasks" averages over the {n_runs} runs.

{markdown(summary(runs))}""")

    per_task = counts["per_task_default"]
    above = per_task[per_task > STRETCH_GOAL + 1e-12].sort_values(ascending=False)
    strictly = (f"strictly below on all {counts['below']}" if counts["below"] == counts["tasks"]
                else f"strictly below on {counts['below']}")
    headline = (f"Default decision against the largest model, mean regret per task: at or below it on "
                f"{counts['at_or_below']} of {counts['tasks']} tasks, {strictly}; mean regret "
                f"{_num(mean['default'], 4)} against {_num(mean['largest'], 4)}.")
    if above.empty:
        headline += f" Regret is at most {_num(STRETCH_GOAL, 2)} on every task: the stretch goal is met."
    else:
        worst = ", ".join(f"{_short(task)} {_num(value, 3)}" for task, value in above.items())
        headline += (f" Regret stays above {_num(STRETCH_GOAL, 2)} on {len(above)} task{'s' if len(above) > 1 else ''} "
                     f"({worst}), so the stretch goal (at most {_num(STRETCH_GOAL, 2)} everywhere) is not met.")
    out.append(headline)

    figures = []
    if (out_dir / "synthetic_vs_real.png").is_file():
        figures.append(f"![Synthetic against real AUROC of every candidate, per task]({link('synthetic_vs_real.png')})")
    if (out_dir / "regret.png").is_file():
        figures.append(f"![Regret per task and way of choosing]({link('regret.png')})")
    if figures:
        out.append("\n\n".join(figures) + "\n\nThe scatter plots come from every candidate's AUROC, which "
                   "runs.csv does not hold: only the full benchmark redraws them, `--from-runs` leaves them.")

    tau, tau_spread = runs["tau"].mean(), runs["tau"].std(ddof=0)
    tau_p, tau_p_spread = runs["tau_pretrained"].mean(), runs["tau_pretrained"].std(ddof=0)
    median_p = runs["p_pretrained"].median()
    chance = abs(tau_p) < 0.1 and median_p > 0.05
    naive = "loses to" if mean["naive"] > mean["largest"] else "beats"
    random = "is no better than" if mean["naive"] >= mean["random_pretrained"] else "beats"
    out.append(f"""## What the synthetic sets can and cannot tell

Over all individual candidates, negative controls included, the synthetic ranking agrees with the real one
(tau {_num(tau, 2)} ± {_num(tau_spread, 2)} on average; the controls sit at the bottom of the scatter
plots): the sets separate good detectors from bad ones. Among the pretrained candidates alone, tau is
{_num(tau_p, 2)} ± {_num(tau_p_spread, 2)} (median p {_num(median_p, 2)}){', no better than chance' if chance else ''}.
Per generator family, see the first table of the decision-rules record below. The families are biased in
different directions: when the per-candidate AUROCs of these runs were inspected, Perlin favoured the mid
layers on the Fashion-MNIST classes while the real anomalies often favoured the last layers, NSA mostly
favoured the last layers, and on bottle all three favoured the mid layers and the real defects the last
(an inspection by hand, not a table this script writes). So naive SWSA (mean regret
{_num(mean['naive'], 3)}) {naive} "take the largest model" ({_num(mean['largest'], 3)}) and {random} a
random pretrained pick ({_num(mean['random_pretrained'], 3)}).""")

    calibrated = [((right + 1) / (n + 2), level, n) for level, n, right in levels]
    best_stated, best_level, best_runs = max(calibrated)
    text = f"""## The calibrated confidence

Of the {contested_runs} runs whose synthetic winner differed from the prior, the winner was really better in
{contested_right}{f' ({contested_right / contested_runs:.0%})' if contested_runs else ''}"""
    if at_threshold is not None and at_threshold[1]:
        text += (f"; among those where every family's bootstrap was at least {at_threshold[0]:.0%} sure, in "
                 f"{at_threshold[2]} of {at_threshold[1]}")
    text += ":\n\n" + calibration_text(levels) + "\n\n"
    shipped = _shipped_calibration(levels)
    text += (f"These levels are the calibration shipped in `selection/calibration.json` (`{shipped}`). "
             if shipped else "These levels are not the calibration shipped in `selection/calibration.json`. ")
    text += (f"As (right + 1) / (runs + 2), the highest confidence a decision can state from them is "
             f"{best_stated:.0%} (at the {best_level:.0%} level, {best_runs} run{'s' if best_runs != 1 else ''} "
             f"behind it), ")
    text += ("so no synthetic winner can reach the default threshold of "
             f"{_num(DEFAULT_CONFIDENCE, 2)}" if best_stated < DEFAULT_CONFIDENCE
             else f"so a synthetic winner can reach the default threshold of {_num(DEFAULT_CONFIDENCE, 2)}")
    text += (f"; the prior was kept in {n_runs - overruled} of the {n_runs} runs. The decision never claims a "
             "confidence these runs do not bear out, but it is measured on these same runs. ")
    check = held_out(runs)
    if check is None:
        text += "No run was contested, so it cannot be checked out of sample."
    else:
        confident = ("never" if check["confident"] == 0 else
                     f"{check['confident']} runs, really better in {check['confident_right']}")
        text += (f"Checked out of sample, each task's runs judged with the calibration of the other tasks, the "
                 f"{check['runs']} contested runs were stated {check['stated_mean']:.0%} likely on average to have "
                 f"a better winner and had one in {check['really_better']:.0%} (stated at least "
                 f"{check['threshold']:.0%}: {confident}).")
    out.append(text)

    if overruled == 0:
        decision = "Since the prior was kept in every run, the default decision's regret is the prior's"
    else:
        decision = f"The default decision (the prior in {n_runs - overruled} of {n_runs} runs)"
    compare = ("below it on every task" if counts["below"] == counts["tasks"] else
               f"at or below it on {counts['at_or_below']} of {counts['tasks']} tasks, strictly below on "
               f"{counts['below']}")
    out.append(f"""## The prior does the work

The default prior is the score ensemble of the pretrained backbones at their last layer, each member
weighted by its backbone's parameter count (a soft form of "take the largest model"). {decision}: mean
regret {_num(mean['default'], 4)} against the largest model's {_num(mean['largest'], 4)}, and
{compare}. The same ensemble with equal
weights is a row of the decision-rules table below: where the largest model is already close to the best,
an equal vote of smaller networks dilutes it. The weighting was chosen among several ensemble variants on
an earlier state of these runs (before the last Fashion-MNIST seed was added), so these runs are not a
clean out-of-sample test of it; how it was chosen is recorded in
[benchmarks.md]({_link(REPO / 'docs' / 'benchmarks.md', page_path)}#how-the-ensemble-weighting-was-chosen).""")

    rules_path = out_dir / "decision-rules.md"
    if rules_path.is_file():
        record = "\n".join(line for line in rules_path.read_text().strip().splitlines()
                           if not line.startswith("<!--"))
        rules = f"From [decision-rules.md]({link('decision-rules.md')}), which `benchmarks/decision_rules.py` writes:\n\n{record.strip()}"
    else:
        rules = "Not recorded yet: run `python benchmarks/decision_rules.py`, then regenerate this page."
    out.append(f"""## Every way of deciding that was tried

On the same recorded scores, each rule's mean regret over the tasks, then on how many tasks it is at or
below the largest model and strictly below it, its worst excess over it, and how often its overrules of a
prior were right.

{rules}

Kept: the size-weighted last-layer ensemble (the default prior), the every-family bootstrap with its
calibration (the decision's statement of confidence), and NSA as a third default family: with it the
every-family rules overrule less often and more often rightly than with CutPaste and Perlin alone (that
comparison is recorded in [benchmarks.md]({_link(REPO / 'docs' / 'benchmarks.md', page_path)}#nsa-as-a-third-family)).
Measured and not kept as defaults: naive SWSA on any family or on their mean (on NSA alone its winner was
often a negative control, random weights or raw pixels), Borda aggregation of the families, bootstrap rules
on their mean, candidate consensus (the pretrained candidate whose scores agree best with the others'), the
ensemble of all pretrained candidates and the ensemble of the synthetic top three (it inherits the
synthetic ranking's bias).

Several draws of one family (a larger `--n-anomalies`, pooled) were measured on a smaller set of runs and
did not help, so the default stays at one draw per family. That experiment is recorded in
[benchmarks.md]({_link(REPO / 'docs' / 'benchmarks.md', page_path)}#several-draws-of-one-family).

{_pixel_text(runs)}""")
    families = out_dir / "patchcore-vs-knn.md"
    if families.is_file():
        record = "\n".join(line for line in families.read_text().strip().splitlines() if not line.startswith("<!--"))
        out.append(f"""## Across detector families

From [patchcore-vs-knn.md]({link('patchcore-vs-knn.md')}), which `benchmarks/patchcore_vs_knn.py` writes from
the runs' leaderboards:

{record.strip()}""")
    return "\n\n".join(_reflow(paragraph) for block in out for paragraph in block.split("\n\n")) + "\n"


def _pixel_text(runs: pd.DataFrame) -> str:
    """What the runs say of pixel-level evidence: tau of synthetic against real P-AUROC and AUPRO."""
    columns = [c for c in ("tau_pixel_auroc", "tau_aupro") if c in runs]
    measured = runs.dropna(subset=columns, how="all") if columns else runs.iloc[:0]
    if measured.empty:
        return ("Not measured: pixel-level evidence from the exact masks (no run had both candidates with anomaly "
                "maps and a task with real masks).")
    tasks = ", ".join(sorted(measured["task"].unique()))
    return (f"Pixel-level evidence, over the candidates with anomaly maps on the tasks with real masks ({tasks}; "
            f"{len(measured)} run{'s' if len(measured) != 1 else ''}): Kendall tau of synthetic against real P-AUROC "
            f"{_num(measured['tau_pixel_auroc'].mean(), 2)}, of AUPRO {_num(measured['tau_aupro'].mean(), 2)}.")


def _reflow(paragraph: str) -> str:
    """Prose rewrapped to the page's width; tables, code, figures, headings and comments as they are."""
    if paragraph.lstrip().startswith(("|", "```", "!", "#", "<!--")):
        return paragraph
    text = " ".join(paragraph.split())
    # no break inside a `code span`: its spaces are held as NUL while wrapping
    text = re.sub(r"`[^`]*`", lambda span: span.group().replace(" ", "\0"), text)
    return textwrap.fill(text, width=110, break_on_hyphens=False, break_long_words=False).replace("\0", " ")


def write_outputs(runs: pd.DataFrame, boards: pd.DataFrame | None, out_dir: Path, page_path: Path,
                  command: str, selection_args: str) -> str:
    """table.md, the figures (the scatter plots only with `boards`) and the page; returns table.md's text."""
    from quality_plots import regret_by_method, synthetic_vs_real

    text = report(runs)
    (out_dir / "table.md").write_text(text + "\n")
    if boards is not None:
        synthetic_vs_real(boards[~boards["ensemble"]], out_dir / "synthetic_vs_real.png")
    regret_by_method(runs, {f"regret_{m}": label for m, label in METHODS.items()}, out_dir / "regret.png")
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text(page(runs, out_dir, page_path, command, selection_args))
    return text


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
    parser.add_argument("--page", type=Path,
                        help="the study page (default: beside --out-dir, named after it: docs/selection-quality.md)")
    parser.add_argument("--scores-dir", type=Path, default=Path("mlruns/selection-quality-scores"),
                        help="where every run's per-image scores go (for benchmarks/decision_rules.py)")
    parser.add_argument("--selection-args", default="", help="extra `selection.run` options for every run, "
                                                             "e.g. '--generators cutpaste'")
    parser.add_argument("--write-calibration", action="store_true",
                        help="store the measured calibration as the product's, for these generators")
    parser.add_argument("--from-runs", type=Path, metavar="RUNS_CSV",
                        help="run no selection: rewrite table.md, regret.png and the page from recorded runs "
                             "(a runs.csv this script wrote), e.g. docs/selection-quality/runs.csv")
    args = parser.parse_args()
    page_path = args.page or args.out_dir.with_suffix(".md")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.from_runs:
        if args.write_calibration:
            raise SystemExit("error: --write-calibration needs the selections; it does not go with --from-runs")
        runs = pd.read_csv(args.from_runs)
        if not (args.out_dir / "runs.csv").exists() or not (args.out_dir / "runs.csv").samefile(args.from_runs):
            shutil.copyfile(args.from_runs, args.out_dir / "runs.csv")
        command = f"python benchmarks/selection_quality.py --from-runs {args.out_dir.as_posix()}/runs.csv"
        if args.page:
            command += f" --page {args.page.as_posix()}"
        text = write_outputs(runs, None, args.out_dir, page_path, command, args.selection_args)
        print(text + f"\n\nwrote {args.out_dir / 'table.md'}, {args.out_dir / 'regret.png'} and {page_path}")
        return
    from selection import tracking
    from selection.candidates import ensemble_candidate
    from selection.pipeline import prior_kind
    from selection.run import parse_args

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
    runs.to_csv(args.out_dir / "runs.csv", index=False)
    boards.to_csv(args.out_dir / "leaderboards.csv", index=False)  # every candidate of every run
    if args.write_calibration:  # before the page, which says whether its levels are the shipped ones
        write_calibration(calibration_key(config.generators, prior), calibration_levels(runs),
                          f"{len(runs)} runs over {runs['task'].nunique()} tasks (benchmarks/selection_quality.py)")
    command = f"python benchmarks/selection_quality.py --from-runs {args.out_dir.as_posix()}/runs.csv"
    if args.selection_args:
        command += f" --selection-args {shlex.quote(args.selection_args)}"
    text = write_outputs(runs, boards, args.out_dir, page_path, command, args.selection_args)
    print("\n" + text)
    _log_summary(tracking_uri, runs, args.out_dir, page_path)


def _log_summary(tracking_uri: str, runs: pd.DataFrame, out_dir: Path, page_path: Path) -> None:
    import mlflow

    from selection import tracking

    tracking.configure(tracking_uri, "selection-quality")
    with mlflow.start_run(run_name="selection quality summary", tags={"kind": "benchmark"}):
        mlflow.log_metrics({f"mean_regret/{m}": float(runs[f"regret_{m}"].mean()) for m in METHODS}
                           | {"mean_tau": float(runs["tau"].mean()),
                              "mean_tau_pretrained": float(runs["tau_pretrained"].mean())})
        mlflow.log_params({"tasks": ",".join(dict.fromkeys(runs["task"])), "runs": len(runs)})
        for name in ("table.md", "runs.csv", "synthetic_vs_real.png", "regret.png"):
            mlflow.log_artifact(str(out_dir / name))
        mlflow.log_artifact(str(page_path))


if __name__ == "__main__":
    main()
