"""Turning whatever a user hands us into an (H, W, 3) uint8 RGB array, or a clear error.

PIL images of any mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) and numpy arrays of shape
(H, W), (H, W, 1|2|3|4) with uint8, uint16 or float dtype are accepted. Transparency is
composited over white; 16-bit values are scaled to 8 bits; EXIF orientation is applied.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

ImageLike = np.ndarray | Image.Image


CHUNK_PIXELS = 1 << 20
"""Pixels converted at a time: temporaries stay a few MB whatever the image's size (decoding a
25 MP RGBA photo cost ~1 GB in float copies of the whole image before)."""


def _by_rows(height: int, width: int, convert: Callable[[slice], np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 filled a block of rows at a time: ``convert(rows)`` gives the block's
    pixels, so no temporary ever spans the whole image."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    step = max(1, CHUNK_PIXELS // max(1, width))
    for top in range(0, height, step):
        rows = slice(top, min(height, top + step))
        out[rows] = convert(rows)
    return out


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to uint8 (16-bit by 1/257, floats in [0, 1] by 255),
    rounding to nearest, without a float copy of the whole image."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        out = np.empty(array.shape, dtype=np.uint8)
        for rows in _row_blocks(array):  # round(x * 255 / top), in integers
            block = np.clip(array[rows], 0, top).astype(np.uint32)
            out[rows] = (block * 255 + top // 2) // top
        return out
    if np.issubdtype(array.dtype, np.floating):

        def finite(block: np.ndarray) -> np.ndarray:
            return np.nan_to_num(block.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)

        peak = max(
            (float(finite(array[rows]).max(initial=0.0)) for rows in _row_blocks(array)),
            default=0.0,
        )
        factor = 255.0 if peak <= 1.0 else 1.0
        out = np.empty(array.shape, dtype=np.uint8)
        for rows in _row_blocks(array):
            out[rows] = np.clip(finite(array[rows]) * factor, 0, 255).round()
        return out
    raise ValueError(f"unsupported pixel dtype {array.dtype}")


def _row_blocks(array: np.ndarray) -> list[slice]:
    """Slices of rows of about ``CHUNK_PIXELS`` pixels each."""
    step = max(1, CHUNK_PIXELS // max(1, array.shape[1] if array.ndim > 1 else 1))
    return [slice(top, top + step) for top in range(0, array.shape[0], step)]


def _blend_on_white(block: np.ndarray) -> np.ndarray:
    """(h, W, 2) grey + alpha or (h, W, 4) RGBA uint8 over white -> (h, W, 3) uint8, in
    integers: round((c * a + 255 * (255 - a)) / 255)."""
    colour, alpha = block[..., :-1].astype(np.uint32), block[..., -1:].astype(np.uint32)
    mixed = ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.repeat(mixed, 3, axis=-1) if mixed.shape[-1] == 1 else mixed


def _composite_on_white(image: np.ndarray) -> np.ndarray:
    """(H, W, 2) or (H, W, 4) uint8 with alpha last, blended over white, a block at a time."""
    return _by_rows(image.shape[0], image.shape[1], lambda rows: _blend_on_white(image[rows]))


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode to (H, W, 3) uint8, EXIF orientation applied, transparency over white."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image)
        if mode == "I" and array.max(initial=0) <= 255:
            array = array.astype(np.uint8)
        return _array_to_rgb(array.astype(np.float32, copy=False) if mode == "F" else array)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or image.mode == "RGBA":
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        width = rgba.width  # strips of rows: no whole-image copy besides the result
        return _by_rows(
            rgba.height,
            width,
            lambda rows: _blend_on_white(np.asarray(rgba.crop((0, rows.start, width, rows.stop)))),
        )
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|2|3|4) array of any supported dtype to (H, W, 3) uint8."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"image array has shape {array.shape}; expected (H, W) or (H, W, 1|2|3|4)")
    pixels = _to_uint8(array)
    channels = pixels.shape[-1]
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels in (2, 4):
        return _composite_on_white(pixels)
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
