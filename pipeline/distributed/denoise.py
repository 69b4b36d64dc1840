"""The Ray layer of denoise_dataset: the clean_dataset graph with the denoiser as its stage.

Reading, quarantine, incremental refresh, the committing sink and the summary are those of
clean_dataset (``pipeline.distributed.features.run_feature_job``); only the feature stage
differs: the ViT plus a trained denoiser (``DenoiseImages``), no per-image fit. Rows carry
``method = "denoiser"``, and the denoiser's weight digest is part of the config digest, so a new
denoiser re-processes every image while a refresh with the same one skips committed images.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import ConfigError, config_to_dict
from pipeline.distributed.features import FeatureMethod, require_io, run_feature_job
from pipeline.job_config import DenoiseJobConfig
from pipeline.models.denoiser import DenoisedViT, denoiser_digest, require_export
from pipeline.models.online import online_image_size
from pipeline.stages.features import DenoiseImages
from pipeline.store.meta import RunMeta


def denoise_settings(cfg: DenoiseJobConfig, digest: str, image_size: int) -> dict[str, Any]:
    """What makes a denoised run's tokens, digested into its config digest: the denoiser's
    weights digest, its output options (only when used, so older runs keep their digests),
    the input size and the resize."""
    return {
        "method": "denoiser",
        "denoiser_digest": digest,
        **({"smoothing": cfg.denoiser.smoothing} if cfg.denoiser.smoothing else {}),
        **({"flip": True} if cfg.denoiser.flip else {}),
        "image_size": image_size,
        **cfg.resize.output_settings(),
    }


def run_denoise_job(cfg: DenoiseJobConfig) -> dict[str, Any]:
    """The online denoiser over ``cfg.input.uri`` into a new committed run; the summary."""
    if not cfg.denoiser.uri:
        raise ConfigError("denoiser.uri (--denoiser) is required: the export of train_denoiser")
    uris = require_io(cfg.input, cfg.output)
    require_export(cfg.denoiser.uri, cfg.denoiser.storage_options)
    model = DenoisedViT.from_pretrained(
        cfg.denoiser.uri,
        cfg.weights,
        device="cpu",
        storage_options=cfg.denoiser.storage_options,
        smoothing=cfg.denoiser.smoothing,
        flip=cfg.denoiser.flip,
    )
    weights, image_size = model.extractor.weights, online_image_size(model, cfg.image_size)
    digest = denoiser_digest(model.denoiser)
    method = FeatureMethod(
        stage=DenoiseImages,
        stage_kwargs={
            "denoiser_uri": cfg.denoiser.uri,
            "weights": weights,
            "image_size": image_size,
            "batch_size": cfg.batch_size,
            "resize": cfg.resize,
            "dtype": cfg.output.dtype,
            "with_artifact": cfg.output.with_artifact,
            "torch_threads": cfg.compute.torch_threads,
            "storage_options": cfg.denoiser.storage_options,
            "smoothing": cfg.denoiser.smoothing,
            "flip": cfg.denoiser.flip,
            "weights_digest": model.extractor.weights_digest,
            "denoiser_digest": digest,
        },
        batch_size=cfg.batch_size,
        extractor=model.extractor,
        image_size=image_size,
        settings=denoise_settings(cfg, digest, image_size),
        resize=cfg.resize,
        meta=RunMeta(
            denoiser_digest=digest,
            denoiser_uri=cfg.denoiser.uri,
            denoiser_smoothing=cfg.denoiser.smoothing or None,  # recorded only when used
            denoiser_flip=cfg.denoiser.flip or None,
            aspect=cfg.resize.aspect,
        ),
    )
    return run_feature_job(config_to_dict(cfg), cfg.input, cfg.output, cfg.compute, method, uris)
