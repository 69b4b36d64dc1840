"""The stage-1 engine: images in, raw and artifact-free ViT features out.

``clean_images`` converts each image to RGB, gives it a token grid (its aspect kept, or
square), samples its views, extracts ViT tokens of every view once, and fits the decomposition
for up to ``images_per_fit`` images of one grid at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine_config import EngineConfig, engine_preset
from pipeline.models.artifact_model import ArtifactModel
from pipeline.models.fit import fit_batch
from pipeline.models.images import ImageLike, content_id, to_rgb
from pipeline.models.shift import ShiftView, decompose_shift_views, shift_view_tokens
from pipeline.models.subpatch import (
    guide_weights,
    shift_average_fine,
    solve_fine_content,
    subpatch_view_tokens,
)
from pipeline.models.views import derive_seed, render_views, sample_layout, token_grid
from pipeline.models.vit import FeatureExtractor

logger = logging.getLogger(__name__)


@dataclass
class CleanResult:
    """Stage-1 output for one image on the full view's h x w token grid with C channels.

    raw: (h, w, C) float32 ViT tokens of the full image.
    clean: (h, w, C) float32 F at the same tokens: the artifact-free features.
    artifact: (h, w, C) float32 the estimated artifact map G.
    metrics: final_loss, r2, artifact_ratio (|G|/|y|), extract_seconds, fit_seconds, seconds.
    ok: False where the fit diverged; then ``error`` says why and ``clean`` is not usable.
    clean_hr: (s*h, s*w, C) float32 artifact-free content at s x s cells per token, with
        ``upsample`` = s > 1 (``pipeline.models.subpatch``); None otherwise.
    """

    image_id: str
    raw: np.ndarray
    clean: np.ndarray
    artifact: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    ok: bool = True
    error: str | None = None
    clean_hr: np.ndarray | None = None


def resolve_image_size(cfg: EngineConfig, extractor: FeatureExtractor) -> int:
    """The input size in pixels (the square's side, or a kept-aspect input's short side): the
    preset's, or the model's DVT default."""
    size = cfg.image_size or extractor.default_image_size()
    if size % extractor.patch_size:
        raise ValueError(
            f"image_size {size} is not a multiple of {extractor.model_name}'s patch size "
            f"{extractor.patch_size}"
        )
    return size


def extract_views(
    extractor: FeatureExtractor, rgb: np.ndarray, image_id: str, cfg: EngineConfig, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (V, h, w, C) and their original-image coords (V, h, w, 2) for one RGB image, on
    the image's token grid (``views.token_grid``)."""
    patch = extractor.patch_size
    grid_h, grid_w = token_grid(cfg.resize, rgb.shape[:2], size, patch)
    layout = sample_layout(
        rgb.shape[:2],
        cfg.views,
        derive_seed(image_id, cfg.seed, "views"),
        view_aspect=grid_w / grid_h,
    )
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).to(extractor.device)
    store_dtype = torch.float16 if extractor.device.type == "cuda" else torch.float32
    chunks = []
    for start in range(0, layout.num_views, cfg.vit_batch_size):
        stop = min(start + cfg.vit_batch_size, layout.num_views)
        pixels = render_views(image, layout, (grid_h * patch, grid_w * patch), start, stop)
        chunks.append(extractor(pixels).to(store_dtype))
    tokens = torch.cat(chunks)
    coords = layout.token_coords((grid_h, grid_w)).to(extractor.device)
    return tokens, coords


def _clean_batch(
    extractor: FeatureExtractor,
    images: Sequence[np.ndarray],
    ids: Sequence[str],
    cfg: EngineConfig,
    size: int,
    prior: ArtifactModel | None = None,
) -> list[CleanResult]:
    """Extract every view of a few images of one token grid, fit them together (G held near
    ``prior``'s pattern when the preset asks for it), package the results."""
    start = time.perf_counter()
    extracted = [
        extract_views(extractor, rgb, iid, cfg, size) for rgb, iid in zip(images, ids, strict=True)
    ]
    features = torch.stack([t for t, _ in extracted])
    coords = torch.stack([c for _, c in extracted])
    extract_seconds = (time.perf_counter() - start) / len(images)
    seeds = [derive_seed(iid, cfg.seed, "fit") for iid in ids]
    pattern = None if prior is None else torch.from_numpy(prior.pattern_for(features.shape[2:4]))
    fit = fit_batch(features, coords, seeds, cfg.field, cfg.fit, pattern)
    results = []
    for b, iid in enumerate(ids):
        metrics = dict(fit.metrics[b])
        metrics["extract_seconds"] = extract_seconds
        metrics["seconds"] = extract_seconds + metrics["fit_seconds"]
        ok = bool(fit.ok[b])
        results.append(
            CleanResult(
                image_id=iid,
                raw=features[b, 0].float().cpu().numpy(),
                clean=fit.clean[b].float().cpu().numpy(),
                artifact=fit.artifact[b].float().cpu().numpy(),
                metrics=metrics,
                ok=ok,
                error=None if ok else "fit diverged (non-finite loss or parameters)",
            )
        )
        if not ok:
            logger.warning("image %s: fit diverged", iid[:12])
    return results


def _shift_one(
    extractor: FeatureExtractor,
    rgb: np.ndarray,
    image_id: str,
    cfg: EngineConfig,
    size: int,
    prior: ArtifactModel,
) -> CleanResult:
    """The shift decomposition of one image: raw = the full view's tokens, clean = F, artifact
    = this image's G (near the artifact model's pattern)."""
    start = time.perf_counter()
    patch = extractor.patch_size
    grid = token_grid(cfg.resize, rgb.shape[:2], size, patch)
    tokens, views = shift_view_tokens(
        extractor,
        rgb,
        (grid[0] * patch, grid[1] * patch),
        cfg.shift,
        derive_seed(image_id, cfg.seed, "shift"),
        cfg.vit_batch_size,
    )
    extract_seconds = time.perf_counter() - start
    pattern = torch.from_numpy(prior.pattern_for(grid)).to(tokens.device)
    content, artifact = decompose_shift_views(
        tokens, views, cfg.shift.pad, pattern, cfg.shift.prior_weight, cfg.shift.iterations
    )
    clean_hr: torch.Tensor | None = None
    hr_metrics: dict[str, Any] = {}
    if cfg.upsample > 1:
        clean_hr, hr_metrics = fine_content(
            extractor, rgb, image_id, cfg, grid, tokens, views, content, artifact
        )
    raw = tokens[0].float()
    err = (raw - content - artifact).pow(2).sum()
    var = (raw - raw.mean((0, 1))).pow(2).sum().clamp_min(1e-12)
    metrics = {
        "final_loss": float(err / raw[..., 0].numel()),
        "r2": float(1 - err / var),
        "artifact_ratio": float(artifact.norm(dim=-1).mean() / raw.norm(dim=-1).mean()),
        "extract_seconds": extract_seconds,
        "fit_seconds": time.perf_counter() - start - extract_seconds,
    }
    metrics |= hr_metrics
    metrics["seconds"] = time.perf_counter() - start
    ok = bool(
        torch.isfinite(content).all()
        and torch.isfinite(artifact).all()
        and (clean_hr is None or torch.isfinite(clean_hr).all())
    )
    return CleanResult(
        image_id,
        raw.cpu().numpy(),
        content.cpu().numpy(),
        artifact.cpu().numpy(),
        metrics,
        ok,
        None if ok else "decomposition is not finite",
        None if clean_hr is None else clean_hr.cpu().numpy(),
    )


def fine_content(
    extractor: FeatureExtractor,
    rgb: np.ndarray,
    image_id: str,
    cfg: EngineConfig,
    grid: tuple[int, int],
    tokens: torch.Tensor,
    views: list[ShiftView],
    content: torch.Tensor,
    artifact: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """clean_hr (s*h, s*w, C) of one image from its shift views' tokens (phase 0) and
    ``cfg.hr.views`` more at the other sub-patch phases, G held at the shift decomposition's
    ``artifact``, by ``cfg.hr.estimator`` (the solve starts from ``content`` upsampled). Also
    its seconds and, for the solve, its solver figures (``pipeline.models.subpatch``)."""
    start = time.perf_counter()
    scale = cfg.upsample
    all_tokens, cells, guide = subpatch_view_tokens(
        extractor,
        rgb,
        grid,
        scale,
        tokens,
        views,
        cfg.hr.views,
        cfg.shift.pad,
        cfg.shift.flip_prob,
        derive_seed(image_id, cfg.seed, "subpatch"),
        cfg.vit_batch_size,
    )
    fine = (grid[0] * scale, grid[1] * scale)
    if cfg.hr.estimator == "average":
        averaged = shift_average_fine(all_tokens, cells, artifact, fine)
        return averaged, {"hr_seconds": time.perf_counter() - start}
    first = F.interpolate(
        content.permute(2, 0, 1)[None].float(), size=fine, mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0)
    solve = solve_fine_content(
        all_tokens,
        cells,
        artifact,
        fine,
        guide_weights(guide, cfg.hr.sigma),
        cfg.hr.smooth,
        first,
        cfg.hr.iterations,
        cfg.hr.tolerance,
    )
    return solve.content, {
        "hr_seconds": time.perf_counter() - start,
        "hr_iterations": float(solve.iterations),
        "hr_residual": solve.relative_residual,
    }


def clean_images(
    extractor: FeatureExtractor,
    images: Sequence[ImageLike],
    preset: str | Path | EngineConfig = "fast",
    *,
    seed: int | None = None,
    ids: Sequence[str] | None = None,
    overrides: Iterable[str] = (),
    artifact_model: ArtifactModel | None = None,
) -> list[CleanResult]:
    """Denoise the ViT features of ``images`` (each (H, W, 3) uint8, or any mode / PIL image).

    preset: a shipped engine preset (``shift``, ``fast``, ``paper``, ``smoke``...), a YAML path
    or an ``EngineConfig``; ``overrides`` like ``["fit.steps=500"]`` apply on top; ``seed``
    replaces the preset's seed. ``ids`` name the images (default: sha256 of their pixels);
    views and initialisation derive from (id, seed), so the same call gives the same result.
    ``artifact_model``: the dataset-level pattern (``pipeline.models.artifact_model.calibrate``)
    that ``method: shift`` presets and fits with ``fit.prior_weight > 0`` need.
    """
    cfg = engine_preset(preset, overrides)
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    size = resolve_image_size(cfg, extractor)
    rgbs = [to_rgb(image, min_side=extractor.patch_size) for image in images]
    if ids is None:
        ids = [content_id(rgb) for rgb in rgbs]
    elif len(ids) != len(rgbs):
        raise ValueError(f"{len(ids)} ids for {len(rgbs)} images")
    results: list[CleanResult] = []
    if cfg.needs_artifact_model:
        if artifact_model is None:
            raise ValueError(
                f"preset {cfg.name!r} needs an artifact model: pass "
                "artifact_model=pipeline.models.artifact_model.calibrate(extractor, "
                "photos, image_size)"
            )
        artifact_model.check(extractor, size)
    else:
        artifact_model = None  # a fit without a prior ignores it
    if cfg.method == "shift":
        assert artifact_model is not None
        for rgb, iid in zip(rgbs, ids, strict=True):
            results.append(_shift_one(extractor, rgb, iid, cfg, size, artifact_model))
            if not results[-1].ok:
                logger.warning("image %s: %s", iid[:12], results[-1].error)
        logger.info("cleaned %d images (preset %s)", len(results), cfg.name)
        return results
    by_index: dict[int, CleanResult] = {}
    for batch in fit_batches(
        [token_grid(cfg.resize, rgb.shape[:2], size, extractor.patch_size) for rgb in rgbs],
        cfg.images_per_fit,
    ):
        cleaned = _clean_batch(
            extractor, [rgbs[i] for i in batch], [ids[i] for i in batch], cfg, size, artifact_model
        )
        by_index.update(zip(batch, cleaned, strict=True))
        logger.info("cleaned %d/%d images (preset %s)", len(by_index), len(rgbs), cfg.name)
    return [by_index[i] for i in range(len(rgbs))]


def fit_batches(grids: Sequence[tuple[int, int]], images_per_fit: int) -> list[list[int]]:
    """Indices of images fitted together: up to ``images_per_fit`` of one token grid, grids in
    order of first appearance (one grid: consecutive chunks, as before grids could differ)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, grid in enumerate(grids):
        groups.setdefault((int(grid[0]), int(grid[1])), []).append(i)
    step = max(1, images_per_fit)
    return [
        members[k : k + step] for members in groups.values() for k in range(0, len(members), step)
    ]
