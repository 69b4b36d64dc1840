"""The flat module paths of releases before the layer regroup (``pipeline.schema``,
``pipeline.ray_clean``, ...), still importable: each name resolves to a stand-in module that
forwards every attribute to the module's new home and warns once with DeprecationWarning, so
training code written against the old paths keeps running while it is updated.

``pipeline.evaluation`` is a package now (the measures and the report); the old module's names
live in ``pipeline.evaluation.report`` and are not forwarded.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

MOVED: dict[str, str] = {
    **{f"pipeline.{name}": f"pipeline.models.{name}" for name in (
        "images", "vit", "weights", "offline_weights", "views", "crops", "tta", "artifact_model",
        "baselines", "field", "fit", "objectives", "engine", "denoiser", "denoiser_train",
        "online")},
    "pipeline.schema": "pipeline.store.schema",
    "pipeline.lease": "pipeline.store.lease",
    "pipeline.maintenance": "pipeline.store.gc",
    "pipeline.stages": "pipeline.distributed.stages",
    "pipeline.submission": "pipeline.distributed.submission",
    "pipeline.ray_features": "pipeline.distributed.features",
    "pipeline.ray_clean": "pipeline.distributed.clean",
    "pipeline.ray_denoise": "pipeline.distributed.denoise",
    "pipeline.ray_train": "pipeline.distributed.train",
    "pipeline.ray_evaluate": "pipeline.distributed.evaluate",
    **{f"pipeline.{name}": f"pipeline.evaluation.{name}" for name in (
        "metrics", "probes", "samples", "visualize")},
}
"""Old module path -> its new home."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of ``MOVED`` and loads each as a forwarding stand-in."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}: import it from there (the old path goes "
                      "in a later release)", DeprecationWarning, stacklevel=2)
        target = importlib.import_module(new)
        stand_in = types.ModuleType(spec.name, target.__doc__)

        def forward(name: str) -> Any:
            return getattr(target, name)

        stand_in.__getattr__ = forward  # type: ignore[method-assign]
        stand_in.__dir__ = lambda: dir(target)  # type: ignore[method-assign]
        return stand_in

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the stand-in forwards to the already imported new module."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``pipeline/__init__.py`` calls it)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
