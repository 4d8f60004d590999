"""Reading images as 8-bit RGB arrays, and naming an image by its content."""

import hashlib
from collections import Counter

import numpy as np
from PIL import Image, UnidentifiedImageError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # older Pillow opens 16-bit PNGs as "I"


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


def load_rgb(path, name: str | None = None) -> np.ndarray:
    """The image at `path` (or in a binary file object) as an (H, W, 3) uint8 RGB array, whatever its mode
    (grey, palette, RGBA, 16-bit). Errors call it `name` where given, else by its path."""
    return read_rgb(path, name)[0]


def read_rgb(path, name: str | None = None) -> tuple[np.ndarray, str]:
    """`load_rgb`'s array, and the PIL mode the file held (RGB, L, RGBA, I;16...)."""
    name = path if name is None else name
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            return _to_rgb8(image), image.mode
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {name}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {name}: {_reason(error)}") from error


def load_mask(path) -> np.ndarray:
    """The pixel ground truth at `path` as an (H, W) float32 array in [0, 1] (grey level / 255)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float32) / 255
    except FileNotFoundError:
        raise ImageReadError(f"cannot read mask {path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read mask {path}: {_reason(error)}") from error


MODE_NAMES = {"L": "8-bit grey", "LA": "grey with alpha (dropped)", "P": "palette",
              "PA": "palette with alpha (dropped)", "RGBA": "RGBA (alpha dropped)", "CMYK": "CMYK", "1": "1-bit", "F": "32-bit float grey",
              **{mode: "16-bit grey (rescaled to 8 bits)" for mode in _SIXTEEN_BIT_MODES}}


def conversion_notes(modes: list[str], what: str) -> list[str]:
    """A note saying how many of `what` were not 8-bit RGB and were converted, by mode; none if all were."""
    counts = Counter(mode for mode in modes if mode != "RGB")
    if not counts:
        return []
    kinds = ", ".join(f"{n} {MODE_NAMES.get(mode, mode)}" for mode, n in sorted(counts.items()))
    return [f"{sum(counts.values())} of {len(modes)} {what} converted to 8-bit RGB: {kinds}"]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image at `size` (H, W), bilinear; the image itself where it already has that size."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W) float32 mask at `size` (H, W), nearest neighbour so that it stays as sharp as it was."""
    if mask.shape == tuple(size):
        return mask
    resized = Image.fromarray(np.asarray(mask, dtype=np.float32)).resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(resized, dtype=np.float32)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255 instead of rescaling them
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257
        grey = np.rint(grey).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    return str(error) or type(error).__name__


def image_digest(image: np.ndarray) -> str:
    """SHA-256 (hex) of an image's shape, dtype and pixels: equal images have equal digests."""
    image = np.ascontiguousarray(image)
    hasher = hashlib.sha256(f"{image.shape}|{image.dtype.str}|".encode())
    hasher.update(image.data)
    return hasher.hexdigest()
