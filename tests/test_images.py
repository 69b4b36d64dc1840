"""Every image mode becomes (H, W, 3) uint8 RGB; bad input raises a clear ValueError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.models.images import content_id, decode_image, to_rgb


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture()
def rgb(photos: dict[str, np.ndarray]) -> np.ndarray:
    return photos["chelsea"][:64, :96]


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_pil_modes_convert(rgb: np.ndarray, mode: str) -> None:
    image = Image.fromarray(rgb)
    if mode in ("I;16", "I"):
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
        image = image.convert(mode) if mode == "I" else image
    else:
        image = image.convert(mode)
    out = to_rgb(image)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    if mode in ("L", "I;16", "I", "F"):  # grey stays grey, at the same brightness
        grey = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
        assert np.abs(out[..., 0].astype(int) - grey).max() <= 1
        assert (out[..., 0] == out[..., 1]).all()


def test_transparency_composites_over_white() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent black
    assert (to_rgb(rgba) == 255).all()
    rgba[..., 3] = 255
    assert (to_rgb(rgba) == 0).all()


def test_sixteen_bit_array_scales(rgb: np.ndarray) -> None:
    wide = rgb.astype(np.uint16) * 257
    assert np.array_equal(to_rgb(wide), rgb)


def test_float_array_in_unit_range(rgb: np.ndarray) -> None:
    assert np.abs(to_rgb(rgb / 255.0).astype(int) - rgb).max() <= 1


@pytest.mark.parametrize("shape", [(0, 0, 3), (0,), (10, 0)])
def test_empty_arrays_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="empty"):
        to_rgb(np.zeros(shape, np.uint8))


def test_smaller_than_a_patch_raises() -> None:
    with pytest.raises(ValueError, match="smaller than one 14x14 patch"):
        to_rgb(np.zeros((1, 1, 3), np.uint8), min_side=14)


def test_wrong_channel_count_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        to_rgb(np.zeros((8, 8, 5), np.uint8))


def test_exif_orientation_applied(rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes())
    out = decode_image(data)
    assert out.shape == (96, 64, 3)


def test_decode_rejects_bad_bytes(rgb: np.ndarray) -> None:
    jpeg = _encode(Image.fromarray(rgb), "JPEG")
    with pytest.raises(ValueError, match="zero-byte"):
        decode_image(b"")
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image(b"this is text, not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ValueError, match="over the cap"):
        decode_image(jpeg, max_pixels=100)


def test_content_id_is_stable(rgb: np.ndarray) -> None:
    assert content_id(rgb) == content_id(rgb.copy())
    assert content_id(rgb) != content_id(rgb[:, ::-1])


def test_decoding_makes_no_float_copy_of_the_whole_image(tmp_path: Path) -> None:
    """A 5000 x 5000 RGBA PNG (97 KB on disk): its decoded RGBA is 100 MB and its RGB 75 MB.
    Compositing over white used float copies of the whole image (1.05 GB peak); it now runs
    in integers, a block of rows at a time. Measured in a fresh process by its high-water
    mark (VmHWM: a new address space starts at zero, unlike ru_maxrss after a fork)."""
    import subprocess
    import sys

    rgba = np.zeros((5000, 5000, 4), np.uint8)
    rgba[::7, ::5] = (200, 100, 50, 128)
    path = tmp_path / "big.png"
    Image.fromarray(rgba).save(path, optimize=True)
    code = (
        "import re, sys\n"
        "from pipeline.models.images import decode_image\n"
        "def peak():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) // 1024\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = peak()\n"
        "rgb = decode_image(data)\n"
        "print(rgb.shape, rgb[0, 0].tolist(), rgb[0, 1].tolist(), peak() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert " ".join(out[:9]) == "(5000, 5000, 3) [227, 177, 152] [255, 255, 255]"
    assert int(out[-1]) < 450, f"decoding grew the process by {out[-1]} MB"
