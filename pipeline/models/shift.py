"""Shift averaging: the mean of a ViT's tokens over views shifted by whole patches and flipped.

The image's full view (``views.full_view_pixels``) is reflect-padded by ``pad`` patches on each
side; every view is a window of the full view's size at an offset of 0..2*pad patches (view 0:
the unshifted, unflipped full view), mirrored with probability ``flip_prob``. A view's token
(a, b) sees exactly what full-view token (a + dy - pad, b + dx - pad) sees, so each view's
tokens (minus an artifact model's pattern, which lives on the view's own grid) are mapped back
to the full view's grid and averaged over the views that cover each token. The positional
pattern moves with the view while content stays put, so the mean keeps content and spreads
what is tied to the grid. No training; cost: ``views`` ViT forwards per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine_config import ShiftConfig
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor


@dataclass(frozen=True)
class ShiftView:
    """One shifted view: its window starts (dy, dx) patches into the padded image; mirrored if
    ``flip``. (pad, pad, False) is the full view itself."""

    dy: int
    dx: int
    flip: bool


def shift_layout(cfg: ShiftConfig, seed: int) -> list[ShiftView]:
    """``cfg.views`` views, the full view first, the rest drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    views = [ShiftView(cfg.pad, cfg.pad, False)]
    for _ in range(cfg.views - 1):
        dy, dx = (int(v) for v in rng.integers(0, 2 * cfg.pad + 1, size=2))
        views.append(ShiftView(dy, dx, bool(rng.random() < cfg.flip_prob)))
    return views


def render_shift_views(
    full: torch.Tensor, views: list[ShiftView], patch: int, pad: int
) -> torch.Tensor:
    """(3, H, W) full-view pixels -> (V, 3, H, W) shifted (and mirrored) views."""
    height, width = full.shape[-2:]
    padded = F.pad(full[None], [pad * patch] * 4, mode="reflect")[0] if pad else full
    out = []
    for v in views:
        window = padded[
            :, v.dy * patch : v.dy * patch + height, v.dx * patch : v.dx * patch + width
        ]
        out.append(window.flip(-1) if v.flip else window)
    return torch.stack(out)


def merge_shift_views(
    tokens: torch.Tensor, views: list[ShiftView], pad: int, pattern: torch.Tensor | None = None
) -> torch.Tensor:
    """(V, h, w, C) tokens of the shifted views -> (h, w, C) mean on the full view's grid.

    ``pattern`` (h, w, C), on the view's own grid (an artifact model), is subtracted from every
    view before it is mapped back: the decomposition with G fixed to it.
    """
    prior = pattern if pattern is not None else tokens.new_zeros(tokens.shape[1:])
    return decompose_shift_views(tokens, views, pad, prior, math.inf)[0]


def shift_view_tokens(
    extractor: FeatureExtractor,
    rgb: np.ndarray,
    size: int | tuple[int, int],
    cfg: ShiftConfig,
    seed: int,
    chunk: int = 32,
) -> tuple[torch.Tensor, list[ShiftView]]:
    """(V, h, w, C) tokens of the shifted views of one (H, W, 3) uint8 image whose full view is
    ``size`` px ((height, width); an int: square), view 0 the full view (the raw tokens), and
    the views."""
    patch = extractor.patch_size
    if cfg.pad * patch >= min((size, size) if isinstance(size, int) else size):
        raise ValueError(f"shift.pad {cfg.pad} patches is not smaller than the {size} px view")
    views = shift_layout(cfg, seed)
    pixels = render_shift_views(
        full_view_pixels(rgb, size).to(extractor.device), views, patch, cfg.pad
    )
    tokens = torch.cat([extractor(pixels[k : k + chunk]) for k in range(0, len(views), chunk)])
    return tokens, views


def mirror_mean(tokens: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """The two-view average on an image's grid: tokens (B, h, w, C) of images and ``mirrored``
    (B, h, w, C) of the same images mirrored left-right (whose token column j sees what column
    w - 1 - j of the image sees, for sides that are whole patches) -> (B, h, w, C)."""
    return (tokens + mirrored.flip(-2)) / 2


def tta_tokens(
    extractor: FeatureExtractor,
    rgb: np.ndarray,
    size: int | tuple[int, int],
    cfg: ShiftConfig,
    seed: int,
    pattern: torch.Tensor | None = None,
) -> torch.Tensor:
    """(h, w, C) shift-averaged tokens of one (H, W, 3) uint8 image at ``size`` px, with
    ``pattern`` (an artifact model's, on the view grid) removed from each view when given."""
    tokens, views = shift_view_tokens(extractor, rgb, size, cfg, seed)
    return merge_shift_views(tokens, views, cfg.pad, pattern).cpu()


def _image_index(
    views: list[ShiftView], grid: tuple[int, int], pad: int, device: torch.device
) -> torch.Tensor:
    """(V, h*w) long: the full-view token each view token sees (flat), -1 where it sees the
    reflected border."""
    grid_h, grid_w = grid
    rows = torch.arange(grid_h, device=device)[:, None].expand(grid_h, grid_w)
    cols = torch.arange(grid_w, device=device)[None, :].expand(grid_h, grid_w)
    out = []
    for v in views:
        c = (grid_w - 1 - cols) if v.flip else cols
        i, j = rows + v.dy - pad, c + v.dx - pad
        inside = (i >= 0) & (i < grid_h) & (j >= 0) & (j < grid_w)
        out.append(torch.where(inside, i * grid_w + j, torch.full_like(i, -1)).flatten())
    return torch.stack(out)


def decompose_shift_views(
    tokens: torch.Tensor,
    views: list[ShiftView],
    pad: int,
    prior: torch.Tensor,
    prior_weight: float,
    iterations: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split shifted views' tokens into content F on the full view's grid and an artifact G on
    the view's grid, y_v[a, b] ~= F[where (a, b) of view v looks] + G[a, b], in closed form.

    tokens (V, h, w, C) of ``views``; prior (h, w, C): the artifact model's pattern, which G is
    pulled towards with ``prior_weight`` (in views' worth of evidence: 0 = G from this image
    alone, large = G fixed to the prior, where F is exactly ``merge_shift_views`` with it).
    Alternating least squares: F is the mean over covering views of y - G, G the prior-weighted
    mean over views of y - F; tokens that see the reflected border inform G only through F at
    their mirror position, so they are left out. Returns F (h, w, C) and G (h, w, C).
    """
    count, grid_h, grid_w, channels = tokens.shape
    y = tokens.float().reshape(count, grid_h * grid_w, channels)
    index = _image_index(views, (grid_h, grid_w), pad, y.device)  # (V, T)
    valid = index >= 0
    flat_index = index.clamp_min(0)
    prior_flat = prior.float().reshape(grid_h * grid_w, channels).to(y.device)
    cover = torch.zeros(grid_h * grid_w, device=y.device).index_add_(
        0, flat_index[valid], torch.ones(int(valid.sum()), device=y.device)
    )[:, None]
    seen = valid.float().sum(0)[:, None]  # (T, 1) views whose token (a, b) sees the image

    def content_given(art: torch.Tensor) -> torch.Tensor:
        residual = (y - art[None])[valid]  # (n, C)
        return (
            y.new_zeros(grid_h * grid_w, channels).index_add_(0, flat_index[valid], residual)
            / cover
        )

    art = prior_flat
    if not math.isinf(prior_weight):
        for _ in range(max(1, iterations)):
            content = content_given(art)
            explained = torch.where(valid[..., None], y - content[flat_index], 0.0).sum(0)
            art = (explained + prior_weight * prior_flat) / (seen + prior_weight)
    content = content_given(art)
    return (content.reshape(grid_h, grid_w, channels), art.reshape(grid_h, grid_w, channels))
