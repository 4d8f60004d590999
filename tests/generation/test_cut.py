"""CUT with a toy Stable Diffusion built from configs and an offline tokenizer (see tiny_models.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from generation.cut import CUT, AttentionCapture, foreground_mask, token_map


def _images():
    return [np.asarray(Image.fromarray(image).resize((80, 60), Image.BICUBIC))
            for image in (data.coffee(), data.astronaut())]


def _cut(tiny_sd_dir, **params):
    defaults = {"model": str(tiny_sd_dir), "steps": 12, "resolution": 64, "max_iterations": 3,
                "object_name": "cup"}
    return CUT(**{**defaults, **params})


def _processor_types(unet):
    return {name: type(processor) for name, processor in unet.attn_processors.items()}


def test_captured_maps_are_probabilities_over_tokens_at_the_chosen_level(tiny_sd_dir):
    generator = _cut(tiny_sd_dir)
    parts = generator.components()
    level = parts.attention_level(latent_side=32, target_side=2)
    assert level.side == 16 and level.layers and all(".attn2." in name for name in level.layers)
    before = _processor_types(parts.unet)
    with torch.no_grad(), level.capturing(parts.unet) as maps:
        during = _processor_types(parts.unet)
        parts.unet(torch.randn(1, 4, 32, 32), 500, encoder_hidden_states=parts.embed("a photo of a cup")).sample
    assert len(maps) == len(level.layers)
    for probabilities in maps:
        assert probabilities.shape == (1, 16 * 16, 77)
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(1, 256))
    # only the observed layers changed processor; the others kept their fused ones, and all are back after
    assert {name for name in during if during[name] is not before[name]} == set(level.layers)
    assert all(during[name] is AttentionCapture for name in level.layers)
    assert _processor_types(parts.unet) == before

    smoothed = token_map(maps[0][0], 16, n_prompt_tokens=7, token_indices=[5])
    assert smoothed.shape == (16, 16) and 0 <= smoothed.min() and smoothed.max() <= 1


def test_optimisation_raises_the_anomaly_tokens_peak_attention_in_the_foreground(tiny_sd_dir):
    generator = _cut(tiny_sd_dir, max_iterations=4, thresholds=((0, 0.9),))  # random weights never reach 0.9
    generator.generate(_images()[:1], 1, seed=0)
    optimised = [r for r in generator.traces[0] if r["iterations"]]
    assert len(optimised) == len(generator.traces[0])
    for record in optimised:
        assert record["peak_after"] > record["peak_before"]  # against the same latent without optimisation


def test_without_step_size_nothing_is_optimised(tiny_sd_dir):
    generator = _cut(tiny_sd_dir, step_scale=0.0)
    generator.generate(_images()[:1], 1, seed=0)
    assert all(record["iterations"] is None for record in generator.traces[0])


def test_early_stopping_fires_once_the_active_area_is_in_the_band(tiny_sd_dir):
    stopping = _cut(tiny_sd_dir, early_stop_after=3, early_stop_band=(0, 10 ** 6), thresholds=((0, 0.9),),
                    max_iterations=1)
    stopping.generate(_images()[:1], 1, seed=0)
    trace = stopping.traces[0]
    assert trace[3].get("early_stop") and all(r["iterations"] is not None for r in trace[:4])
    assert all(r["iterations"] is None for r in trace[4:])
    never = _cut(tiny_sd_dir, early_stop_after=3, early_stop_band=(0, 0), max_iterations=1)
    never.generate(_images()[:1], 1, seed=0)
    assert all(r["iterations"] is not None for r in never.traces[0])


def test_processors_are_restored_after_an_exception(tiny_sd_dir):
    generator = _cut(tiny_sd_dir)
    unet = generator.components().unet
    before = _processor_types(unet)
    calls = []

    def fail_on_the_fifth_call(module, args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")

    handle = unet.register_forward_pre_hook(fail_on_the_fifth_call)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generator.generate(_images()[:1], 1, seed=0)
    finally:
        handle.remove()
    assert _processor_types(unet) == before


def test_output_image_and_coarse_mask(tiny_sd_dir):
    synthetic = _cut(tiny_sd_dir, anomalies=("damaged", "cracked")).generate(_images(), 2, seed=3)
    for image, mask, source in zip(synthetic.images, synthetic.masks, synthetic.sources):
        assert image.shape == _images()[source].shape and image.dtype == np.uint8
        assert mask.shape == (60, 80) and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
        assert mask.max() > mask.min()  # a map, not a constant
    assert [p["anomaly"] for p in synthetic.sample_params] == ["damaged", "cracked"]


def test_an_anomaly_word_missing_from_the_prompt_is_a_clear_error(tiny_sd_dir):
    generator = _cut(tiny_sd_dir, prompt="a photo of a {cls}", anomalies=("crack",))
    with pytest.raises(ValueError, match="the anomaly word 'crack' is not in the prompt 'a photo of a cup'"):
        generator.generate(_images(), 1, seed=0)


def test_a_folder_without_stable_diffusion_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no Stable Diffusion components at"):
        CUT(model=str(tmp_path)).generate(_images(), 1, seed=0)


@pytest.mark.parametrize("params, message", [
    ({"steps": 1}, "steps must be an integer"), ({"gamma": 0}, "gamma must lie in"),
    ({"resolution": 100}, "multiple of 32"), ({"foreground": "left"}, "foreground must be"),
    ({"anomalies": ()}, "one or more words"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        CUT(**params)


def test_foreground_is_the_object_whatever_its_polarity():
    dark_on_light = np.full((40, 40, 3), 220, np.uint8)
    dark_on_light[10:30, 12:28] = 30
    mask = foreground_mask(dark_on_light)
    assert mask[10:30, 12:28].all() and mask.sum() == 20 * 16
    assert (foreground_mask(255 - dark_on_light) == mask).all()
    assert foreground_mask(np.full((8, 8, 3), 7, np.uint8)).all()  # nothing to threshold: everything
