"""Content finer than a patch (``upsample``): the views' geometry, the solve on a planted fine
field, the engine on real weights and photos, and the ``clean_hr`` column end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import clean_images
from pipeline.evaluation.metrics import position_explained_variance
from pipeline.models.artifact_model import calibrate
from pipeline.models.crops import random_crop
from pipeline.models.subpatch import (
    SubView,
    cell_index,
    guide_weights,
    phase_views,
    pool_fine,
    render_subpatch_views,
    shift_average_fine,
    solve_fine_content,
)
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor


def _planted(scale: int = 2, grid: int = 16, channels: int = 8, seed: int = 0):
    """A fine field with an edge that cuts through patches, the guide that shows it, a
    positional pattern, and the tokens of 16 views under the box model (plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    fine = grid * scale
    yy, xx = torch.meshgrid(torch.arange(fine), torch.arange(fine), indexing="ij")
    region = (xx + 0.7 * yy > 0.66 * fine).float()
    a, b, c = (torch.randn(channels, generator=gen) for _ in range(3))
    truth = region[..., None] * a + (1 - region[..., None]) * b
    truth = truth + 0.1 * torch.sin(xx / 5.0)[..., None] * c
    guide = region.expand(3, fine, fine) * 0.8 + 0.1
    pattern = 0.5 * torch.randn(grid, grid, channels, generator=gen)
    views = [SubView(4, 4, False), *phase_views(15, scale, 2, 0.0, seed)]
    cells = cell_index(views, (grid, grid), scale, 2)
    flat = truth.reshape(-1, channels)
    tokens = torch.zeros(len(views), grid * grid, channels)
    for v, index in enumerate(cells):
        ok = index[:, 0] >= 0
        tokens[v, ok] = flat[index[ok]].mean(1)
    tokens = tokens.reshape(len(views), grid, grid, channels) + pattern
    tokens = tokens + 0.02 * torch.randn(tokens.shape, generator=gen)
    return truth, guide, pattern, tokens, cells


def _error(x: torch.Tensor, truth: torch.Tensor) -> float:
    return float(((x - truth) ** 2).mean() / truth.var())


def test_the_solve_finds_a_planted_edge_inside_the_patches() -> None:
    """Tokens are box means of a fine field cut by an edge through the patches, plus a
    pattern: the guided solve recovers the field (error 1 % of shift averaging's), the
    image's guidance is what places the edge (unguided: 100x worse), and without the edge in
    the data nothing is invented (a flat field stays flat)."""
    truth, guide, pattern, tokens, cells = _planted()
    fine = truth.shape[:2]
    averaged = shift_average_fine(tokens, cells, pattern, fine)
    solved = solve_fine_content(
        tokens, cells, pattern, fine, guide_weights(guide, 0.1), 1.0, start=averaged
    )
    unguided = solve_fine_content(
        tokens,
        cells,
        pattern,
        fine,
        guide_weights(torch.zeros_like(guide), 0.1),
        1.0,
        start=averaged,
    )
    assert solved.relative_residual < 1e-3
    assert _error(solved.content, truth) < 0.01 * _error(averaged, truth)
    assert _error(solved.content, truth) < 0.1 * _error(unguided.content, truth)
    # pooled back to tokens, the solve gives what the views saw: the pattern is gone
    assert _error(pool_fine(solved.content, 2), pool_fine(truth, 2)) < 1e-3


def test_the_average_removes_the_pattern_and_blurs_by_one_window() -> None:
    """The ``average`` estimator on the same planted views: with G removed, each cell is the
    truth seen through the views' windows (an error far below the pattern's, and below that of
    the token grid upsampled), and pooled back to tokens it is the truth's box average
    smoothed once more, not the pattern."""
    truth, _, pattern, tokens, cells = _planted()
    fine = truth.shape[:2]
    averaged = shift_average_fine(tokens, cells, pattern, fine)
    kept = shift_average_fine(tokens, cells, torch.zeros_like(pattern), fine)
    nearest = pool_fine(truth, 2).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert _error(averaged, truth) < 0.3 * _error(kept, truth)
    assert _error(averaged, truth) < _error(nearest, truth)
    assert _error(pool_fine(averaged, 2), pool_fine(truth, 2)) < 0.01


def test_views_are_the_full_view_shifted_by_fractions_of_a_patch() -> None:
    """Phase (py, px) shows the full view moved by (py, px) * P / s pixels, so the cells
    ``cell_index`` names for a token are the pixels its window holds; also for P = 14, s = 4
    (3.5 px cells: rendered at twice the size and averaged down)."""
    yy, xx = np.mgrid[0:70, 0:84]
    rgb = np.stack([xx * 3, yy * 3, 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)], -1)
    rgb = rgb.clip(0, 255).astype(np.uint8)  # smooth: rendering at 2x and back is close
    for patch, scale in ((14, 2), (16, 4), (14, 4)):
        size = (5 * patch, 6 * patch)
        views = [
            SubView(2 * scale, 2 * scale, False),
            SubView(2 * scale + 1, 2 * scale, False),
            SubView(3 * scale - 1, 2 * scale + 1, True),
        ]
        pixels, guide = render_subpatch_views(rgb, size, patch, scale, 2, views)
        assert guide.shape == (3, 5 * scale, 6 * scale)
        full = full_view_pixels(rgb, size)
        assert torch.allclose(pixels[0], full, atol=0.02 if patch % scale else 1e-6)
        shifted = pixels[1]  # one fine cell down: rows from P / s pixels on
        rows = patch // scale if patch % scale == 0 else None
        if rows is not None:
            assert torch.allclose(shifted[:, :-rows], full[:, rows:], atol=1e-6)
        cells = cell_index(views, (5, 6), scale, 2)
        assert (cells[0, :, 0] >= 0).all()  # the full view sees the image everywhere
        assert (cells[1, -6:, 0] < 0).all()  # the last row of tokens sees the border
        assert cells[1, 0, 0] == 6 * scale  # token (0, 0) starts one fine row down
        assert cells[2, 5, 0] == (scale - 1) * 6 * scale + 1  # flipped: col 5 is col 0


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["average", "solve"])
def test_pooled_clean_hr_is_as_clean_as_clean(dinov2: FeatureExtractor, estimator: str) -> None:
    """On real weights and crops of 10 photos at 112 px, by either estimator: clean_hr
    average-pooled back to the token grid is clean's twin (cosine > 0.97) and keeps as little
    of the position-explained variance as clean does, both far below raw's."""
    from pipeline.evaluation.samples import EVALUATION_PHOTOS, sample_photo

    rng = np.random.default_rng(0)
    photos = [sample_photo(name) for name in EVALUATION_PHOTOS]
    model = calibrate(
        dinov2, [sample_photo(n) for n in ("coins", "moon", "clock", "brick")], 112, 32
    )
    crops, groups = [], []
    for p, photo in enumerate(photos):
        for _ in range(3):
            crops.append(random_crop(photo, rng, (0.4, 0.9)))
            groups.append(p)
    results = clean_images(
        dinov2,
        crops,
        "shift",
        overrides=[
            "image_size=112",
            "resize.aspect=square",
            "upsample=2",
            f"hr.estimator={estimator}",
        ],
        artifact_model=model,
    )
    raw = np.stack([r.raw for r in results])
    clean = np.stack([r.clean for r in results])
    pooled = np.stack([pool_fine(r.clean_hr, 2) for r in results])
    assert results[0].clean_hr.shape == (16, 16, 384)
    cos = (
        (pooled * clean).sum(-1) / np.linalg.norm(pooled, axis=-1) / np.linalg.norm(clean, axis=-1)
    )
    assert cos.mean() > 0.97
    pev = {
        name: position_explained_variance(x, np.asarray(groups))
        for name, x in (("raw", raw), ("clean", clean), ("pooled", pooled))
    }
    assert pev["pooled"].value < pev["clean"].value + 2 * pev["clean"].stderr
    assert pev["pooled"].value < 0.5 * pev["raw"].value


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_clean_hr_column_end_to_end(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """clean_dataset with upsample=2 writes an fp16 clean_hr column of each image's own cells;
    the table readers and FeatureDataset read it (its evaluation: tests/test_readme.py)."""
    from PIL import Image

    from pipeline.distributed.clean import run_clean_job
    from pipeline.job_config import resolve_clean_job
    from pipeline.store import FeatureDataset, column_to_numpy, read_features_table

    src = tmp_path / "in"
    src.mkdir()
    for name, photo in photos.items():
        Image.fromarray(photo).resize((128, 96)).save(src / f"{name}.png")
    out = str(tmp_path / "out")
    summary = run_clean_job(
        resolve_clean_job(
            "smoke",
            [
                f"input.uri={src}",
                f"output.uri={out}",
                "preset=shift_smoke",
                "engine.upsample=2",
                "calibration.crops_per_image=2",
            ],
        )
    )
    assert summary["done"] == 3
    table = read_features_table(out, ["clean", "clean_hr"])
    clean, hr = column_to_numpy(table["clean"]), column_to_numpy(table["clean_hr"])
    assert hr.dtype == np.float16 and hr.shape == (3, 14, 18, 64) and clean.shape == (3, 7, 9, 64)
    item = FeatureDataset(out, tensors=("clean", "clean_hr"))[0]
    assert tuple(item["clean_hr"].shape) == (14, 18, 64)
    pooled = pool_fine(hr.astype(np.float32).reshape(-1, 18, 64), 2).reshape(3, 7, 9, 64)
    unit_hr = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    unit = clean.astype(np.float32) / np.linalg.norm(clean, axis=-1, keepdims=True)
    cos = np.einsum("ahwc,bhwc->ab", unit_hr, unit) / (7 * 9)  # pooled row a against clean b
    # the stored clean_hr is the image's own: pooled, it is closest to its own row's clean
    assert (cos.argmax(1) == np.arange(3)).all() and np.diag(cos).min() > 0.8
