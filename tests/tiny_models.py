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


def clip_tokenizer(directory):
    """transformers' CLIPTokenizer from open_clip's BPE vocabulary (which open_clip ships, so this works
    offline); token ids match open_clip's and Stable Diffusion's."""
    import gzip
    import json
    from pathlib import Path

    import open_clip
    from transformers import CLIPTokenizer
    from open_clip.tokenizer import bytes_to_unicode

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(vocabulary_file).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # Built from vocab_file/merges_file arguments, transformers 5 makes a 2-token tokenizer: load the folder.
    return CLIPTokenizer.from_pretrained(directory, model_max_length=77)


def save_tiny_stable_diffusion(directory) -> None:
    """Stable Diffusion's five components at toy size, randomly initialised, in the diffusers folder layout."""
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(directory)
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(directory / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                  norm_num_groups=8).save_pretrained(directory / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                 num_hidden_layers=2, max_position_embeddings=77, bos_token_id=49406,
                                 eos_token_id=49407, pad_token_id=49407)).save_pretrained(directory / "text_encoder")
    clip_tokenizer(directory / "tokenizer").save_pretrained(directory / "tokenizer")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  set_alpha_to_one=False).save_pretrained(directory / "scheduler")


TINY_CLIP = "tiny-clip-test"
TINY_CLIP_CONFIG = {"embed_dim": 32,
                    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def register_tiny_clip() -> str:
    """Register a toy open_clip architecture (a 2-layer ViT on 32 px inputs, 8 px patches: a 4 x 4 token grid;
    a 2-layer text transformer) under TINY_CLIP and return its name; built with random weights it needs no
    download."""
    import json
    import tempfile
    from pathlib import Path

    from compat import torchvision_fix

    torchvision_fix.apply()
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        path = Path(tempfile.mkdtemp()) / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP


def save_tiny_clip_folder(directory, state_dict=None):
    """The toy CLIP as open_clip's folder layout (`clip:local-dir:<directory>`): open_clip_config.json and
    open_clip_model.safetensors holding `state_dict` (default: the seeded random init plus seeded noise)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from detectors import create_backbone

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if state_dict is None:  # the seeded random init, moved: "pretrained" weights that differ from "random"
        generator = torch.Generator().manual_seed(1)
        state_dict = {name: tensor + 0.02 * torch.randn(tensor.shape, generator=generator)
                      if tensor.is_floating_point() else tensor
                      for name, tensor in create_backbone(f"clip:{register_tiny_clip()}", "random").network.clip.state_dict().items()}
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))
    save_file({name: tensor.contiguous() for name, tensor in state_dict.items()},
              directory / "open_clip_model.safetensors")
    return directory
