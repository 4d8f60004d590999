"""CUT (controllable, universal, training-free anomaly generation): Stable Diffusion img2img from a normal
image, with the cross-attention of an anomaly word pushed into the object by optimising the latent.

Per sample: a normal image is encoded and noised to t_start = steps (1 - gamma); at each denoising step the
latent is optimised, inside the foreground, to raise the anomaly token's peak attention, L = 1 - max(A * fg),
z <- z - alpha_t grad(L) fg, repeated until the step's threshold (0.05 / 0.5 / 0.8 from steps 0 / 10 / 20)
or an iteration cap. A is the token's map at the 16 x 16 level for 512 px input (the cross-attention level
nearest input / 32): probabilities averaged over heads and layers, start token dropped, softmax over the
prompt's tokens (x100), Gaussian-smoothed (3 x 3, sigma 0.5). The step size alpha_t = lambda (1 + t / steps)
n_t / n_start follows the active area n_t (cells above the map's mean); after the first 10 steps the
optimisation stops for good once n_t lies in (10, 50) (for 256 cells; scaled with the level's size). The
other steps are plain classifier-free-guided DDIM. Output: the image, and the last step's smoothed map
upsampled to the image as a coarse probability mask in [0, 1].

The foreground mask is a binary threshold (Otsu) of the normal image, with the polarity that leaves the
border in the background; `foreground="all"` uses the whole image. `blend_background` re-blends the
background from the noised source latent after every step (the released code's variant).
"""

import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from compat.progress import progress
from generation.base import Generator
from generation.devices import resolve_device
from generation.models import CUT_MODEL
from generation.registry import register_generator
from generation.synthetic_set import SyntheticSet

THRESHOLDS = ((0, 0.05), (10, 0.5), (20, 0.8))  # (from denoising step, peak attention to reach)
REFERENCE_CELLS = 256  # the early-stopping band is given for a 16 x 16 map


@register_generator
class CUT(Generator):
    """CUT anomalies with coarse attention masks, from Stable Diffusion 1.x components (hub id or directory)."""

    name = "cut"
    RUNTIME_OPTIONS = ("device",)

    def __init__(self, *, model: str = CUT_MODEL, object_name: str = "object",
                 prompt: str = "a photo of a {cls} that is {anomaly}", anomalies: Sequence[str] = ("damaged",),
                 steps: int = 200, gamma: float = 0.25, guidance: float = 7.5, step_scale: float = 10.0,
                 thresholds: Sequence[Sequence[float]] = THRESHOLDS, max_iterations: int = 20, early_stop_after: int = 10, early_stop_band: Sequence[int] = (10, 50),
                 resolution: int = 512, foreground: str = "auto", blend_background: bool = False,
                 device: str = "auto"):
        if not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an integer of at least 2, got {steps!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        if foreground not in ("auto", "all"):
            raise ValueError(f"foreground must be 'auto' or 'all', got {foreground!r}")
        if not isinstance(resolution, int) or resolution < 32 or resolution % 32:
            raise ValueError(f"resolution must be a multiple of 32, got {resolution!r}")
        anomalies = [anomalies] if isinstance(anomalies, str) else list(anomalies)
        if not anomalies or not all(isinstance(a, str) and a.strip() for a in anomalies):
            raise ValueError(f"anomalies must be one or more words or phrases, got {anomalies!r}")
        self.model = str(model)
        self.object_name = object_name
        self.prompt = prompt
        self.anomalies = anomalies
        self.steps = steps
        self.gamma = float(gamma)
        self.guidance = float(guidance)
        self.step_scale = float(step_scale)
        self.thresholds = [[int(first), float(value)] for first, value in thresholds]
        if not self.thresholds or self.thresholds[0][0] != 0:
            raise ValueError(f"thresholds must start at step 0, got {thresholds!r}")
        self.max_iterations = int(max_iterations)
        self.early_stop_after = int(early_stop_after)
        self.early_stop_band = [int(v) for v in early_stop_band]
        self.resolution = resolution
        self.foreground = foreground
        self.blend_background = bool(blend_background)
        self.device = device
        self.traces: list[list[dict]] = []  # per sample of the last generate: one record per denoising step
        self._components = None

    def get_params(self) -> dict:
        return {k: v for k, v in super().get_params().items() if k not in self.RUNTIME_OPTIONS}

    def numerics(self) -> dict:
        return {"precision": str(resolve_device(self.device)[1]).removeprefix("torch.")}

    def generate(self, normal_images: Sequence[np.ndarray], n: int, seed: int) -> SyntheticSet:
        digest = self.digest(normal_images, n, seed)
        components = self.components()
        prompts = [self._prompt_and_tokens(components, anomaly) for anomaly in self.anomalies]  # fail early
        rng = np.random.default_rng(seed)
        sources = [int(rng.integers(len(normal_images))) for _ in range(n)]
        images, masks, params, self.traces = [], [], [], []
        for i in progress(range(n), desc="CUT", unit="image"):
            prompt, token_indices = prompts[i % len(prompts)]
            generator = torch.Generator().manual_seed(int(rng.integers(2 ** 63)))
            image, mask, trace = self._generate_one(components, normal_images[sources[i]], prompt, token_indices,
                                                    generator)
            images.append(image)
            masks.append(mask)
            self.traces.append(trace)
            optimised = [record for record in trace if record["iterations"] is not None]
            params.append({"anomaly": self.anomalies[i % len(prompts)], "prompt": prompt,
                           "optimised_steps": len(optimised),
                           "iterations": sum(record["iterations"] for record in optimised),
                           "peak_attention": round(float(trace[-1]["peak"]), 6)})
        return SyntheticSet(generator=self.name, params=self.get_params(), seed=seed, digest=digest, images=images,
                            masks=masks, sources=sources, sample_params=params, rejected=0)

    def components(self) -> "StableDiffusionParts":
        if self._components is None:
            self._components = StableDiffusionParts.load(self.model, self.device)
        return self._components

    def _prompt_and_tokens(self, parts: "StableDiffusionParts", anomaly: str) -> tuple[str, list[int]]:
        """The prompt for `anomaly` and the positions of the anomaly's tokens in it; a clear error if absent."""
        prompt = self.prompt.format(cls=self.object_name, anomaly=anomaly)
        ids = parts.tokenizer(prompt).input_ids
        wanted = parts.tokenizer(anomaly, add_special_tokens=False).input_ids
        for start in range(1, len(ids) - len(wanted)):
            if ids[start:start + len(wanted)] == wanted:
                return prompt, list(range(start, start + len(wanted)))
        raise ValueError(f"the anomaly word {anomaly!r} is not in the prompt {prompt!r}")

    def _generate_one(self, parts: "StableDiffusionParts", image: np.ndarray, prompt: str, token_indices: list[int],
                      generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        height, width = image.shape[:2]
        resized = np.asarray(Image.fromarray(image).resize((self.resolution,) * 2, Image.BICUBIC))
        latent_side = self.resolution // parts.vae_scale
        level = parts.attention_level(latent_side, target_side=self.resolution // 32)
        foreground = torch.from_numpy(foreground_mask(resized) if self.foreground == "auto"
                                      else np.ones(resized.shape[:2], bool)).float()[None, None]
        fg_latent = F.interpolate(foreground, size=(latent_side,) * 2, mode="area").to(parts.device)
        fg_level = F.interpolate(foreground, size=(level.side,) * 2, mode="area")[0, 0].to(parts.device)
        n_prompt_tokens = len(parts.tokenizer(prompt).input_ids)
        cells_scale = level.side ** 2 / REFERENCE_CELLS
        band = (self.early_stop_band[0] * cells_scale, self.early_stop_band[1] * cells_scale)

        conditional, unconditional = parts.embed(prompt), parts.embed("")
        clean = parts.encode(resized, generator)
        parts.scheduler.set_timesteps(self.steps)
        start_index = self.steps - int(round(self.steps * (1 - self.gamma)))
        timesteps = parts.scheduler.timesteps[start_index:]
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(parts.device, clean.dtype)
        z = parts.scheduler.add_noise(clean, noise, timesteps[:1])

        def attention_map(maps: list[torch.Tensor]) -> torch.Tensor:
            return token_map(torch.stack(maps).mean(0)[0], level.side, n_prompt_tokens, token_indices)

        trace, n_start, optimising = [], None, self.step_scale > 0
        for k, t in enumerate(timesteps):
            record = {"step": k, "iterations": None}
            started = time.perf_counter()
            if optimising:
                t_step = len(timesteps) - k  # counts down to 1 over the denoising
                z, record = self._optimise(parts, level, z, t, k, t_step, conditional, fg_latent, fg_level,
                                           attention_map, n_start)
                n_start = n_start or record["n_start"]
                if k >= self.early_stop_after and band[0] < record["active_cells"] < band[1]:
                    optimising = False
                    record["early_stop"] = True
            optimised_at = time.perf_counter()
            record["optimise_seconds"] = optimised_at - started
            with torch.no_grad(), level.capturing(parts.unet) as maps:
                eps_conditional = parts.unet(z, t, encoder_hidden_states=conditional).sample
            with torch.no_grad():
                eps_unconditional = parts.unet(z, t, encoder_hidden_states=unconditional).sample
            final_map = attention_map(maps)
            record["peak"] = float((final_map * fg_level).max())
            eps = eps_unconditional + self.guidance * (eps_conditional - eps_unconditional)
            z = parts.scheduler.step(eps, t, z).prev_sample
            if self.blend_background and k + 1 < len(timesteps):
                background = parts.scheduler.add_noise(clean, noise, timesteps[k + 1:k + 2])
                z = fg_latent * z + (1 - fg_latent) * background
            record["denoise_seconds"] = time.perf_counter() - optimised_at
            trace.append(record)

        pixels = parts.decode(z)
        output = np.asarray(Image.fromarray(pixels).resize((width, height), Image.BICUBIC))
        mask = F.interpolate(final_map[None, None].float().cpu(), size=(height, width), mode="bilinear",
                             align_corners=False)[0, 0].clamp(0, 1).numpy().astype(np.float32)
        return output, mask, trace

    def _optimise(self, parts, level, z, t, k: int, t_step: int, conditional, fg_latent, fg_level, attention_map,
                  n_start) -> tuple[torch.Tensor, dict]:
        """Raise the token's peak attention in the foreground until this step's threshold (or the cap)."""
        threshold = [value for first, value in self.thresholds if k >= first][-1]
        record = {"step": k, "threshold": threshold, "iterations": 0}
        for iteration in range(self.max_iterations + 1):
            z = z.detach().requires_grad_(True)
            with torch.enable_grad(), level.capturing(parts.unet) as maps:
                parts.unet(z, t, encoder_hidden_states=conditional)
                smoothed = attention_map(maps)
                peak = (smoothed * fg_level).max()
            active = int((smoothed > smoothed.mean()).sum())
            if iteration == 0:
                record["peak_before"] = float(peak.detach())
                record["n_start"] = n_start or max(active, 1)
            record.update(iterations=iteration, active_cells=active, peak_after=float(peak.detach()))
            if peak >= threshold or iteration == self.max_iterations:
                break
            (gradient,) = torch.autograd.grad(1 - peak, z)
            alpha = self.step_scale * (1 + t_step / self.steps) * active / record["n_start"]
            z = z - alpha * gradient * fg_latent
        return z.detach(), record


@dataclass
class AttentionLevel:
    """The cross-attention layers observed at one spatial level of the UNet."""

    side: int
    layers: list[str]

    @contextmanager
    def capturing(self, unet):
        """Capture these layers' attention probabilities for the passes inside (yields the list they go to);
        the other layers keep their own (fused) processors, and every original processor is back afterwards,
        also after an error."""
        maps: list[torch.Tensor] = []
        original = unet.attn_processors
        capture = AttentionCapture(maps)
        unet.set_attn_processor({name: capture if name in self.layers else processor
                                 for name, processor in original.items()})
        try:
            yield maps
        finally:
            unet.set_attn_processor(original)


class AttentionCapture:
    """A cross-attention processor that forms the softmax probabilities explicitly and keeps their mean over
    heads, (batch, queries, tokens)."""

    def __init__(self, maps: list):
        self.maps = maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        batch, queries, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        probabilities = attn.get_attention_scores(query, key, mask)
        self.maps.append(probabilities.view(batch, attn.heads, queries, -1).mean(1))
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probabilities, value))))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def token_map(attention: torch.Tensor, side: int, n_prompt_tokens: int, token_indices: list[int]) -> torch.Tensor:
    """(side, side) map of the anomaly tokens from (side^2, tokens) probabilities: start token dropped,
    softmax (x100) over the prompt's words, summed over the anomaly's tokens, Gaussian-smoothed."""
    words = torch.softmax(attention[:, 1:n_prompt_tokens - 1].float() * 100, dim=-1)
    token_probabilities = words[:, [i - 1 for i in token_indices]].sum(-1).view(1, 1, side, side)
    return F.conv2d(F.pad(token_probabilities, (1, 1, 1, 1), mode="reflect"), _gaussian_kernel())[0, 0]


def _gaussian_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = torch.outer(weights, weights)
    return (kernel / kernel.sum())[None, None]


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Otsu threshold of the grey image, with the polarity that puts most of the border in the background;
    the whole image where the threshold finds no foreground."""
    grey = image.astype(np.float64).mean(axis=2)
    histogram, edges = np.histogram(grey, bins=256, range=(0, 256))
    weights = histogram / max(histogram.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(weights)
    mean_below = np.cumsum(weights * centres)
    between = (mean_below[-1] * below - mean_below) ** 2 / np.maximum(below * (1 - below), 1e-12)
    mask = grey > centres[int(np.argmax(between))]
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() > 0.5:
        mask = ~mask
    return mask if mask.any() else np.ones_like(mask)


@dataclass
class StableDiffusionParts:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def load(cls, model: str, device: str = "auto") -> "StableDiffusionParts":
        """Stable Diffusion 1.x components from a hub id or a local directory with the diffusers layout
        (unet/, vae/, text_encoder/, tokenizer/, scheduler/); no safety checker is loaded."""
        from compat import torchvision_fix

        torchvision_fix.apply()  # diffusers and transformers import torchvision
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        resolved, dtype = resolve_device(device)
        try:
            unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype,
                                                        low_cpu_mem_usage=False)
            vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype, low_cpu_mem_usage=False)
            text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
            scheduler = DDIMScheduler.from_pretrained(model, subfolder="scheduler")
        except (OSError, ValueError) as error:
            raise ValueError(f"no Stable Diffusion components at {model!r} (a hub id, or a directory with unet/, "
                             f"vae/, text_encoder/, tokenizer/ and scheduler/; --sd-model): {error}") from error
        for module in (unet, vae, text_encoder):
            module.to(resolved).eval().requires_grad_(False)
        return cls(unet, vae, text_encoder, tokenizer, scheduler, resolved, dtype)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def attention_level(self, latent_side: int, target_side: int) -> AttentionLevel:
        """The cross-attention layers at the level nearest `target_side`."""
        n_blocks = len(self.unet.config.block_out_channels)
        by_side: dict[int, list[str]] = {}
        for name in self.unet.attn_processors:
            if ".attn2." not in name:
                continue
            part, *rest = name.split(".")
            depth = n_blocks - 1 if part == "mid_block" else int(rest[0])
            if part == "up_blocks":
                depth = n_blocks - 1 - depth
            by_side.setdefault(latent_side // 2 ** depth, []).append(name)
        if not by_side:
            raise ValueError("the UNet has no cross-attention layers")
        side = min(by_side, key=lambda s: (abs(math.log(s / target_side)), -s))
        return AttentionLevel(side, by_side[side])

    def embed(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device))[0]

    def encode(self, image: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(127.5).sub(1)
        with torch.no_grad():
            distribution = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        noise = torch.randn(distribution.mean.shape, generator=generator, dtype=torch.float32)
        sample = distribution.mean + distribution.std * noise.to(self.device, distribution.mean.dtype)
        return sample * self.vae.config.scaling_factor

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            pixels = self.vae.decode(latent / self.vae.config.scaling_factor).sample
        return ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
