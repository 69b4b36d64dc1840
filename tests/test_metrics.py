"""Artifact measures on synthetic inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.metrics import (
    MatchCount,
    crop_pair_matching,
    paired_difference,
    pooled_accuracy,
    position_explained_variance,
    shift_consistency,
    token_distance,
)
from pipeline.models.crops import CropBox, overlap_share, random_crop_box


def _crops(
    photos: int, per_photo: int, rng: np.random.Generator, offset_std: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Position-free features of ``photos`` x ``per_photo`` crops: each photo's own content
    offset (what the old, globally centred measure anti-correlated) plus per-token content."""
    offsets = rng.normal(scale=offset_std, size=(photos, 1, 1, 32))
    noise = rng.normal(size=(photos * per_photo, 6, 6, 32))
    content = np.repeat(offsets, per_photo, axis=0) + noise
    return content, np.repeat(np.arange(photos), per_photo)


def test_position_explained_variance_finds_a_planted_pattern_at_its_size() -> None:
    rng = np.random.default_rng(0)
    content, groups = _crops(12, 4, rng)
    for scale in (0.25, 0.5, 1.0):
        pattern = scale * rng.normal(size=(6, 6, 32))
        x = content + pattern
        centred = x - x.mean(axis=(1, 2), keepdims=True)
        p = pattern - pattern.mean(axis=(0, 1))
        truth = (p**2).sum(-1).mean() / (centred**2).sum(-1).mean()
        est = position_explained_variance(x, groups)
        assert est.value == pytest.approx(truth, rel=0.10)
        assert est.photos == 12 and est.crops == 48 and est.splits >= 20
        assert 0 < est.stderr < 0.2 * truth


def test_position_explained_variance_reads_zero_without_a_pattern() -> None:
    values, errors = [], []
    for seed in range(20):  # twenty corpora of photos with different content, no pattern
        est = position_explained_variance(*_crops(10, 4, np.random.default_rng(100 + seed)))
        values.append(est.value)
        errors.append(est.stderr)
        assert est.value > -3 * est.stderr  # never clearly below 0
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))
    assert np.std(values) < 0.01
    # the jackknife error tracks the spread over independent corpora (within a factor of 2)
    assert 0.5 < np.mean(errors) / np.std(values) < 2.0
    shuffled = _crops(10, 4, np.random.default_rng(7))[0] + np.random.default_rng(8).normal(
        size=(6, 6, 32)
    )
    rolled = np.stack(
        [
            np.roll(c.reshape(36, 32), k, 0).reshape(6, 6, 32)
            for k, c in zip(np.random.default_rng(9).integers(36, size=40), shuffled, strict=True)
        ]
    )
    assert abs(position_explained_variance(rolled, np.repeat(np.arange(10), 4)).value) < 0.02


def test_position_explained_variance_refuses_few_photos() -> None:
    content, groups = _crops(7, 4, np.random.default_rng(3))
    with pytest.raises(ValueError, match="at least 8 photos"):
        position_explained_variance(content, groups)
    with pytest.raises(ValueError, match="N groups"):
        position_explained_variance(content, groups[:-1])


def test_token_distance_known_answers() -> None:
    content = np.random.default_rng(0).normal(size=(4, 6, 6, 32))
    assert token_distance(content, content) == pytest.approx(0.0, abs=1e-9)
    assert token_distance(content, -content) == pytest.approx(2.0)


def _field_tokens(box: CropBox, grid: int, freqs: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """(grid, grid, C) content-only tokens: a random Fourier field at each token's centre in
    the photo."""
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    x, y = box.to_photo((cols + 0.5) / grid, (rows + 0.5) / grid)
    return np.cos(x[..., None] * freqs[:, 0] + y[..., None] * freqs[:, 1] + phases)


def test_crop_pair_matching_known_geometry() -> None:
    rng = np.random.default_rng(4)
    freqs, phases = rng.normal(scale=2 * np.pi / 60, size=(96, 2)), rng.uniform(0, 6.3, 96)
    pattern = 4 * rng.normal(size=(12, 12, 96))
    content, patterned, positional = [], [], []
    for _ in range(30):
        a, b = (random_crop_box(300, 400, rng, (0.4, 0.8)) for _ in range(2))
        if overlap_share(a, b) < 0.3:
            continue
        fa, fb = _field_tokens(a, 12, freqs, phases), _field_tokens(b, 12, freqs, phases)
        content.append(crop_pair_matching(fa, a, fb, b))
        patterned.append(crop_pair_matching(fa + pattern, a, fb + pattern, b))
        positional.append(crop_pair_matching(pattern, a, pattern, b))
    rate = {
        name: sum(c.hits for c in cs) / sum(c.total for c in cs)
        for name, cs in [("content", content), ("patterned", patterned), ("positional", positional)]
    }
    assert len(content) >= 10
    assert rate["content"] > 0.95
    assert rate["patterned"] < 0.6 * rate["content"]
    assert rate["positional"] < 0.5
    # the same cell: a token is scored a hit only where the true position is within one token
    a = CropBox(0, 0, 120, 120, False)
    tokens = _field_tokens(a, 12, freqs, phases)
    assert crop_pair_matching(tokens, a, tokens, a) == MatchCount(144, 144)
    flipped = CropBox(0, 0, 120, 120, True)
    assert crop_pair_matching(tokens, a, tokens, flipped).hits < 144 * 0.3
    assert crop_pair_matching(
        tokens, a, _field_tokens(flipped, 12, freqs, phases), flipped
    ) == MatchCount(144, 144)
    far = CropBox(200, 200, 50, 50, False)
    assert crop_pair_matching(tokens, a, tokens, far) == MatchCount(0, 0)
    value, stderr, reps = pooled_accuracy({"p0": content[:5], "p1": content[5:10], "p2": patterned})
    assert 0 < value < 1 and stderr > 0 and len(reps) == 3


def test_paired_difference_is_tighter_than_either_error() -> None:
    rng = np.random.default_rng(11)
    content, groups = _crops(10, 4, rng)
    pattern = 0.5 * rng.normal(size=(6, 6, 32))
    full = position_explained_variance(content + pattern, groups)
    half = position_explained_variance(content + 0.8 * pattern, groups)
    diff, stderr = paired_difference(full.value, full.replicates, half.value, half.replicates)
    assert diff > 0 and diff > 5 * stderr
    assert stderr < 0.5 * min(full.stderr, half.stderr)
    with pytest.raises(ValueError, match="same units"):
        paired_difference(1.0, (1.0, 2.0), 0.0, (0.0,))


def test_shift_consistency_known_answers() -> None:
    rng = np.random.default_rng(1)
    scene = rng.normal(size=(12, 12, 16))
    a, b = scene[:8, :8], scene[2:10, 3:11]  # b starts 2 rows, 3 columns further
    assert shift_consistency(a, b, (2, 3)) == pytest.approx(1.0)
    assert shift_consistency(a, a, (0, 0)) == pytest.approx(1.0)
    pattern = 3 * rng.normal(size=(8, 8, 16))
    assert shift_consistency(a + pattern, b + pattern, (2, 3)) < 0.5


def test_stereo_accuracy_known_disparity() -> None:
    from pipeline.evaluation.probes import stereo_accuracy

    rng = np.random.default_rng(2)
    right = rng.normal(size=(6, 20, 16))
    disparity = np.full((6, 20), np.nan)
    left = np.empty_like(right)
    for i in range(6):
        for j in range(20):
            d = (i + j) % 4  # a known disparity field
            left[i, j] = right[i, max(0, j - d)]
            if j - d >= 0:
                disparity[i, j] = d
    assert stereo_accuracy(left, right, disparity) == pytest.approx(1.0)
    wrong = np.where(np.isfinite(disparity), disparity + 3, np.nan)
    assert stereo_accuracy(left, right, wrong) < 0.3


def test_stereo_paired_difference_over_rows_finds_a_planted_drop() -> None:
    """``stereo_counts`` per row, paired between two outputs of one pair: tokens planted as
    noise lower the accuracy by their share, the jackknife error over rows is well below that
    drop, and an output that matches the same tokens reads 0 with no spread."""
    from pipeline.evaluation.metrics import paired_difference, pooled_accuracy
    from pipeline.evaluation.probes import stereo_accuracy, stereo_counts

    rng = np.random.default_rng(4)
    right = rng.normal(size=(16, 40, 32))
    disparity = np.tile(np.arange(40) % 5, (16, 1)).astype(float)
    cols = np.maximum(np.arange(40) - disparity, 0).astype(int)
    left = right[np.arange(16)[:, None], cols]
    disparity[np.arange(40)[None] - disparity < 0] = np.nan
    base = pooled_accuracy(stereo_counts(left, right, disparity))
    assert base[0] == pytest.approx(1.0) == stereo_accuracy(left, right, disparity)
    planted = rng.random(size=(16, 40)) < 0.25
    noisy = np.where(planted[..., None], rng.normal(size=left.shape), left)
    worse = pooled_accuracy(stereo_counts(noisy, right, disparity))
    diff, se = paired_difference(worse[0], worse[2], base[0], base[2])
    # a noise token still hits by chance: 1 of the j + 1 candidates is its match, and up to
    # 3 of them lie within one token of the truth
    known = np.isfinite(disparity)
    j = np.broadcast_to(np.arange(40), known.shape)
    match = j - np.nan_to_num(disparity)
    near = np.minimum(match + 1, j) - np.maximum(match - 1, 0) + 1
    expected = -(planted & known)[known].dot(1 - (near / (j + 1))[known]) / known.sum()
    assert diff == pytest.approx(expected, abs=0.03) and se < abs(diff) / 4
    same = pooled_accuracy(stereo_counts(left + 1e-6, right, disparity))
    assert paired_difference(same[0], same[2], base[0], base[2]) == (0.0, 0.0)


def _texture_tokens(rgb: np.ndarray, grid: int) -> np.ndarray:
    """(H, W, 3) -> (grid, grid, 48): each token the 4 x 4 colour blocks of its square-resized
    pixels, centred: features that follow content and carry no position."""
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).resize((4 * grid, 4 * grid), Image.BILINEAR), float)
    blocks = small.reshape(grid, 4, grid, 4, 3).transpose(0, 2, 1, 3, 4).reshape(grid, grid, 48)
    return blocks - blocks.mean(axis=(0, 1))


def test_stereo_windows_score_content_and_not_a_positional_pattern() -> None:
    """Offset windows of a pair with a known disparity: features that follow content find it in
    every window (so each window's disparity is the pair's plus its offset, in the right
    direction); a pattern tied to token positions, which scores 1 on the whole pair where the
    disparity is under a token, scores 0 on the windows; on the whole motorcycle pair at 224 px
    it scores 0.64, and every window's token disparity there is over one token."""
    from PIL import Image

    from pipeline.evaluation.probes import (
        StereoPair,
        disparity_to_tokens,
        motorcycle_pair,
        stereo_accuracy,
        stereo_window_counts,
        stereo_windows,
    )

    rng = np.random.default_rng(5)
    coarse = (rng.random((16, 32, 3)) * 255).astype(np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((256, 128), Image.BICUBIC))
    shift = 4  # pixels: right[x - 4] = left[x]
    pair = StereoPair(
        texture[:, :240], texture[:, shift : 240 + shift], np.full((128, 240), float(shift))
    )
    windows = stereo_windows(pair, 12, seed=0)
    grid = 16
    tokens = [(_texture_tokens(w.left, grid), _texture_tokens(w.right, grid)) for w in windows]
    lefts, rights = (np.stack(side) for side in zip(*tokens, strict=True))
    content = pooled_accuracy(stereo_window_counts(lefts, rights, windows))
    assert content[0] > 0.9 and len(content[2]) == 12
    pattern = np.broadcast_to(rng.normal(size=(grid, grid, 48)), lefts.shape)
    assert pooled_accuracy(stereo_window_counts(pattern, pattern, windows))[0] == 0.0
    truth = disparity_to_tokens(pair.disparity, grid)
    assert stereo_accuracy(pattern[0], pattern[0], truth) == 1.0
    with pytest.raises(ValueError, match="windows"):
        stereo_window_counts(lefts[:3], rights[:3], windows)
    whole = motorcycle_pair()
    at_224 = disparity_to_tokens(whole.disparity, grid)
    assert stereo_accuracy(pattern[0], pattern[0], at_224) == pytest.approx(0.64, abs=0.01)
    motorcycle = stereo_windows(whole, 20, seed=0)
    smallest = min(np.nanmin(disparity_to_tokens(w.disparity, grid)) for w in motorcycle)
    assert smallest > 1.0


def test_prototype_miou_and_token_labels() -> None:
    from pipeline.evaluation.probes import IGNORE, labels_to_tokens, prototype_miou

    labels = np.zeros((40, 40), dtype=np.int64)
    labels[:, 20:] = 3
    labels[:6] = IGNORE  # the first token row is 60 % unlabelled
    tokens = labels_to_tokens(labels, 4)
    assert tokens[0].tolist() == [IGNORE] * 4
    assert tokens[1:, :2].tolist() == [[0, 0]] * 3 and tokens[1:, 2:].tolist() == [[3, 3]] * 3
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 8))
    features = centres[tokens.clip(0)] + 0.05 * rng.normal(size=(4, 4, 8))
    assert prototype_miou(features, tokens) == pytest.approx(1.0)
    assert prototype_miou(rng.normal(size=(4, 4, 8)), tokens) < 0.9


def test_mask_views_cut_photo_and_labels_alike() -> None:
    from pipeline.evaluation.probes import IGNORE, MaskedImage, mask_views

    labels = np.zeros((120, 160), dtype=np.int64)
    labels[30:90, 40:100] = 2
    labels[100:, 120:] = 5
    labels[:5] = IGNORE
    rgb = np.stack(
        [
            labels.clip(0) * 40,
            np.arange(160)[None].repeat(120, 0),
            np.arange(120)[:, None].repeat(160, 1),
        ],
        axis=-1,
    ).astype(np.uint8)
    views = mask_views(MaskedImage("toy", rgb, labels), 6, np.random.default_rng(0))
    assert views[0].name == "toy" and views[0].labels is labels
    assert [v.name for v in views[1:]] == [f"toy-c{k:02d}" for k in range(6)]
    for view in views[1:]:
        assert view.rgb.shape[:2] == view.labels.shape
        assert 0.5 * 120 <= view.labels.shape[0] <= 120
        known = view.labels != IGNORE
        # the red channel encodes the label: crop and flip were applied to both alike
        assert np.array_equal(view.rgb[..., 0][known], (view.labels[known] * 40).astype(np.uint8))
        _, counts = np.unique(view.labels[known], return_counts=True)
        assert (counts >= 0.05 * known.sum()).sum() >= 2
    flipped = [v for v in views[1:] if v.rgb[0, 0, 1] > v.rgb[0, -1, 1]]
    assert 0 < len(flipped) < 6
    again = mask_views(MaskedImage("toy", rgb, labels), 6, np.random.default_rng(0))
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(views, again, strict=True))
    single = np.zeros((60, 60), dtype=np.int64)  # one class: no crop can hold two
    assert (
        len(
            mask_views(
                MaskedImage("one", rgb[:60, :60], single), 3, np.random.default_rng(0), max_tries=5
            )
        )
        == 1
    )


def test_paired_summary_known_answer() -> None:
    from pipeline.evaluation.probes import paired_summary

    summary = paired_summary({"raw": [0.5, 0.6, 0.7], "clean": [0.6, 0.6, 0.9]})
    assert summary["raw"] == {"mean": pytest.approx(0.6), "diff": 0.0, "diff_stderr": 0.0}
    assert summary["clean"]["mean"] == pytest.approx(0.7)
    assert summary["clean"]["diff"] == pytest.approx(0.1)
    assert summary["clean"]["diff_stderr"] == pytest.approx(0.1 / np.sqrt(3))
    assert paired_summary({"raw": [0.4]})["raw"]["diff_stderr"] == 0.0


def _blur(fine: np.ndarray, scale: int) -> np.ndarray:
    """A fine map pooled to its tokens and upsampled back bilinearly: detail finer than a
    token gone, as bilinear upsampling of token features has it."""
    from pipeline.models.baselines import bilinear_fine
    from pipeline.models.subpatch import pool_fine

    return bilinear_fine(pool_fine(fine, scale), scale)


def test_fine_matching_finds_detail_finer_than_a_token() -> None:
    """On a 24 x 24 fine grid (12 tokens of 2 x 2 cells): content with detail at the cell
    scale matches within one cell; the same content blurred to token resolution falls well
    below; a planted fine positional pattern lowers it; noise reads chance (3 x 3 of 576)."""
    rng = np.random.default_rng(5)
    # periods of ~20 px: a cell is 3-7 px of the photo, a token twice that
    freqs, phases = rng.normal(scale=2 * np.pi / 20, size=(96, 2)), rng.uniform(0, 6.3, 96)
    pattern = 4 * rng.normal(size=(24, 24, 96))
    rates: dict[str, list[MatchCount]] = {
        "sharp": [],
        "blurred": [],
        "patterned": [],
        "noise": [],
        "sharp, one token": [],
    }
    for _ in range(40):
        a, b = (random_crop_box(300, 400, rng, (0.4, 0.8)) for _ in range(2))
        if overlap_share(a, b) < 0.3:
            continue
        fa, fb = _field_tokens(a, 24, freqs, phases), _field_tokens(b, 24, freqs, phases)
        rates["sharp"].append(crop_pair_matching(fa, a, fb, b))
        rates["sharp, one token"].append(crop_pair_matching(fa, a, fb, b, tolerance=2))
        rates["blurred"].append(crop_pair_matching(_blur(fa, 2), a, _blur(fb, 2), b))
        rates["patterned"].append(crop_pair_matching(fa + pattern, a, fb + pattern, b))
        rates["noise"].append(
            crop_pair_matching(rng.normal(size=fa.shape), a, rng.normal(size=fb.shape), b)
        )
    rate = {k: sum(c.hits for c in v) / sum(c.total for c in v) for k, v in rates.items()}
    assert len(rates["sharp"]) >= 10
    assert rate["sharp"] > 0.75 and rate["sharp, one token"] >= rate["sharp"]
    assert rate["blurred"] < 0.75 * rate["sharp"]
    assert rate["patterned"] < 0.6 * rate["sharp"]
    assert rate["noise"] < 0.03


def test_boundary_accuracy_reads_sharp_edges_and_chance() -> None:
    from pipeline.evaluation.probes import IGNORE, boundary_accuracy, boundary_cells

    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[0:32, 0:32]
    labels = (xx + 0.6 * yy > 21).astype(np.int64)
    labels[:2] = IGNORE
    edge = boundary_cells(labels, 2)
    assert edge.sum() > 0 and not edge[:2].any() and not edge[:, :5][labels[:, :5] == 0].all()
    codes = rng.normal(size=(2, 64))
    sharp = codes[labels.clip(0)] + 0.3 * rng.normal(size=(32, 32, 64))
    assert boundary_accuracy(sharp, labels) > 0.97
    blurred = boundary_accuracy(_blur(sharp, 4), labels)  # 8 x 8 tokens of 4 x 4 cells
    assert blurred < boundary_accuracy(sharp, labels) - 0.02
    pattern = 4 * rng.normal(size=(32, 32, 64))
    assert boundary_accuracy(sharp + pattern, labels) < boundary_accuracy(sharp, labels)
    chance = [boundary_accuracy(rng.normal(size=(32, 32, 64)), labels) for _ in range(20)]
    assert abs(np.mean(chance) - 0.5) < 0.05
