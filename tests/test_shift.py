"""Shift averaging, its closed-form decomposition and the dataset-level artifact model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.engine_config import ShiftConfig
from pipeline.models.artifact_model import calibrate, from_artifacts
from pipeline.models.baselines import baseline_outputs
from pipeline.models.shift import (
    ShiftView,
    decompose_shift_views,
    merge_shift_views,
    mirror_mean,
    render_shift_views,
    shift_layout,
    tta_tokens,
)
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor


def _patch_means(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, S, S) -> (N, K, K, 3): each patch's mean colour, a feature that follows content
    exactly under whole-patch shifts and flips."""
    pooled = torch.nn.functional.avg_pool2d(pixels, patch)
    return pooled.permute(0, 2, 3, 1)


def test_shift_views_map_back_to_the_full_view(photos: dict[str, np.ndarray]) -> None:
    cfg = ShiftConfig(views=12, pad=2, flip_prob=0.5)
    views = shift_layout(cfg, seed=3)
    assert views[0] == ShiftView(2, 2, False) and len(views) == 12
    assert any(v.flip for v in views) and len({(v.dy, v.dx) for v in views}) > 3
    assert shift_layout(cfg, seed=3) == views  # deterministic
    full = full_view_pixels(photos["astronaut"], 16 * 8)
    tokens = _patch_means(render_shift_views(full, views, 16, cfg.pad), 16)
    merged = merge_shift_views(tokens, views, cfg.pad)
    torch.testing.assert_close(merged, _patch_means(full[None], 16)[0], atol=1e-5, rtol=0)
    # a pattern on the view's grid is removed before mapping back
    pattern = torch.randn(8, 8, 3)
    torch.testing.assert_close(
        merge_shift_views(tokens + pattern, views, cfg.pad, pattern), merged, atol=1e-5, rtol=0
    )


def test_decomposition_recovers_content_and_artifact() -> None:
    gen = torch.Generator().manual_seed(0)
    grid, channels, pad = 8, 16, 2
    cfg = ShiftConfig(views=16, pad=pad)
    views = shift_layout(cfg, seed=1)
    content = torch.randn(grid + 2 * pad, grid + 2 * pad, channels, generator=gen)
    prior = torch.randn(grid, grid, channels, generator=gen)
    own = prior + 0.5 * torch.randn(grid, grid, channels, generator=gen)  # this image's G
    tokens = []
    for v in views:  # the padded "scene" is seen through each window; flips mirror it
        window = content[v.dy : v.dy + grid, v.dx : v.dx + grid]
        tokens.append((window.flip(1) if v.flip else window) + own)
    tokens = torch.stack(tokens)
    inner = content[pad : pad + grid, pad : pad + grid]
    fixed, g_fixed = decompose_shift_views(tokens, views, pad, prior, float("inf"))
    torch.testing.assert_close(g_fixed, prior)
    torch.testing.assert_close(fixed, merge_shift_views(tokens, views, pad, prior))
    fitted, g_fit = decompose_shift_views(
        tokens, views, pad, prior, prior_weight=0.1, iterations=200
    )
    err_fixed = (fixed - inner).norm() / inner.norm()
    err_fit = (fitted - inner).norm() / inner.norm()
    assert err_fit < 0.1 < err_fixed  # the image's own G is found, so F is cleaner
    assert (g_fit - own).norm() / own.norm() < 0.1


def test_tta_tokens_and_calibration_on_a_vit(
    tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    size = 16 * 7
    model = calibrate(tiny_vit, photos, size, crops_per_photo=3, seed=0)
    assert model.pattern.shape == (7, 7, tiny_vit.embed_dim) and model.samples == 9
    assert model.source == "calibration" and np.isfinite(model.pattern).all()
    again = calibrate(tiny_vit, photos, size, crops_per_photo=3, seed=0)
    np.testing.assert_array_equal(model.pattern, again.pattern)
    model.check(tiny_vit, size)
    with pytest.raises(ValueError, match="calibrate one"):
        model.check(tiny_vit, size + 16)
    cfg = ShiftConfig(views=4, pad=1)
    one = tta_tokens(tiny_vit, photos["chelsea"], size, cfg, seed=5)
    assert one.shape == (7, 7, tiny_vit.embed_dim)
    torch.testing.assert_close(one, tta_tokens(tiny_vit, photos["chelsea"], size, cfg, seed=5))
    plain = tta_tokens(tiny_vit, photos["chelsea"], size, ShiftConfig(views=1, pad=1), seed=5)
    raw = tiny_vit(full_view_pixels(photos["chelsea"], size)[None])[0]
    torch.testing.assert_close(plain, raw)  # one view: the full view itself
    mean_g = from_artifacts([model.pattern, 3 * model.pattern], "test_vit", "d", size)
    np.testing.assert_allclose(mean_g.pattern, 2 * model.pattern, rtol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        model.subtract(np.zeros((6, 6, tiny_vit.embed_dim + 1)))
    # tokens of another grid get the pattern resampled to theirs
    wide = model.subtract(np.zeros((7, 11, tiny_vit.embed_dim)))
    np.testing.assert_allclose(wide, -model.pattern_for((7, 11)))
    with pytest.raises(ValueError):
        ShiftConfig(views=0)


def test_mirror_mean_and_the_calib_flip_baseline(
    tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    """Features that follow content are their own mirror mean; calib+flip mirrors with its
    input (the pattern is removed from each view on the view's grid)."""
    pixels = full_view_pixels(photos["chelsea"], (64, 96))[None]
    content = _patch_means(pixels, 16)
    torch.testing.assert_close(mirror_mean(content, _patch_means(pixels.flip(-1), 16)), content)
    size = 16 * 5
    model = calibrate(tiny_vit, photos, size, crops_per_photo=2, seed=0)
    image = photos["astronaut"]
    outputs, _ = baseline_outputs(tiny_vit, [image, image[:, ::-1].copy()], size, model)
    plain, mirrored = outputs["calib+flip"]
    np.testing.assert_allclose(mirrored, plain[:, ::-1], atol=1e-5)
    expected = (outputs["calib"][0] + outputs["calib"][1][:, ::-1]) / 2
    np.testing.assert_allclose(plain, expected, atol=1e-5)
    assert not np.allclose(plain, outputs["calib"][0], atol=1e-3)


def test_shift_method_in_the_engine_and_artifact_model_storage(
    tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray], tmp_path
) -> None:
    from pipeline import clean_images
    from pipeline.models.artifact_model import read_artifact_model, write_artifact_model
    from pipeline.store import artifact_model_uri

    size = 16 * 7
    model = calibrate(tiny_vit, photos, size, crops_per_photo=2, seed=0)
    with pytest.raises(ValueError, match="needs an artifact model"):
        clean_images(tiny_vit, [photos["coffee"]], "shift_smoke")
    (res,) = clean_images(tiny_vit, [photos["coffee"]], "shift_smoke", artifact_model=model)
    # 600 x 400 at 112 px, aspect kept: 7 x 11 tokens, the square pattern resampled to them
    assert res.ok and res.clean.shape == res.raw.shape == res.artifact.shape == (7, 11, 64)
    assert 0.0 < res.metrics["r2"] <= 1.0 and res.metrics["seconds"] > 0
    (fixed,) = clean_images(
        tiny_vit,
        [photos["coffee"]],
        "shift_smoke",
        artifact_model=model,
        overrides=["shift.prior_weight=.inf"],
    )
    np.testing.assert_allclose(fixed.artifact, model.pattern_for((7, 11)), rtol=1e-6)  # G = prior
    uri = artifact_model_uri(str(tmp_path), "test_vit", "abc" * 8, size, "0123456789abcdef")
    assert uri == artifact_model_uri(str(tmp_path), "test_vit", "abc" * 8, size, "0123456789abcdef")
    sha = write_artifact_model(uri, model)
    back, sha_back = read_artifact_model(uri)
    assert sha_back == sha and back.samples == model.samples and back.source == "calibration"
    np.testing.assert_array_equal(back.pattern, model.pattern)
    assert not list(tmp_path.rglob("*.tmp-*"))  # nothing left of the atomic write


def test_field_fit_with_the_artifact_prior(
    tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    """fit.prior_weight > 0 needs the artifact model and holds G to its pattern; at 0 the model
    is ignored (the same fit as without it)."""
    from pipeline import clean_images

    size = 16 * 7
    model = calibrate(tiny_vit, photos, size, crops_per_photo=2, seed=0)
    image = [photos["coffee"]]
    common = [f"image_size={size}", "fit.steps=60"]
    with pytest.raises(ValueError, match="needs an artifact model"):
        clean_images(tiny_vit, image, "smoke", overrides=[*common, "fit.prior_weight=1"])
    (free,) = clean_images(tiny_vit, image, "smoke", overrides=common)
    (ignored,) = clean_images(tiny_vit, image, "smoke", overrides=common, artifact_model=model)
    np.testing.assert_array_equal(free.clean, ignored.clean)
    (held,) = clean_images(
        tiny_vit, image, "smoke", artifact_model=model, overrides=[*common, "fit.prior_weight=1000"]
    )
    pattern = model.pattern_for(held.artifact.shape[:2])  # the image's kept-aspect grid
    scale = np.linalg.norm(pattern, axis=-1).mean()
    assert held.ok and np.linalg.norm(held.artifact - pattern, axis=-1).mean() < 0.05 * scale
    assert np.linalg.norm(free.artifact - pattern, axis=-1).mean() > 0.5 * scale
