"""Artifact-free features finer than a patch, training-free: views shifted by fractions of a
patch, G removed from each, and content on a grid of s x s cells per token.

A ViT token sees a whole patch of P x P pixels. Views of an image shifted by multiples of
P / s pixels (and mirrored) put the token windows at every one of the s x s phases: a fine
cell of P / s pixels falls under different tokens in different views. Each token is modelled
as the mean of the fine content under its patch plus the artifact G at its place on the view's
token grid (G moves with the view, content stays with the image):

    y_v[a, b] ~= mean over the s x s cells of window (a, b) of F_hr  +  G[a, b]

Two estimators of F_hr (``hr.estimator``):

- ``average`` (``shift_average_fine``): each fine cell is the mean of y - G over the view
  tokens whose window holds it: the views shifted back onto the fine grid and averaged. Its
  content is the box average of F_hr (a triangle of 2s - 1 cells), low in noise.
- ``solve`` (``solve_fine_content``): the least-squares F_hr of all views' tokens plus an
  image-guided smoothness term, weights exp(-|dI|^2 / 2 sigma^2) between neighbouring cells of
  the image's colours: the box averages leave the finest (checkerboard) component of F_hr
  undetermined, and the image decides how it fills in, so edges stay where the image has them.
  Conjugate gradients, matrix-free, every channel at once (one operator). Sharper, and noisier.

Views that see the reflected border leave those tokens out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.shift import ShiftView
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor


@dataclass(frozen=True)
class SubView:
    """A view whose window starts (my, mx) fine cells into the full view padded by ``pad``
    patches; mirrored left-right if ``flip``. (pad * s, pad * s, False) is the full view."""

    my: int
    mx: int
    flip: bool


def phase_views(count: int, scale: int, pad: int, flip_prob: float, seed: int) -> list[SubView]:
    """``count`` views at the sub-patch phases other than 0 (the whole-patch shift views are
    phase 0), cycling through the s*s - 1 of them so each is seen about equally often; their
    whole-patch offsets (0 .. 2*pad - 1 patches) and flips drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    phases = [(py, px) for py in range(scale) for px in range(scale) if (py, px) != (0, 0)]
    out = []
    for k in range(count if phases else 0):
        py, px = phases[k % len(phases)]
        dy, dx = (int(d) for d in rng.integers(0, max(1, 2 * pad), size=2))
        out.append(SubView(dy * scale + py, dx * scale + px, bool(rng.random() < flip_prob)))
    return out


def from_shift_views(views: list[ShiftView], scale: int) -> list[SubView]:
    """Whole-patch shift views (``pipeline.models.shift``) as phase-0 sub-patch views."""
    return [SubView(v.dy * scale, v.dx * scale, v.flip) for v in views]


def render_subpatch_views(
    rgb: np.ndarray, size: tuple[int, int], patch: int, scale: int, pad: int, views: list[SubView]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 3, H, W) pixels of ``views`` of an (H0, W0, 3) uint8 image whose full view is
    ``size`` = (H, W) px, and (3, s*h, s*w) the mean colour of each fine cell of the full view.

    A fine cell is P / s pixels; where that is no whole number (P = 14, s = 4) the full view is
    rendered k times larger first and every window averaged back down by k.
    """
    k = scale // math.gcd(patch, scale)
    cell = patch * k // scale  # pixels of a fine cell at k x
    height, width = size
    full = full_view_pixels(rgb, (height * k, width * k))
    border = pad * patch * k
    padded = F.pad(full[None], [border] * 4, mode="reflect")[0] if pad else full
    windows: list[torch.Tensor] = []
    for v in views:
        window = padded[
            :, v.my * cell : v.my * cell + height * k, v.mx * cell : v.mx * cell + width * k
        ]
        windows.append(window.flip(-1) if v.flip else window)
    pixels = torch.stack(windows) if windows else full.new_zeros(0, 3, height, width)
    if k > 1 and windows:
        pixels = F.avg_pool2d(pixels, k)
    return pixels, F.avg_pool2d(full[None], cell)[0]


def cell_colours(rgb: np.ndarray, size: tuple[int, int], patch: int, scale: int) -> torch.Tensor:
    """(3, s*h, s*w) the mean colour (in [0, 1]) of each fine cell of the full view of an
    (H0, W0, 3) uint8 image at ``size`` = (H, W) px: what guides the solve and the joint
    bilateral baseline."""
    return render_subpatch_views(rgb, size, patch, scale, 0, [])[1]


def cell_index(
    views: list[SubView],
    grid: tuple[int, int],
    scale: int,
    pad: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(V, h*w, s*s) long: the flat fine cells (of the s*h x s*w grid) under each view token,
    -1 for tokens whose window leaves the image (it sees the reflected border)."""
    grid_h, grid_w = grid
    fine_h, fine_w = grid_h * scale, grid_w * scale
    rows = torch.arange(grid_h, device=device)[:, None].expand(grid_h, grid_w)
    cols = torch.arange(grid_w, device=device)[None, :].expand(grid_h, grid_w)
    offsets = torch.arange(scale, device=device)
    block = (offsets[:, None] * fine_w + offsets[None, :]).flatten()  # (s*s,)
    out = []
    for v in views:
        c = (grid_w - 1 - cols) if v.flip else cols
        top = rows * scale + v.my - pad * scale
        left = c * scale + v.mx - pad * scale
        inside = (top >= 0) & (top + scale <= fine_h) & (left >= 0) & (left + scale <= fine_w)
        base = (top * fine_w + left).flatten()
        cells = base[:, None] + block[None, :]
        out.append(torch.where(inside.flatten()[:, None], cells, torch.full_like(cells, -1)))
    return torch.stack(out)


def guide_weights(guide: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge weights between 4-neighbour fine cells from their colours (3, H, W): vertical
    (H-1, W) and horizontal (H, W-1), exp(-|I_p - I_q|^2 / (2 sigma^2))."""
    vertical = (guide[:, 1:] - guide[:, :-1]).pow(2).sum(0)
    horizontal = (guide[:, :, 1:] - guide[:, :, :-1]).pow(2).sum(0)
    return (torch.exp(-vertical / (2 * sigma**2)), torch.exp(-horizontal / (2 * sigma**2)))


def _laplacian(x: torch.Tensor, wv: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """Weighted graph Laplacian of (H, W, C) values: sum over edges of w (x_p - x_q)."""
    out = torch.zeros_like(x)
    dv = wv[..., None] * (x[1:] - x[:-1])
    dh = wh[..., None] * (x[:, 1:] - x[:, :-1])
    out[1:] += dv
    out[:-1] -= dv
    out[:, 1:] += dh
    out[:, :-1] -= dh
    return out


def valid_view_tokens(
    tokens: torch.Tensor, cells: torch.Tensor, artifact: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The view tokens that see the image only: their cells (N, s*s) and their values minus
    the artifact (N, C), float32."""
    channels = tokens.shape[-1]
    valid = (cells[..., 0] >= 0).flatten()  # (V*T,)
    values = (tokens.float() - artifact.float()[None]).reshape(-1, channels)[valid]
    return cells.reshape(-1, cells.shape[-1])[valid], values


def subpatch_view_tokens(
    extractor: FeatureExtractor,
    rgb: np.ndarray,
    grid: tuple[int, int],
    scale: int,
    shift_tokens: torch.Tensor,
    shift_views: list[ShiftView],
    count: int,
    pad: int,
    flip_prob: float,
    seed: int,
    chunk: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tokens of an image's shift views (phase 0, already extracted) and of ``count``
    views at the other phases (``phase_views``, drawn from ``seed``): (V, h, w, C) tokens,
    their (V, h*w, s*s) cells and the (3, s*h, s*w) cell colours."""
    patch = extractor.patch_size
    extra = phase_views(count, scale, pad, flip_prob, seed)
    pixels, guide = render_subpatch_views(
        rgb, (grid[0] * patch, grid[1] * patch), patch, scale, pad, extra
    )
    pixels = pixels.to(extractor.device)
    tokens = torch.cat(
        [
            shift_tokens,
            *(
                extractor(pixels[k : k + chunk]).to(shift_tokens.dtype)
                for k in range(0, len(extra), chunk)
            ),
        ]
    )
    cells = cell_index(
        from_shift_views(shift_views, scale) + extra, grid, scale, pad, tokens.device
    )
    return tokens, cells, guide.to(tokens.device)


@dataclass(frozen=True)
class SubpatchSolve:
    """The solve's output: fine content, and how the solver ended."""

    content: torch.Tensor
    """(s*h, s*w, C) float32 F_hr."""
    iterations: int
    relative_residual: float


def solve_fine_content(
    tokens: torch.Tensor,
    cells: torch.Tensor,
    artifact: torch.Tensor,
    fine: tuple[int, int],
    weights: tuple[torch.Tensor, torch.Tensor],
    smooth: float,
    start: torch.Tensor | None = None,
    iterations: int = 200,
    tolerance: float = 1e-4,
) -> SubpatchSolve:
    """F_hr minimising sum over valid view tokens |mean_cells F_hr - (y - G)|^2 + smoothness.

    tokens (V, h, w, C); cells (V, h*w, s*s) from ``cell_index``; artifact (h, w, C) the G
    every view carries; fine (s*h, s*w); weights from ``guide_weights``; ``smooth`` the
    smoothness weight in units of one view's evidence on a cell (a cell under V views has
    V / s^4 on the diagonal of the data term). ``start`` (s*h, s*w, C) the first guess.
    Preconditioned conjugate gradients on all channels at once, until every channel's
    residual is below ``tolerance`` of its right-hand side.
    """
    channels = tokens.shape[-1]
    fine_h, fine_w = fine
    per_cell = cells.shape[-1]
    index, y = valid_view_tokens(tokens, cells, artifact)
    cover = torch.zeros(fine_h * fine_w, device=y.device).index_add_(
        0, index.flatten(), torch.ones(index.numel(), device=y.device)
    )
    lam = smooth * float(cover.mean()) / per_cell**2
    wv, wh = (w.to(y.device) for w in weights)
    degree = torch.zeros(fine_h, fine_w, device=y.device)
    degree[1:] += wv
    degree[:-1] += wv
    degree[:, 1:] += wh
    degree[:, :-1] += wh

    def scatter(values: torch.Tensor) -> torch.Tensor:  # B^T: token values -> their cells
        out = values.new_zeros(fine_h * fine_w, channels)
        return out.index_add_(
            0, index.flatten(), (values / per_cell).repeat_interleave(per_cell, dim=0)
        )

    def apply(x: torch.Tensor) -> torch.Tensor:  # (B^T B + lam L) x
        means = x[index].mean(1)  # (N, C)
        lap = _laplacian(x.reshape(fine_h, fine_w, channels), wv, wh).reshape(-1, channels)
        return scatter(means) + lam * lap

    inverse_diagonal = 1.0 / (cover / per_cell**2 + lam * degree.flatten()).clamp_min(1e-12)
    rhs = scatter(y)
    x = (
        start.float().reshape(-1, channels).to(y.device)
        if start is not None
        else torch.zeros_like(rhs)
    )
    residual = rhs - apply(x)
    z = inverse_diagonal[:, None] * residual
    direction = z.clone()
    rz = (residual * z).sum(0)
    target = tolerance * rhs.norm(dim=0).clamp_min(1e-12)
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 (the count is reported)
        step = apply(direction)
        alpha = rz / (direction * step).sum(0).clamp_min(1e-30)
        x = x + alpha * direction
        residual = residual - alpha * step
        if bool((residual.norm(dim=0) <= target).all()):
            break
        z = inverse_diagonal[:, None] * residual
        rz_next = (residual * z).sum(0)
        direction = z + (rz_next / rz.clamp_min(1e-30)) * direction
        rz = rz_next
    relative = float((residual.norm(dim=0) / rhs.norm(dim=0).clamp_min(1e-12)).max())
    return SubpatchSolve(x.reshape(fine_h, fine_w, channels), done, relative)


def shift_average_fine(
    tokens: torch.Tensor, cells: torch.Tensor, artifact: torch.Tensor, fine: tuple[int, int]
) -> torch.Tensor:
    """(s*h, s*w, C) each fine cell's mean over the views of the tokens whose window holds it,
    ``artifact`` (h, w, C) removed from every view first: sub-patch shift averaging (each view
    shifted back onto the fine grid and averaged): the ``average`` estimator, and with the
    artifact model as ``artifact`` the free baseline. Cells no valid token covers are 0."""
    channels = tokens.shape[-1]
    fine_h, fine_w = fine
    per_cell = cells.shape[-1]
    cell_rows, y = valid_view_tokens(tokens, cells, artifact)
    index = cell_rows.flatten()
    sums = y.new_zeros(fine_h * fine_w, channels).index_add_(
        0, index, y.repeat_interleave(per_cell, dim=0)
    )
    cover = y.new_zeros(fine_h * fine_w).index_add_(0, index, torch.ones_like(index, dtype=y.dtype))
    return (sums / cover.clamp_min(1.0)[:, None]).reshape(fine_h, fine_w, channels)


def pool_fine(fine: torch.Tensor | np.ndarray, scale: int) -> torch.Tensor | np.ndarray:
    """(s*h, s*w, C) -> (h, w, C): the mean over each token's s x s cells."""
    if isinstance(fine, np.ndarray):
        height, width, channels = fine.shape
        return fine.reshape(height // scale, scale, width // scale, scale, channels).mean((1, 3))
    return F.avg_pool2d(fine.permute(2, 0, 1)[None], scale)[0].permute(1, 2, 0)
