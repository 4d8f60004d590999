"""DiffStyle (Jeong, Kwon, Uh, WACV 2024) as SWSA uses it: content injection in the h-space of an
unconditional diffusion model.

Every seed image is inverted to noise x_T by deterministic DDIM (eta 0), recording the UNet bottleneck h
(the mid block's output) at every step. A (style, content) pair is generated from the style's x_T: at steps
with t >= t_edit the bottleneck is replaced by slerp(gamma, h, h_content'), where h is the bottleneck of the
generation itself (the style path, whose skip connections the decoder keeps) and h_content' the content's
recorded bottleneck rescaled to h's norm; below t_edit the steps are plain DDIM, and with `boost` the steps
at t <= t_boost are stochastic (eta 1: SWSA's quality boosting). The seed images are split in halves,
styles and contents; the n samples are distinct pairs drawn at random, cycling through all pairs when
n exceeds their number. Output images have the style image's size; labels only, no masks.

Times (t_edit, t_boost) are on a 1000-step scale and follow the model's own training schedule. Inversions are
the dominant cost and are cached per (image, model, steps, resolution): in memory, and in `cache_dir`.
"""

import hashlib
import pickle
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compat.progress import progress
from generation.base import Generator
from generation.devices import resolve_device
from generation.models import DIFFSTYLE_MODEL
from generation.registry import register_generator
from generation.synthetic_set import SyntheticSet

# The ADM ImageNet 256x256 unconditional model that SWSA used, converted to diffusers (hub; not checked here).
REFERENCE_STEPS = 1000  # the scale of t_edit and t_boost


@dataclass(frozen=True)
class Inversion:
    noise: torch.Tensor  # x_T, (C, S, S) float32 on the CPU
    bottlenecks: dict[int, torch.Tensor]  # timestep -> mid-block output (C', s, s), float32 on the CPU


@register_generator
class DiffStyle(Generator):
    """DiffStyle anomalies from a diffusers UNet2DModel (hub id or local directory). See the module docstring."""

    name = "diffstyle"
    RUNTIME_OPTIONS = ("device", "batch_size", "cache_dir")  # change how, not what, is generated

    def __init__(self, *, model: str = DIFFSTYLE_MODEL, steps: int = 50, gamma: float = 0.7, t_edit: int = 400,
                 t_boost: int = 200, boost: bool = True, device: str = "auto", batch_size: int = 8,
                 cache_dir: str | None = None):
        if not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an integer of at least 2, got {steps!r}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
        for label, value in (("t_edit", t_edit), ("t_boost", t_boost)):
            if not 0 <= value <= REFERENCE_STEPS:
                raise ValueError(f"{label} must lie in [0, {REFERENCE_STEPS}], got {value!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = str(model)
        self.steps = steps
        self.gamma = float(gamma)
        self.t_edit = t_edit
        self.t_boost = t_boost
        self.boost = bool(boost)
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.inversions_computed = 0  # images inverted by this instance (cache misses)
        self._inversions: dict[str, Inversion] = {}
        self._diffusion = None

    def get_params(self) -> dict:
        return {k: v for k, v in super().get_params().items() if k not in self.RUNTIME_OPTIONS}

    def numerics(self) -> dict:
        return {"precision": str(resolve_device(self.device)[1]).removeprefix("torch.")}

    def _check_images(self, normal_images: Sequence[np.ndarray]) -> None:
        if len(normal_images) < 2:
            raise ValueError("DiffStyle needs at least 2 normal images: one half gives styles, the other contents")

    def generate(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> SyntheticSet:
        digest = self.digest(normal_images, n, seed)
        diffusion = self.diffusion()
        half = len(normal_images) // 2
        pairs = [(style, content) for style in range(half) for content in range(half, len(normal_images))]
        order = np.random.default_rng(seed).permutation(len(pairs))
        chosen = [pairs[order[i % len(pairs)]] for i in range(n)]
        needed = sorted({index for pair in chosen for index in pair})
        inversions = dict(zip(needed, self.invert([normal_images[i] for i in needed])))

        images = []
        for start in progress(range(0, n, self.batch_size), desc="DiffStyle generation", unit="batch"):
            batch = chosen[start:start + self.batch_size]
            generated = diffusion.generate(
                noise=torch.stack([inversions[style].noise for style, _ in batch]),
                contents=[inversions[content].bottlenecks for _, content in batch],
                gamma=self.gamma, t_edit=self.t_edit, t_boost=self.t_boost if self.boost else -1,
                noise_seeds=[_sample_seed(seed, start + i) for i in range(len(batch))])
            for (style, _), image in zip(batch, generated):
                height, width = normal_images[style].shape[:2]
                images.append(np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC)))
        return SyntheticSet(
            generator=self.name, params=self.get_params(), seed=seed, digest=digest, images=images,
            masks=[None] * n, sources=[style for style, _ in chosen],
            sample_params=[{"style": style, "content": content} for style, content in chosen], rejected=0)

    def diffusion(self) -> "DiffusionModel":
        if self._diffusion is None:
            self._diffusion = DiffusionModel.load(self.model, self.steps, self.device)
        return self._diffusion

    def invert(self, images: Sequence[np.ndarray]) -> list[Inversion]:
        """Each image's inversion, from the caches where possible."""
        diffusion = self.diffusion()
        keys = [self._cache_key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if self._cached(key) is None]
        for start in progress(range(0, len(missing), self.batch_size), desc="DiffStyle inversion", unit="batch"):
            batch = missing[start:start + self.batch_size]
            for i, inversion in zip(batch, diffusion.invert([images[i] for i in batch])):
                self._store(keys[i], inversion)
            self.inversions_computed += len(batch)
        return [self._cached(key) for key in keys]

    def _cache_key(self, image: np.ndarray) -> str:
        diffusion = self.diffusion()
        request = f"{self.model}|{self.steps}|{diffusion.resolution}|{diffusion.unet.dtype}|{image.shape}|".encode()
        return hashlib.sha256(request + np.ascontiguousarray(image).tobytes()).hexdigest()[:40]

    def _cached(self, key: str) -> Inversion | None:
        if key not in self._inversions and self.cache_dir is not None:
            path = Path(self.cache_dir) / f"{key}.pt"
            if path.is_file():
                try:  # weights_only: tensors and plain containers, never an arbitrary object
                    stored = torch.load(path, weights_only=True)
                    self._inversions[key] = Inversion(stored["noise"], dict(stored["bottlenecks"]))
                except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as error:
                    warnings.warn(f"damaged inversion cache entry {path} ({type(error).__name__}): inverting the "
                                  "image again", stacklevel=2)
        return self._inversions.get(key)

    def _store(self, key: str, inversion: Inversion) -> None:
        self._inversions[key] = inversion
        if self.cache_dir is not None:
            directory = Path(self.cache_dir)
            directory.mkdir(parents=True, exist_ok=True)
            partial = directory / f".{key}.pt.partial"
            torch.save({"noise": inversion.noise, "bottlenecks": inversion.bottlenecks}, partial)
            partial.replace(directory / f"{key}.pt")


class DiffusionModel:
    """An unconditional diffusers UNet2DModel with its DDIM schedule, inverted and sampled step by step."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, steps: int, device: torch.device):
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("the diffusion model's UNet has no mid block: DiffStyle needs its bottleneck (h-space)")
        if unet.config.in_channels != 3:
            raise ValueError(f"DiffStyle needs an RGB pixel-space UNet, got {unet.config.in_channels} input channels")
        self.unet = unet.eval().requires_grad_(False)
        self.device = device
        self.alphas_cumprod = alphas_cumprod.double()
        train_steps = len(alphas_cumprod)
        self.scale = train_steps / REFERENCE_STEPS
        self.timesteps = list(range(0, train_steps, train_steps // steps))[:steps]  # ascending: 0, T/steps, ...
        size = unet.config.sample_size
        self.resolution = size if isinstance(size, int) else size[0]

    @classmethod
    def load(cls, model: str, steps: int, device: str = "auto") -> "DiffusionModel":
        """From a hub id or a local directory holding a pipeline (unet/, scheduler/) or a bare UNet."""
        from compat import torchvision_fix

        torchvision_fix.apply()  # diffusers imports torchvision
        from diffusers import DDIMScheduler, UNet2DModel

        resolved, dtype = resolve_device(device)
        unet = None
        for subfolder in ("unet", None):
            try:
                unet = UNet2DModel.from_pretrained(model, subfolder=subfolder, torch_dtype=dtype,
                                                   low_cpu_mem_usage=False)
                break
            except (OSError, ValueError):
                continue
        if unet is None:
            raise ValueError(f"no diffusers UNet2DModel found at {model!r}: give a hub id (online) or a local "
                             "directory with unet/ or a UNet's config.json (--diffusion-model)")
        scheduler = DDIMScheduler()  # the standard linear schedule, where the model ships none
        for subfolder in ("scheduler", None):
            try:
                scheduler = DDIMScheduler.from_pretrained(model, subfolder=subfolder)
                break
            except (OSError, ValueError):
                continue
        return cls(unet.to(resolved), scheduler.alphas_cumprod, steps, resolved)

    def invert(self, images: Sequence[np.ndarray]) -> list[Inversion]:
        """Deterministic DDIM inversion of each image to x_T, with the bottleneck at every timestep."""
        x = self._to_tensor(images)
        recorded: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for i, t in enumerate(self.timesteps):
                with self._bottleneck(record=lambda h, t=t: recorded.__setitem__(t, h.float().cpu())):
                    eps = self._eps(x, t)
                if i + 1 < len(self.timesteps):
                    x = self._ddim_step(x, eps, t, self.timesteps[i + 1])
        return [Inversion(x[j].float().cpu(), {t: h[j] for t, h in recorded.items()}) for j in range(len(images))]

    def generate(self, noise: torch.Tensor, contents: list[dict[int, torch.Tensor]], gamma: float, t_edit: int,
                 t_boost: int, noise_seeds: list[int]) -> list[np.ndarray]:
        """Sample from `noise` (the styles' x_T), injecting each content's bottleneck at t >= t_edit."""
        x = noise.to(self.device, torch.float64)
        generators = [torch.Generator().manual_seed(s) for s in noise_seeds]
        with torch.no_grad():
            for i, t in enumerate(reversed(self.timesteps)):
                inject = gamma > 0 and t >= t_edit * self.scale
                content = torch.stack([c[t] for c in contents]).to(self.device) if inject else None
                with self._bottleneck(replace=(lambda h: _slerp(gamma, h, content)) if inject else None):
                    eps = self._eps(x, t)
                previous = self.timesteps[-i - 2] if i + 1 < len(self.timesteps) else -1
                eta = 1.0 if t <= t_boost * self.scale else 0.0
                x = self._ddim_step(x, eps, t, previous, eta, generators)
        pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return list(pixels)

    def _eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        timestep = torch.full((len(x),), t, device=self.device, dtype=torch.long)
        out = self.unet(x.to(self.unet.dtype), timestep).sample
        return out[:, :3].double()  # models with a learned variance output 6 channels: eps comes first

    def _ddim_step(self, x, eps, t: int, target: int, eta: float = 0.0, generators=None) -> torch.Tensor:
        """From timestep t to `target` (later for inversion, earlier for sampling; -1 = the clean image)."""
        alpha = self.alphas_cumprod[t]
        alpha_target = self.alphas_cumprod[target] if target >= 0 else torch.tensor(1.0, dtype=torch.float64)
        clean = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        sigma = eta * ((1 - alpha_target) / (1 - alpha) * (1 - alpha / alpha_target)).clamp(min=0).sqrt()
        x = alpha_target.sqrt() * clean + (1 - alpha_target - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            noise = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float64) for g in generators])
            x = x + sigma * noise.to(x.device)
        return x

    @contextmanager
    def _bottleneck(self, record=None, replace=None):
        """Observe or replace the mid block's output for the forward passes inside; the hook always goes."""
        def hook(module, inputs, output):
            if record is not None:
                record(output)
            if replace is not None:
                return replace(output.double()).to(output.dtype)
            return None

        handle = self.unet.mid_block.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        size = (self.resolution, self.resolution)
        resized = np.stack([np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC)) for image in images])
        return (torch.from_numpy(resized).permute(0, 3, 1, 2).double() / 127.5 - 1).to(self.device)


def _slerp(gamma: float, h: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Per sample: slerp from h towards the content rescaled to h's norm; gamma 0 gives h."""
    flat_h, flat_c = h.flatten(1), content.double().flatten(1)
    norm_h = flat_h.norm(dim=1, keepdim=True)
    flat_c = flat_c * norm_h / flat_c.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cosine = (flat_h * flat_c).sum(dim=1, keepdim=True) / (norm_h ** 2).clamp(min=1e-12)
    theta = cosine.clamp(-1, 1).acos()
    sin = theta.sin()
    nearly_parallel = sin.abs() < 1e-6  # slerp degenerates to a linear blend
    weight_h = torch.where(nearly_parallel, 1 - gamma, ((1 - gamma) * theta).sin() / sin.clamp(min=1e-12))
    weight_c = torch.where(nearly_parallel, torch.full_like(theta, gamma), (gamma * theta).sin() / sin.clamp(min=1e-12))
    return (weight_h * flat_h + weight_c * flat_c).view_as(h)


def _sample_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little")
