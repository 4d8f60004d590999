"""The page an inspection engineer keeps open while choosing what to ship: for one task, a selection's (or a
search's) candidates with their synthetic and real AUROC, the evidence behind the pick, the synthetic sets it
was judged on, how the pick changed over runs, and the registered versions with a promote action.

    streamlit run dashboards/leaderboard.py                                    # the local store
    streamlit run dashboards/leaderboard.py -- --tracking-uri http://127.0.0.1:5000

Everything is read through selection.records, cached for TTL_SECONDS (Refresh reads again); the one write is
the promotion, through selection.promotion. dashboards/.streamlit/config.toml binds the server to 127.0.0.1
(`--server.address` overrides it).
"""

import argparse
import os
import sys

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from selection import promotion, records
from selection.config import CHALLENGER, CHAMPION, DEFAULT_TRACKING_URI
from selection.redaction import without_password

TTL_SECONDS = 30
GALLERY_PAGE = 4  # anomalies per page of a family's gallery
FIRST_RUN = "python -m selection.run --task mvtec/bottle --data-root ../shared/data/mvtec_ad"

_cached = st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
parent_runs = _cached(records.parent_runs)
leaderboard = _cached(records.leaderboard)
agreement = _cached(records.agreement)
search = _cached(records.search)
param_importances = _cached(records.param_importances)
synthetic_sets = _cached(records.synthetic_sets)
anomalies = _cached(records.anomalies)
samples = _cached(records.samples)
model_versions = _cached(records.model_versions)


def arguments(argv: list[str]) -> tuple[str, list[str]]:
    """The tracking URI given after `--`, and any argument not understood."""
    parser = argparse.ArgumentParser(prog="leaderboard.py", allow_abbrev=False, add_help=False)
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    known, unknown = parser.parse_known_args(argv)
    return known.tracking_uri, unknown


def shown(read, *args):
    """`read(*args)`, or None once its RecordError is shown in the page."""
    try:
        return read(*args)
    except records.RecordError as error:
        st.error(str(error))
        return None


def auroc_column(label: str, help: str | None = None):
    return st.column_config.ProgressColumn(label, help=help or "bar from 0.5 (chance) to 1", min_value=0.5,
                                           max_value=1.0, format="%.4f")


def trend_chart(table: pd.DataFrame, x: str, lines: dict[str, str], y_title: str) -> alt.Chart:
    """One line per column in `lines` (column -> legend label) against `x`, the y axis fitted to the values
    (AUROCs sit close to 1: from zero they would look flat)."""
    long = table[[x, *lines]].melt(id_vars=x, var_name="line", value_name="value").dropna()
    long["line"] = long["line"].map(lines)
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X(f"{x}:O", title=x, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color("line:N", title=None, sort=list(lines.values())),
        tooltip=[x, "line", alt.Tooltip("value:Q", format=".4f")]).properties(height=280)


def main() -> None:
    # MLflow reads these at each request. A page must answer at once: one try of a tracking server, not
    # minutes of retries; and no progress bar in the server's log for every artefact read.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    st.set_page_config(page_title="Anomaly selection leaderboard", layout="wide", initial_sidebar_state="expanded")
    uri, ignored = arguments(sys.argv[1:])
    st.sidebar.caption(f"MLflow store: `{without_password(uri)}`")
    if ignored:
        st.sidebar.warning(f"Ignored arguments: {' '.join(ignored)} (this page takes --tracking-uri only)")
    if st.sidebar.button("Refresh", help=f"read the store again (reads are otherwise reused for {TTL_SECONDS} s)"):
        st.cache_data.clear()
    runs = shown(parent_runs, uri)
    if runs is None:
        return
    if runs.empty:
        empty_store(uri)
        return
    task = st.sidebar.selectbox("Task", sorted(runs["task"].unique()), key="task", bind="query-params")
    task_runs = runs[runs["task"] == task].set_index("run_id")
    run_id = st.sidebar.selectbox("Selection or search, newest first", list(task_runs.index),
                                  format_func=lambda rid: run_label(task_runs.loc[rid]), key="run",
                                  bind="query-params")
    run = task_runs.loc[run_id]
    st.title(task)
    st.caption(f"{run['kind']} run `{run_id}`, started {run['started']:%Y-%m-%d %H:%M} UTC · generators "
               f"{run['generators']} · seed {run['seed']}")
    if run["status"] != "FINISHED":
        st.info(f"This run is {run['status']}: what it recorded may be incomplete.")
    overview = selection_section if run["kind"] == "selection" else search_section
    sections = {"Leaderboard" if run["kind"] == "selection" else "Trials": lambda: overview(uri, run_id),
                "Synthetic sets": lambda: gallery_section(uri, run_id),
                "Across runs": lambda: history_section(task_runs),
                "Registry": lambda: registry_section(uri, task)}
    tabs = st.tabs(list(sections), key="section", on_change="rerun", bind="query-params")
    for tab, show in zip(tabs, sections.values()):
        if tab.open:  # only the open section reads anything
            with tab:
                show()


def empty_store(uri: str) -> None:
    database = records.sqlite_path(uri)
    where = f" (no database at {database.resolve()})" if database and not database.is_file() else ""
    st.info(f"No selection or search is recorded in `{without_password(uri)}` yet{where}. Run one first, e.g.\n\n"
            f"```\n{FIRST_RUN}\n```\n\nthen press Refresh.")


def run_label(run: pd.Series) -> str:
    return (f"{run['started']:%Y-%m-%d %H:%M} · {run['kind']} · {run['generators']} · seed {run['seed']} · "
            f"{run.name[:8]}")


# --- a selection ----------------------------------------------------------------------------------------------

def selection_section(uri: str, run_id: str) -> None:
    board = shown(leaderboard, uri, run_id)
    evidence = shown(agreement, uri, run_id)
    if board is None or evidence is None:
        return
    decision_text(board, evidence)
    leaderboard_table(board)
    if board.has_real:
        agreement_part(board, evidence)
    else:
        st.info("This task has no real labelled validation set: real AUROC, tau and regret are not available.")


def decision_text(board: records.Leaderboard, evidence: records.Agreement) -> None:
    def percent(value: float | None, missing: str) -> str:
        return missing if value is None else f"{value:.0%}"

    st.markdown(f"**Pick: `{board.pick}`**. Synthetic winner `{board.synthetic_winner}`, prior `{board.prior}`; "
                f"confidence that the winner beats the prior: bootstrap "
                f"{percent(evidence.bootstrap_confidence, 'n/a (they are one)')}, calibrated "
                f"{percent(evidence.calibrated_confidence, 'n/a (no benchmark calibration for these generators)')}"
                f", threshold {percent(evidence.threshold, 'n/a')}.")
    st.caption(f"Decision: {evidence.decision}")
    for warning in evidence.warnings:
        st.warning(f"Negative-control warning: {warning}")


PIXEL_METRICS = {"pixel_auroc": "P-AUROC", "aupro": "AUPRO"}


def pixel_column(metric: str, label: str):
    """P-AUROC's bar starts at chance (0.5) like AUROC's; AUPRO's chance level is near 0."""
    help_text = "candidates with anomaly maps only, on the sets with pixel masks; never used to pick"
    if metric == "pixel_auroc":
        return auroc_column(label, help_text)
    return st.column_config.ProgressColumn(label, help=help_text, min_value=0.0, max_value=1.0, format="%.4f")


def _pixel_columns() -> dict:
    """The mean synthetic and the real pixel metrics of candidates with anomaly maps (blank for the others)."""
    return {f"{where}_{metric}": pixel_column(metric, f"{where} {label}")
            for metric, label in PIXEL_METRICS.items() for where in ("synthetic", "real")}


def leaderboard_table(board: records.Leaderboard) -> None:
    pixel_columns = _pixel_columns()
    config = {"synthetic_rank": st.column_config.NumberColumn("synthetic rank", format="%d"),
              "candidate": st.column_config.TextColumn("candidate", pinned=True),
              "role": st.column_config.TextColumn("role", help="pretrained, negative control or score ensemble"),
              "mark": st.column_config.TextColumn("mark", help="the pick, the prior and the synthetic winner; a "
                                                  "trained detector judged on its own training family", width="medium"),
              "trained_on": st.column_config.TextColumn(
                  "trained on", help="the generator family a trained detector (VLAD) learned from"),
              **{f"synthetic_auroc/{family}": auroc_column(f"synthetic AUROC: {family}") for family in board.families},
              "synthetic_auroc": auroc_column("synthetic AUROC: mean", "mean over the families; ranks the candidates"),
              "real_auroc": auroc_column("real AUROC", "on the task's real labels: reported, never used to pick"),
              **pixel_columns,
              **{f"synthetic_{metric}/{family}": pixel_column(metric, f"synthetic {label}: {family}")
                 for metric, label in PIXEL_METRICS.items() for family in board.families},
              "real_rank": st.column_config.NumberColumn("real rank", format="%d"),
              "rank_change": st.column_config.NumberColumn(
                  "rank change", format="%+d", help="synthetic rank minus real rank: above 0, real labels rank it higher")}
    # the verdict's columns first, the per-family detail after: the table is wider than most screens
    order = ["candidate", "role", "mark", "trained_on", "synthetic_auroc", "real_auroc", "synthetic_rank", "real_rank",
             "rank_change", *pixel_columns, *[f"synthetic_{metric}/{family}" for metric in ("auroc", *PIXEL_METRICS)
                                              for family in board.families]]
    st.dataframe(board.table, hide_index=True, column_config=config, key="leaderboard", height="content",
                 column_order=[column for column in order if column in board.table])


def agreement_part(board: records.Leaderboard, evidence: records.Agreement) -> None:
    st.subheader("Synthetic against real")
    left, right = st.columns(2)
    with left:
        st.dataframe(evidence.taus, hide_index=True, column_config={
            "family": "family",
            "tau": st.column_config.NumberColumn("tau-b", format="%.3f", help="over all individual candidates"),
            "p": st.column_config.NumberColumn("p", format="%.3g"),
            "tau_pretrained": st.column_config.NumberColumn("tau-b, pretrained", format="%.3f"),
            "p_pretrained": st.column_config.NumberColumn("p, pretrained", format="%.3g")}, key="taus")
        st.dataframe(evidence.choices, hide_index=True, column_config={
            "regret": st.column_config.NumberColumn("regret", format="%.4f",
                                                    help="best individual real AUROC minus the choice's"),
            "picked the best": st.column_config.CheckboxColumn("picked the best")}, key="choices")
        if evidence.oracle:
            st.caption(f"Best real candidate (oracle): `{evidence.oracle}`")
    with right:
        st.altair_chart(scatter(board), width="stretch")


def scatter(board: records.Leaderboard) -> alt.LayerChart:
    """Synthetic against real AUROC, one colour per generator family, one shape per role, and the diagonal."""
    columns = [f"synthetic_auroc/{family}" for family in board.families]
    points = board.table[["candidate", "role", "real_auroc", *columns]].melt(
        id_vars=["candidate", "role", "real_auroc"], var_name="family", value_name="synthetic_auroc")
    points["family"] = points["family"].str.removeprefix("synthetic_auroc/")
    low = float(min(points["synthetic_auroc"].min(), points["real_auroc"].min(), 0.5))
    scale = alt.Scale(domain=[low, 1.0])
    dots = alt.Chart(points).mark_point(size=90, filled=True).encode(
        x=alt.X("synthetic_auroc", title="synthetic AUROC", scale=scale),
        y=alt.Y("real_auroc", title="real AUROC", scale=scale),
        color=alt.Color("family", title="generator family", scale=alt.Scale(scheme="category10")),
        shape=alt.Shape("role", scale=alt.Scale(domain=["pretrained", "ensemble", "control"],
                                                range=["circle", "diamond", "cross"])),
        tooltip=["candidate", "family", "role", alt.Tooltip("synthetic_auroc", format=".4f"),
                 alt.Tooltip("real_auroc", format=".4f")])
    diagonal = alt.Chart(pd.DataFrame({"synthetic_auroc": [low, 1.0], "real_auroc": [low, 1.0]})).mark_line(
        color="gray", strokeDash=[4, 4]).encode(x=alt.X("synthetic_auroc", scale=scale),
                                                y=alt.Y("real_auroc", scale=scale))
    return (diagonal + dots).properties(height=380)


# --- a search -------------------------------------------------------------------------------------------------

def search_section(uri: str, run_id: str) -> None:
    result = shown(search, uri, run_id)
    if result is None:
        return
    trials = result.trials
    summary = f"Study `{result.study}`: {len(trials)} completed trials; best `{result.best}`."
    if result.tau is not None:
        summary += (f" Over its distinct candidates the synthetic ranking agrees with the real one at Kendall "
                    f"tau-b {result.tau:.3f} (p={result.p_value:.2g}).")
    st.markdown(summary)
    history = {"synthetic_auroc": "synthetic (objective)", "best_so_far": "best so far",
               "real_auroc": "real (never steers)"}
    st.altair_chart(trend_chart(trials, "trial", {c: label for c, label in history.items() if c in trials}, "AUROC"),
                    width="stretch")
    importances = shown(param_importances, uri, run_id)
    if importances is not None:
        st.bar_chart(pd.Series(importances.values, name="importance"), horizontal=True, x_label="parameter",
                     y_label="importance (fANOVA)")
        st.caption(f"Parameter importances: {importances.source}")
    order = ["trial", "candidate", "synthetic_auroc", "real_auroc", "best_so_far"]
    st.dataframe(trials, hide_index=True, key="trials", column_order=order + [c for c in trials if c not in order],
                 column_config={
        "synthetic_auroc": auroc_column("synthetic AUROC (objective)"), "best_so_far": auroc_column("best so far"),
        "real_auroc": auroc_column("real AUROC", "recorded beside the objective; never steers the search"),
        **{c: auroc_column(c.replace("_auroc", " AUROC").replace("/", ": ")) for c in trials
           if c.startswith("synthetic_auroc/")},
        **{c: c.removeprefix("param/") for c in trials if c.startswith("param/")}})


# --- the synthetic sets ---------------------------------------------------------------------------------------

def gallery_section(uri: str, run_id: str) -> None:
    sets = shown(synthetic_sets, uri, run_id)
    if sets is None:
        return
    if not sets:
        st.info("This run recorded no synthetic validation set.")
    for validation_set in sets:
        family_gallery(run_id, validation_set)


def family_gallery(run_id: str, validation_set: records.SyntheticSet) -> None:
    st.subheader(validation_set.generator)
    rejected = "unknown" if validation_set.rejected is None else validation_set.rejected
    st.caption(f"digest `{validation_set.digest}` · {rejected} invisible draws rejected and redrawn · "
               f"stored in `{validation_set.folder}`")
    with st.expander("How it was made"):
        if validation_set.generation is None:
            st.write("The run's generation record (validation_sets/<family>/generation.json) is missing.")
        else:
            st.json(validation_set.generation)
    table = shown(anomalies, str(validation_set.folder))
    if table is None:
        return
    pages = max(1, -(-len(table) // GALLERY_PAGE))
    page = st.pagination(pages, key=f"gallery/{run_id}/{validation_set.generator}")
    first = (page - 1) * GALLERY_PAGE
    page_samples = shown(samples, str(validation_set.folder), first, GALLERY_PAGE)
    if page_samples is None:
        return
    st.caption(f"anomalies {first + 1}-{first + len(page_samples)} of {len(table)}: each with its mask outlined "
               "in red, above the normal image it was made from")
    for column, (number, sample) in zip(st.columns(len(page_samples) or 1), enumerate(page_samples, first + 1)):
        with column:
            st.image(with_mask(sample), caption=f"anomaly {number}"
                     + ("" if sample.mask is not None else " (image label only, no mask)"))
            st.image(sample.source, caption="the normal image it came from")


def with_mask(sample: records.Sample) -> np.ndarray:
    """The anomaly with its mask's outline drawn in red (a probability mask cut at one half), so that what was
    pasted stays visible inside it."""
    if sample.mask is None:
        return sample.image
    inside = sample.mask >= 128
    eroded = inside
    for _ in range(2):  # two pixels thick
        padded = np.pad(eroded, 1, mode="edge")
        eroded = eroded & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    outlined = sample.image.copy()
    outlined[inside & ~eroded] = (255, 0, 0)
    return outlined


# --- across runs ----------------------------------------------------------------------------------------------

def history_section(task_runs: pd.DataFrame) -> None:
    table = task_runs.reset_index().sort_values("started", ignore_index=True)[
        ["started", "kind", "generators", "seed", "pick", "pick_synthetic_auroc", "pick_real_auroc", "tau",
         "regret", "run_id"]]
    table.insert(0, "run", table.index + 1)
    st.dataframe(table, hide_index=True, key="history", column_config={
        "run": st.column_config.NumberColumn("run", help="in the order they started", format="%d"),
        "started": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm"),
        "pick": st.column_config.TextColumn("pick (a search: its best trial)"),
        "pick_synthetic_auroc": auroc_column("pick: synthetic AUROC"),
        "pick_real_auroc": auroc_column("pick: real AUROC"),
        "tau": st.column_config.NumberColumn("tau-b", format="%.3f",
                                             help="a selection: over its candidates (the mean's); a search: over "
                                                  "its distinct trial candidates"),
        "regret": st.column_config.NumberColumn("regret", format="%.4f")})
    aurocs, agreement = st.columns(2)
    aurocs.altair_chart(trend_chart(table, "run", {"pick_synthetic_auroc": "pick: synthetic AUROC",
                                                   "pick_real_auroc": "pick: real AUROC"}, "AUROC"), width="stretch")
    agreement.altair_chart(trend_chart(table, "run", {"tau": "tau-b"}, "Kendall tau-b, synthetic against real"),
                           width="stretch")
    judged = table["regret"].dropna()
    if len(judged):
        st.caption(f"Pick rate: the pick was the best real candidate in {int((judged <= 1e-12).sum())} of "
                   f"{len(judged)} runs with real labels.")


# --- the registry ---------------------------------------------------------------------------------------------

def registry_section(uri: str, task: str) -> None:
    versions = shown(model_versions, uri, task)
    if versions is None:
        return
    if versions.empty:
        st.info("No registered model for this task yet: a selection or a search registers its pick unless run "
                "with --no-register.")
        return
    names = sorted(versions["model"].unique())
    model = st.selectbox("Registered model", names) if len(names) > 1 else names[0]
    mine = versions[versions["model"] == model].drop(columns="model").dropna(axis="columns", how="all")
    champion = records.alias_holder(versions, model, CHAMPION)
    challenger = records.alias_holder(versions, model, CHALLENGER)
    st.markdown(f"**{model}**: champion {f'v{champion}' if champion else 'none'}, challenger "
                f"{f'v{challenger}' if challenger else 'none'}")
    numbers = {column: st.column_config.NumberColumn(column, format="%.3g" if column == "kendall_p" else "%.4f")
               for column in records.NUMERIC_VERSION_TAGS}
    st.dataframe(mine, hide_index=True, key="versions", column_config={
        **numbers, "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm")})
    promote_form(uri, model, [int(v) for v in mine["version"] if v != champion], champion)


def promote_form(uri: str, model: str, candidates: list[int], champion: int | None) -> None:
    done = st.session_state.pop("promoted", None)
    if done:
        st.success(done)
    if not candidates:
        st.caption("Only the champion is registered: nothing to promote.")
        return
    with st.form("promote"):
        st.markdown("**Promote a version to champion**")
        version = st.selectbox("Version", candidates, format_func=lambda v: f"v{v}")
        who = st.text_input("Who promotes (recorded as promoted_by)")
        why = st.text_input("Why (recorded as promoted_why)")
        confirmed = st.checkbox(f"I confirm: move champion from {f'v{champion}' if champion else 'none'} to the "
                                "version chosen above")
        submitted = st.form_submit_button("Promote")
    if not submitted:
        return
    if not confirmed:
        st.warning("Nothing moved: tick the confirmation first.")
        return
    try:
        message = promotion.promote_version(uri, model, version, who, why)
    except ValueError as error:
        st.warning(f"Nothing moved: {error}.")
        return
    except records.RecordError as error:
        st.error(str(error))
        return
    model_versions.clear()
    st.session_state["promoted"] = message
    st.rerun()


main()
