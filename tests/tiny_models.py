"""Tiny, randomly initialised models built from configs: real classes, no downloads."""

import torch


def build_tiny_unet(learned_variance: bool = False):
    """A randomly initialised diffusers UNet2DModel at 32 px, its output layer scaled by 0.01.

    Deterministic DDIM inversion reconstructs an image only when the noise prediction barely changes along
    the sampling path, as a trained model's does; a random UNet's changes a lot. Scaling its output layer down
    makes it that smooth, so a test can tell a correct inversion (about 29 dB PSNR at 20 steps) from a broken
    one (about 10 dB with the noise prediction's sign flipped in the step).
    """
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=6 if learned_variance else 3, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.01)
        unet.conv_out.bias.mul_(0.01)
    return unet
