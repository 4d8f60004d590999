"""DiffStyle with a tiny randomly initialised diffusers UNet2DModel (see conftest.py): no network."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from tiny_models import build_tiny_unet

from generation.diffstyle import DiffStyle, DiffusionModel


def _images():
    return [np.asarray(Image.fromarray(image).resize((48, 40), Image.BICUBIC))
            for image in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


def _at_model_size(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((32, 32), Image.BICUBIC))


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(clip_sample=False)


def test_inversion_then_sampling_without_injection_reconstructs_the_image():
    diffusion = DiffusionModel(build_tiny_unet(), _scheduler().alphas_cumprod, 20, torch.device("cpu"))
    image = _at_model_size(_images()[0])
    (inversion,) = diffusion.invert([image])
    (reconstruction,) = diffusion.generate(inversion.noise[None], [inversion.bottlenecks], gamma=0.0, t_edit=400,
                                           t_boost=-1, noise_seeds=[0])
    assert _psnr(reconstruction, image) > 25  # measured 28.8 dB; a sign error in the DDIM step gives 10 dB
    assert sorted(inversion.bottlenecks) == diffusion.timesteps  # a bottleneck at every step


def test_sampling_is_diffusers_ddim():
    unet, scheduler = build_tiny_unet(), _scheduler()
    diffusion = DiffusionModel(unet, scheduler.alphas_cumprod, 20, torch.device("cpu"))
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = diffusion.generate(noise, [{}, {}], gamma=0.0, t_edit=400, t_boost=-1, noise_seeds=[0, 1])
    scheduler.set_timesteps(20)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    reference = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(ours, reference)) <= 1


def test_gamma_zero_reconstructs_the_style_and_gamma_above_zero_injects_the_content(tiny_ddpm_dir):
    images = _images()  # styles: 0, 1; contents: 2, 3
    plain = DiffStyle(model=str(tiny_ddpm_dir), steps=20, gamma=0.0, boost=False).generate(images, 4, seed=0)
    for image, params in zip(plain.images, plain.sample_params):
        assert _psnr(_at_model_size(image), _at_model_size(images[params["style"]])) > 22
    changes = []
    for gamma in (0.3, 0.7, 1.0):
        injected = DiffStyle(model=str(tiny_ddpm_dir), steps=20, gamma=gamma, boost=False).generate(images, 4, seed=0)
        assert injected.sample_params == plain.sample_params  # the same pairs
        changes.append(np.mean([np.abs(a.astype(int) - b.astype(int)).mean()
                                for a, b in zip(injected.images, plain.images)]))
    assert 1 < changes[0] < changes[1] < changes[2]  # more content, further from the style's reconstruction


def test_every_pair_once_before_any_repeats(tiny_ddpm_dir):
    synthetic = DiffStyle(model=str(tiny_ddpm_dir), steps=4).generate(_images(), 6, seed=1)
    pairs = [(p["style"], p["content"]) for p in synthetic.sample_params]
    assert set(pairs[:4]) == {(0, 2), (0, 3), (1, 2), (1, 3)} and set(pairs[4:]) <= set(pairs[:4])
    assert synthetic.masks == [None] * 6 and synthetic.sources == [style for style, _ in pairs]
    assert all(image.shape == (40, 48, 3) for image in synthetic.images)


def test_the_hook_is_removed_even_when_generation_raises(tiny_ddpm_dir):
    generator = DiffStyle(model=str(tiny_ddpm_dir), steps=4)
    diffusion = generator.diffusion()
    inversions = generator.invert(_images()[:2])
    wrong = {t: h[:, :2] for t, h in inversions[1].bottlenecks.items()}  # a bottleneck of the wrong shape
    with pytest.raises(RuntimeError):
        diffusion.generate(inversions[0].noise[None], [wrong], gamma=0.5, t_edit=0, t_boost=-1, noise_seeds=[0])
    assert not diffusion.unet.mid_block._forward_hooks
    generator.invert(_images()[2:3])
    assert not diffusion.unet.mid_block._forward_hooks


def test_inversions_are_cached_on_disk_and_reused_by_a_second_run(tiny_ddpm_dir, tmp_path):
    images = _images()
    first = DiffStyle(model=str(tiny_ddpm_dir), steps=4, cache_dir=str(tmp_path))
    made = first.generate(images, 3, seed=0)
    assert first.inversions_computed == 4 and len(list(tmp_path.glob("*.pt"))) == 4
    second = DiffStyle(model=str(tiny_ddpm_dir), steps=4, cache_dir=str(tmp_path))
    again = second.generate(images, 3, seed=0)
    assert second.inversions_computed == 0
    assert [a.tobytes() for a in again.images] == [a.tobytes() for a in made.images]
    other_steps = DiffStyle(model=str(tiny_ddpm_dir), steps=5, cache_dir=str(tmp_path))
    other_steps.invert(images[:1])
    assert other_steps.inversions_computed == 1  # the cache key includes the number of steps


def test_runtime_options_do_not_change_the_digest(tiny_ddpm_dir, tmp_path):
    images = _images()
    plain = DiffStyle(model=str(tiny_ddpm_dir), steps=4)
    tuned = DiffStyle(model=str(tiny_ddpm_dir), steps=4, batch_size=1, cache_dir=str(tmp_path), device="cpu")
    assert plain.digest(images, 3, 0) == tuned.digest(images, 3, 0)
    assert [a.tobytes() for a in plain.generate(images, 3, 0).images] == \
           [a.tobytes() for a in tuned.generate(images, 3, 0).images]  # batching changes nothing


def test_a_learned_variance_model_uses_its_noise_channels(tmp_path):
    """A learned-variance UNet predicts the noise in its first 3 output channels and the variance in the other
    3: DiffStyle must generate what the same UNet cut down to its noise channels generates."""
    from diffusers import DDIMScheduler

    learned = build_tiny_unet(learned_variance=True)
    weights = learned.state_dict()
    weights["conv_out.weight"], weights["conv_out.bias"] = weights["conv_out.weight"][:3], weights["conv_out.bias"][:3]
    noise_only = build_tiny_unet()
    noise_only.load_state_dict(weights)
    generated = {}
    for name, unet in (("learned", learned), ("noise-only", noise_only)):
        unet.save_pretrained(tmp_path / name)  # a bare UNet directory, with the scheduler beside it
        DDIMScheduler(clip_sample=False).save_pretrained(tmp_path / name / "scheduler")
        generated[name] = DiffStyle(model=str(tmp_path / name), steps=4).generate(_images(), 2, seed=0).images
    assert len(generated["learned"]) == len(generated["noise-only"]) == 2
    for ours, expected in zip(generated["learned"], generated["noise-only"]):
        assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1  # one grey level of rounding


@pytest.mark.parametrize("params, message", [
    ({"steps": 1}, "steps must be an integer of at least 2"),
    ({"gamma": 1.5}, "gamma must lie in"),
    ({"t_edit": 2000}, "t_edit must lie in"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        DiffStyle(**params)


def test_a_folder_without_a_unet_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no diffusers UNet2DModel found at"):
        DiffStyle(model=str(tmp_path)).generate(_images(), 1, seed=0)


def test_one_image_is_not_enough(tiny_ddpm_dir):
    with pytest.raises(ValueError, match="at least 2 normal images"):
        DiffStyle(model=str(tiny_ddpm_dir)).generate(_images()[:1], 1, seed=0)
