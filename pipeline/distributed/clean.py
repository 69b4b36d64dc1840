"""The Ray layer of clean_dataset: the stage-1 feature method (``CleanImages``), the artifact
model it needs, and the summary; the graph and the commit protocol are
``pipeline.distributed.features``'.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pipeline.config import ConfigError, config_digest, config_to_dict
from pipeline.distributed.features import FeatureMethod, list_images, require_io, run_feature_job
from pipeline.job_config import CleanJobConfig, InputConfig
from pipeline.models.artifact_model import calibrate, read_artifact_model, write_artifact_model
from pipeline.models.engine import resolve_image_size
from pipeline.models.vit import FeatureExtractor, load_extractor
from pipeline.stages.features import CleanImages
from pipeline.stages.read import read_photos
from pipeline.store import artifact_model_uri
from pipeline.store.fs import filesystem
from pipeline.store.meta import RunMeta
from pipeline.store.readers import spread_indices

logger = logging.getLogger(__name__)


def ensure_artifact_model(
    cfg: CleanJobConfig, extractor: FeatureExtractor, image_size: int, inputs: list[str]
) -> tuple[str, str]:
    """URI and sha256 of the output's artifact model for this job's model, weights and size:
    the stored one when an earlier run made it with the same calibration settings, else one
    calibrated now on the driver (``cfg.calibration``, or the job's ``inputs``) and written
    atomically."""
    calib = cfg.calibration
    if calib.model_uri:
        model, sha = read_artifact_model(calib.model_uri, calib.storage_options)
        model.check(extractor, image_size)
        return calib.model_uri, sha
    settings = config_digest(
        {
            k: v
            for k, v in config_to_dict(calib).items()
            if k not in ("storage_options", "model_uri", "min_crops")
        }
    )
    uri = artifact_model_uri(
        cfg.output.uri, extractor.model_name, extractor.weights_digest, image_size, settings
    )
    fs, path = filesystem(uri, cfg.output.storage_options)
    if fs.exists(path):
        model, sha = read_artifact_model(uri, cfg.output.storage_options)
        model.check(extractor, image_size)
        logger.info("artifact model %s (reused)", uri)
        return uri, sha
    source = InputConfig(
        uri=calib.uri or cfg.input.uri,
        include=cfg.input.include,
        exclude=cfg.input.exclude,
        max_pixels=cfg.input.max_pixels,
        max_bytes=cfg.input.max_bytes,
        decode_timeout_s=cfg.input.decode_timeout_s,
        storage_options=calib.storage_options if calib.uri else cfg.input.storage_options,
    )
    listed = list_images(source) if calib.uri else inputs
    photos = read_photos(
        [listed[i] for i in spread_indices(len(listed), calib.images)],
        source.storage_options,
        source.max_bytes,
        source.max_pixels,
        extractor.patch_size,
        source.decode_timeout_s,
        "calibration",
    )
    if not photos:
        raise ConfigError(
            f"no readable calibration image under {source.uri}: preset "
            f"{cfg.engine.name!r} needs an artifact model, calibrated on photos "
            "(set calibration.uri to a folder of photos)"
        )
    model = calibrate(extractor, photos, image_size, calib.crops_for(len(photos)), calib.seed)
    sha = write_artifact_model(uri, model, cfg.output.storage_options)
    logger.info(
        "artifact model %s: %d crops of %d images in %.1f s",
        uri,
        model.samples,
        len(photos),
        model.seconds,
    )
    return uri, sha


def run_clean_job(cfg: CleanJobConfig) -> dict[str, Any]:
    """Stage 1 over ``cfg.input.uri`` into a new committed run; return the summary."""
    uris = require_io(cfg.input, cfg.output)
    extractor = load_extractor(cfg.model.name, cfg.model.weights, device="cpu")
    image_size = resolve_image_size(cfg.engine, extractor)
    settings: dict[str, Any] = {"engine": cfg.engine.output_settings()}
    stage_kwargs = {
        "model_name": cfg.model.name,
        "weights": cfg.model.weights,
        "engine": cfg.engine,
        "dtype": cfg.output.dtype,
        "with_artifact": cfg.output.with_artifact,
        "torch_threads": cfg.compute.torch_threads,
        "weights_digest": extractor.weights_digest,
    }
    meta = RunMeta(
        aspect=cfg.engine.resize.aspect,
        upsample=cfg.engine.upsample if cfg.engine.upsample > 1 else None,
    )
    if cfg.engine.needs_artifact_model:
        uri, sha = ensure_artifact_model(cfg, extractor, image_size, uris)
        settings["artifact_model"] = sha  # another pattern, other features
        stage_kwargs |= {
            "artifact_model_uri": uri,
            "artifact_model_sha256": sha,
            "artifact_storage_options": cfg.output.storage_options,
        }
        meta = dataclasses.replace(meta, artifact_model=uri, artifact_model_sha256=sha)
    method = FeatureMethod(
        stage=CleanImages,
        stage_kwargs=stage_kwargs,
        batch_size=cfg.engine.images_per_fit,
        extractor=extractor,
        image_size=image_size,
        settings=settings,
        resize=cfg.engine.resize,
        meta=meta,
        upsample=cfg.engine.upsample,
    )
    return run_feature_job(config_to_dict(cfg), cfg.input, cfg.output, cfg.compute, method, uris)
