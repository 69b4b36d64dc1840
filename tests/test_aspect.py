"""Images keep their aspect: the token grid follows the image, and every stage follows the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.engine_config import ResizeConfig, engine_preset
from pipeline.models.artifact_model import ArtifactModel
from pipeline.models.denoiser import Denoiser, DenoiserConfig
from pipeline.models.engine import clean_images, fit_batches
from pipeline.models.online import denoise_images
from pipeline.models.views import render_views, sample_layout, token_grid
from pipeline.models.vit import FeatureExtractor

KEEP, SQUARE = ResizeConfig(), ResizeConfig(aspect="square")


@pytest.mark.parametrize(
    ("hw", "grid"),
    [
        ((300, 600), (16, 32)),  # 2:1 landscape: twice as wide as high
        ((600, 300), (32, 16)),  # portrait
        ((300, 451), (16, 24)),  # 451 x 300: the long side at the nearest whole token count
        ((500, 500), (16, 16)),
    ],
)
def test_grid_keeps_the_aspect(hw: tuple[int, int], grid: tuple[int, int]) -> None:
    assert token_grid(KEEP, hw, 224, 14) == grid
    assert token_grid(SQUARE, hw, 224, 14) == (16, 16)


def test_token_cap_shrinks_both_sides() -> None:
    """A 6:1 panorama would need 16 x 96 tokens; the cap (2x the square's 256) keeps it at 512
    or fewer with the aspect kept within one token."""
    grid_h, grid_w = token_grid(KEEP, (100, 600), 224, 14)
    assert grid_h * grid_w <= 2 * 16 * 16
    assert abs(grid_w - 6 * grid_h) <= 1 and grid_h < 16
    assert token_grid(ResizeConfig(max_tokens_ratio=8.0), (100, 600), 224, 14) == (16, 96)
    with pytest.raises(ValueError, match="max_tokens_ratio"):
        ResizeConfig(max_tokens_ratio=0.5)
    with pytest.raises(ConfigError, match="aspect"):
        engine_preset("smoke", ["resize.aspect=round"])


def test_views_render_on_the_image_grid() -> None:
    """Crops of a 2:1 image, rendered at its 2:1 input, show the content at their coords."""
    height, width = 100, 200
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([xx / width, yy / height, torch.zeros_like(xx, dtype=torch.float)])
    layout = sample_layout((height, width), engine_preset("smoke").views, 5, view_aspect=2.0)
    pixels = render_views(image.float(), layout, (32, 64))  # (V, 3, 32, 64): 4 x 8 tokens
    coords = layout.token_coords((4, 8))
    assert pixels.shape[-2:] == (32, 64) and coords.shape[1:3] == (4, 8)
    means = pixels.unfold(2, 8, 8).unfold(3, 8, 8).mean((-1, -2))  # (V, 3, 4, 8)
    assert torch.allclose(means[:, 0], coords[..., 0], atol=0.02)
    assert torch.allclose(means[:, 1], coords[..., 1], atol=0.02)
    boxes = layout.boxes[1:]
    aspect = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    assert 1.3 < np.median(aspect) < 3.0  # crops drawn around the view's own 2:1


def test_fit_batches_group_by_grid() -> None:
    grids = [(8, 8), (8, 16), (8, 8), (8, 16), (8, 8), (8, 8)]
    assert fit_batches(grids, 2) == [[0, 2], [4, 5], [1, 3]]
    assert fit_batches([(8, 8)] * 5, 2) == [[0, 1], [2, 3], [4]]  # one grid: as before


def test_mixed_aspects_clean_in_input_order(
    tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    """Landscape, portrait and square images in one call: each result on its own grid, in the
    order given, each the same as when cleaned alone (grids are fitted apart)."""
    base = photos["astronaut"]  # 512 x 512
    images = [base[:256], base[:, :256], base, base[:300]]
    results = clean_images(
        tiny_vit,
        images,
        "smoke",
        ids=["a", "b", "c", "d"],
        overrides=["images_per_fit=4", "fit.steps=20"],
    )
    grids = [r.raw.shape[:2] for r in results]
    assert grids == [(7, 14), (14, 7), (7, 7), (7, 12)]  # 112 px: 7 tokens a short side
    assert [r.image_id for r in results] == ["a", "b", "c", "d"]
    for r in results:
        assert r.clean.shape == r.artifact.shape == r.raw.shape and r.ok
    (alone,) = clean_images(
        tiny_vit, [images[1]], "smoke", ids=["b"], overrides=["images_per_fit=4", "fit.steps=20"]
    )
    np.testing.assert_allclose(alone.clean, results[1].clean, rtol=1e-4, atol=1e-5)
    square = clean_images(
        tiny_vit,
        images[:2],
        "smoke",
        ids=["a", "b"],
        overrides=["resize.aspect=square", "fit.steps=20"],
    )
    assert [r.raw.shape[:2] for r in square] == [(7, 7), (7, 7)]


def test_pattern_and_denoiser_follow_the_grid(
    tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    """The artifact model, calibrated square, is resampled to a kept-aspect grid; the online
    path gives a wide image a wide grid, with raw tokens equal to stage 1's."""
    pattern = np.random.default_rng(0).normal(size=(7, 7, tiny_vit.embed_dim)).astype(np.float32)
    model = ArtifactModel(tiny_vit.model_name, tiny_vit.weights_digest, 112, pattern, 1, "test")
    assert model.pattern_for((7, 7)) is model.pattern
    wide = model.pattern_for((7, 14))
    assert wide.shape == (7, 14, tiny_vit.embed_dim)
    # a pattern constant along the rows stays constant when resampled
    flat = ArtifactModel("m", "d", 112, np.repeat(pattern[:1], 7, axis=0), 1, "test")
    wide_flat = flat.pattern_for((7, 14))
    np.testing.assert_allclose(wide_flat, wide_flat[:1].repeat(7, 0), atol=1e-5)

    from pipeline.models.denoiser import DenoisedViT

    den = DenoisedViT(tiny_vit, Denoiser(DenoiserConfig(channels=tiny_vit.embed_dim, grid=7)))
    image = photos["chelsea"][:150, :300]
    (online,) = denoise_images(den, [image], 112)
    (stage1,) = clean_images(tiny_vit, [image], "smoke", overrides=["fit.steps=5"])
    assert online.raw.shape[:2] == stage1.raw.shape[:2] == (7, 14)
    np.testing.assert_allclose(online.raw, stage1.raw, atol=1e-5)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


@pytest.mark.slow
def test_kept_aspect_tokens_are_those_of_the_image(
    dinov2: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    """With the real DINOv2-S/14 weights, on 2:1 crops of every photo: the raw tokens of the
    left half, on the kept-aspect grid, are closer (mean cosine) to those of that half seen
    alone than the tokens of the squashed square grid are (each squashed token against the two
    tokens of the half it covers)."""
    from pipeline.models.views import full_view_pixels

    size, side = 224, 16
    kept_cos, squashed_cos = [], []
    for photo in photos.values():
        h = min(photo.shape[0], photo.shape[1] // 2)
        image = np.ascontiguousarray(photo[:h, : 2 * h])
        grid_h, grid_w = token_grid(KEEP, image.shape[:2], size, dinov2.patch_size)
        assert (grid_h, grid_w) == (side, 2 * side)
        with torch.no_grad():
            kept = dinov2(full_view_pixels(image, (grid_h * 14, grid_w * 14))[None])[0]
            squashed = dinov2(full_view_pixels(image, size)[None])[0]
            alone = dinov2(full_view_pixels(np.ascontiguousarray(image[:, :h]), size)[None])[0]
        kept_cos.append(_cosine(kept[:, :side], alone))
        half = squashed[:, : side // 2]
        squashed_cos.append((_cosine(half, alone[:, 0::2]) + _cosine(half, alone[:, 1::2])) / 2)
    kept_cos, squashed_cos = np.asarray(kept_cos), np.asarray(squashed_cos)
    assert (kept_cos > squashed_cos).all(), (kept_cos, squashed_cos)
    assert kept_cos.mean() - squashed_cos.mean() > 0.05


def test_files_are_sized_for_the_largest_grid(tiny_vit: FeatureExtractor) -> None:
    """The sink sizes its files by the largest row any aspect can give (the token cap), so
    kept-aspect rows never push a file past ``output.target_file_mb``."""
    import dataclasses

    from pipeline.distributed.features import FeatureMethod

    method = FeatureMethod(
        stage=object,
        stage_kwargs={},
        batch_size=1,
        extractor=tiny_vit,
        image_size=112,
        settings={},
        resize=KEEP,
    )
    bound = method.max_row_bytes("float16", with_artifact=True)
    per_token = 3 * tiny_vit.embed_dim * 2  # raw, clean, artifact in float16
    tokens = [
        h * w
        for h, w in (
            token_grid(KEEP, (100, width), 112, tiny_vit.patch_size) for width in range(20, 2000, 7)
        )
    ]
    assert max(tokens) * per_token <= bound  # no aspect exceeds it
    assert max(tokens) * per_token >= 0.9 * bound  # and it is not loose
    assert method.max_row_bytes("float16", with_artifact=False) == bound * 2 // 3
    square = dataclasses.replace(method, resize=SQUARE)
    assert square.max_row_bytes("float32", with_artifact=True) == 7 * 7 * per_token * 2
