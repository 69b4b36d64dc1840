"""Augmented views of one image for the stage-1 fit.

View 0 is the whole image; the others are random resized crops (area scale, aspect ratio,
horizontal flip), each resized to the image's model input: ``token_grid`` gives its h x w token
grid (the image's aspect kept, or squashed to a square). For every token of every view we know
its position in the ORIGINAL image (normalised to [0, 1]^2, x mirrored for flips) and its patch
index (i, j) inside the view's own h x w grid. Sampling is deterministic from a seed.

This module owns the resize of a view (``resize_pixels``): both stages, the artifact model and
the baselines call it, so raw tokens agree wherever they are computed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine_config import ResizeConfig, ViewConfig


def derive_seed(image_id: str, seed: int, purpose: str) -> int:
    """A 63-bit seed from (image id, base seed, purpose): the same inputs, the same seed."""
    digest = hashlib.sha256(f"{image_id}|{seed}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class ViewLayout:
    """Where each view of one image comes from.

    boxes: (V, 4) int64 pixel boxes (x0, y0, x1, y1) in the original image, view 0 = full.
    flips: (V,) bool, True where the crop is mirrored horizontally.
    image_hw: original (height, width) in pixels.
    """

    boxes: np.ndarray
    flips: np.ndarray
    image_hw: tuple[int, int]

    @property
    def num_views(self) -> int:
        """Views in the layout (the full view included)."""
        return len(self.boxes)

    def token_coords(self, grid: int | tuple[int, int]) -> torch.Tensor:
        """(V, h, w, 2) float32 token centres as (x, y) in the original image, in [0, 1], on an
        h x w token grid (an int: square)."""
        grid_h, grid_w = (grid, grid) if isinstance(grid, int) else grid
        height, width = self.image_hw
        rows = (torch.arange(grid_h, dtype=torch.float64) + 0.5) / grid_h  # (h,)
        cols = (torch.arange(grid_w, dtype=torch.float64) + 0.5) / grid_w  # (w,)
        boxes = torch.from_numpy(self.boxes).double()
        x0, y0, x1, y1 = boxes.unbind(-1)  # each (V,)
        flips = torch.from_numpy(self.flips)
        u = torch.where(flips[:, None], 1.0 - cols[None, :], cols[None, :])  # (V, w)
        xs = (x0[:, None] + u * (x1 - x0)[:, None]) / width  # (V, w) along columns j
        ys = (y0[:, None] + rows[None, :] * (y1 - y0)[:, None]) / height  # (V, h) rows i
        coords = torch.stack(
            torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1
        )  # (V, h, w, 2)
        return coords.float()


def token_grid(
    cfg: ResizeConfig, image_hw: Sequence[int], size: int, patch: int
) -> tuple[int, int]:
    """The (h, w) token grid of the model input of an image of ``image_hw`` pixels.

    ``square``: size / patch per side, whatever the image. ``keep``: the short side at
    size / patch tokens and the long side at the nearest whole token count of the image's
    aspect; where that grid holds more than ``max_tokens_ratio`` times the square grid's
    tokens, both sides shrink (aspect kept) until it fits.
    """
    side = size // patch
    height, width = (int(v) for v in image_hw[:2])
    if cfg.aspect == "square" or height == width:
        return side, side
    short, long = (height, width) if height < width else (width, height)
    budget = cfg.max_tokens(side)
    short_tokens = side
    long_tokens = max(side, math.floor(side * long / short + 0.5))  # halves round up
    if short_tokens * long_tokens > budget:
        scale = math.sqrt(budget / (short_tokens * long_tokens))
        short_tokens = max(1, math.floor(short_tokens * scale))
        long_tokens = max(
            short_tokens,
            min(math.floor(short_tokens * long / short + 0.5), math.floor(budget / short_tokens)),
        )
    return (short_tokens, long_tokens) if height < width else (long_tokens, short_tokens)


def sample_layout(
    image_hw: tuple[int, int], cfg: ViewConfig, seed: int, view_aspect: float = 1.0
) -> ViewLayout:
    """Sample ``cfg.num_views`` views (full image first) deterministically from ``seed``.

    view_aspect: width / height of the input the views are resized to; crops draw their aspect
    around it (``cfg.ratio`` times it), so they are stretched no more than on a square input.
    """
    if cfg.num_views < 1:
        raise ValueError(f"views.num_views must be >= 1, got {cfg.num_views}")
    height, width = image_hw
    rng = np.random.default_rng(seed)
    boxes = [(0, 0, width, height)]
    flips = [False]
    area = float(height * width)
    log_ratio = (math.log(cfg.ratio[0] * view_aspect), math.log(cfg.ratio[1] * view_aspect))
    for _ in range(cfg.num_views - 1):
        box = None
        for _attempt in range(10):
            target = area * rng.uniform(cfg.scale[0], cfg.scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                x0 = int(rng.integers(0, width - w + 1))
                y0 = int(rng.integers(0, height - h + 1))
                box = (x0, y0, x0 + w, y0 + h)
                break
        if box is None:  # extreme aspect: the largest central crop at the view's aspect
            w = min(width, max(1, round(height * view_aspect)))
            h = min(height, max(1, round(w / view_aspect)))
            x0, y0 = (width - w) // 2, (height - h) // 2
            box = (x0, y0, x0 + w, y0 + h)
        boxes.append(box)
        flips.append(bool(rng.random() < cfg.flip_prob))
    return ViewLayout(
        boxes=np.asarray(boxes, dtype=np.int64), flips=np.asarray(flips), image_hw=(height, width)
    )


def render_views(
    image: torch.Tensor,
    layout: ViewLayout,
    size: int | tuple[int, int],
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Pixels of views [start, stop): (N, 3, H, W) float in [0, 1], (H, W) = ``size`` (an int:
    square).

    image: (3, H, W) uint8 or float tensor of the original image (any device).
    """
    stop = layout.num_views if stop is None else stop
    pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    out = []
    for v in range(start, stop):
        x0, y0, x1, y1 = (int(c) for c in layout.boxes[v])
        crop = resize_pixels(pixels[None, :, y0:y1, x0:x1], size)
        if layout.flips[v]:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.cat(out)


def resize_pixels(pixels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> (N, 3, h, w), (h, w) = ``size`` (an int: square): the
    one resize every stage uses for a view (antialiased bilinear), so raw tokens agree wherever
    they are computed."""
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    resized = F.interpolate(
        pixels, size=out_hw, mode="bilinear", antialias=True, align_corners=False
    )
    return resized.clamp_(0.0, 1.0)


def full_view_pixels(rgb: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) float in [0, 1], (h, w) = ``size`` in pixels (an int:
    square): the engine's view 0 of the image."""
    rgb = np.require(rgb, requirements=["C", "W"])  # decoded bytes arrive read-only
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    return resize_pixels(pixels[None], size)[0]
