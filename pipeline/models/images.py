"""Turning whatever a user hands us into an (H, W, 3) uint8 RGB array, or a clear error.

PIL images of any mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) and numpy arrays of shape
(H, W), (H, W, 1|2|3|4) with uint8, uint16 or float dtype are accepted. Transparency is
composited over white; 16-bit values are scaled to 8 bits; EXIF orientation is applied.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageOps

ImageLike = np.ndarray | Image.Image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to uint8 (16-bit by 1/257, floats in [0, 1] by 255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        return np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(finite * scale, 0, 255).round().astype(np.uint8)
    raise ValueError(f"unsupported pixel dtype {array.dtype}")


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend (H, W, 3) uint8 colour over white using (H, W) uint8 alpha."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return out.round().astype(np.uint8)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode to (H, W, 3) uint8, EXIF orientation applied, transparency over white."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image)
        if mode == "I" and array.max(initial=0) <= 255:
            array = array.astype(np.uint8)
        return _array_to_rgb(array.astype(np.float32) if mode == "F" else array)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or image.mode == "RGBA":
        rgba = np.asarray(image.convert("RGBA"))
        return _composite_on_white(rgba[..., :3], rgba[..., 3])
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|2|3|4) array of any supported dtype to (H, W, 3) uint8."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"image array has shape {array.shape}; expected (H, W) or (H, W, 1|2|3|4)"
        )
    pixels = _to_uint8(array)
    channels = pixels.shape[-1]
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 2:
        return _composite_on_white(np.repeat(pixels[..., :1], 3, axis=-1), pixels[..., 1])
    if channels == 4:
        return _composite_on_white(pixels[..., :3], pixels[..., 3])
    return np.ascontiguousarray(pixels)


def to_rgb(image: ImageLike, min_side: int = 1) -> np.ndarray:
    """Convert an image to (H, W, 3) uint8 RGB; ValueError if empty or smaller than ``min_side``."""
    if isinstance(image, Image.Image):
        rgb = _pil_to_array(image)
    elif isinstance(image, np.ndarray):
        if image.size == 0:
            raise ValueError(f"image array is empty (shape {image.shape})")
        rgb = _array_to_rgb(image)
    else:
        raise TypeError(f"expected a numpy array or PIL image, got {type(image).__name__}")
    height, width = rgb.shape[:2]
    if height < min_side or width < min_side:
        raise ValueError(
            f"image is {width}x{height} pixels, smaller than one {min_side}x{min_side} patch"
        )
    return rgb


def decode_image(data: bytes, max_pixels: int | None = None, min_side: int = 1) -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 RGB.

    Raises ValueError for empty data, undecodable bytes, images over ``max_pixels`` (checked
    from the header, before the pixels are decoded) and images smaller than ``min_side``.
    """
    if not data:
        raise ValueError("zero-byte input")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if max_pixels is not None and width * height > max_pixels:
                raise ValueError(
                    f"image is {width}x{height} = {width * height} pixels, over the cap of "
                    f"{max_pixels}"
                )
            probe.load()
            return to_rgb(probe, min_side=min_side)
    except Image.DecompressionBombError as err:
        raise ValueError(f"decompression bomb: {err}") from err
    except (OSError, SyntaxError, Image.UnidentifiedImageError) as err:
        raise ValueError(f"cannot decode image: {err}") from err


def content_id(rgb: np.ndarray) -> str:
    """sha256 hex digest of an RGB array's shape and pixels: the id of in-memory images."""
    digest = hashlib.sha256(f"{rgb.shape}".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()
