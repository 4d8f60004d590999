"""Prompt selection judged as SWSA judges it (its Table I): on tasks with real labels, how the synthetic sets
rank the ten text templates of a zero-shot CLIP detector against the real labels, and what the ways of
choosing a prompt give. From what the selection-quality benchmark records for a CLIP pool:

    python benchmarks/selection_quality.py --out-dir OUT \\
        --selection-args "--detectors clip --clip-models clip:ViT-B-16-plus-240@laion400m_e31"
    python benchmarks/prompt_quality.py OUT [--out OUT/prompt-table.md]

Per task (mean over its runs) and per CLIP model, the real AUROC of: the default prompt (SWSA's first
template), the prompt ensemble (the product's prior for prompts), WinCLIP's compositional ensemble, the
ensemble with the few-shot visual memory, SWSA's pick (the template with the best mean synthetic AUROC), the
product's decision (its pick among every candidate of the run) and the best template (the oracle); Kendall
tau-b of synthetic against real AUROC among the ten templates; SWSA's pick rate (how often its pick is the
best template) and the regret of each way against the best template.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau

from selection.prompts import DEFAULT_PROMPT, ENSEMBLE, SWSA_TEMPLATES, WINCLIP
from selection_quality import markdown

WAYS = {"default_prompt": "default prompt", "ensemble": "prompt ensemble", "winclip": "WinCLIP ensemble",
        "few_shot": "few-shot ensemble", "swsa": "SWSA pick", "decision": "decision", "best": "best template"}


def clip_candidates(board: pd.DataFrame) -> pd.DataFrame:
    """The pretrained CLIP candidates of leaderboard rows, with their model, prompt set and few-shot flag
    parsed from the name `clip/<model>/<weights>/<prompts>[/few-shot-w<weight>]` (a model may hold slashes)."""
    clip = board[board["candidate"].str.startswith("clip/") & ~board["control"]].copy()
    parts = clip["candidate"].str.removeprefix("clip/").str.split("/")
    clip["few_shot"] = parts.str[-1].str.startswith("few-shot")
    parts = parts.where(~clip["few_shot"], parts.str[:-1])
    clip["prompts"], clip["model"] = parts.str[-1], parts.str[:-2].str.join("/")
    return clip


def prompt_runs(boards: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run and CLIP model: each way's real AUROC, the tau among the templates and its p-value."""
    decisions = runs.set_index(["task", "seed"])["pick_default"]
    rows = []
    for (task, seed), board in boards.groupby(["task", "seed"], sort=False):
        real = board.set_index("candidate")["real_auroc"]
        for model, clip in clip_candidates(board).groupby("model", sort=False):
            zero_shot = clip[~clip["few_shot"]].set_index("prompts")
            templates = zero_shot.loc[zero_shot.index.isin(list(SWSA_TEMPLATES))]
            if len(templates) < 2:
                continue
            tau, p = kendalltau(templates["synthetic_auroc"], templates["real_auroc"], variant="b")
            few_shot = clip.loc[clip["few_shot"] & (clip["prompts"] == ENSEMBLE), "real_auroc"]
            rows.append({"task": task, "seed": seed, "model": model, "templates": len(templates), "tau": tau, "p": p,
                         "default_prompt": zero_shot["real_auroc"].get(DEFAULT_PROMPT),
                         "ensemble": zero_shot["real_auroc"].get(ENSEMBLE),
                         "winclip": zero_shot["real_auroc"].get(WINCLIP),
                         "few_shot": few_shot.iloc[0] if len(few_shot) else None,
                         "swsa": templates.loc[templates["synthetic_auroc"].idxmax(), "real_auroc"],
                         "decision": real[decisions[(task, seed)]], "best": templates["real_auroc"].max()})
    if not rows:
        raise ValueError("no run has two or more pretrained CLIP templates: run the selection-quality benchmark "
                         "with --selection-args '--detectors clip --clip-models ...'")
    return pd.DataFrame(rows).astype({way: float for way in WAYS})


def prompt_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per task and model (and over all tasks): runs, tau among the templates, every way's mean real AUROC,
    SWSA's pick rate, and every way's mean regret against the best template."""
    groups = list(per_run.groupby(["task", "model"], sort=False)) + [
        (("all tasks", model), group) for model, group in per_run.groupby("model", sort=False)]
    rows = []
    for (task, model), group in groups:
        regret = {way: (group["best"] - group[way]).mean() for way in WAYS if way != "best"}
        rows.append({"task": task, "model": model, "runs": len(group),
                     "tau among templates": f"{group['tau'].mean():.3f} ± {group['tau'].std(ddof=0):.3f}",
                     **{label: round(group[way].mean(), 4) for way, label in WAYS.items()},
                     "SWSA pick rate": f"{(group['swsa'] >= group['best'] - 1e-12).mean():.0%}",
                     **{f"regret: {WAYS[way]}": round(value, 4) for way, value in regret.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="the selection-quality benchmark's --out-dir (leaderboards.csv "
                                                    "and runs.csv)")
    parser.add_argument("--out", type=Path, help="also write the table, with the command, as Markdown")
    args = parser.parse_args()
    try:
        per_run = prompt_runs(pd.read_csv(args.out_dir / "leaderboards.csv"), pd.read_csv(args.out_dir / "runs.csv"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    text = markdown(prompt_table(per_run).astype(object).where(lambda t: t.notna(), ""))
    print(text)
    if args.out:
        command = "python benchmarks/prompt_quality.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"{text}\n\nMade by `{command}`.\n")


if __name__ == "__main__":
    main()
