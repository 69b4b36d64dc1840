"""The free baselines every quality figure stands beside, computed the one way both the
evaluation job and the benches use (model code: torch, no Ray).

- ``calib``: raw minus the artifact model's pattern (no training);
- ``tta``: the mean over shifted and flipped views (``pipeline.models.tta``);
- ``calib+tta``: the same with the pattern subtracted from every view;
- ``raw - mean G``: raw minus the mean of stage-1 G's (``artifact_model.from_artifacts``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.config import ShiftConfig
from pipeline.models.artifact_model import ArtifactModel
from pipeline.models.tta import tta_tokens
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor

BASELINE_TTA = ShiftConfig(views=10, pad=2, flip_prob=0.5)
"""The shift averaging a user would pick: 10 views, offsets of 0-4 patches, half flipped."""


def raw_tokens(extractor: FeatureExtractor, images: Sequence[np.ndarray], size: int
               ) -> np.ndarray:
    """(N, K, K, C) raw tokens of each (H, W, 3) uint8 image's full view, one at a time."""
    return np.stack([extractor(full_view_pixels(im, size)[None])[0].cpu().numpy()
                     for im in images])


def baseline_outputs(extractor: FeatureExtractor, images: Sequence[np.ndarray], size: int,
                     model: ArtifactModel, tta: ShiftConfig = BASELINE_TTA
                     ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """raw, calib, tta and calib+tta tokens (N, K, K, C) of ``images``, and each one's seconds
    per image (image i's shifted views are drawn with seed i)."""
    model.check(extractor, size)
    start = time.perf_counter()
    raw = raw_tokens(extractor, images, size)
    seconds = {"raw": (time.perf_counter() - start) / len(images)}
    outputs = {"raw": raw, "calib": model.subtract(raw)}
    seconds["calib"] = seconds["raw"]
    pattern = torch.from_numpy(model.pattern).to(extractor.device)
    for name, pat in (("tta", None), ("calib+tta", pattern)):
        start = time.perf_counter()
        outputs[name] = np.stack([tta_tokens(extractor, im, size, tta, i, pat).numpy()
                                  for i, im in enumerate(images)])
        seconds[name] = (time.perf_counter() - start) / len(images)
    return outputs, seconds
