"""Stage 1: the per-image decomposition y ~= F(coord) + G[i, j] + sg(h(y)), for a batch of images.

With a dataset-level artifact model (``fit.prior_weight > 0``), G starts at its pattern and is
held near it by a quadratic penalty, so G takes the model's pattern plus a small per-image
correction instead of also absorbing the image's content.

Every image has its own field F, artifact map G and residual MLP h (a leading batch axis, see
``pipeline.models.field``); one optimiser step updates all of them. Losses are means per image and
the batch loss is their sum, so each image's gradients, and Adam's element-wise updates, are
exactly those of fitting it alone. An image whose loss turns non-finite is marked failed and
drops out of the sum; the others go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine_config import FieldConfig, FitConfig
from pipeline.models.field import BatchedMLP, BatchedNeuralField
from pipeline.models.objectives import feature_distance, warmup_cosine

logger = logging.getLogger(__name__)

_INDEX_BLOCK = 64  # steps of token indices drawn at once per image


class BatchedDecomposition(nn.Module):
    """F (field), G (artifact map) and h (residual MLP) for B images with C channels on one
    h x w token grid (T = h * w tokens a view)."""

    def __init__(
        self,
        field_cfg: FieldConfig,
        channels: int,
        tokens_per_view: int,
        artifact_init_std: float,
        generators: list[torch.Generator],
        prior: torch.Tensor | None = None,
    ) -> None:
        """prior: (T, C) the artifact model's pattern that G starts at, or None (G ~ 0)."""
        super().__init__()
        self.field = BatchedNeuralField(field_cfg, channels, generators)
        artifact = (
            torch.stack([torch.randn(tokens_per_view, channels, generator=g) for g in generators])
            * artifact_init_std
        )
        if prior is not None:
            artifact = artifact + prior.float()
        self.artifact = nn.Parameter(artifact)  # (B, T, C)
        quarter = max(1, channels // 4)
        self.residual = BatchedMLP([channels, quarter, quarter, channels], generators)

    def artifact_at(self, patch_index: torch.Tensor) -> torch.Tensor:
        """G at patch indices (B, N) in [0, T) -> (B, N, C)."""
        channels = self.artifact.shape[-1]
        return torch.gather(self.artifact, 1, patch_index[..., None].expand(-1, -1, channels))


@dataclass
class FitResult:
    """What the fit keeps for a batch of B images on an h x w token grid with C channels.

    clean: (B, h, w, C) F at the full view's token positions.
    artifact: (B, h, w, C) the estimated G.
    ok: (B,) bool, False where the fit diverged.
    metrics: per image: final_loss, r2, artifact_ratio, fit_seconds.
    """

    clean: torch.Tensor
    artifact: torch.Tensor
    ok: torch.Tensor
    metrics: list[dict[str, float]]


def _per_image_losses(
    model: BatchedDecomposition,
    y: torch.Tensor,
    xy: torch.Tensor,
    patch: torch.Tensor,
    phase2: bool,
    max_resolution: int,
    cfg: FitConfig,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) loss per image on sampled tokens y (B, T, C) at coords xy (B, T, 2), patches (B, T);
    grid levels finer than ``max_resolution`` (when > 0) are held at zero; ``prior`` (T, C)
    adds the penalty that holds G near the artifact model while G trains (phase 1)."""
    sem = model.field(xy, max_resolution)
    art = model.artifact_at(patch)
    if not phase2:
        loss = feature_distance(sem + art, y)
        if prior is not None:
            loss = loss + cfg.prior_weight * (model.artifact - prior).pow(2).mean((1, 2))
        return loss
    art = art.detach()
    res = model.residual(y)
    dist = feature_distance(sem + art + res.detach(), y)
    target = (y - sem - art).detach()
    res_loss = F.mse_loss(res, target, reduction="none").mean((1, 2))
    sparse = res.abs().mean((1, 2))
    return dist + cfg.residual_weight * res_loss + cfg.sparsity_weight * sparse


def _make_optimizer(params: list[nn.Parameter], cfg: FitConfig) -> torch.optim.Optimizer:
    """Adam with the configured betas/eps; fused kernels where this torch has them."""
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)


@torch.no_grad()
def _diagnostics(
    model: BatchedDecomposition, y0: torch.Tensor, xy0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean F (B, T, C), R^2 (B,) and |G|/|y| (B,) on the full view's tokens y0 (B, T, C)."""
    clean = model.field(xy0)
    artifact = model.artifact
    recon = clean + artifact + model.residual(y0)
    err = (y0 - recon).pow(2).sum((1, 2))
    var = (y0 - y0.mean(1, keepdim=True)).pow(2).sum((1, 2)).clamp_min(1e-12)
    ratio = artifact.norm(dim=-1).mean(1) / y0.norm(dim=-1).mean(1).clamp_min(1e-12)
    return clean, 1.0 - err / var, ratio


def fit_batch(
    features: torch.Tensor,
    coords: torch.Tensor,
    seeds: list[int],
    field_cfg: FieldConfig,
    fit_cfg: FitConfig,
    prior: torch.Tensor | None = None,
) -> FitResult:
    """Fit the decomposition to a batch of images.

    features: (B, V, h, w, C) raw tokens of every view (view 0 = full image), any float dtype;
    one h x w token grid for the whole batch.
    coords: (B, V, h, w, 2) each token's (x, y) in the original image, in [0, 1].
    seeds: one per image; its initialisation and token sampling derive from it alone.
    prior: (h, w, C) the dataset's artifact pattern, required when ``fit_cfg.prior_weight > 0``
    (G starts there and is held near it) and ignored otherwise.
    """
    start = time.perf_counter()
    batch, views, grid_h, grid_w, channels = features.shape
    if coords.shape != (batch, views, grid_h, grid_w, 2):
        raise ValueError(f"coords {tuple(coords.shape)} do not match features {features.shape}")
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    device = features.device
    prior_flat = None
    if fit_cfg.prior_weight > 0:
        if prior is None or tuple(prior.shape) != (grid_h, grid_w, channels):
            raise ValueError(
                f"fit.prior_weight > 0 needs an artifact pattern of shape "
                f"{(grid_h, grid_w, channels)}, got "
                f"{None if prior is None else tuple(prior.shape)}"
            )
        prior_flat = prior.reshape(grid_h * grid_w, channels).to(device=device, dtype=torch.float32)
    tokens_per_view = grid_h * grid_w
    total_tokens = views * tokens_per_view
    y_all = features.reshape(batch, total_tokens, channels)
    xy_all = coords.reshape(batch, total_tokens, 2).to(device=device, dtype=torch.float32)

    init_gens = [torch.Generator().manual_seed(s) for s in seeds]
    model = BatchedDecomposition(
        field_cfg,
        channels,
        tokens_per_view,
        fit_cfg.artifact_init_std,
        init_gens,
        None if prior_flat is None else prior_flat.cpu(),
    ).to(device)
    sample_gens = [torch.Generator(device=device).manual_seed(s ^ 0x5EED) for s in seeds]
    optimizer = _make_optimizer(list(model.parameters()), fit_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(
            step, fit_cfg.steps, fit_cfg.warmup_fraction, fit_cfg.final_lr_fraction
        ),
    )

    steps = fit_cfg.steps
    phase1_steps = int(round(steps * fit_cfg.phase1_fraction))
    coarse_steps = int(round(steps * fit_cfg.coarse_fraction))
    # cells per token along the longer side (the field's grids are square in image coords)
    coarse_resolution = max(1, int(round(fit_cfg.coarse_cells_per_token * max(grid_h, grid_w))))
    tokens = min(fit_cfg.tokens_per_step, total_tokens)
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    y_rows = y_all.reshape(batch * total_tokens, channels)
    xy_rows = xy_all.reshape(batch * total_tokens, 2)
    row_offsets = torch.arange(batch, device=device)[:, None] * total_tokens
    tail_start = steps - max(1, steps // 10)
    tail_loss = torch.zeros(batch, device=device)
    index_block = torch.empty(0)
    log_every = max(1, steps // 10)

    for step in range(steps):
        offset = step % _INDEX_BLOCK
        if offset == 0:  # per-image index draws, independent of which images share the batch
            count = min(_INDEX_BLOCK, steps - step)
            index_block = torch.stack(
                [
                    torch.randint(total_tokens, (count, tokens), generator=g, device=device)
                    for g in sample_gens
                ],
                dim=1,
            )  # (count, B, T)
        idx = index_block[offset]  # (B, T) into each image's own tokens
        rows = (idx + row_offsets).flatten()
        y = y_rows.index_select(0, rows).view(batch, tokens, channels).float()
        xy = xy_rows.index_select(0, rows).view(batch, tokens, 2)
        patch = idx % tokens_per_view

        cap = coarse_resolution if step < coarse_steps else 0
        losses = _per_image_losses(
            model, y, xy, patch, step >= phase1_steps, cap, fit_cfg, prior_flat
        )
        alive &= torch.isfinite(losses)
        optimizer.zero_grad(set_to_none=True)
        torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
        optimizer.step()
        sched.step()
        if step >= tail_start:
            tail_loss += torch.where(alive, losses.detach(), torch.zeros_like(losses))
        if logger.isEnabledFor(logging.DEBUG) and (step % log_every == 0 or step == steps - 1):
            logger.debug("fit step %d/%d loss %s", step + 1, steps, losses.detach().tolist())

    y0 = y_all[:, :tokens_per_view].float()
    xy0 = xy_all[:, :tokens_per_view]
    clean, r2, ratio = _diagnostics(model, y0, xy0)
    ok = (
        alive
        & torch.isfinite(clean).all(dim=(1, 2))
        & torch.isfinite(model.artifact).all(dim=(1, 2))
    )
    final_loss = tail_loss / max(1, steps - tail_start)
    seconds = (time.perf_counter() - start) / batch
    metrics = [
        {
            "final_loss": float(final_loss[b]),
            "r2": float(r2[b]),
            "artifact_ratio": float(ratio[b]),
            "fit_seconds": seconds,
        }
        for b in range(batch)
    ]
    shape = (batch, grid_h, grid_w, channels)
    return FitResult(
        clean=clean.reshape(shape),
        artifact=model.artifact.detach().reshape(shape),
        ok=ok,
        metrics=metrics,
    )
