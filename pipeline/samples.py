"""Real photos that install from PyPI (scikit-image's bundled data), for demos, tests and benches.

Needs the optional ``scikit-image`` dependency (``pip install -e '.[dev]'``); no download
happens: only photos shipped inside the wheel are listed.
"""

from __future__ import annotations

import numpy as np

from pipeline.images import to_rgb

SAMPLE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
)


def sample_photo(name: str) -> np.ndarray:
    """One bundled photo as (H, W, 3) uint8 RGB."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("sample photos need scikit-image: pip install scikit-image") from err
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; known: {list(SAMPLE_PHOTOS)}")
    if name == "motorcycle_left":
        return to_rgb(data.stereo_motorcycle()[0])
    return to_rgb(getattr(data, name)())


def sample_photos(count: int | None = None) -> dict[str, np.ndarray]:
    """The first ``count`` bundled photos (all by default), by name."""
    names = SAMPLE_PHOTOS if count is None else SAMPLE_PHOTOS[:count]
    return {name: sample_photo(name) for name in names}
