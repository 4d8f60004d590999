"""CLIP prompt candidates: SWSA's prompt sets and class-name cleaning, the default candidates, the search
space, and a selection on real bottle images with a toy CLIP that ranks them, records them and registers a
pick that loads and returns scores and maps."""

from dataclasses import replace

import mlflow
import numpy as np
import optuna
import pytest
from optuna.trial import FixedTrial
from PIL import Image

from detectors import FeatureCache
from selection.candidates import CandidatePool, default_candidates, largest_pretrained
from selection.kinds.clip import ClipCandidate
from selection.pipeline import SelectionConfig, run_selection
from selection.prompts import (PROMPT_SETS, SWSA_TEMPLATES, WINCLIP_TEMPLATES, clean_class_name, object_name,
                               prompt_set)
from selection.registry import CHAMPION
from selection.search_space import SpaceBounds, get_search_space
from tiny_models import save_tiny_clip_folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return f"clip:local-dir:{save_tiny_clip_folder(tmp_path_factory.mktemp('clip') / 'tiny')}"


@pytest.mark.parametrize("raw, cleaned", [("pcb1", "printed circuit board"), ("macaroni2", "macaroni"),
                                          ("metal_nut", "metal nut"), ("pipe_fryum", "pipe fryum"),
                                          ("bottle", "bottle"), ("PCB4", "printed circuit board")])
def test_class_names_are_cleaned_as_swsa_does(raw, cleaned):
    assert clean_class_name(raw) == cleaned


def test_a_tasks_object_name_comes_from_its_name():
    assert object_name("visa/pcb3") == "printed circuit board"
    assert object_name("mvtec/metal_nut") == "metal nut"
    assert object_name("elpv") == "solar cell"
    assert object_name("folder:/data/line_4/") == "line"
    assert SelectionConfig(task="visa/pcb1").prompt_object == "printed circuit board"
    assert SelectionConfig(task="visa/pcb1", object_name="board").prompt_object == "board"


def test_prompt_sets_are_swsas_templates_their_ensemble_and_winclips_composition():
    assert prompt_set("photo", "bottle") == (("a photo of a bottle.",), ("a photo of a bottle with defect.",))
    assert prompt_set("inspection", "bottle")[1] == ("a photo of a bottle with defect for inspection.",)
    normal, anomalous = prompt_set("ensemble", "bottle")
    assert len(normal) == len(anomalous) == len(SWSA_TEMPLATES) == 10
    assert normal[0] == "a photo of a bottle." and all("defect" in prompt for prompt in anomalous)
    normal, anomalous = prompt_set("winclip", "bottle")
    assert len(normal) == 7 * len(WINCLIP_TEMPLATES) and len(anomalous) == 4 * len(WINCLIP_TEMPLATES)
    assert "a cropped photo of the flawless bottle." in normal and "a photo of a bottle with flaw." in anomalous
    with pytest.raises(ValueError, match="unknown prompt set 'nice'"):
        prompt_set("nice", "bottle")


def test_default_candidates_are_each_prompt_set_few_shot_and_one_control_with_the_ensemble_as_standard():
    pool = CandidatePool(backbones=(), clip_models=("clip:A@x", "clip:B@y"), object_name="bottle")
    candidates = default_candidates(pool, ("clip",))
    names = [c.name for c in candidates]
    assert names[:13] == [f"clip/A@x/pretrained/{p}" for p in PROMPT_SETS] + ["clip/A@x/pretrained/ensemble/few-shot-w0.5"]
    assert len(candidates) == 2 * 13 + 1 and names[-1] == "clip/A@x/random/ensemble"
    assert [c.name for c in candidates if c.is_standard and not c.is_control] == [
        "clip/A@x/pretrained/ensemble", "clip/B@y/pretrained/ensemble"]
    assert [c.is_control for c in candidates].count(True) == 1
    assert candidates[0].params["normal_prompt"] == "a photo of a bottle."
    assert len(default_candidates(replace(pool, controls=False), ("clip",))) == 26


def test_the_prior_among_prompts_is_the_prompt_ensemble(tiny_clip):
    candidates = default_candidates(CandidatePool(backbones=(), clip_models=(tiny_clip,)), ("clip",))
    assert largest_pretrained(candidates, FeatureCache()).name.endswith("/pretrained/ensemble")


def test_the_clip_space_draws_valid_candidates(tiny_clip):
    space = get_search_space("clip")
    bounds = SpaceBounds((), (), bank_size=5, clip_models=(tiny_clip,), object_name="bottle")
    fixed = space(FixedTrial({"few_shot": True, "model": tiny_clip, "prompts": "dark", "visual_weight": 0.3}), bounds)
    assert fixed == ClipCandidate(tiny_clip, "dark", "bottle", few_shot=True, visual_weight=0.3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space(study.ask(), bounds) for _ in range(80)]
    features = FeatureCache()
    for candidate in drawn:
        candidate.check(features)
    assert {c.prompts for c in drawn} == set(PROMPT_SETS) and {c.few_shot for c in drawn} == {False, True}


def test_an_unreachable_hub_model_fails_the_check_before_any_image_is_read(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    candidate = ClipCandidate("clip:ViT-B-16-plus-240@laion400m_e31")
    with pytest.raises(ValueError, match="ViT-B-16-plus-240@laion400m_e31.*HF_HUB_OFFLINE"):
        candidate.check(FeatureCache())


@pytest.mark.slow
def test_a_selection_ranks_the_prompts_and_registers_a_pick_that_scores_and_maps(mvtec_root, tracking_uri, tmp_path,
                                                                                 tiny_clip, page):
    config = SelectionConfig(task="mvtec/bottle", data_root=str(mvtec_root), detectors=("clip",),
                             clip_models=(tiny_clip,), generators=("cutpaste",), n_anomalies=20, max_support=40,
                             max_validation=30, tracking_uri=tracking_uri, store=str(tmp_path / "synthetic"),
                             experiment="clip")
    result = run_selection(config)
    board = result.leaderboard.set_index("candidate")
    prefix = f"clip/{tiny_clip.removeprefix('clip:')}"
    assert set(board.index) == ({f"{prefix}/pretrained/{p}" for p in PROMPT_SETS}
                                | {f"{prefix}/pretrained/ensemble/few-shot-w0.5", f"{prefix}/random/ensemble"})
    assert board[["synthetic_auroc", "real_auroc", "synthetic_pixel_auroc", "real_pixel_auroc"]].notna().all().all()
    assert result.decision.prior == f"{prefix}/pretrained/ensemble"
    runs = mlflow.search_runs(experiment_names=["clip"], filter_string="tags.kind = 'candidate'")
    assert len(runs) == len(board) and set(runs["params.prompts"]) == set(PROMPT_SETS)
    shown = page(tracking_uri).dataframe[0].value.set_index("candidate")  # the dashboard's leaderboard
    assert set(shown.index) == set(board.index)
    assert "prior" in shown.loc[f"{prefix}/pretrained/ensemble", "mark"]
    assert "pick" in shown.loc[result.pick.name, "mark"]

    assert result.promotion.alias == CHAMPION
    model = mlflow.pyfunc.load_model(f"models:/{result.promotion.model_name}@champion")
    paths = [str(item.path) for item in result.task.validation]
    scores = model.predict(paths)
    np.testing.assert_allclose(scores, result.scored[result.pick.name].real_scores, rtol=1e-5)
    with_maps = model.predict(paths[:2], params={"maps": True})
    assert with_maps["map"][0].shape == np.asarray(Image.open(paths[0])).shape[:2]
