"""Make torchvision importable beside CPU torch 2.13.0.

The only torchvision release that pairs with torch 2.13.0 (0.28.0) is a CUDA build whose compiled ops
cannot load against the CPU wheel, so `import torchvision` (and with it timm and open_clip) fails with
"operator torchvision::nms does not exist". Declaring the two op schemas it registers fake kernels for
lets the import succeed; transforms, models and feature extraction work, `torchvision.ops` compiled
ops do not. Where a matching torchvision build is installed the schemas exist and nothing is done.

Call `apply()` before importing torchvision or anything that imports it (timm, diffusers, transformers).
"""

import importlib.util
from pathlib import Path

import torch

_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object unregisters the schemas


def _schema_exists(op: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{op}", "")
        return True
    except RuntimeError:
        return False


def _load_compiled_ops() -> None:
    """Load torchvision's own op library first: a build that matches torch registers the real schemas."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    for library in Path(spec.origin).parent.glob("_C*.so"):
        try:
            torch.ops.load_library(str(library))
        except (OSError, RuntimeError):
            pass  # the CUDA build against CPU torch: its symbols do not resolve


def apply() -> None:
    global _library
    if all(_schema_exists(op) for op in _OP_SCHEMAS):
        return
    _load_compiled_ops()
    missing = [op for op in _OP_SCHEMAS if not _schema_exists(op)]
    if not missing:
        return
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
    for op in missing:
        _library.define(_OP_SCHEMAS[op])
