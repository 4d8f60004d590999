"""CLIP (open_clip) as a backbone family: `clip:<architecture>@<pretrained>`, with the text tower beside it.

The image tower gives two layers in one forward pass: "image", the projected image embedding as a 1 x 1
map, and "patch", the projected patch tokens on the tower's patch grid (the tokens after the final layer
norm, through the same projection as the image embedding, as WinCLIP-style zero-shot maps use them). Both
go through the FeatureCache like any backbone's layers, so each image is encoded once and, with a feature
directory, kept on disk by content. `text_features(prompts)` encodes prompts with the text tower, each
prompt once per backbone object (cached in memory; in half precision on CUDA, as the image tower runs there).

Names: `<architecture>` is an open_clip model name (`open_clip.list_models()`, e.g. ViT-B-16-plus-240) and
`<pretrained>` either an open_clip pretrained tag of it (e.g. laion400m_e31, fetched from the Hugging Face hub
on first use) or a local checkpoint file (.safetensors; .bin / .pt / .pth are read with
torch.load(weights_only=True)). `clip:hf-hub:<org>/<repo>` takes architecture and weights from a hub
repository, `clip:local-dir:<folder>` from a folder laid out as one (open_clip_config.json beside
open_clip_model.safetensors or open_clip_pytorch_model.bin: a downloaded hub snapshot, or a model of one's
own). Weights "pretrained" loads them; "random" builds the architecture with a seeded random init (negative
controls, tests). Only vision-transformer towers are supported: their patch tokens make the maps. Images are
resized to the tower's square input (no centre crop: an inspection image's border can hold the defect) and
normalised with the model's mean and std. Saved weights (a registered model's bundle) carry the open_clip
config of folder and hub models, so they load where neither the folder nor the hub is reachable.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compat import torchvision_fix
from detectors.backbones import Backbone, _check_weights, _seeded_init, register_builder, register_family

CLIP_PREFIX = "clip:"
CLIP_LAYERS = ("image", "patch")
CLIP_WEIGHTS = ("pretrained", "random")
HUB, LOCAL_DIR = "hf-hub:", "local-dir:"  # open_clip's schemas: architecture and weights from one place


class ClipTowers(nn.Module):
    """An open_clip model whose forward pass maps images to {"image": (N, D, 1, 1), "patch": (N, D, h, w)}; its
    `text_features` encodes prompts (the model's parameters live under `clip.`)."""

    def __init__(self, clip: nn.Module, tokenizer):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self._text: dict[str, np.ndarray] = {}

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        visual = self.clip.visual
        visual.output_tokens = True
        try:
            pooled, tokens = visual(batch)
        finally:
            visual.output_tokens = False
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        height, width = visual.grid_size
        grid = tokens.transpose(1, 2).reshape(len(batch), tokens.shape[2], height, width)
        return {"image": pooled[:, :, None, None], "patch": grid}

    def text_features(self, prompts) -> np.ndarray:
        """(P, D) float32 unit-length text embeddings of `prompts`; each prompt is encoded once."""
        prompts = list(prompts)
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._text]
        if missing:
            device = next(self.clip.parameters()).device
            with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=device.type == "cuda"):
                encoded = self.clip.encode_text(self.tokenizer(missing).to(device)).float()
            encoded = torch.nn.functional.normalize(encoded, dim=1).cpu().numpy()
            self._text.update(zip(missing, encoded))
        return np.stack([self._text[prompt] for prompt in prompts]) if prompts else np.zeros((0, 0), np.float32)


def parse_clip_name(name: str) -> tuple[str, str | None]:
    """(architecture, pretrained tag or checkpoint path or None) of `clip:<architecture>[@<pretrained>]`."""
    architecture, _, pretrained = name.removeprefix(CLIP_PREFIX).partition("@")
    if not architecture:
        raise ValueError(f"backbone {name!r} names no CLIP architecture: use clip:<architecture>@<pretrained>, "
                         "e.g. clip:ViT-B-16-plus-240@laion400m_e31")
    return architecture, pretrained or None


@register_family(CLIP_PREFIX, CLIP_LAYERS, CLIP_WEIGHTS)
def _clip(name: str, weights: str) -> Backbone:
    torchvision_fix.apply()
    import open_clip

    _check_weights(name, weights, CLIP_WEIGHTS)
    architecture_name, pretrained = parse_clip_name(name)
    folder = architecture_name.startswith(LOCAL_DIR)
    if folder and not Path(architecture_name.removeprefix(LOCAL_DIR), "open_clip_config.json").is_file():
        raise FileNotFoundError(f"no open_clip_config.json in the folder of backbone {name!r}")
    if not folder and not architecture_name.startswith(HUB):  # an architecture open_clip knows, its weights named
        _check_pretrained(name, architecture_name, pretrained if weights == "pretrained" else "", open_clip)
    try:
        with _seeded_init():
            model = open_clip.create_model(architecture_name,
                                           pretrained=pretrained if weights == "pretrained" else None,
                                           load_weights=weights == "pretrained")
        tokenizer = open_clip.get_tokenizer(architecture_name)
    except RuntimeError as error:
        raise ValueError(_build_error(name, error)) from None
    if not isinstance(model.visual, open_clip.transformer.VisionTransformer):
        raise ValueError(f"backbone {name!r}: only vision-transformer CLIP towers are supported (their patch "
                         f"tokens make the anomaly maps), not {type(model.visual).__name__}")
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    config = model.visual.preprocess_cfg
    architecture = None
    if folder or architecture_name.startswith(HUB):  # the folder or the hub may be absent where it is loaded
        architecture = {"builder": "open_clip", "model_cfg": open_clip.get_model_config(architecture_name),
                        "preprocess_cfg": {key: config[key] for key in ("mean", "std")}}
    return Backbone(name=name, weights=weights, network=ClipTowers(model, tokenizer), input_size=size,
                    mean=tuple(config["mean"]), std=tuple(config["std"]), layers=CLIP_LAYERS,
                    architecture=architecture)


def _from_architecture(name: str, architecture: dict) -> Backbone:
    """A CLIP backbone named `name`, built with random weights from a saved open_clip config (its folder or hub
    repository need not exist here)."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "open_clip_config.json").write_text(json.dumps(
            {"model_cfg": architecture["model_cfg"], "preprocess_cfg": architecture["preprocess_cfg"]}))
        backbone = _clip(f"{CLIP_PREFIX}{LOCAL_DIR}{folder}", "random")
    backbone.name, backbone.architecture = name, architecture
    return backbone


register_builder("open_clip", _from_architecture)


def _check_pretrained(name: str, architecture: str, pretrained: str | None, open_clip) -> None:
    """Refuse an unknown architecture, a missing tag or a missing file before anything is built ("": no weights
    asked for)."""
    if architecture not in open_clip.list_models():
        raise ValueError(f"unknown CLIP architecture {architecture!r} in backbone {name!r}; "
                         "see open_clip.list_models()")
    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if pretrained is None:
        raise ValueError(f"backbone {name!r} names no pretrained weights: add @<tag> (one of {', '.join(tags)}) or "
                         "@<local checkpoint file>")
    if pretrained and _looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise FileNotFoundError(f"CLIP checkpoint for backbone {name!r} not found: {pretrained}")
    if pretrained and not _looks_like_path(pretrained) and pretrained not in tags:
        raise ValueError(f"{architecture!r} has no pretrained tag {pretrained!r}; known: {', '.join(tags)}, "
                         "or a local file")


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth"))


def _build_error(name: str, error: RuntimeError) -> str:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "download" in message.lower() or "hub" in message.lower():
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        return (f"the weights of CLIP backbone {name!r} are not on this machine and could not be fetched from the "
                f"Hugging Face hub{offline}: fetch them where the hub is reachable (unset HF_HUB_OFFLINE), or name "
                f"a local checkpoint file, clip:<architecture>@/path/to/open_clip_model.safetensors")
    return f"cannot build CLIP backbone {name!r}: {message}"

