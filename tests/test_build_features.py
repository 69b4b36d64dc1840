"""build_features: the sample spread over the listing, and stage 1 at several sizes training one
denoiser. The README's build_features command, run twice as written by tests/test_readme.py,
checks the three chained jobs, their summary and a rerun that skips every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.distributed.features import list_images
from pipeline.evaluation.samples import sample_photos
from pipeline.job_config import InputConfig


def _folder(path: Path, count: int) -> Path:
    path.mkdir()
    for name, photo in list(sample_photos(count).items()):
        small = Image.fromarray(photo)
        small.thumbnail((96, 96))
        small.save(path / f"{name}.png")
    return path


def test_input_sample_spreads_over_the_sorted_listing(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(10):
        (folder / f"{k:02d}.png").write_bytes(b"x")
    names = [Path(u).stem for u in list_images(InputConfig(uri=str(folder), sample=4))]
    assert names == ["00", "02", "05", "07"]  # first, evenly on, never past the end
    assert len(list_images(InputConfig(uri=str(folder), sample=0))) == 10
    assert len(list_images(InputConfig(uri=str(folder), sample=50))) == 10


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_build_features_at_two_sizes_trains_one_denoiser_for_both(tmp_path: Path) -> None:
    """image_sizes: one stage-1 run per size (size_samples images each) into the sample folder,
    one training on both (the embedding on the larger grid), distilled on crops at both sizes (a
    photo that does not decode is skipped, not fatal); denoise_all=false stops there. The
    README's command distils too, denoises with the student and skips the step on rerun."""
    from pipeline.distributed.build import format_build_summary, run_build_job
    from pipeline.job_config import BuildJobConfig, resolve_job
    from pipeline.models.denoiser import read_denoiser_meta
    from pipeline.stages.distill import DISTILLED
    from pipeline.store import feature_grids, select_runs

    src = _folder(tmp_path / "in", 3)
    (src / "zz-broken.png").write_bytes(b"not an image")  # quarantined; skipped by distill
    out = tmp_path / "out"
    cfg = resolve_job(
        BuildJobConfig,
        "build_smoke",
        [
            f"input.uri={src}",
            f"output_uri={out}",
            "sample=0",
            "image_sizes=[64,112]",
            "size_samples=[4,2]",  # the 64 px run lists the broken file too
            "clean=[preset=shift_smoke,calibration.crops_per_image=2,engine.resize.aspect=square]",
            "denoise_all=false",
            "distill.rounds=1",
        ],
    )
    summary = run_build_job(cfg)
    steps = summary["steps"]
    assert steps["clean@64"]["done"] == 3 and steps["clean@112"]["done"] == 2  # size_samples
    sample = str(out / "sample")
    assert len({run.config_digest for run in select_runs(sample, method="dvt-fit")}) == 2
    assert set(feature_grids(sample, method="dvt-fit")) == {(4, 4), (7, 7)}
    assert steps["train"]["train_images"] + steps["train"]["val_images"] == 5  # both sizes
    meta = read_denoiser_meta(str(out / "denoiser"))
    assert meta["grid"] == 7 and meta["job"]["input"]["all_configs"] is True
    assert "denoise" not in steps and not (out / "features").exists()  # denoise_all=false
    # distilled at both sizes on 2 crops of each sample image that decodes
    distill = steps["distill"]
    assert distill["photos"] == 3 and distill["skipped_photos"] == 1 and distill["crops"] == 6
    assert distill["sizes"] == [64, 112] and summary["denoiser"] == str(out / "distilled")
    record = read_denoiser_meta(str(out / "distilled"))[DISTILLED]
    assert record["rounds"] == 1 and len(record["losses"]) == record["config"]["train"]["epochs"]
    assert "distill   1 rounds on 6 crops of 3 images" in format_build_summary(summary)
    assert "denoiser in" in format_build_summary(summary)


def test_distill_key_names_what_makes_the_student(tmp_path: Path) -> None:
    """A distilled export is reused only for the same source weights, photos, sizes and
    settings; resources and threads do not change what is learnt."""
    from pipeline.distributed.distill import distill_key
    from pipeline.job_config import DistillStepConfig
    from pipeline.models.denoiser import Denoiser, DenoiserConfig, save_denoiser
    from pipeline.stages.distill import DistillTask

    source = str(tmp_path / "export")
    torch.manual_seed(0)
    save_denoiser(Denoiser(DenoiserConfig(channels=8, grid=3)), source, {})
    base = DistillStepConfig(rounds=2)

    def key(
        cfg: DistillStepConfig = base, photos: tuple[str, ...] = ("a", "b"), size: int = 224
    ) -> str:
        task = DistillTask(source, "out", list(photos), [size], cfg, InputConfig(), None, {})
        return distill_key(task)

    same = [DistillStepConfig(rounds=2, num_cpus=4, num_gpus=1, torch_threads=3)]
    assert all(key(cfg) == key() for cfg in same)
    assert key(photos=("b", "a")) == key()  # the listing's order is not the sample's content
    others = [DistillStepConfig(rounds=3), DistillStepConfig(rounds=2, crops_per_image=1)]
    assert len({key(), *(key(cfg) for cfg in others), key(photos=("a",)), key(size=518)}) == 5
    first = key()
    torch.manual_seed(1)  # the source retrained: other weights
    save_denoiser(Denoiser(DenoiserConfig(channels=8, grid=3)), source, {})
    assert key() != first
