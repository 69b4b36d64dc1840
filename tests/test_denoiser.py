"""The online denoiser without Ray: block, grids, export, schedule, split, online path."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import EngineConfig, FeatureExtractor, ViewConfig
from pipeline.config import ConfigError
from pipeline.models.denoiser import (
    DenoisedViT,
    Denoiser,
    DenoiserConfig,
    load_denoiser,
    resolve_denoiser,
    save_denoiser,
    shipped_denoisers,
    smooth_tokens,
    with_local_filter,
)
from pipeline.models.denoiser_train import (
    LocalFilterFit,
    TrainConfig,
    ValidationSums,
    denoise_loss,
    distil_two_view,
    fit_local_filter,
    is_validation,
    lr_factor,
    similarity_loss,
    train_denoiser,
    two_view_targets,
)
from pipeline.models.engine import extract_views
from pipeline.models.online import denoise_images
from pipeline.models.views import full_view_pixels


def _planted(
    count: int, grid: int, channels: int, seed: int, pattern_grid: int = 0
) -> tuple[torch.Tensor, ...]:
    """clean = smooth random content; raw = clean + a fixed per-position pattern (the artifact),
    drawn on ``pattern_grid`` (default ``grid``) and resampled to ``grid`` (one pattern seen at
    several input sizes)."""
    gen = torch.Generator().manual_seed(seed)
    side = pattern_grid or grid
    pattern = 0.8 * torch.randn(side, side, channels, generator=torch.Generator().manual_seed(99))
    if side != grid:
        pattern = torch.nn.functional.interpolate(
            pattern.permute(2, 0, 1)[None], size=(grid, grid), mode="bicubic", align_corners=False
        )[0].permute(1, 2, 0)
    low = torch.randn(count, channels, 3, 3, generator=gen)
    clean = torch.nn.functional.interpolate(
        low, size=(grid, grid), mode="bilinear", align_corners=True
    ).permute(0, 2, 3, 1)
    return clean + pattern, clean


def test_untrained_denoiser_is_identity() -> None:
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    tokens = torch.randn(2, 6, 6, 64)
    assert torch.allclose(model(tokens), tokens)
    assert model.cfg.heads == 1 and Denoiser(DenoiserConfig(channels=384)).cfg.heads == 6


def test_smoothing_is_a_normalised_gaussian_over_the_grid() -> None:
    """A spike spreads as the separable Gaussian of the given sigma (tokens), weights summing
    to one; constant features and sigma 0 are left as they are; each channel stays alone."""
    tokens = torch.zeros(1, 9, 9, 2)
    tokens[0, 4, 4, 0] = 1.0
    out = smooth_tokens(tokens, 0.5)
    weights = torch.exp(-(torch.tensor([1.0, 0.0, 1.0]) ** 2) / (2 * 0.5**2))
    weights = weights / weights.sum()
    torch.testing.assert_close(out[0, 3:6, 3:6, 0], weights[:, None] * weights[None, :])
    assert out[0, :, :, 0].sum().item() == pytest.approx(1.0)
    assert out[0, :, :, 1].abs().max() == 0 and out[0, :3].abs().max() == 0  # radius 1 at 0.5
    wide = smooth_tokens(tokens, 1.0)[0, :, :, 0]
    assert wide[4, 6] > 0 and wide[4, 7] == 0  # radius ceil(2 sigma) = 2
    flat = torch.full((2, 5, 7, 3), 0.7)
    torch.testing.assert_close(smooth_tokens(flat, 0.8), flat)  # edges repeat, not zero
    assert smooth_tokens(tokens, 0.0) is tokens
    assert smooth_tokens(tokens.half(), 0.5).dtype == torch.float16


def test_a_smoothing_denoiser_smooths_its_own_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    torch.nn.init.normal_(model.block.mlp.fc2.weight, std=0.1)  # not the identity
    save_denoiser(model, str(tmp_path), {})
    plain = load_denoiser(str(tmp_path))
    smooth = load_denoiser(str(tmp_path), smoothing=0.5)
    tokens = torch.randn(2, 6, 7, 64)
    assert plain.smoothing == 0 and smooth.smoothing == 0.5
    torch.testing.assert_close(smooth(tokens), smooth_tokens(plain(tokens), 0.5))
    assert not torch.allclose(smooth(tokens), plain(tokens))
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ConfigError, match="smoothing"):
            Denoiser(DenoiserConfig(channels=64, grid=6), smoothing=bad)


def test_runs_at_other_grids() -> None:
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    torch.nn.init.normal_(model.pos_embed)
    tokens = torch.randn(1, 9, 5, 64)
    assert model(tokens).shape == (1, 9, 5, 64)
    with torch.no_grad():  # inference resamples once and reuses it, with the same result
        first, second = model(tokens), model(tokens)
        torch.nn.init.normal_(model.pos_embed)  # an update invalidates the reused embedding
        updated = model(tokens)
    assert torch.equal(first, second) and not torch.allclose(first, updated)
    assert torch.allclose(updated, model(tokens).detach())
    assert torch.equal(model.positional_embedding(6, 6), model.pos_embed)
    resampled = model.positional_embedding(12, 12)
    assert resampled.shape == (1, 144, 64)
    # bicubic resampling keeps the pattern: correlated with a nearest upsampling of it
    nearest = model.pos_embed.reshape(6, 6, 64).repeat_interleave(2, 0).repeat_interleave(2, 1)
    corr = torch.corrcoef(torch.stack([resampled.flatten(), nearest.flatten()]))[0, 1]
    assert corr > 0.8
    with pytest.raises(ValueError, match="expected tokens"):
        model(torch.randn(1, 6, 6, 32))


def test_training_removes_a_planted_position_pattern() -> None:
    """The plain training loop closes most of the gap raw -> clean on held-out images."""
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=75, batch_size=16, base_lr=3e-3 * 4, warmup_fraction=0.05)
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    raw, clean = _planted(64, 6, 64, seed=1)
    val_raw, val_clean = _planted(16, 6, 64, seed=2)
    losses = train_denoiser(model, [(raw, clean)], cfg)
    assert len(losses) == 75 and losses[-1] < 0.3 * losses[0]
    sums = ValidationSums()
    with torch.no_grad():
        sums.add(val_raw, model(val_raw), val_clean)
    metrics = sums.metrics()
    assert metrics["val_images"] == 16
    assert metrics["val_loss"] < 0.2 * metrics["val_raw_loss"]
    assert metrics["val_cos"] > metrics["val_raw_cos"] + 0.1


def test_training_on_two_grids_serves_both() -> None:
    """One denoiser trained on two input sizes (grids 6 and 9 of one pattern) removes the
    pattern at both; the images of both are shuffled together."""
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=60, batch_size=16, base_lr=3e-3 * 4, warmup_fraction=0.05)
    model = Denoiser(DenoiserConfig(channels=64, grid=9))
    pairs = [_planted(64, 6, 64, seed=1, pattern_grid=9), _planted(32, 9, 64, seed=3)]
    losses = train_denoiser(model, pairs, cfg)
    assert len(losses) == 60 and losses[-1] < 0.3 * losses[0]
    for grid, seed in ((6, 2), (9, 4)):
        val_raw, val_clean = _planted(16, grid, 64, seed=seed, pattern_grid=9)
        with torch.no_grad():
            assert denoise_loss(model(val_raw), val_clean) < 0.3 * denoise_loss(
                val_raw, val_clean
            ), grid
    with pytest.raises(ValueError, match="one"):
        train_denoiser(model, [(pairs[0][0], pairs[1][1])], cfg)


def test_similarity_loss_reads_structure_not_scale() -> None:
    target = torch.randn(2, 5, 5, 32)
    scaled = target * torch.rand(2, 5, 5, 1).add(0.5)  # every token rescaled: same cosines
    assert torch.allclose(similarity_loss(scaled, target), torch.zeros(2), atol=1e-6)
    noisy = target + torch.randn_like(target)
    assert (similarity_loss(noisy, target) > 0.01).all()
    assert similarity_loss(noisy, target).shape == (2,)
    # in training it is added to L_dist with its weight
    raw, clean = _planted(16, 5, 32, seed=1)
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        trained = Denoiser(DenoiserConfig(channels=32, grid=5))
        loss = train_denoiser(
            trained, [(raw, clean)], TrainConfig(epochs=1, batch_size=16, similarity_weight=weight)
        )
        with torch.no_grad():
            expected = denoise_loss(raw, clean) + weight * similarity_loss(raw, clean).mean()
        assert loss[0] == pytest.approx(float(expected), rel=1e-4)  # one step, from identity


def test_deeper_denoiser_starts_at_identity_and_keeps_the_format() -> None:
    deep = Denoiser(DenoiserConfig(channels=64, grid=6, depth=3))
    tokens = torch.randn(2, 6, 6, 64)
    assert torch.allclose(deep(tokens), tokens) and len(deep.more_blocks) == 2
    shallow = Denoiser(DenoiserConfig(channels=64, grid=6))
    assert not [k for k in shallow.state_dict() if k.startswith("more_blocks")]  # as before
    assert set(shallow.state_dict()) < set(deep.state_dict())
    with pytest.raises(ValueError, match="depth"):
        Denoiser(DenoiserConfig(channels=64, grid=6, depth=0))


def test_local_filter_starts_at_identity_and_mixes_by_place(tmp_path: Path) -> None:
    """``local_kernel``: a residual depthwise filter over the grid, zero at start, adding each
    token's neighbours by place (edges repeated); it survives an export; odd sides only."""
    plain = Denoiser(DenoiserConfig(channels=32, grid=6))
    model = Denoiser(DenoiserConfig(channels=32, grid=6, local_kernel=3))
    tokens = torch.randn(2, 6, 6, 32)
    with torch.no_grad():
        assert torch.allclose(model(tokens), tokens)
        assert not [k for k in plain.state_dict() if k.startswith("local")]  # as before
        assert model.local is not None
        model.local.weight.zero_()
        model.local.weight[:, 0, 1, 2] = 1.0  # the token to the right, the last one repeated
        right = torch.cat([tokens[:, :, 1:], tokens[:, :, -1:]], dim=2)
        assert torch.allclose(model(tokens), tokens + right, atol=1e-5)
    save_denoiser(model, str(tmp_path / "export"), {"model": "test_vit"})
    loaded = load_denoiser(str(tmp_path / "export"))
    with torch.no_grad():
        assert loaded.cfg.local_kernel == 3 and torch.equal(loaded(tokens), model(tokens))
    for bad in (2, -1):
        with pytest.raises(ConfigError, match="local_kernel"):
            DenoiserConfig(channels=32, grid=6, local_kernel=bad)


def test_a_fitted_local_filter_learns_a_blur_and_leaves_the_block_as_it_was() -> None:
    """``with_local_filter`` adds a zero filter to a trained denoiser (same output, same meta);
    ``fit_local_filter`` fits it alone to targets that are a spatial blur of the blocks'
    output, on two grids, far closer than the start, and no other weight moves."""
    torch.manual_seed(0)
    trained = Denoiser(DenoiserConfig(channels=32, grid=6))
    for param in trained.parameters():
        torch.nn.init.normal_(param, std=0.05)
    trained.meta = {"model": "test_vit"}
    model = with_local_filter(trained, 5)
    tokens = torch.randn(2, 6, 6, 32)
    with torch.no_grad():
        assert torch.equal(model(tokens), trained(tokens)) and model.meta == trained.meta
    gen = torch.Generator().manual_seed(5)
    pairs, held_out = [], []
    for grid in (6, 9):
        raw = torch.randn(48, grid, grid, 32, generator=gen)
        with torch.no_grad():
            pairs.append((raw, smooth_tokens(trained.blocks(raw), 0.8)))
            val = torch.randn(8, grid, grid, 32, generator=gen)
            held_out.append((val, smooth_tokens(trained.blocks(val), 0.8)))
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("local.")}
    losses = fit_local_filter(model, pairs, LocalFilterFit(steps=300, lr=3e-2))
    assert len(losses) == 3 and losses[-1] < 0.3 * losses[0]
    with torch.no_grad():
        for val, target in held_out:
            start = denoise_loss(trained(val), target)
            assert denoise_loss(model(val), target) < 0.2 * start, val.shape
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="no local filter"):
        fit_local_filter(trained, pairs, LocalFilterFit())
    with pytest.raises(ValueError, match="one"):
        fit_local_filter(model, [(pairs[0][0], pairs[1][1])], LocalFilterFit())
    with pytest.raises(ConfigError, match="steps"):
        LocalFilterFit(steps=0)


def test_start_at_a_pattern_is_the_calib_baseline_and_trains_faster() -> None:
    """start_at(pattern): the untrained denoiser is raw - pattern (at its own grid and, resampled,
    at another); from there a short training gets closer to clean than from zero."""
    raw, clean = _planted(64, 6, 64, seed=1)
    pattern = (raw - clean).mean(0) + 0.1 * torch.randn(6, 6, 64)  # an estimate, not the truth
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    model.start_at(pattern)
    with torch.no_grad():
        assert torch.allclose(model(raw), raw - pattern, atol=1e-5)
    coarse = Denoiser(DenoiserConfig(channels=64, grid=3))
    coarse.start_at(pattern)
    assert coarse.pos_embed.shape == (1, 9, 64)
    with pytest.raises(ValueError, match="pattern"):
        model.start_at(torch.zeros(6, 6, 32))
    cfg = TrainConfig(epochs=3, batch_size=16, base_lr=3e-3 * 4)
    val_raw, val_clean = _planted(16, 6, 64, seed=2)
    losses = {}
    for name, start in (("zero", None), ("pattern", pattern)):
        torch.manual_seed(0)
        trained = Denoiser(DenoiserConfig(channels=64, grid=6))
        if start is not None:
            trained.start_at(start)
        train_denoiser(trained, [(raw, clean)], cfg)
        with torch.no_grad():
            losses[name] = float(denoise_loss(trained(val_raw), val_clean))
    assert losses["pattern"] < 0.5 * losses["zero"], losses


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(warmup_fraction=0.1, min_lr_fraction=0.0)
    factors = [lr_factor(s, 100, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.01
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 90)))


def test_validation_split_is_stable_and_sized() -> None:
    import hashlib

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    held = [i for i in ids if is_validation(i, 0.1)]
    assert 0.08 < len(held) / len(ids) < 0.12
    assert held == [i for i in ids if is_validation(i, 0.1)]
    assert set(held) <= {i for i in ids if is_validation(i, 0.2)}  # nested as fraction grows


def test_export_round_trip(tmp_path: Path) -> None:
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.05)
    save_denoiser(model, str(tmp_path / "export"), {"model": "test_vit", "note": "x"})
    loaded = load_denoiser(str(tmp_path / "export"))
    tokens = torch.randn(3, 6, 6, 64)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert loaded.meta["model"] == "test_vit" and loaded.cfg == model.cfg
    # another denoiser saved with a loaded export's meta: its own config and digest are written
    wider = Denoiser(DenoiserConfig(channels=64, grid=8))
    save_denoiser(wider, str(tmp_path / "again"), loaded.meta)
    again = load_denoiser(str(tmp_path / "again"))  # the digest matches its own weights
    assert again.cfg == wider.cfg and again.meta["note"] == "x"
    with pytest.raises(FileNotFoundError, match="no exported denoiser"):
        load_denoiser(str(tmp_path / "missing"))
    assert not [
        p.name
        for p in (tmp_path / "export").iterdir()
        if p.name not in ("denoiser.safetensors", "denoiser.json")
    ]  # no temp files
    # an export interrupted between its two files: new weights beside the old JSON
    other = Denoiser(DenoiserConfig(channels=64, grid=6))
    save_denoiser(other, str(tmp_path / "other"), {"model": "test_vit"})
    (tmp_path / "export" / "denoiser.safetensors").write_bytes(
        (tmp_path / "other" / "denoiser.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="interrupted"):
        load_denoiser(str(tmp_path / "export"))


def test_half_precision_export_loads_as_float32(tmp_path: Path) -> None:
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.05)
    save_denoiser(model, str(tmp_path / "full"), {"model": "test_vit"})
    save_denoiser(model, str(tmp_path / "half"), {"model": "test_vit"}, dtype=torch.float16)
    size = {
        name: (tmp_path / name / "denoiser.safetensors").stat().st_size for name in ("full", "half")
    }
    assert size["half"] < 0.6 * size["full"]
    loaded = load_denoiser(str(tmp_path / "half"))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    tokens = torch.randn(3, 6, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=2e-3, rtol=2e-3)


def test_shipped_names_resolve_and_a_local_folder_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "dinov2_vits14" in shipped_denoisers()
    shipped = Path(resolve_denoiser("dinov2_vits14"))
    assert (shipped / "denoiser.json").is_file() and shipped.parent.name == "pretrained"
    assert resolve_denoiser("s3://bucket/export") == "s3://bucket/export"
    with pytest.raises(FileNotFoundError, match=r"shipped denoisers: .*dinov2_vits14"):
        load_denoiser("dinov2_vitb14")
    monkeypatch.chdir(tmp_path)  # a folder of the same name in the working directory wins
    model = Denoiser(DenoiserConfig(channels=64, grid=6))
    save_denoiser(model, "dinov2_vits14", {"model": "test_vit"})
    assert load_denoiser("dinov2_vits14").meta["model"] == "test_vit"


def _export_for(extractor: FeatureExtractor, folder: Path, digest: str | None = None) -> Path:
    model = Denoiser(DenoiserConfig(channels=extractor.embed_dim, grid=4))
    torch.nn.init.normal_(model.pos_embed, std=0.1)
    save_denoiser(
        model,
        str(folder),
        {
            "model": extractor.model_name,
            "weights": "random",
            "weights_digest": digest or extractor.weights_digest,
        },
    )
    return folder


def test_denoised_vit_from_pretrained(
    tiny_vit: FeatureExtractor, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    export = _export_for(tiny_vit, tmp_path / "export")
    model = DenoisedViT.from_pretrained(str(export), device="cpu")
    pixels = torch.rand(2, 3, 64, 64)
    out = model(pixels)
    expected = model.denoiser(tiny_vit(pixels))
    assert out.shape == (2, 4, 4, tiny_vit.embed_dim) and torch.allclose(out, expected)
    assert model(torch.rand(1, 3, 96, 128)).shape == (1, 6, 8, tiny_vit.embed_dim)

    # the online path's raw tokens are the engine's full view at the same size
    photo = photos["chelsea"][:200, :260]
    (result,) = denoise_images(model, [photo], image_size=64, ids=["cat"])
    cfg = EngineConfig(views=ViewConfig(num_views=1))
    views, _ = extract_views(tiny_vit, photo, "cat", cfg, 64)
    np.testing.assert_allclose(result.raw, views[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result.raw - result.clean, result.artifact, atol=1e-6)
    assert result.ok and result.clean.shape == (4, 5, tiny_vit.embed_dim)  # 260 x 200, kept


def test_flip_averages_each_image_with_its_mirror(
    tiny_vit: FeatureExtractor, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    """flip=True: the mean of the denoised tokens of the image and of its mirror mapped back,
    so mirroring the input mirrors the output exactly (the plain denoiser's learned positional
    embedding does not)."""
    export = _export_for(tiny_vit, tmp_path / "export")
    plain = DenoisedViT.from_pretrained(str(export), device="cpu")
    both = DenoisedViT.from_pretrained(str(export), device="cpu", flip=True)
    assert not plain.flip and both.flip
    pixels = torch.rand(2, 3, 64, 96)
    expected = (plain(pixels) + plain(pixels.flip(-1)).flip(2)) / 2
    torch.testing.assert_close(both(pixels), expected)
    torch.testing.assert_close(both(pixels.flip(-1)), both(pixels).flip(2))
    assert not torch.allclose(plain(pixels.flip(-1)), plain(pixels).flip(2), atol=1e-3)
    # the online path: raw is the image's own view; clean is the two-view mean
    photo = photos["chelsea"][:200, :260]
    (one,) = denoise_images(plain, [photo], image_size=64, ids=["cat"])
    (two,) = denoise_images(both, [photo], image_size=64, ids=["cat"])
    np.testing.assert_allclose(two.raw, one.raw, atol=1e-6)
    np.testing.assert_allclose(two.raw - two.clean, two.artifact, atol=1e-6)
    patch = tiny_vit.patch_size
    view = full_view_pixels(photo, (4 * patch, 5 * patch))[None]
    np.testing.assert_allclose(two.clean, both(view)[0].numpy(), atol=1e-5)
    assert two.ok and two.clean.shape == one.clean.shape == (4, 5, tiny_vit.embed_dim)
    assert not np.allclose(two.clean, one.clean, atol=1e-3)


def test_two_view_targets_are_flips_output_and_a_student_learns_them(
    tiny_vit: FeatureExtractor, tmp_path: Path
) -> None:
    """``two_view_targets`` from raw and mirrored tokens is ``DenoisedViT(flip=True)``'s output
    on the pixels; a student started as the teacher and trained on raw -> those targets gets
    closer to them in one forward on images it did not see, and becomes more nearly mirror
    equivariant (what the second view enforces); mismatched views are refused."""
    export = _export_for(tiny_vit, tmp_path / "export")
    both = DenoisedViT.from_pretrained(str(export), device="cpu", flip=True)
    teacher = load_denoiser(str(export))
    gen = torch.Generator().manual_seed(3)
    pixels = torch.rand(40, 3, 48, 48, generator=gen)
    with torch.no_grad():
        raw, mirrored = tiny_vit(pixels), tiny_vit(pixels.flip(-1))
    targets = two_view_targets(teacher, raw, mirrored, chunk=7)
    torch.testing.assert_close(targets, both(pixels), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="differ"):
        two_view_targets(teacher, raw, mirrored[:, :, :-1])

    def gap(model: Denoiser, lo: int, hi: int) -> tuple[float, float]:
        """(loss to the targets, mirror asymmetry) on images lo..hi."""
        with torch.no_grad():
            out, out_m = model(raw[lo:hi]), model(mirrored[lo:hi])
            return float(denoise_loss(out, targets[lo:hi])), float(
                (out - out_m.flip(-2)).pow(2).mean()
            )

    start = gap(teacher, 32, 40)
    student = load_denoiser(str(export)).requires_grad_(True)
    train_denoiser(
        student, [(raw[:32], targets[:32])], TrainConfig(epochs=40, batch_size=8, base_lr=1e-2)
    )
    end = gap(student, 32, 40)
    assert end[0] < 0.92 * start[0] and end[1] < 0.5 * start[1], (start, end)


def test_distil_two_view_rounds_chain_students_and_leave_the_teacher(
    tiny_vit: FeatureExtractor, tmp_path: Path
) -> None:
    """One round of ``distil_two_view`` is ``train_denoiser`` on ``two_view_targets`` (the same
    weights); a second round is taught by the first's student, not the teacher; the teacher's
    weights never move; no rounds is refused."""
    export = _export_for(tiny_vit, tmp_path / "export")
    teacher = load_denoiser(str(export))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    pixels = torch.rand(16, 3, 48, 48, generator=gen)
    with torch.no_grad():
        views = [(tiny_vit(pixels), tiny_vit(pixels.flip(-1)))]
    cfg = TrainConfig(epochs=3, batch_size=8, base_lr=1e-2)
    one, losses = distil_two_view(teacher, views, cfg, rounds=1)
    by_hand = load_denoiser(str(export)).requires_grad_(True)
    train_denoiser(by_hand, [(views[0][0], two_view_targets(teacher, *views[0]))], cfg)
    for key, value in by_hand.state_dict().items():
        torch.testing.assert_close(one.state_dict()[key], value)
    assert len(losses) == 3 and not any(p.requires_grad for p in one.parameters())
    two, losses = distil_two_view(teacher, views, cfg, rounds=2)
    second = copy.deepcopy(one).requires_grad_(True)
    train_denoiser(second, [(views[0][0], two_view_targets(one, *views[0]))], cfg)
    for key, value in second.state_dict().items():
        torch.testing.assert_close(two.state_dict()[key], value)
    assert len(losses) == 6
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="rounds"):
        distil_two_view(teacher, views, cfg, rounds=0)


def test_denoised_vit_refuses_other_weights(tiny_vit: FeatureExtractor, tmp_path: Path) -> None:
    export = _export_for(tiny_vit, tmp_path / "export", digest="0" * 64)
    with pytest.raises(ValueError, match="differs from"):
        DenoisedViT.from_pretrained(str(export), device="cpu")


def test_both_stages_share_one_loss_and_schedule() -> None:
    """The denoiser's loss is the fit's per-image L_dist averaged over the batch, and both
    schedules are one function (pipeline.models.objectives)."""
    from pipeline.engine_config import FitConfig
    from pipeline.models.objectives import feature_distance, warmup_cosine

    pred, target = torch.randn(2, 2, 5, 5, 8).unbind(0)
    expected = (
        torch.nn.functional.mse_loss(pred, target)
        + (1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)).mean()
    )
    assert torch.allclose(denoise_loss(pred, target), expected)
    per_image = feature_distance(pred.reshape(2, 25, 8), target.reshape(2, 25, 8))
    assert per_image.shape == (2,) and torch.allclose(per_image.mean(), expected)
    fit, train = FitConfig(), TrainConfig(warmup_fraction=0.05, min_lr_fraction=0.05)
    assert [lr_factor(s, 200, train) for s in range(200)] == [
        warmup_cosine(s, 200, fit.warmup_fraction, fit.final_lr_fraction) for s in range(200)
    ]
