"""Augmented views of one image for the stage-1 fit.

View 0 is the whole image; the others are random resized crops (area scale, aspect ratio,
horizontal flip), each resized to the square model input. For every token of every view we
know its position in the ORIGINAL image (normalised to [0, 1]^2, x mirrored for flips) and its
patch index (i, j) inside the view's own K x K grid. Sampling is deterministic from a seed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import ViewConfig


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
        return len(self.boxes)

    def token_coords(self, grid: int) -> torch.Tensor:
        """(V, grid, grid, 2) float32 token centres as (x, y) in the original image, in [0, 1]."""
        height, width = self.image_hw
        centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid  # (K,)
        boxes = torch.from_numpy(self.boxes).double()
        x0, y0, x1, y1 = boxes.unbind(-1)  # each (V,)
        flips = torch.from_numpy(self.flips)
        u = torch.where(flips[:, None], 1.0 - centres[None, :], centres[None, :])  # (V, K)
        xs = (x0[:, None] + u * (x1 - x0)[:, None]) / width  # (V, K) along columns j
        ys = (y0[:, None] + centres[None, :] * (y1 - y0)[:, None]) / height  # (V, K) rows i
        coords = torch.stack(
            torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1
        )  # (V, K_i, K_j, 2)
        return coords.float()


def sample_layout(image_hw: tuple[int, int], cfg: ViewConfig, seed: int) -> ViewLayout:
    """Sample ``cfg.num_views`` views (full image first) deterministically from ``seed``."""
    if cfg.num_views < 1:
        raise ValueError(f"views.num_views must be >= 1, got {cfg.num_views}")
    height, width = image_hw
    rng = np.random.default_rng(seed)
    boxes = [(0, 0, width, height)]
    flips = [False]
    area = float(height * width)
    log_ratio = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
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
        if box is None:  # extreme aspect: central crop at the clamped ratio
            side = min(height, width)
            x0, y0 = (width - side) // 2, (height - side) // 2
            box = (x0, y0, x0 + side, y0 + side)
        boxes.append(box)
        flips.append(bool(rng.random() < cfg.flip_prob))
    return ViewLayout(
        boxes=np.asarray(boxes, dtype=np.int64), flips=np.asarray(flips), image_hw=(height, width)
    )


def render_views(
    image: torch.Tensor, layout: ViewLayout, size: int, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """Pixels of views [start, stop): (N, 3, size, size) float in [0, 1].

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


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> (N, 3, size, size): the one resize every stage uses for
    a view (antialiased bilinear), so raw tokens agree wherever they are computed."""
    resized = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
    return resized.clamp_(0.0, 1.0)


def full_view_pixels(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [0, 1]: the engine's view 0 of the image."""
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    return resize_pixels(pixels[None], size)[0]
