"""The Ray layer of build_features' distillation step (``distill.rounds``): one Ray task with
the step's resources runs ``stages.distill.distil_export`` on the sample images, and a rerun
skips it when the export there was distilled from the same source, photos and settings."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import ray

from pipeline.config import config_to_dict
from pipeline.logs import pipeline_info_to_stderr
from pipeline.models.denoiser import read_denoiser_meta
from pipeline.stages.distill import DISTILLED, DistillTask, distil_export

logger = logging.getLogger(__name__)


def distill_key(task: DistillTask) -> str:
    """What makes a distilled export: the source's weights, the photos, sizes, settings and ViT
    weights (resources and threads aside)."""
    resources = ("num_cpus", "num_gpus", "torch_threads")
    settings = {k: v for k, v in config_to_dict(task.cfg).items() if k not in resources}
    source = read_denoiser_meta(task.source_uri, task.storage_options)["weights_sha256"]
    doc = [source, sorted(task.photo_uris), task.sizes, settings, task.weights]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def distil_with_progress(task: DistillTask, key: str) -> dict[str, Any]:
    """``distil_export`` with its INFO lines (crops per size, losses per round) on the worker's
    stderr, which Ray forwards to the job's output: the step runs for minutes on a CPU."""
    with pipeline_info_to_stderr():
        return distil_export(task, key)


def run_distill_step(task: DistillTask) -> dict[str, Any]:
    """Distil ``task`` in a Ray task with its resources unless its export was distilled with
    the same key already; the step's summary."""
    key = distill_key(task)
    try:
        done = read_denoiser_meta(task.out_uri, task.storage_options).get(DISTILLED, {})
    except FileNotFoundError:
        done = {}
    if done.get("key") == key:
        logger.info("denoiser at %s already distilled from this export: skipped", task.out_uri)
        return {"skipped": True, "export": task.out_uri, "rounds": task.cfg.rounds}
    remote = ray.remote(distil_with_progress).options(
        num_cpus=task.cfg.num_cpus, num_gpus=task.cfg.num_gpus, max_retries=1
    )
    summary: dict[str, Any] = ray.get(remote.remote(task, key))
    return {"skipped": False, "export": task.out_uri, **summary}
