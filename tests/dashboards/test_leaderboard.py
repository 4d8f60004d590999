"""The leaderboard page (streamlit's AppTest) on a store filled by a real search and a real selection: what it
shows is what those runs recorded; the promote action; and the short messages for stores and runs it cannot
show."""

import json
import sys
import time

import pandas as pd
import pytest
from mlflow import MlflowClient
from servers import free_port, serving
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

from selection.config import CHALLENGER, CHAMPION

pytestmark = pytest.mark.slow  # the session's store comes from a real search and selection (about a minute)


def texts(app) -> str:
    """Every piece of text the page shows, joined."""
    return "\n".join(str(element.value) for kind in ("markdown", "caption", "info", "warning", "error", "success")
                     for element in getattr(app, kind))


def chart_layers(app, index: int = 0) -> list[tuple[dict, pd.DataFrame]]:
    """Each layer of the page's `index`-th chart: its Vega-Lite spec and its data."""
    chart = app.get("vega_lite_chart")[index].proto
    data = {dataset.name: convert_arrow_bytes_to_pandas_df(dataset.data.data) for dataset in chart.datasets}
    spec = json.loads(chart.spec)
    return [(layer, data[layer["data"]["name"]]) for layer in spec.get("layer", [spec])]


def test_the_leaderboard_has_every_candidate_with_its_recorded_values_and_marks(filled_store, page):
    app = page(filled_store.uri)  # opens on the newest run: the selection
    result = filled_store.selection
    board = app.dataframe[0].value.set_index("candidate")
    expected = result.leaderboard.set_index("candidate")
    assert set(board.index) == set(expected.index) and len(board) == 9
    for column in ("synthetic_auroc/cutpaste", "synthetic_auroc/perlin", "synthetic_auroc", "real_auroc",
                   "synthetic_rank", "real_rank", "synthetic_pixel_auroc", "real_pixel_auroc", "real_aupro",
                   "synthetic_aupro/perlin"):
        pd.testing.assert_series_equal(board[column].sort_index(), expected[column].sort_index(), check_names=False)
    assert board["real_pixel_auroc"].notna().sum() == 2  # PatchCore and its random twin: the others have no maps
    assert (board["rank_change"] == board["synthetic_rank"] - board["real_rank"]).all()
    assert set(board.index[board["role"] == "control"]) == set(expected.index[expected["control"]])
    assert list(board.index[board["role"] == "ensemble"]) == ["ensemble/pretrained-3"]
    decision = result.decision
    assert "pick" in board.loc[result.pick.name, "mark"].split(", ")
    assert "prior" in board.loc[decision.prior, "mark"].split(", ")
    assert "synthetic winner" in board.loc[decision.winner, "mark"].split(", ")
    assert board["mark"].str.len().gt(0).sum() == len({result.pick.name, decision.prior, decision.winner})
    shown = texts(app)
    assert f"Pick: `{result.pick.name}`" in shown and "threshold 95%" in shown
    assert f"bootstrap {decision.confidence:.0%}" in shown and decision.reason in shown


def test_tau_regret_and_the_scatter_are_what_the_run_recorded(filled_store, page):
    app = page(filled_store.uri, run=filled_store.selection.run_id)
    result = filled_store.selection
    recorded = MlflowClient(filled_store.uri).get_run(result.run_id).data.metrics
    taus = app.dataframe[1].value.set_index("family")
    assert list(taus.index) == ["cutpaste", "perlin", "mean"]
    for family, comparison in result.comparisons.items():
        assert taus.loc[family, "tau"] == pytest.approx(comparison.tau)
        assert taus.loc[family, "tau"] == recorded[f"kendall_tau/{family}"]
        assert taus.loc[family, "p"] == pytest.approx(comparison.p_value)
        assert taus.loc[family, "tau_pretrained"] == pytest.approx(comparison.pretrained_tau)
    choices = app.dataframe[2].value.set_index("way")
    mean = result.comparisons["mean"]
    assert choices.loc["naive SWSA (the synthetic winner)", "regret"] == pytest.approx(mean.regret)
    assert choices.loc["the largest pretrained model", "regret"] == pytest.approx(mean.baseline_regret)
    assert choices.loc["the pick (the decision)", "regret"] == pytest.approx(recorded["pick_regret"])
    assert choices.loc["the pick (the decision)", "picked the best"] == (recorded["pick_regret"] <= 1e-12)

    (diagonal_spec, diagonal), (points_spec, points) = chart_layers(app)
    assert diagonal_spec["mark"]["type"] == "line" and (diagonal["synthetic_auroc"] == diagonal["real_auroc"]).all()
    assert points_spec["encoding"]["color"]["field"] == "family" and points_spec["encoding"]["shape"]["field"] == "role"
    assert len(points) == 2 * len(result.leaderboard)  # every candidate once per family
    by_point = points.set_index(["candidate", "family"])
    board = result.leaderboard.set_index("candidate")
    for name in board.index:
        assert by_point.loc[(name, "perlin"), "synthetic_auroc"] == pytest.approx(board.loc[name, "synthetic_auroc/perlin"])
        assert by_point.loc[(name, "perlin"), "real_auroc"] == pytest.approx(board.loc[name, "real_auroc"])
    assert set(points.loc[points["role"] == "control", "candidate"]) == set(board.index[board["control"]])


def test_the_gallery_shows_each_familys_anomalies_beside_their_normals_a_page_at_a_time(filled_store, page):
    app = page(filled_store.uri, section="Synthetic sets")
    sets = filled_store.selection.validation_sets
    assert len(app.image) == 2 * 4 * len(sets)  # per family: a page of four anomalies, each with its normal image
    shown = texts(app)
    for validation_set in sets:
        assert f"digest `{validation_set.digest}` · {validation_set.rejected} invisible draws rejected" in shown
    assert shown.count("anomalies 1-4 of 30") == len(sets)
    captions = [image.proto.imgs[0].caption for image in app.image]
    assert captions[:2] == ["anomaly 1", "the normal image it came from"]

    app.pagination[0].set_value(8).run()  # the last page of the first family: anomalies 29 and 30
    assert "anomalies 29-30 of 30" in texts(app) and len(app.image) == 2 * 2 + 2 * 4


def test_a_search_shows_its_trial_history_importances_and_real_auroc_beside_the_objective(filled_store, page, hide):
    search = filled_store.search
    app = page(filled_store.uri, run=search.run_id)
    trials = app.dataframe[0].value.set_index("trial")
    expected = search.trials.set_index("trial")
    assert set(trials.index) == set(expected.index) and len(trials) == 5
    for column in ("synthetic_auroc", "real_auroc"):
        pd.testing.assert_series_equal(trials[column].sort_index(), expected[column].sort_index(), check_names=False)
    assert (trials["best_so_far"] == trials["synthetic_auroc"].cummax()).all()
    assert len(app.get("vega_lite_chart")) == 2  # the trial history and the importances
    shown = texts(app)
    assert f"best `{search.best.name}`" in shown and f"Kendall tau-b {search.comparison.tau:.3f}" in shown
    assert "Parameter importances: Optuna study" in shown

    hide(filled_store.directory / "optuna.db")
    app = page(filled_store.uri, run=search.run_id)
    assert "rebuilt from the trials MLflow recorded" in texts(app)
    ((_, importances),) = chart_layers(app, 1)
    assert importances["importance"].sum() == pytest.approx(1.0)


def test_across_runs_lists_each_run_of_the_task_with_its_pick(filled_store, page):
    app = page(filled_store.uri, section="Across runs")
    history = app.dataframe[0].value
    assert list(history["kind"]) == ["search", "selection"]  # oldest first
    assert list(history["pick"]) == [filled_store.search.best.name, filled_store.selection.pick.name]
    assert list(history["tau"])[1] == pytest.approx(filled_store.selection.comparisons["mean"].tau)
    ((_, aurocs),), ((_, taus),) = chart_layers(app, 0), chart_layers(app, 1)
    real = aurocs[aurocs["line"] == "pick: real AUROC"].sort_values("run")
    assert list(real["value"]) == pytest.approx([filled_store.search.trials["real_auroc"].iloc[0],
                                                 filled_store.selection.leaderboard.set_index("candidate").loc[
                                                     filled_store.selection.pick.name, "real_auroc"]])
    assert list(taus.sort_values("run")["value"]) == pytest.approx(list(history["tau"]))
    assert "Pick rate: the pick was the best real candidate in" in texts(app)


def test_promote_moves_champion_only_after_confirmation_and_records_who_when_why(filled_store, store_copy, page):
    client = MlflowClient(store_copy, store_copy)
    model = filled_store.selection.promotion.model_name
    champion = client.get_model_version_by_alias(model, CHAMPION).version
    target = next(v.version for v in client.search_model_versions(f"name = '{model}'") if v.version != champion)
    client.set_registered_model_alias(model, CHALLENGER, target)
    app = page(store_copy, section="Registry")
    assert set(app.dataframe[0].value["version"]) == {1, 2}
    assert f"champion v{champion}, challenger v{target}" in texts(app)
    assert next(box for box in app.selectbox if box.label == "Version").options == [f"v{target}"]
    app.text_input[0].input("Ada")
    app.text_input[1].input("better on the line's own images")
    app.button[0].click().run()  # submitted without the confirmation
    assert "Nothing moved: tick the confirmation first." in texts(app)
    assert client.get_model_version_by_alias(model, CHAMPION).version == champion

    app.checkbox[0].check()
    app.button[0].click().run()
    assert client.get_model_version_by_alias(model, CHAMPION).version == target
    assert CHALLENGER not in client.get_registered_model(model).aliases  # it left the version now champion
    tags = client.get_model_version(model, target).tags
    assert tags["promoted_by"] == "Ada" and tags["promoted_why"] == "better on the line's own images"
    assert tags["promoted_from"] == f"v{champion}"
    assert time.time() - pd.Timestamp(tags["promoted_at"]).timestamp() < 600
    assert f"{model} v{target} is now the champion (was v{champion}), promoted by Ada" in texts(app)
    assert f"champion v{target}, challenger none" in texts(app)


def test_the_negative_control_warning_shows_when_it_fired(filled_store, store_copy, page):
    warning = ("negative control knn/pixels_32/none/raw/avg/k3 (synthetic AUROC 0.950) outranks 1 of 2 pretrained "
               "candidates: the synthetic validation set is suspect for this task")
    MlflowClient(store_copy).set_tag(filled_store.selection.run_id, "warnings", warning)  # as control_warnings words it
    app = page(store_copy, run=filled_store.selection.run_id)
    assert [element.value for element in app.warning] == [f"Negative-control warning: {warning}"]
    assert not page(filled_store.uri, run=filled_store.selection.run_id).warning  # it did not fire on bottle


def test_the_page_reads_a_tracking_server_as_it_reads_the_local_store(filled_store, page):
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", filled_store.uri, "--host",
                  "127.0.0.1", "--port", str(port), "--workers", "1"], f"{server}/health", timeout_seconds=120):
        over_http = page(server)
        local = page(filled_store.uri)
        pd.testing.assert_frame_equal(over_http.dataframe[0].value, local.dataframe[0].value)
        registry = page(server, section="Registry").dataframe[0].value
        with_password = page(server.replace("http://", "http://viewer:pw-never-shown@"))  # the server ignores it
        assert "viewer:***@" in texts(with_password) and "pw-never-shown" not in texts(with_password)
        pd.testing.assert_frame_equal(with_password.dataframe[0].value, local.dataframe[0].value)
    stopped = page(server.replace("http://", "http://viewer:pw-never-shown@"))
    assert stopped.error and "pw-never-shown" not in texts(stopped)
    assert list(registry["version"]) == [2, 1] and set(registry["aliases"]) >= {CHAMPION}
