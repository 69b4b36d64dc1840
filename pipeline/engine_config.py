"""The stage-1 engine's configs: views, field, fit, shift, sub-patch content, resizing, and
``EngineConfig`` (a preset of ``pipeline/presets/engine/``), typed and frozen, every field
documented. ``pipeline.config`` loads, overrides and digests them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.config import (
    NEUTRAL,
    ConfigError,
    apply_overrides,
    check_choices,
    check_range,
    config_to_dict,
    digest_data,
    load_preset,
    neutral_at,
)


@dataclass(frozen=True)
class ViewConfig:
    """How the augmented views of one image are sampled (stage 1)."""

    num_views: int = 32
    """Views per image, the full image (view 0) included."""
    scale: tuple[float, float] = (0.1, 0.5)
    """Range of a crop's area as a fraction of the image's area."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Range of a crop's aspect ratio (width / height), sampled log-uniformly."""
    flip_prob: float = 0.5
    """Probability that a crop is mirrored horizontally."""


@dataclass(frozen=True)
class FieldConfig:
    """The semantic field F: multi-resolution dense 2-D grids followed by an MLP."""

    num_levels: int = 16
    """Number of grid levels."""
    features_per_level: int = 8
    """Feature channels stored per grid level."""
    min_resolution: int = 16
    """Cells per side of the coarsest grid."""
    max_resolution: int = 1024
    """Cells per side of the finest grid (levels grow geometrically in between)."""
    hidden_ratio: float = 0.5
    """Width of the MLP's hidden layer as a fraction of the feature channels C."""
    grid_init_std: float = 1e-4
    """Grid values start uniform in [-std, std]."""


@dataclass(frozen=True)
class FitConfig:
    """Optimisation of the per-image decomposition y ~ F(coord) + G[i, j] + sg(h(y))."""

    steps: int = 2000
    """Optimiser steps, both phases together."""
    tokens_per_step: int = 2048
    """Tokens sampled per image per step, from all tokens of all views."""
    phase1_fraction: float = 0.5
    """Share of the steps that fit F and G only; afterwards G is frozen and h trains."""
    coarse_fraction: float = 0.0
    """Share of the steps, from the start, during which grid levels finer than
    ``coarse_cells_per_token`` are held at zero. Until then F cannot hold each view's tokens on
    their own, so the pattern tied to the view's token grid goes to G rather than being
    memorised per view by F; afterwards every level trains. 0 = every level from the start."""
    coarse_cells_per_token: float = 8.0
    """Finest grid level trained during the coarse steps, in cells per token of the full view
    (8 on a 16 x 16 token grid: levels up to 128 cells per side)."""
    lr: float = 1e-2
    """Peak learning rate of Adam."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon."""
    warmup_fraction: float = 0.05
    """Share of the steps spent in linear warm-up."""
    final_lr_fraction: float = 0.05
    """Learning rate at the end of cosine decay, as a fraction of ``lr``."""
    artifact_init_std: float = 0.02
    """G starts as N(0, std^2)."""
    residual_weight: float = 0.1
    """Weight of L_res = MSE(h(y), sg(y - F - G))."""
    sparsity_weight: float = 0.02
    """Weight of L_sparse = mean |h(y)|."""
    prior_weight: float = dataclasses.field(default=0.0, metadata=NEUTRAL)
    """How strongly G is held to the dataset's artifact model: G starts at the model's pattern
    and L_prior = prior_weight * mean |G - pattern|^2 is added, in units of the data term's own
    weight on G (1: an image's correction is halved). 0: G is free, as in the method; > 0 needs
    an artifact model (``pipeline.models.artifact_model``)."""

    def __post_init__(self) -> None:
        fractions = ("phase1_fraction", "warmup_fraction", "coarse_fraction")
        check_range(
            self,
            "fit.",
            {"steps": 1, "tokens_per_step": 1, "prior_weight": 0, **dict.fromkeys(fractions, 0.0)},
            above={"coarse_cells_per_token": 0},
            most=dict.fromkeys(fractions, 1.0),
        )


@dataclass(frozen=True)
class ShiftConfig:
    """The shift decomposition (``method: shift``): views shifted by whole patches at the full
    view's own scale, split in closed form into content F and an artifact G near the dataset's
    artifact model (``pipeline.models.shift``)."""

    views: int = 10
    """Views per image, the unshifted full view included (one ViT forward each)."""
    pad: int = 2
    """Reflect padding in whole patches on each side: offsets span 0..2*pad patches."""
    flip_prob: float = 0.5
    """Probability that a shifted view is mirrored left-right."""
    prior_weight: float = 10.0
    """How strongly the image's G is held to the artifact model, in views' worth of evidence
    (0: G from this image alone, which also takes content; .inf: G is the artifact model)."""
    iterations: int = 20
    """Alternating least-squares rounds (F given G, G given F)."""

    def __post_init__(self) -> None:
        check_range(
            self,
            "shift.",
            {"views": 1, "pad": 0, "flip_prob": 0.0, "prior_weight": 0, "iterations": 1},
            most={"flip_prob": 1.0},
        )


@dataclass(frozen=True)
class HighResConfig:
    """How ``clean_hr`` is estimated when ``upsample`` > 1 (``pipeline.models.subpatch``):
    the shift views plus views shifted by fractions of a patch, each view's G held to the
    image's shift decomposition, then content at s x s cells per token from all of them."""

    views: int = 12
    """Extra views at the sub-patch phases (besides the shift views, which are phase 0)."""
    estimator: Literal["average", "solve"] = "average"
    """``average``: each fine cell is the mean over the views of the tokens whose window holds
    it, G removed (the best fine and token matching measured); ``solve``: the guided
    least-squares solve of the views' box averages (sharper: the best stereo and the lowest
    PEV, but noisier matches). docs/performance.md, "Finer than a patch", has the figures."""
    smooth: float = 1.0
    """``solve``: weight of the image-guided smoothness between neighbouring cells, in units
    of one view's evidence on a cell: it fills in what the box averages leave open (the finest
    checkerboard) the way the image's colours say."""
    sigma: float = 0.1
    """``solve``: colour distance (RGB in [0, 1]) at which a neighbour's pull falls to
    exp(-1/2)."""
    iterations: int = 200
    """``solve``: most conjugate-gradient steps."""
    tolerance: float = 1e-4
    """``solve``: it stops when every channel's residual is below this share of its data."""

    def __post_init__(self) -> None:
        check_choices(self, "hr.")
        check_range(self, "hr.", {"views": 0, "iterations": 1, "smooth": 0}, above={"sigma": 0})


@dataclass(frozen=True)
class ResizeConfig:
    """How an image becomes the model input whose token grid every output of it lives on."""

    aspect: Literal["keep", "square"] = "keep"
    """``keep``: the input keeps the image's aspect (short side at the image size, long side
    at the nearest whole token count), so a 2:1 photo gets a token grid twice as wide as high;
    ``square``: every image is squashed to a square (the layout of outputs made before this
    setting existed, and of the DVT reference)."""
    max_tokens_ratio: float = 2.0
    """Cap on a kept-aspect grid's token count, as a multiple of the square grid's; beyond it
    both sides shrink (aspect kept). Bounds memory and time on panoramas."""

    def output_settings(self) -> dict[str, Any]:
        """Its part of an output digest: nothing for ``square`` inputs (the layout of outputs
        made before this setting existed, whose digests stay; the cap plays no part), else
        the whole section."""
        if self.aspect == "square":
            return {}
        return {"resize": {"aspect": self.aspect, "max_tokens_ratio": self.max_tokens_ratio}}

    def max_tokens(self, side: int) -> float:
        """The most tokens an image's grid may hold when the square grid is ``side`` x ``side``
        (``keep``: the cap; ``square``: the square itself)."""
        return side * side * (self.max_tokens_ratio if self.aspect == "keep" else 1.0)

    def __post_init__(self) -> None:
        check_choices(self, "resize.")
        check_range(self, "resize.", {"max_tokens_ratio": 1.0})


METHOD_VERSIONS = {"field": 1, "shift": 1}
"""Bumped on purpose when a method's code changes its output values for the same settings: a
new version gives a new digest, so refreshes re-fit and readers tell old from new."""


@dataclass(frozen=True)
class EngineConfig:
    """A stage-1 preset: everything ``clean_images`` needs besides the ViT itself."""

    name: str = "custom"
    """Preset name, recorded with outputs."""
    image_size: int | None = None
    """Model input in pixels (multiple of the patch size): the side of the square input, or the
    short side where ``aspect`` keeps the image's aspect; None: 37 tokens."""
    resize: ResizeConfig = dataclasses.field(
        default_factory=ResizeConfig, metadata=neutral_at(ResizeConfig(aspect="square"))
    )
    """How each image becomes the model input (its aspect kept by default)."""
    images_per_fit: int = 8
    """Images fitted together in one batched optimisation."""
    vit_batch_size: int = 32
    """Views per ViT forward pass."""
    seed: int = 0
    """Base seed; every image's views and initialisation derive from (image id, seed)."""
    method: Literal["field", "shift"] = dataclasses.field(default="field", metadata=NEUTRAL)
    """``field``: the per-image neural-field fit of DVT (views, field, fit); ``shift``: the
    shift decomposition around a dataset-level artifact model (shift), no training."""
    views: ViewConfig = dataclasses.field(default_factory=ViewConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    shift: ShiftConfig = dataclasses.field(default_factory=ShiftConfig)
    upsample: Literal[1, 2, 4] = dataclasses.field(default=1, metadata=NEUTRAL)
    """Cells per token side of ``clean_hr``, the artifact-free content finer than a patch
    (1: none, 2 or 4: an (s*h, s*w, C) map beside ``clean``); needs ``method: shift``."""
    hr: HighResConfig = dataclasses.field(default_factory=HighResConfig, metadata=NEUTRAL)
    """How ``clean_hr`` is estimated."""

    def __post_init__(self) -> None:
        check_choices(self, "")
        if self.upsample > 1 and self.method != "shift":
            raise ConfigError(
                "upsample > 1 needs method: shift (the sub-patch views are shifted "
                "views of the full image); use preset=shift"
            )

    def output_settings(self) -> dict[str, Any]:
        """What decides the output values, for digests: the method, its version (when bumped
        past 1), the input size and resize, the seed and the method's own sections. Batch sizes
        and the preset's name are left out (they change how fast, not what)."""
        sections = ("views", "field", "fit") if self.method == "field" else ("shift",)
        data = digest_data(self)
        keep = {k: data[k] for k in ("method", "image_size", "seed", *sections) if k in data}
        keep |= self.resize.output_settings()
        if self.upsample > 1:  # clean_hr is part of the output, and how it is made
            keep |= {"upsample": self.upsample, "hr": config_to_dict(self.hr)}
        if METHOD_VERSIONS[self.method] != 1:
            keep["method_version"] = METHOD_VERSIONS[self.method]
        return keep

    @property
    def needs_artifact_model(self) -> bool:
        """Whether cleaning with this preset needs the dataset's artifact model."""
        return self.method == "shift" or self.fit.prior_weight > 0


def engine_preset(preset: str | Path | EngineConfig, overrides: Iterable[str] = ()) -> EngineConfig:
    """Resolve a stage-1 preset name, YAML path or config object, then apply overrides."""
    if isinstance(preset, EngineConfig):
        return apply_overrides(preset, overrides)
    cfg = load_preset(EngineConfig, preset, "engine")
    return apply_overrides(cfg, overrides)
