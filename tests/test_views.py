"""The crop sampler: deterministic, full view first, coordinates that follow crops and flips."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.engine_config import ViewConfig
from pipeline.models.views import derive_seed, render_views, sample_layout


def test_deterministic_from_seed() -> None:
    cfg = ViewConfig(num_views=20)
    seed = derive_seed("image-a", 0, "views")
    a, b = sample_layout((300, 400), cfg, seed), sample_layout((300, 400), cfg, seed)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.flips, b.flips)
    other = sample_layout((300, 400), cfg, derive_seed("image-b", 0, "views"))
    assert not np.array_equal(a.boxes, other.boxes)
    assert derive_seed("image-a", 1, "views") != seed


def test_crops_respect_scale_and_bounds() -> None:
    cfg = ViewConfig(num_views=200, scale=(0.1, 0.5))
    layout = sample_layout((300, 400), cfg, 7)
    assert tuple(layout.boxes[0]) == (0, 0, 400, 300) and not layout.flips[0]
    x0, y0, x1, y1 = layout.boxes[1:].T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 400).all() and (y1 <= 300).all()
    area = (x1 - x0) * (y1 - y0) / (300 * 400)
    assert area.min() > 0.08 and area.max() < 0.55
    assert 0.3 < layout.flips[1:].mean() < 0.7


def test_token_coords_full_view_and_flip() -> None:
    layout = sample_layout((100, 200), ViewConfig(num_views=40, flip_prob=0.5), 3)
    coords = layout.token_coords(4)  # (V, 4, 4, 2)
    centres = (torch.arange(4) + 0.5) / 4
    assert torch.allclose(coords[0, 0, :, 0], centres)
    assert torch.allclose(coords[0, :, 0, 1], centres)
    assert coords.min() >= 0 and coords.max() <= 1
    flipped = int(np.flatnonzero(layout.flips)[0])
    xs = coords[flipped, 0, :, 0]
    assert (xs[1:] < xs[:-1]).all()  # mirrored: x decreases along the view's columns


def test_render_matches_coords() -> None:
    """A view's pixels show the image content at the tokens' claimed coordinates."""
    height, width = 120, 160
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([xx / width, yy / height, torch.zeros_like(xx, dtype=torch.float)])
    layout = sample_layout((height, width), ViewConfig(num_views=12), 11)
    pixels = render_views(image.float(), layout, 32)  # (V, 3, 32, 32)
    coords = layout.token_coords(4)  # 8x8-pixel patches of a 32-pixel view
    patch_means = pixels.unfold(2, 8, 8).unfold(3, 8, 8).mean((-1, -2))  # (V, 3, 4, 4)
    assert torch.allclose(patch_means[:, 0], coords[..., 0], atol=0.02)
    assert torch.allclose(patch_means[:, 1], coords[..., 1], atol=0.02)
