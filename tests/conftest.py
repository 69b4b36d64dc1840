"""Shared fixtures: the real DINOv2-S/14 weights, a tiny random ViT, and real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import FeatureExtractor, load_extractor
from pipeline.samples import sample_photo

SHARED_ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
DINOV2_WEIGHTS = SHARED_ASSETS / "dinov2_vits14.safetensors"


@pytest.fixture(scope="session")
def dinov2_weights() -> Path:
    """Real DINOv2 ViT-S/14 weights in timm's layout, from ../shared/assets."""
    if not DINOV2_WEIGHTS.is_file():
        pytest.fail(f"missing {DINOV2_WEIGHTS}: the shared assets must sit beside the checkout")
    return DINOV2_WEIGHTS


@pytest.fixture(scope="session")
def dinov2(dinov2_weights: Path) -> FeatureExtractor:
    """The real ViT-S/14 on the CPU."""
    return load_extractor("vit_small_patch14_dinov2", weights=str(dinov2_weights), device="cpu")


@pytest.fixture(scope="session")
def tiny_vit() -> FeatureExtractor:
    """timm's tiny random ``test_vit`` (patch 16, 64 channels): fast mechanics tests."""
    return load_extractor("test_vit", weights="random", device="cpu")


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """A few real photos shipped inside scikit-image."""
    return {name: sample_photo(name) for name in ("astronaut", "chelsea", "coffee")}
