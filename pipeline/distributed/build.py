"""The Ray layer of build_features: stage 1 on a sample, the denoiser trained on it, optionally
its one forward taught its two-view output (``distill.rounds``), every image denoised; the
jobs chained, one summary. With ``image_sizes``, stage 1 runs once per
input size and the training pools them (``input.all_configs``).

Each step is the job of its own name (``run_clean_job``, ``run_train_job``,
``run_denoise_job``) under a root folder: ``sample/``, ``denoiser/`` and ``features/``. A
rerun is cheap where work is done: the two feature steps skip images already committed, and
training is skipped when the export was trained with the same settings on the same corpus
(its run name is derived from both, so an interrupted training resumes from its checkpoint
and a grown sample trains afresh).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any

from pipeline.config import ConfigError, config_to_dict, redact
from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.denoise import run_denoise_job
from pipeline.distributed.distill import run_distill_step
from pipeline.distributed.features import list_images, require_io
from pipeline.distributed.train import describe_corpus, run_train_job
from pipeline.job_config import (
    BuildJobConfig,
    DenoiseJobConfig,
    OutputConfig,
    TrainJobConfig,
    resolve_clean_job,
    resolve_job,
)
from pipeline.models.denoiser import read_denoiser_meta
from pipeline.stages.distill import DistillTask
from pipeline.store.readers import spread_indices

logger = logging.getLogger(__name__)


def _child(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _trained_already(cfg: TrainJobConfig, export_uri: str) -> bool:
    """Whether ``export_uri`` holds a denoiser trained with ``cfg``: its run name names the
    corpus (its config digests and image count) and the training settings."""
    try:
        meta = read_denoiser_meta(export_uri, cfg.run.storage_options)
    except FileNotFoundError:
        return False
    return meta.get("job") == json.loads(json.dumps(redact(config_to_dict(cfg))))  # as stored


def _train_step(
    cfg: BuildJobConfig,
    overrides: list[str],
    sample_uri: str,
    export_uri: str,
    storage_options: dict[str, Any],
) -> dict[str, Any]:
    """Train on the committed sample unless its export is already there; the summary."""
    base = resolve_job(TrainJobConfig, cfg.train_job, overrides)
    base = dataclasses.replace(
        base, input=dataclasses.replace(base.input, uri=sample_uri, storage_options=storage_options)
    )
    corpus = describe_corpus(base)
    key = [
        corpus.config_digests,
        corpus.train_images + corpus.val_images,
        config_to_dict(base.train),
        config_to_dict(base.denoiser),
    ]
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    train = dataclasses.replace(
        base,
        run=dataclasses.replace(
            base.run,
            name=f"{base.run.name}-{name}",
            export_uri=export_uri,
            storage_options=base.run.storage_options or storage_options,
            storage_path=base.run.storage_path or _child(sample_uri, "training"),
        ),
    )
    if _trained_already(train, export_uri):
        logger.info("denoiser at %s already trained on this sample: skipped", export_uri)
        return {
            "skipped": True,
            "export": export_uri,
            "train_images": corpus.train_images,
            "val_images": corpus.val_images,
        }
    return {"skipped": False, **run_train_job(train)}


def run_build_job(cfg: BuildJobConfig) -> dict[str, Any]:
    """Stage 1 on ``cfg.sample`` images, train, denoise all; each step's summary and seconds."""
    if not cfg.input.uri or not cfg.output_uri:
        raise ConfigError("both input.uri (--input) and output_uri (--output) are required")
    options = cfg.input.storage_options
    require_io(dataclasses.replace(cfg.input, sample=0), OutputConfig(uri=cfg.output_uri))
    sample_uri, export_uri = _child(cfg.output_uri, "sample"), _child(cfg.output_uri, "denoiser")
    features_uri = _child(cfg.output_uri, "features")
    steps: dict[str, Any] = {}
    began = time.perf_counter()

    sizes: list[int | None] = list(cfg.image_sizes) or [None]
    samples = cfg.size_samples or [cfg.sample] * len(sizes)
    for size, sample in zip(sizes, samples, strict=True):  # one stage-1 run per input size
        clean = resolve_clean_job(
            cfg.clean_job, [*cfg.clean, *([f"engine.image_size={size}"] if size else [])]
        )
        clean = dataclasses.replace(
            clean,
            input=dataclasses.replace(cfg.input, sample=sample),
            output=dataclasses.replace(
                clean.output,
                uri=sample_uri,
                storage_options=clean.output.storage_options or options,
            ),
        )
        start = time.perf_counter()
        steps["clean" if len(sizes) == 1 else f"clean@{size}"] = run_clean_job(clean) | {
            "step_seconds": time.perf_counter() - start
        }

    start = time.perf_counter()
    train = [*(["input.all_configs=true"] if len(sizes) > 1 else []), *cfg.train]
    steps["train"] = _train_step(cfg, train, sample_uri, export_uri, options) | {
        "step_seconds": time.perf_counter() - start
    }

    denoise = resolve_job(DenoiseJobConfig, cfg.denoise_job, cfg.denoise)
    if cfg.distill.rounds:  # the trained export's one forward taught its two-view output
        distilled_uri = _child(cfg.output_uri, "distilled")
        photos = list_images(dataclasses.replace(cfg.input, sample=max(samples)))
        if 0 < cfg.distill.images < len(photos):
            photos = [photos[i] for i in spread_indices(len(photos), cfg.distill.images)]
        start = time.perf_counter()
        steps["distill"] = run_distill_step(
            DistillTask(
                source_uri=export_uri,
                out_uri=distilled_uri,
                photo_uris=photos,
                sizes=list(cfg.image_sizes) or ([denoise.image_size] if denoise.image_size else []),
                cfg=cfg.distill,
                inputs=cfg.input,
                weights=denoise.weights,
                storage_options=options,
            )
        ) | {"step_seconds": time.perf_counter() - start}
        export_uri = distilled_uri

    if cfg.denoise_all:
        denoise = dataclasses.replace(
            denoise,
            input=dataclasses.replace(cfg.input, sample=0),
            output=dataclasses.replace(
                denoise.output,
                uri=features_uri,
                storage_options=denoise.output.storage_options or options,
            ),
            denoiser=dataclasses.replace(denoise.denoiser, uri=export_uri, storage_options=options),
        )
        start = time.perf_counter()
        steps["denoise"] = run_denoise_job(denoise) | {"step_seconds": time.perf_counter() - start}
    return {
        "sample": sample_uri,
        "denoiser": export_uri,  # the distilled one with distill.rounds
        "features": features_uri if cfg.denoise_all else None,
        "steps": steps,
        "seconds": time.perf_counter() - began,
    }


def format_build_summary(summary: dict[str, Any]) -> str:
    """One line per step: what it did and what it cost."""
    lines = []
    for name, step in summary["steps"].items():
        if name == "distill":
            did = (
                "skipped (already distilled from this export)"
                if step["skipped"]
                else f"{step['rounds']} rounds on {step['crops']} crops of {step['photos']} images"
            )
        elif name == "train":
            did = (
                "skipped (already trained on this sample)"
                if step["skipped"]
                else (f"trained on {step['train_images']} images, {step.get('steps', 0)} steps")
            )
        else:
            did = (
                f"{step.get('done', 0)} done, {step.get('skipped_committed', 0)} already "
                f"committed, {step.get('quarantined', 0)} quarantined"
            )
        lines.append(f"{name:9s} {did}; {step['step_seconds']:.1f} s")
    where = (
        f"features in {summary['features']}"
        if summary["features"]
        else f"denoiser in {summary['denoiser']} (denoise_all=false)"
    )
    lines.append(f"total     {summary['seconds']:.1f} s; {where}")
    return "\n".join(lines)
