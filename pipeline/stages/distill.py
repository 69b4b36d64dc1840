"""The distillation step of build_features, without Ray: an exported denoiser's one forward
taught its own two-view output (``denoiser_train.distil_two_view``) on random crops of photos,
written as a new export beside the source.

The targets need no stage 1: for each crop the ViT runs twice (the crop and its mirror), the
teacher maps both, and their mean on the crop's grid is what the student learns from the crop
alone (docs/denoiser.md, "One forward taught by two").
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError, config_to_dict
from pipeline.job_config import DistillStepConfig, InputConfig
from pipeline.models.baselines import raw_tokens
from pipeline.models.crops import random_crop
from pipeline.models.denoiser import DenoisedViT, save_denoiser
from pipeline.models.denoiser_train import distil_two_view
from pipeline.models.online import online_image_size
from pipeline.models.vit import FeatureExtractor, default_device
from pipeline.stages.read import read_photos

logger = logging.getLogger(__name__)

DISTILLED = "two_view_distillation"
"""The export's meta key that records a distillation (its settings, sizes, losses, seconds)."""
CROP_SCALE = (0.3, 1.0)
"""Share of each side a crop keeps (as the shipped denoiser's crops)."""


def crop_views(
    extractor: FeatureExtractor,
    photos: Sequence[np.ndarray],
    sizes: Sequence[int],
    per_photo: int,
    rng: np.random.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per size: raw (N, K, K, C) and mirrored raw float16 tokens of ``per_photo`` random crops
    (``CROP_SCALE``, place, flip; drawn from ``rng``, photo by photo) of each photo, resized
    square to that size."""
    crops = [random_crop(p, rng, CROP_SCALE) for p in photos for _ in range(per_photo)]

    def tokens(size: int, mirror: bool) -> torch.Tensor:
        began = time.perf_counter()
        out = torch.from_numpy(raw_tokens(extractor, crops, size, mirror=mirror)).half()
        logger.info(
            "%d crops at %d px%s in %.1f s",
            len(crops),
            size,
            ", mirrored," if mirror else "",
            time.perf_counter() - began,
        )
        return out

    return [(tokens(size, False), tokens(size, True)) for size in sizes]


@dataclass(frozen=True)
class DistillTask:
    """One distillation: the export at ``source_uri`` distilled on crops of ``photo_uris`` at
    ``sizes`` px (empty: the size of the export's grid) into ``out_uri``."""

    source_uri: str
    out_uri: str
    photo_uris: list[str]
    sizes: list[int]
    cfg: DistillStepConfig
    inputs: InputConfig
    """Where the photos are read from, and its limits."""
    weights: str | None
    """The ViT's weight spec; None: the export's."""
    storage_options: dict[str, Any]
    """fsspec options of both exports."""


def distil_export(task: DistillTask, key: str) -> dict[str, Any]:
    """Distil ``task`` (``cfg.rounds`` rounds) and write its export with the source's meta and
    a ``DISTILLED`` record (``key`` names the source, photos and settings, so that a rerun can
    skip); the summary."""
    began = time.perf_counter()
    torch.set_num_threads(task.cfg.torch_threads or os.cpu_count() or 1)
    device = default_device()
    model = DenoisedViT.from_pretrained(
        task.source_uri, task.weights, device=device, storage_options=task.storage_options
    )
    sizes = task.sizes or [online_image_size(model)]
    photos = read_photos(
        task.photo_uris,
        task.inputs.storage_options,
        task.inputs.max_bytes,
        task.inputs.max_pixels,
        model.extractor.patch_size,
        task.inputs.decode_timeout_s,
        "distillation",
    )
    if not photos:
        raise ConfigError(f"distillation: none of the {len(task.photo_uris)} sample images decodes")
    rng = np.random.default_rng(task.cfg.train.seed)
    views = crop_views(model.extractor, photos, sizes, task.cfg.crops_per_image, rng)
    viewed = time.perf_counter()
    logger.info(
        "distillation: %d crops of %d photos at %s px, both views, in %.1f s",
        len(views[0][0]),
        len(photos),
        list(sizes),
        viewed - began,
    )
    on_device = [(raw.to(device), mirrored.to(device)) for raw, mirrored in views]
    student, losses = distil_two_view(model.denoiser, on_device, task.cfg.train, task.cfg.rounds)
    seconds = time.perf_counter() - began
    record = {
        "key": key,
        "source": task.source_uri,
        "rounds": task.cfg.rounds,
        "sizes": list(sizes),
        "photos": len(photos),
        "skipped_photos": len(task.photo_uris) - len(photos),
        "crops": len(views[0][0]),
        "config": config_to_dict(task.cfg),
        "view_seconds": round(viewed - began, 1),
        "seconds": round(seconds, 1),
        "losses": [round(x, 5) for x in losses],
    }
    meta = model.denoiser.meta | {DISTILLED: record}
    save_denoiser(student, task.out_uri, meta, task.storage_options)
    logger.info(
        "distillation: %d rounds in %.1f s, written to %s", task.cfg.rounds, seconds, task.out_uri
    )
    return {k: v for k, v in record.items() if k not in ("config", "losses")}
