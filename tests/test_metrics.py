"""Artifact measures on synthetic inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import position_explained_variance, shift_consistency, token_distance


def test_position_explained_variance_on_known_inputs() -> None:
    rng = np.random.default_rng(0)
    content = rng.normal(size=(64, 6, 6, 32))
    pattern = rng.normal(size=(6, 6, 32))
    groups = np.repeat(np.arange(16), 4)
    planted = position_explained_variance(content + pattern, groups)
    assert planted == pytest.approx(0.5, abs=0.05)  # pattern and content of equal variance
    assert abs(position_explained_variance(content, groups)) < 0.01
    shuffled = np.stack([np.roll((content + pattern)[i].reshape(36, 32), rng.integers(36), 0)
                         .reshape(6, 6, 32) for i in range(64)])
    assert abs(position_explained_variance(shuffled, groups)) < 0.05
    assert token_distance(content, content) == pytest.approx(0.0, abs=1e-9)
    assert token_distance(content, -content) == pytest.approx(2.0)


def test_shift_consistency_known_answers() -> None:
    rng = np.random.default_rng(1)
    scene = rng.normal(size=(12, 12, 16))
    a, b = scene[:8, :8], scene[2:10, 3:11]  # b starts 2 rows, 3 columns further
    assert shift_consistency(a, b, (2, 3)) == pytest.approx(1.0)
    assert shift_consistency(a, a, (0, 0)) == pytest.approx(1.0)
    pattern = 3 * rng.normal(size=(8, 8, 16))
    assert shift_consistency(a + pattern, b + pattern, (2, 3)) < 0.5


def test_stereo_accuracy_known_disparity() -> None:
    from pipeline.probes import stereo_accuracy

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


def test_prototype_miou_and_token_labels() -> None:
    from pipeline.probes import IGNORE, labels_to_tokens, prototype_miou

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
    from pipeline.probes import IGNORE, MaskedImage, mask_views

    labels = np.zeros((120, 160), dtype=np.int64)
    labels[30:90, 40:100] = 2
    labels[100:, 120:] = 5
    labels[:5] = IGNORE
    rgb = np.stack([labels.clip(0) * 40, np.arange(160)[None].repeat(120, 0),
                    np.arange(120)[:, None].repeat(160, 1)], axis=-1).astype(np.uint8)
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
    assert len(mask_views(MaskedImage("one", rgb[:60, :60], single), 3,
                          np.random.default_rng(0), max_tries=5)) == 1


def test_paired_summary_known_answer() -> None:
    from pipeline.probes import paired_summary

    summary = paired_summary({"raw": [0.5, 0.6, 0.7], "clean": [0.6, 0.6, 0.9]})
    assert summary["raw"] == {"mean": pytest.approx(0.6), "diff": 0.0, "diff_stderr": 0.0}
    assert summary["clean"]["mean"] == pytest.approx(0.7)
    assert summary["clean"]["diff"] == pytest.approx(0.1)
    assert summary["clean"]["diff_stderr"] == pytest.approx(0.1 / np.sqrt(3))
    assert paired_summary({"raw": [0.4]})["raw"]["diff_stderr"] == 0.0
