"""The batched decomposition on synthetic "ViT outputs" with a known planted artifact."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pipeline.engine_config import EngineConfig, ViewConfig, engine_preset
from pipeline.models.field import BatchedGridEncoding
from pipeline.models.fit import FitResult, fit_batch
from pipeline.models.views import sample_layout

GRID, CHANNELS = 8, 32


def smooth_field(coords: torch.Tensor, seed: int) -> torch.Tensor:
    """A smooth function of image position: (..., 2) -> (..., C)."""
    gen = torch.Generator().manual_seed(seed)
    freqs = torch.randn(6, 2, generator=gen) * 3
    phases = torch.rand(6, generator=gen) * 2 * math.pi
    mix = torch.randn(6, CHANNELS, generator=gen)
    return torch.sin(coords @ freqs.T * math.pi + phases) @ mix


def synthetic_image(seed: int, artifact: torch.Tensor | None, views: int = 32):
    """Tokens of every view = field(coords) + artifact[i, j] + noise; returns (y, coords)."""
    layout = sample_layout((180, 240), ViewConfig(num_views=views), seed)
    coords = layout.token_coords(GRID)  # (V, K, K, 2)
    gen = torch.Generator().manual_seed(seed + 1000)
    tokens = smooth_field(coords, seed) + 0.05 * torch.randn(
        (*coords.shape[:3], CHANNELS), generator=gen
    )
    if artifact is not None:
        tokens = tokens + artifact[None]
    return tokens, coords


@pytest.fixture(scope="module")
def planted() -> torch.Tensor:
    return torch.randn(GRID, GRID, CHANNELS, generator=torch.Generator().manual_seed(5)) * 0.7


@pytest.fixture(scope="module")
def cfg() -> EngineConfig:
    return engine_preset("smoke", ["fit.steps=1500", "fit.tokens_per_step=512"])


def run(
    images: list[tuple[torch.Tensor, torch.Tensor]],
    seeds: list[int],
    cfg: EngineConfig,
    prior: torch.Tensor | None = None,
) -> FitResult:
    features = torch.stack([y for y, _ in images])
    coords = torch.stack([c for _, c in images])
    return fit_batch(features, coords, seeds, cfg.field, cfg.fit, prior)


def test_planted_artifact_is_recovered(planted: torch.Tensor, cfg: EngineConfig) -> None:
    images = [synthetic_image(s, planted) for s in (1, 2)] + [synthetic_image(3, None)]
    result = run(images, [11, 12, 13], cfg)
    assert result.ok.all()
    artifact_size = planted.norm(dim=-1).mean()
    for b in (0, 1):
        cos = F.cosine_similarity(result.artifact[b].flatten(), planted.flatten(), dim=0)
        assert cos >= 0.95, f"recovered G vs planted: cosine {cos:.3f}"
        truth = smooth_field(images[b][1][0], seed=b + 1)  # the field at the full view's tokens
        error = (result.clean[b] - truth).norm(dim=-1).mean()
        assert error < 0.25 * artifact_size, f"error {error:.3f}, artifact {artifact_size:.3f}"
        assert result.metrics[b]["r2"] > 0.99
    # control: nothing planted, G stays near zero
    control = result.artifact[2].norm(dim=-1).mean()
    assert control < 0.1 * artifact_size, f"|G| {control:.3f} with no artifact planted"
    assert result.metrics[2]["artifact_ratio"] < 0.1 * result.metrics[0]["artifact_ratio"] * 2


def _artifact_left_in_clean(result: FitResult, images: list, planted: torch.Tensor) -> list[float]:
    """Per image: projection of (clean - true field) on the planted artifact, over |planted|^2."""
    shares = []
    for b, (_, coords) in enumerate(images):
        left = result.clean[b] - smooth_field(coords[0], seed=b + 1)
        shares.append(float((left * planted).sum() / (planted * planted).sum()))
    return shares


def test_coarse_steps_keep_the_artifact_out_of_a_memorising_field(planted: torch.Tensor) -> None:
    """A field fine enough to hold each view's tokens (128 cells for an 8 x 8 grid, 8 views)
    memorises part of the planted artifact into F; holding the fine levels at zero for the
    first half of the steps sends it to G instead."""
    images = [synthetic_image(s, planted, views=8) for s in (1, 2, 3)]
    base = [
        "fit.steps=600",
        "fit.tokens_per_step=256",
        "field.num_levels=6",
        "field.min_resolution=4",
        "field.max_resolution=128",
        "fit.coarse_cells_per_token=2",
    ]
    plain = run(images, [11, 12, 13], engine_preset("smoke", base))
    coarse = run(images, [11, 12, 13], engine_preset("smoke", [*base, "fit.coarse_fraction=0.5"]))
    left_plain = _artifact_left_in_clean(plain, images, planted)
    left_coarse = _artifact_left_in_clean(coarse, images, planted)
    for b in range(3):
        assert left_plain[b] > 0.1, f"the plain fit left only {left_plain[b]:.3f} in F"
        assert left_coarse[b] < 0.6 * left_plain[b], (left_coarse, left_plain)
        cos = [
            F.cosine_similarity(r.artifact[b].flatten(), planted.flatten(), dim=0)
            for r in (plain, coarse)
        ]
        assert cos[1] > cos[0] + 0.02, f"G vs planted: plain {cos[0]:.3f}, coarse {cos[1]:.3f}"
        assert coarse.metrics[b]["r2"] > 0.99


def test_batch_equals_singles(planted: torch.Tensor) -> None:
    cfg = engine_preset("smoke")
    images = [synthetic_image(s, planted, views=12) for s in range(4)]
    seeds = [21, 22, 23, 24]
    together = run(images, seeds, cfg)
    for b in range(4):
        alone = run([images[b]], [seeds[b]], cfg)
        assert torch.allclose(together.clean[b], alone.clean[0], atol=1e-4, rtol=1e-4)
        assert torch.allclose(together.artifact[b], alone.artifact[0], atol=1e-4, rtol=1e-4)
        assert together.metrics[b]["final_loss"] == pytest.approx(
            alone.metrics[0]["final_loss"], rel=1e-3
        )


def test_same_seed_same_output_other_seed_differs(planted: torch.Tensor) -> None:
    cfg = engine_preset("smoke")
    images = [synthetic_image(s, planted, views=12) for s in range(2)]
    first, second = run(images, [1, 2], cfg), run(images, [1, 2], cfg)
    assert torch.equal(first.clean, second.clean) and torch.equal(first.artifact, second.artifact)
    other = run(images, [3, 4], cfg)
    assert not torch.equal(first.clean, other.clean)


@pytest.mark.parametrize("poison", [float("nan"), 1e38])
def test_divergence_is_isolated(planted: torch.Tensor, poison: float) -> None:
    cfg = engine_preset("smoke")
    images = [synthetic_image(s, planted, views=12) for s in range(3)]
    clean_run = run(images, [1, 2, 3], cfg)
    bad_tokens = images[1][0].clone()
    bad_tokens[3, 2, 2] = poison
    poisoned = run([images[0], (bad_tokens, images[1][1]), images[2]], [1, 2, 3], cfg)
    assert poisoned.ok.tolist() == [True, False, True]
    for b in (0, 2):
        assert torch.allclose(poisoned.clean[b], clean_run.clean[b], atol=1e-5)
        assert torch.isfinite(poisoned.clean[b]).all()


def test_shape_mismatch_raises() -> None:
    cfg = engine_preset("smoke")
    with pytest.raises(ValueError, match="coords"):
        fit_batch(torch.zeros(1, 2, 4, 4, 8), torch.zeros(1, 2, 4, 5, 2), [0], cfg.field, cfg.fit)
    with pytest.raises(ValueError, match="seeds"):
        fit_batch(torch.zeros(2, 2, 4, 4, 8), torch.zeros(2, 2, 4, 4, 2), [0], cfg.field, cfg.fit)


def test_fine_levels_above_the_cap_give_zeros_and_no_gradient() -> None:
    cfg = engine_preset(
        "smoke", ["field.num_levels=3", "field.min_resolution=4", "field.max_resolution=16"]
    ).field
    encoding = BatchedGridEncoding(cfg, [torch.Generator().manual_seed(0)])
    assert encoding.resolutions == [4, 8, 16]
    coords = torch.rand(1, 20, 2, generator=torch.Generator().manual_seed(1))
    capped = encoding(coords, max_resolution=8)
    full = encoding(coords)
    per = cfg.features_per_level
    assert torch.equal(capped[..., : 2 * per], full[..., : 2 * per])
    assert (capped[..., 2 * per :] == 0).all() and (full[..., 2 * per :] != 0).all()
    capped.sum().backward()
    assert encoding.levels[2].grad is None and encoding.levels[0].grad is not None


def test_bad_fit_settings_raise() -> None:
    for override in (
        "fit.coarse_fraction=1.5",
        "fit.phase1_fraction=-0.1",
        "fit.coarse_cells_per_token=0",
        "fit.steps=0",
    ):
        with pytest.raises(ValueError, match="fit\\."):
            engine_preset("fast", [override])


def test_artifact_prior_keeps_g_at_the_model_pattern(planted: torch.Tensor) -> None:
    """Few views and steps: a free G also takes content; G held to the dataset's pattern (the
    true pattern here, plus a small per-image part the prior must still let through) is closer
    to this image's true G, and so is F to the true field."""
    gen = torch.Generator().manual_seed(9)
    own = planted + 0.1 * torch.randn(planted.shape, generator=gen)  # this image's G
    images = [synthetic_image(s, own, views=4) for s in (1, 2)]
    base = engine_preset("smoke", ["fit.steps=300", "fit.tokens_per_step=256"])
    free = run(images, [11, 12], base)
    held = run(
        images, [11, 12], replace(base, fit=replace(base.fit, prior_weight=1.0)), prior=planted
    )
    for b in (0, 1):
        truth = smooth_field(images[b][1][0], seed=b + 1)
        g_free = (free.artifact[b] - own).norm(dim=-1).mean()
        g_held = (held.artifact[b] - own).norm(dim=-1).mean()
        f_free = (free.clean[b] - truth).norm(dim=-1).mean()
        f_held = (held.clean[b] - truth).norm(dim=-1).mean()
        assert g_held < 0.5 * g_free, f"G error with prior {g_held:.3f}, free {g_free:.3f}"
        assert f_held < f_free, f"F error with prior {f_held:.3f}, free {f_free:.3f}"
    # the per-image part comes through (a random direction would read 0 +- 0.02)
    delta = held.artifact - planted
    agreement = F.cosine_similarity(delta.flatten(1), (own - planted).flatten()[None], dim=1)
    assert agreement.min() > 0.15, f"per-image part of G vs the truth: {agreement}"


def test_prior_weight_needs_a_matching_pattern(planted: torch.Tensor) -> None:
    images = [synthetic_image(1, planted, views=2)]
    cfg = engine_preset("smoke", ["fit.steps=2", "fit.prior_weight=1"])
    with pytest.raises(ValueError, match="artifact pattern"):
        run(images, [1], cfg)
    with pytest.raises(ValueError, match="artifact pattern"):
        run(images, [1], cfg, prior=planted[:4])
