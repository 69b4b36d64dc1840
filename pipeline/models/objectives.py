"""The loss and the learning-rate schedule that both stages train with (one code path: the
per-image fit of stage 1 and the denoiser of stage 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def feature_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The method's L_dist per sample: MSE over everything but the batch axis plus the mean
    over tokens of (1 - cosine over channels). (B, ..., C) pairs -> (B,)."""
    dims = tuple(range(1, pred.ndim))
    mse = F.mse_loss(pred, target, reduction="none").mean(dims)
    cos = F.cosine_similarity(pred, target, dim=-1)
    return mse + (1.0 - cos).mean(tuple(range(1, cos.ndim)))


def warmup_cosine(
    step: int, total_steps: int, warmup_fraction: float, final_fraction: float
) -> float:
    """The learning-rate multiplier at ``step`` (0-based): linear warm-up over
    ``warmup_fraction`` of the steps, then cosine decay to ``final_fraction``."""
    warmup = max(1, round(total_steps * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
