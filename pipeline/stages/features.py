"""The feature stages as small callable classes: load once in ``__init__``, pure ``__call__``.

They take the read stage's rows (``pipeline.stages.read.ReadImages``) and return batches as dicts of
numpy columns, and import no Ray, so they run the same under Ray Data's actor pools and in a
plain loop. Every input row comes out as exactly one row with a ``status`` (``RowStatus``):
``done`` (features in ``raw``/``clean``/``artifact`` as bytes), ``skipped`` (already committed
for this config) or ``error`` (with ``stage``, ``reason``, ``error_class``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.engine_config import EngineConfig, ResizeConfig
from pipeline.models.artifact_model import read_artifact_model
from pipeline.models.denoiser import DenoisedViT
from pipeline.models.denoiser import denoiser_digest as digest_of
from pipeline.models.engine import CleanResult, clean_images
from pipeline.models.online import denoise_images
from pipeline.models.vit import load_extractor
from pipeline.stages.read import PASSTHROUGH, Batch, RowStatus, failed_rows, object_column

logger = logging.getLogger(__name__)


class LoadedOtherBytes(ConfigError):
    """A worker loaded weights, an artifact model or a denoiser whose digest differs from the
    one the driver recorded for the run (the file was replaced while the run went on). The
    job ends with the message (``Graph.run`` finds it in the worker's error), exit code 2."""


def require_digest(what: str, uri: str, expected: str, loaded: str) -> None:
    """Refuse to work with a file whose content is not the one the run's config digest was
    computed from: its outputs would be labelled with a digest they do not have."""
    if expected and loaded != expected:
        raise LoadedOtherBytes(
            f"{what} at {uri} changed while the run went on: the driver recorded digest "
            f"{expected[:16]}, this worker loaded {loaded[:16]}. Nothing it would compute "
            "matches the run's config digest; put the file back, or start a new run with the "
            "new file"
        )


class CleanImages:
    """Decoded rows -> stage-1 fit -> feature bytes; other rows pass through untouched."""

    method = "dvt-fit"
    stage = "fit"  # the quarantine's stage name of this stage's failures

    def __init__(
        self,
        model_name: str,
        weights: str,
        engine: EngineConfig,
        dtype: str,
        with_artifact: bool,
        torch_threads: int = 0,
        artifact_model_uri: str = "",
        artifact_storage_options: dict[str, Any] | None = None,
        weights_digest: str = "",
        artifact_model_sha256: str = "",
    ) -> None:
        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        self.extractor = load_extractor(model_name, weights=weights)
        require_digest("the ViT weights", weights, weights_digest, self.extractor.weights_digest)
        self.engine = engine
        self.dtype = np.dtype(dtype)
        self.with_artifact = with_artifact
        self.artifact_model = None
        if artifact_model_uri:
            self.artifact_model, sha = read_artifact_model(
                artifact_model_uri, artifact_storage_options
            )
            require_digest("the artifact model", artifact_model_uri, artifact_model_sha256, sha)

    def features(self, images: list[np.ndarray], ids: list[str]) -> list[CleanResult]:
        """One result per image, in order (the work of this stage)."""
        return clean_images(
            self.extractor, images, self.engine, ids=ids, artifact_model=self.artifact_model
        )

    def __call__(self, batch: Batch) -> Batch:
        """One output row per input row (``done``, passed through, or ``error``)."""
        try:
            return self._rows(batch)
        except Exception as err:  # a bug of this stage: every row says so
            logger.exception("%s failed on a batch of %d", self.method, len(batch["source_uri"]))
            return failed_rows(
                batch["source_uri"],
                self.stage,
                err,
                {
                    "width": 0,
                    "height": 0,
                    "raw": b"",
                    "clean": b"",
                    "artifact": b"",
                    "clean_hr": b"",
                    "metrics": "",
                    "grid_h": 0,
                    "grid_w": 0,
                },
            )

    def _rows(self, batch: Batch) -> Batch:
        n = len(batch["source_uri"])
        out: dict[str, list[Any]] = {key: list(batch[key]) for key in PASSTHROUGH}
        for key in ("raw", "clean", "artifact", "clean_hr", "metrics"):
            out[key] = [b"" if key != "metrics" else "" for _ in range(n)]
        out["grid_h"], out["grid_w"] = [0] * n, [0] * n
        todo = [i for i in range(n) if batch["status"][i] == RowStatus.OK]
        images = [
            np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(
                int(batch["height"][i]), int(batch["width"][i]), 3
            )
            for i in todo
        ]
        try:
            results = (
                self.features(images, [str(batch["image_id"][i]) for i in todo]) if todo else []
            )
        except Exception as err:  # a failure of the whole batch quarantines its images
            logger.exception("%s failed for %d images", self.method, len(todo))
            for i in todo:
                out["status"][i], out["stage"][i] = RowStatus.ERROR, self.stage
                out["reason"][i], out["error_class"][i] = str(err)[:500], type(err).__name__
            results = []
        for i, res in zip(todo if results else [], results, strict=True):
            if not res.ok:
                out["status"][i], out["stage"][i] = RowStatus.ERROR, self.stage
                out["reason"][i], out["error_class"][i] = res.error or "", "NonFiniteOutput"
                continue
            out["status"][i] = RowStatus.DONE
            out["raw"][i] = res.raw.astype(self.dtype).tobytes()
            out["clean"][i] = res.clean.astype(self.dtype).tobytes()
            if self.with_artifact:
                out["artifact"][i] = res.artifact.astype(self.dtype).tobytes()
            if res.clean_hr is not None:
                out["clean_hr"][i] = res.clean_hr.astype(self.dtype).tobytes()
            out["grid_h"][i], out["grid_w"][i] = res.raw.shape[:2]
            out["metrics"][i] = json.dumps(res.metrics)
        result = {key: object_column(values) for key, values in out.items()}
        for key in ("width", "height", "grid_h", "grid_w"):
            result[key] = np.asarray(out[key], dtype=np.int32)
        return result


class DenoiseImages(CleanImages):
    """Decoded rows -> ViT + trained denoiser (no per-image fit) -> feature bytes."""

    method = "denoiser"
    stage = "denoise"

    def __init__(
        self,
        denoiser_uri: str,
        weights: str,
        image_size: int,
        batch_size: int,
        dtype: str,
        with_artifact: bool,
        torch_threads: int = 0,
        storage_options: dict[str, Any] | None = None,
        resize: ResizeConfig | None = None,
        weights_digest: str = "",
        denoiser_digest: str = "",
        smoothing: float = 0.0,
        flip: bool = False,
    ) -> None:
        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        self.model = DenoisedViT.from_pretrained(
            denoiser_uri,
            weights=weights,
            storage_options=storage_options,
            smoothing=smoothing,
            flip=flip,
        )
        require_digest(
            "the ViT weights", weights, weights_digest, self.model.extractor.weights_digest
        )
        require_digest(
            "the denoiser", denoiser_uri, denoiser_digest, digest_of(self.model.denoiser)
        )
        self.image_size = image_size
        self.resize = resize or ResizeConfig()
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        self.with_artifact = with_artifact

    def features(self, images: list[np.ndarray], ids: list[str]) -> list[CleanResult]:
        """One result per image, in order: the ViT's tokens through the denoiser."""
        return denoise_images(
            self.model, images, self.image_size, self.batch_size, ids=ids, resize=self.resize
        )
