"""Presets load into typed configs; overrides are type-checked; digests are stable."""

from __future__ import annotations

import pytest

from pipeline.config import (
    EngineConfig,
    apply_overrides,
    config_digest,
    config_to_dict,
    engine_preset,
    from_dict,
)


@pytest.mark.parametrize("name", ["paper", "fast", "smoke"])
def test_presets_load(name: str) -> None:
    cfg = engine_preset(name)
    assert cfg.name == name
    assert isinstance(cfg.fit.betas, tuple)
    assert from_dict(EngineConfig, config_to_dict(cfg)) == cfg


def test_paper_preset_is_the_reference() -> None:
    cfg = engine_preset("paper")
    assert cfg.views.num_views == 769
    assert cfg.fit.steps == 20000 and cfg.fit.tokens_per_step == 2048
    assert (cfg.field.num_levels, cfg.field.features_per_level) == (16, 8)
    assert (cfg.field.min_resolution, cfg.field.max_resolution) == (16, 1024)
    assert cfg.fit.lr == 1e-2 and cfg.fit.betas == (0.9, 0.99) and cfg.fit.eps == 1e-15


def test_overrides_apply_and_coerce() -> None:
    cfg = engine_preset("fast", ["fit.steps=12", "views.scale=[0.2, 0.4]", "fit.lr=1e-3"])
    assert cfg.fit.steps == 12
    assert cfg.views.scale == (0.2, 0.4)
    assert cfg.fit.lr == pytest.approx(1e-3)
    assert engine_preset("fast", ["image_size=224"]).image_size == 224


@pytest.mark.parametrize(
    "override",
    ["fit.stepz=3", "fit.steps=many", "fit.steps", "views.scale=[1]", "nosuch.key=1"],
)
def test_bad_overrides_raise(override: str) -> None:
    with pytest.raises(ValueError):
        apply_overrides(engine_preset("smoke"), [override])


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fast"):
        engine_preset("nonexistent")


def test_digest_changes_with_content_only() -> None:
    a = engine_preset("fast")
    assert config_digest(a) == config_digest(engine_preset("fast"))
    assert config_digest(a) != config_digest(apply_overrides(a, ["fit.steps=601"]))
