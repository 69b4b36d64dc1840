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
