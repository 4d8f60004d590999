"""Seconds per CUT image, denoising against attention optimisation, and peak memory.

1. The toy Stable Diffusion of the tests (random weights, 64 px), through the whole generator: seconds per
   image split into denoising (two guided UNet passes per step) and optimisation (a UNet pass with gradients
   per iteration), with a reduced schedule.
2. A full-size SD 1.5 UNet (860 M parameters, random weights) at 256 and 512 px: one guided denoising step and
   one optimisation iteration measured, extrapolated to CUT's default schedule (200 steps from
   t_start = 150: 150 denoising steps; the optimisation iterations per step depend on the model, so they are
   given per iteration).

    python benchmarks/cut_speed.py [--device cpu]
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compat import torchvision_fix
from generation.cut import CUT, AttentionLevel, token_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import save_tiny_stable_diffusion  # noqa: E402

torchvision_fix.apply()  # before diffusers is imported


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def toy_generator(device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        save_tiny_stable_diffusion(tmp)
        generator = CUT(model=tmp, steps=40, resolution=64, max_iterations=5, device=str(device))
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
        generator.generate(images, 2, seed=0)
    records = [record for trace in generator.traces for record in trace]
    iterations = sum(record["iterations"] or 0 for record in records) + sum(
        1 for record in records if record["iterations"] is not None)
    return {"denoise": sum(r["denoise_seconds"] for r in records) / 2,
            "optimise": sum(r["optimise_seconds"] for r in records) / 2,
            "steps": len(records) / 2, "iterations": iterations / 2}


def full_size_step(resolution: int, device: torch.device) -> dict:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=resolution // 8).to(device)
    if dtype != torch.float32:
        unet = unet.half()
    unet.requires_grad_(False)
    latent = torch.randn(1, 4, resolution // 8, resolution // 8, device=device, dtype=dtype)
    text = torch.randn(1, 77, 768, device=device, dtype=dtype)
    with torch.no_grad():
        unet(latent, 500, encoder_hidden_states=text)  # warm-up: allocations and kernel choice, not timed
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(2):  # conditional and unconditional passes of one guided step
            unet(latent, 500, encoder_hidden_states=text)
    denoise = time.perf_counter() - started

    n_blocks = len(unet.config.block_out_channels)
    names = [n for n in unet.attn_processors if n.startswith("down_blocks.2.") and ".attn2." in n]
    level = AttentionLevel(resolution // 8 // 2 ** (n_blocks - 2), names)
    started = time.perf_counter()
    z = latent.clone().requires_grad_(True)
    with torch.enable_grad(), level.capturing(unet) as maps:
        unet(z, 500, encoder_hidden_states=text)
        peak = token_map(torch.stack(maps).mean(0)[0], level.side, 10, [8]).max()
    torch.autograd.grad(1 - peak, z)
    optimise = time.perf_counter() - started
    return {"params": sum(p.numel() for p in unet.parameters()) / 1e6, "denoise": denoise, "optimise": optimise,
            "memory": peak_memory_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    toy = toy_generator(device)
    toy_memory = peak_memory_mb(device)
    print(f"device: {device}; peak memory is the process's so far\n")
    print("| model | per image: denoising s | optimisation s | denoising steps | optimisation iterations "
          "| peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    print(f"| toy SD, 64 px, 40 steps (30 denoising), <= 5 iterations | {toy['denoise']:.2f} | {toy['optimise']:.2f} "
          f"| {toy['steps']:.0f} | {toy['iterations']:.0f} | {toy_memory:.0f} |")
    print("\n| SD 1.5 UNet, random weights | parameters (M) | guided step s | optimisation iteration s "
          "| 150 denoising steps s | peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    for resolution in (256, 512):
        row = full_size_step(resolution, device)
        print(f"| {resolution} px | {row['params']:.0f} | {row['denoise']:.2f} | {row['optimise']:.2f} "
              f"| {150 * row['denoise']:.0f} | {row['memory']:.0f} |")


if __name__ == "__main__":
    main()
