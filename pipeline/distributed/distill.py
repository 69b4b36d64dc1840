"""The Ray layer of build_features' distillation step (``distill.rounds``): one Ray task with
the step's resources runs ``stages.distill.distil_export`` on the sample images, and a rerun
skips it when the export there was distilled from the same source, photos and settings."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import ray

from pipeline.config import config_to_dict
from pipeline.job_config import DistillStepConfig, InputConfig
from pipeline.models.denoiser import read_denoiser_meta
from pipeline.stages.distill import DISTILLED, distil_export

logger = logging.getLogger(__name__)


def distill_key(
    source_uri: str,
    photo_uris: Sequence[str],
    sizes: Sequence[int],
    cfg: DistillStepConfig,
    weights: str | None,
    storage_options: dict[str, Any],
) -> str:
    """What makes a distilled export: the source's weights, the photos, sizes and settings
    (resources and threads aside)."""
    resources = ("num_cpus", "num_gpus", "torch_threads")
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in resources}
    source = read_denoiser_meta(source_uri, storage_options)["weights_sha256"]
    doc = [source, sorted(photo_uris), list(sizes), settings, weights]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def run_distill_step(
    source_uri: str,
    out_uri: str,
    photo_uris: Sequence[str],
    sizes: Sequence[int],
    cfg: DistillStepConfig,
    inputs: InputConfig,
    weights: str | None,
    storage_options: dict[str, Any],
) -> dict[str, Any]:
    """Distil ``source_uri`` into ``out_uri`` unless that export was distilled with the same
    key already; the step's summary."""
    key = distill_key(source_uri, photo_uris, sizes, cfg, weights, storage_options)
    try:
        done = read_denoiser_meta(out_uri, storage_options).get(DISTILLED, {})
    except FileNotFoundError:
        done = {}
    if done.get("key") == key:
        logger.info("denoiser at %s already distilled from this export: skipped", out_uri)
        return {"skipped": True, "export": out_uri, "rounds": cfg.rounds}
    task = ray.remote(distil_export).options(
        num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_retries=1
    )
    summary = ray.get(
        task.remote(
            source_uri,
            out_uri,
            list(photo_uris),
            list(sizes),
            cfg,
            inputs,
            weights,
            storage_options,
            key,
        )
    )
    return {"skipped": False, "export": out_uri, **summary}
