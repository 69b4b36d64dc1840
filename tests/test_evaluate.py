"""jobs/evaluate end to end on a smoke corpus: every file of the report, every measure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.evaluate import run_evaluation
from pipeline.evaluation.samples import sample_photos
from pipeline.job_config import EvaluateConfig, resolve_clean_job, resolve_job
from pipeline.models.denoiser import Denoiser, DenoiserConfig, save_denoiser
from pipeline.models.vit import FeatureExtractor

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_evaluate_writes_the_whole_report(tmp_path: Path, tiny_vit: FeatureExtractor) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for name, photo in sample_photos(8).items():
        Image.fromarray(photo).resize((160, 120)).save(src / f"{name}.png")
    features = tmp_path / "features"
    run_clean_job(resolve_clean_job("smoke", [f"input.uri={src}", f"output.uri={features}",
                                              "engine.fit.steps=30"]))
    export = tmp_path / "denoiser"
    model = Denoiser(DenoiserConfig(channels=tiny_vit.embed_dim, grid=7))
    torch.nn.init.normal_(model.pos_embed, std=0.1)
    save_denoiser(model, str(export), {"model": "test_vit", "weights": "random",
                                       "weights_digest": tiny_vit.weights_digest})
    out = tmp_path / "report"
    cfg = resolve_job(EvaluateConfig, "evaluate", [
        f"features.uri={features}", f"denoiser.uri={export}", f"out={out}", f"images={src}",
        "crops_per_photo=2", "mask_crops=1", "figures=2", "calibration_crops=2",
        "stage1=[engine.fit.steps=30]"])
    metrics = run_evaluation(cfg)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["methods"] == ["raw", "clean", "raw_minus_g", "denoised", "calib", "tta",
                                "calib+tta", "raw_minus_mean_g"]
    assert saved["pev_crops"] == 16 and saved["pev_photos"] == 8
    for key in ("pev", "pev_stderr", "matching", "stereo", "seconds_per_image"):
        assert set(metrics[key]) == set(saved["methods"]), key
    assert set(metrics["shift"]) >= {"raw", "denoised"}
    assert all(e > 0 for e in metrics["pev_stderr"].values())
    assert all(0.0 <= s["value"] <= 1.0 for s in metrics["matching"].values())
    assert metrics["calibration"]["crops"] == 8 * 2
    assert set(metrics["masks"]) == {"voc", "quokka", "all"}
    assert metrics["mask_views"] == {"voc": 2, "quokka": 2, "all": 4}
    paired = metrics["masks_paired"]["all"]
    assert paired["raw"]["diff"] == 0.0 and set(paired) == set(saved["methods"])
    for name in ("voc", "quokka", "all"):
        assert all(0.0 <= v <= 1.0 for v in metrics["masks"][name].values())
        assert paired["clean"]["diff_stderr"] >= 0.0
    assert all(0.0 <= v <= 1.0 for v in metrics["stereo"].values())
    assert np.isfinite(metrics["g_agreement"]) and metrics["g_agreement_images"] == 8
    assert metrics["fit"]["images"] == 8
    report = (out / "report.md").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(figures) == 3 and "artifact_grid.png" in figures
    for name in figures:
        assert f"(figures/{name})" in report
    for word in ("Position-explained variance", "Shift consistency", "Stereo probe",
                 "Mask probe", "G agreement", "raw - G", "minus raw's on the same views",
                 "Crop-pair matching", "calib+tta", "raw - mean G", "seconds per image"):
        assert word in report
    # a second evaluation reuses the fitted evaluation inputs
    again = run_evaluation(cfg)
    assert again["pev"] == pytest.approx(metrics["pev"])
