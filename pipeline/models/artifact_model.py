"""The dataset-level artifact model: a ViT's positional pattern, estimated once per (model,
weights digest, input size) and subtracted from any image's raw tokens without a fit.

Stage 1's G, fitted per image, agrees only partly across images (it also absorbs content); the
pattern that every image shares is the model's. Two estimates of it:

- ``calibrate``: the per-position mean of raw tokens over random crops (place, scale, flip) of a
  calibration set, where content no longer lines up with the token grid. No training.
- ``from_artifacts``: the mean of stage-1 G's of many images.

``raw - pattern`` (``ArtifactModel.subtract``) is then an artifact-free output for the whole
corpus and for new images; ``pipeline.models.shift`` subtracts it view by view.
``write_artifact_model`` / ``read_artifact_model`` keep it as a file of the store
(``pipeline.store.artifacts``, at ``artifact_model_uri`` under an output).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed

from pipeline.models.crops import random_crop
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor
from pipeline.store.artifacts import read_pattern_file, write_pattern_file

logger = logging.getLogger(__name__)

MIN_CALIBRATION_CROPS = 64
"""Below this many crops the calibration warns: content no longer averages out."""


@dataclass(frozen=True)
class ArtifactModel:
    """A model's positional pattern on one token grid (other grids get it resampled).

    pattern: (h, w, C) float32, what ``subtract`` removes from raw tokens at that grid.
    samples: crops (calibration) or images (stage-1 G's) averaged; source says which.
    seconds: wall time of the estimate.
    """

    model: str
    weights_digest: str
    image_size: int
    pattern: np.ndarray
    samples: int
    source: str
    seconds: float = 0.0

    def check(self, extractor: FeatureExtractor, image_size: int) -> None:
        """Refuse to apply the pattern to another model, weights or input size."""
        if (extractor.model_name, extractor.weights_digest, image_size) != (
            self.model,
            self.weights_digest,
            self.image_size,
        ):
            raise ValueError(
                f"artifact model of {self.model} (weights {self.weights_digest[:12]}) at "
                f"{self.image_size} px cannot clean {extractor.model_name} (weights "
                f"{extractor.weights_digest[:12]}) at {image_size} px: calibrate one for them"
            )

    def pattern_for(self, grid: Sequence[int]) -> np.ndarray:
        """(h, w, C) float32 the pattern on an (h, w) token grid: the estimate itself on its
        own grid, else resampled to the grid the way the ViT resamples its positional
        embedding (bicubic), as for kept-aspect grids calibrated on the square one."""
        grid_h, grid_w = (int(g) for g in grid)
        height, width, channels = self.pattern.shape
        if (grid_h, grid_w) == (height, width):
            return self.pattern
        flat = torch.from_numpy(self.pattern).reshape(1, height * width, channels)
        resampled = resample_abs_pos_embed(
            flat, new_size=[grid_h, grid_w], old_size=[height, width], num_prefix_tokens=0
        )
        return resampled.reshape(grid_h, grid_w, channels).numpy()

    def subtract(self, tokens: np.ndarray) -> np.ndarray:
        """raw tokens (..., h, w, C) -> tokens minus the pattern on their grid (float32)."""
        if tokens.shape[-1] != self.pattern.shape[-1]:
            raise ValueError(f"tokens {tokens.shape} do not match the pattern {self.pattern.shape}")
        return tokens.astype(np.float32) - self.pattern_for(tokens.shape[-3:-1])


def calibrate(
    extractor: FeatureExtractor,
    photos: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    image_size: int,
    crops_per_photo: int = 20,
    seed: int = 0,
    scale: tuple[float, float] = (0.3, 0.9),
    batch_size: int = 16,
) -> ArtifactModel:
    """The per-position mean of raw tokens over ``crops_per_photo`` random crops of each photo.

    photos: (H, W, 3) uint8 RGB images of varied content (at least a few; 100+ crops in all
    keep the estimate's own noise well below the pattern).
    """
    images = list(photos.values()) if isinstance(photos, Mapping) else list(photos)
    if not images or crops_per_photo < 1:
        raise ValueError("calibration needs at least one photo and one crop per photo")
    if len(images) * crops_per_photo < MIN_CALIBRATION_CROPS:
        logger.warning(
            "artifact model from only %d crops of %d images: their own content stays "
            "in the pattern; calibrate on more photos (>= %d crops)",
            len(images) * crops_per_photo,
            len(images),
            MIN_CALIBRATION_CROPS,
        )
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    crops = [random_crop(photo, rng, scale) for photo in images for _ in range(crops_per_photo)]
    total: torch.Tensor | None = None
    for begin in range(0, len(crops), batch_size):
        batch = crops[begin : begin + batch_size]
        pixels = torch.stack([full_view_pixels(c, image_size) for c in batch])
        tokens = extractor(pixels).double().sum(0)
        total = tokens if total is None else total + tokens
    assert total is not None
    pattern = (total / len(crops)).float().cpu().numpy()
    seconds = time.perf_counter() - start
    logger.info(
        "calibrated %s at %d px on %d crops in %.1f s",
        extractor.model_name,
        image_size,
        len(crops),
        seconds,
    )
    return ArtifactModel(
        extractor.model_name,
        extractor.weights_digest,
        image_size,
        pattern,
        len(crops),
        "calibration",
        seconds,
    )


def from_artifacts(
    artifacts: Sequence[np.ndarray], model: str, weights_digest: str, image_size: int
) -> ArtifactModel:
    """The mean of stage-1 artifact maps G (each (h, w, C)) of many images."""
    if not len(artifacts):
        raise ValueError("no artifact maps to average")
    pattern = np.mean(np.stack([np.asarray(a, dtype=np.float32) for a in artifacts]), axis=0)
    return ArtifactModel(
        model, weights_digest, image_size, pattern.astype(np.float32), len(artifacts), "stage1-G"
    )


def write_artifact_model(
    uri: str, model: ArtifactModel, storage_options: dict[str, Any] | None = None
) -> str:
    """Store ``model`` at ``uri`` atomically (``pipeline.store.artifacts``: the pattern, and
    its facts as metadata); returns the sha256 of the bytes, which identifies the pattern."""
    facts = {
        "model": model.model,
        "weights_digest": model.weights_digest,
        "image_size": str(model.image_size),
        "samples": str(model.samples),
        "source": model.source,
        "seconds": repr(model.seconds),
    }
    return write_pattern_file(uri, model.pattern, facts, storage_options)


def read_artifact_model(
    uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[ArtifactModel, str]:
    """An artifact model written by ``write_artifact_model`` and the sha256 of its bytes."""
    pattern, facts, sha = read_pattern_file(uri, storage_options)
    model = ArtifactModel(
        facts["model"],
        facts["weights_digest"],
        int(facts["image_size"]),
        pattern,
        int(facts["samples"]),
        facts["source"],
        float(facts.get("seconds", "0")),
    )
    return model, sha
