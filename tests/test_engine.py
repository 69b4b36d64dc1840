"""clean_images end to end on real DINOv2-S/14 weights and real photos (smoke preset)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import FeatureExtractor, clean_images


@pytest.fixture(scope="module")
def smoke_results(dinov2: FeatureExtractor, photos: dict[str, np.ndarray]) -> list:
    # square inputs: G of different photos compare position by position
    return clean_images(
        dinov2, list(photos.values()), preset="smoke", overrides=["resize.aspect=square"]
    )


def test_outputs_have_the_raw_grid(smoke_results: list) -> None:
    for r in smoke_results:
        assert r.ok and r.error is None
        assert r.raw.shape == r.clean.shape == r.artifact.shape == (8, 8, 384)  # 112 px / 14
        assert r.raw.dtype == r.clean.dtype == np.float32
        assert np.isfinite(r.clean).all()
        assert {"final_loss", "r2", "artifact_ratio", "seconds"} <= set(r.metrics)
        assert 0.0 < r.metrics["r2"] <= 1.0
        assert len(r.image_id) == 64


def test_clean_differs_from_raw_but_stays_close(smoke_results: list) -> None:
    for r in smoke_results:
        cos = torch.nn.functional.cosine_similarity(
            torch.from_numpy(r.raw), torch.from_numpy(r.clean), dim=-1
        ).mean()
        assert 0.5 < cos < 0.999


def test_artifact_is_the_models_pattern(smoke_results: list) -> None:
    """G estimated on different photos agrees: it belongs to the model, not the content."""
    flat = [torch.from_numpy(r.artifact).flatten() for r in smoke_results]
    sims = [
        float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        for a, b in itertools.combinations(flat, 2)
    ]
    assert np.mean(sims) > 0.2, sims
    assert min(sims) > 0.1, sims


def test_raw_equals_the_vits_patch_tokens(
    dinov2: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    """raw = last block after the final norm, prefix tokens dropped, the full image with its
    short side at 112 px and its aspect kept (451 x 300: 8 x 12 tokens, 112 x 168 px)."""
    photo = photos["chelsea"]
    (r,) = clean_images(dinov2, [photo], preset="smoke", overrides=["fit.steps=2"])
    pixels = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    pixels = torch.nn.functional.interpolate(
        pixels, size=(112, 168), mode="bilinear", antialias=True, align_corners=False
    )
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.inference_mode():
        tokens = dinov2.model.forward_features((pixels - mean) / std)  # norm applied
    patch_tokens = tokens[0, dinov2.num_prefix_tokens :].reshape(8, 12, 384).numpy()
    assert np.allclose(r.raw, patch_tokens, atol=1e-4)


def test_same_seed_same_result_and_seed_is_honoured(
    tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray]
) -> None:
    images = [photos["coffee"], photos["chelsea"]]
    a = clean_images(tiny_vit, images, preset="smoke", seed=3)
    b = clean_images(tiny_vit, images, preset="smoke", seed=3)
    c = clean_images(tiny_vit, images, preset="smoke", seed=4)
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x.clean, y.clean)
        assert not np.array_equal(x.clean, z.clean)
        assert np.array_equal(x.raw, z.raw)  # view 0 does not depend on the seed


def test_any_mode_is_accepted(tiny_vit: FeatureExtractor, photos: dict[str, np.ndarray]) -> None:
    pil = Image.fromarray(photos["coffee"][:200, :300])
    images = [pil.convert(m) for m in ("L", "LA", "P", "RGBA", "CMYK")]
    images.append(np.asarray(pil).astype(np.uint16) * 257)
    results = clean_images(tiny_vit, images, preset="smoke", overrides=["fit.steps=4"])
    # 112 px / patch 16 on the short side; 300 x 200: 7 x 10.5 -> 11 tokens
    assert all(r.ok and r.raw.shape == (7, 11, 64) for r in results)


def test_bad_images_raise_clear_errors(tiny_vit: FeatureExtractor) -> None:
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        clean_images(tiny_vit, [np.zeros((1, 1, 3), np.uint8)], preset="smoke")
    with pytest.raises(ValueError, match="empty"):
        clean_images(tiny_vit, [np.zeros((0, 10, 3), np.uint8)], preset="smoke")
    with pytest.raises(ValueError, match="multiple of"):
        clean_images(
            tiny_vit,
            [np.zeros((64, 64, 3), np.uint8)],
            preset="smoke",
            overrides=["image_size=100"],
        )
