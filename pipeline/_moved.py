"""The flat module paths of releases before the layer regroup (``pipeline.schema``,
``pipeline.ray_clean``, ...), still importable, each with a DeprecationWarning, so training
code written against the old paths keeps running while it is updated.

An old path whose module moved whole is the new module itself (patching it patches the new
one); the two modules that were split in two (``stages``, ``ray_features``) are stand-ins that
forward each name to whichever new module holds it. ``pipeline.evaluation`` is a package now
(the measures and the report); the old module's names live in ``pipeline.evaluation.report``.
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

MOVED: dict[str, tuple[str, ...]] = {
    **{f"pipeline.{name}": (f"pipeline.models.{name}",) for name in (
        "images", "vit", "weights", "offline_weights", "views", "crops", "tta", "artifact_model",
        "baselines", "field", "fit", "objectives", "engine", "denoiser", "denoiser_train",
        "online")},
    "pipeline.schema": ("pipeline.store.schema",),
    "pipeline.lease": ("pipeline.store.lease",),
    "pipeline.maintenance": ("pipeline.store.gc",),
    "pipeline.stages": ("pipeline.distributed.stages", "pipeline.distributed.read_stage"),
    "pipeline.submission": ("pipeline.distributed.submission",),
    "pipeline.ray_features": ("pipeline.distributed.features", "pipeline.distributed.sink"),
    "pipeline.ray_clean": ("pipeline.distributed.clean",),
    "pipeline.ray_denoise": ("pipeline.distributed.denoise",),
    "pipeline.ray_train": ("pipeline.distributed.train",),
    "pipeline.ray_evaluate": ("pipeline.distributed.evaluate",),
    **{f"pipeline.{name}": (f"pipeline.evaluation.{name}",) for name in (
        "metrics", "probes", "samples", "visualize")},
}
"""Old module path -> its new home(s)."""


def _stand_in(name: str, targets: list[types.ModuleType]) -> types.ModuleType:
    """A module that forwards each attribute to the first of ``targets`` that has it."""
    stand_in = types.ModuleType(name, targets[0].__doc__)

    def forward(attribute: str) -> Any:
        for target in targets:
            if hasattr(target, attribute):
                return getattr(target, attribute)
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    stand_in.__getattr__ = forward  # type: ignore[method-assign]
    stand_in.__dir__ = lambda: sorted({n for t in targets for n in dir(t)})  # type: ignore
    return stand_in


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of ``MOVED`` and loads each as its new module (or a stand-in)."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        homes = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {' and '.join(homes)}: import it from there (the "
                      "old path goes in a later release)", DeprecationWarning, stacklevel=2)
        targets = [importlib.import_module(home) for home in homes]
        if len(targets) > 1:
            return _stand_in(spec.name, targets)
        self._specs[spec.name] = targets[0].__spec__  # the import system overwrites it next
        return targets[0]

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (the new module is imported already); give it its own spec back."""
        name = module.__spec__.name if module.__spec__ else module.__name__
        if name in self._specs:
            module.__spec__ = self._specs.pop(name)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``pipeline/__init__.py`` calls it)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
