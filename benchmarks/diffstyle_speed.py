"""Seconds per DiffStyle image, inversion against generation, and peak memory.

Two UNet2DModels with random weights (no download): a tiny one at 32 px, run with the default 50 DDIM steps,
and an ADM-class one at 256 px shaped like the ImageNet model SWSA used (channels 256-1024, attention at
32/16/8 px, learned variance), run for a few steps and extrapolated to 50 steps (this project's default)
and 1000 (SWSA's). Each inversion and each generated image costs one UNet pass per step.

    python benchmarks/diffstyle_speed.py [--device cpu] [--full-steps 2]
"""

import argparse
import resource
import time

import numpy as np
import torch

from compat import torchvision_fix
from generation.diffstyle import DiffusionModel

torchvision_fix.apply()  # before diffusers is imported


def tiny_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)


def adm_class_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=256, in_channels=3, out_channels=6, layers_per_block=2,
        block_out_channels=(256, 256, 512, 512, 1024, 1024),
        down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
        up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
        attention_head_dim=64, resnet_time_scale_shift="scale_shift", norm_num_groups=32)


def measure(unet, steps: int, n_images: int, device: torch.device) -> dict:
    from diffusers import DDIMScheduler

    diffusion = DiffusionModel(unet.to(device), DDIMScheduler().alphas_cumprod, steps, device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n_images)]
    started = time.perf_counter()
    inversions = diffusion.invert(images)
    inversion = (time.perf_counter() - started) / n_images
    started = time.perf_counter()
    diffusion.generate(torch.stack([inv.noise for inv in inversions]), [inv.bottlenecks for inv in inversions[::-1]],
                       gamma=0.7, t_edit=400, t_boost=200, noise_seeds=list(range(n_images)))
    generation = (time.perf_counter() - started) / n_images
    return {"params": sum(p.numel() for p in unet.parameters()) / 1e6, "steps": steps,
            "inversion": inversion, "generation": generation}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full-steps", type=int, default=2, help="DDIM steps actually run at 256 px")
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = [("tiny, 32 px", measure(tiny_unet(), 50, args.images, device), peak_memory_mb(device))]
    rows.append(("ADM-class, 256 px", measure(adm_class_unet(), args.full_steps, args.images, device),
                 peak_memory_mb(device)))

    print(f"device: {device}; batch = {args.images} images; peak memory is the process's so far\n")
    print("| UNet | parameters (M) | steps run | inversion s/image | generation s/image | per step s/image "
          "| 50 steps s/image (inv + gen) | 1000 steps s/image | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row, memory in rows:
        per_step = (row["inversion"] + row["generation"]) / (2 * row["steps"])
        print(f"| {name} | {row['params']:.1f} | {row['steps']} | {row['inversion']:.2f} | {row['generation']:.2f} "
              f"| {per_step:.3f} | {100 * per_step:.1f} | {2000 * per_step:.0f} | {memory:.0f} |")


if __name__ == "__main__":
    main()
