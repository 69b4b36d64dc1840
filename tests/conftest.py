"""Shared fixtures: the real DINOv2-S/14 weights, a tiny random ViT, and real photos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline import FeatureExtractor, load_extractor
from pipeline.evaluation.samples import sample_photo

# Before Ray is imported by any test module:
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Fake credentials for the local moto S3 server; Ray workers inherit them at start.
for _key, _value in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ.setdefault(_key, _value)

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


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray for the session, on 127.0.0.1, more logical CPUs than cores."""
    import ray

    ray.init(
        num_cpus=8,
        include_dashboard=False,
        _temp_dir="/tmp/dvt-test-ray",
        runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API: moto's server on 127.0.0.1 with fake credentials in the environment."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
