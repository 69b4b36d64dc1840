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
    one training on both (the embedding on the larger grid); denoise_all=false stops there."""
    from pipeline.distributed.build import format_build_summary, run_build_job
    from pipeline.job_config import BuildJobConfig, resolve_job
    from pipeline.models.denoiser import read_denoiser_meta
    from pipeline.store import feature_grids, select_runs

    src = _folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    cfg = resolve_job(
        BuildJobConfig,
        "build_smoke",
        [
            f"input.uri={src}",
            f"output_uri={out}",
            "sample=0",
            "image_sizes=[64,112]",
            "size_samples=[3,2]",
            "clean=[preset=shift_smoke,calibration.crops_per_image=2,engine.resize.aspect=square]",
            "denoise_all=false",
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
    assert "denoiser in" in format_build_summary(summary)


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_build_features_distils_the_export_and_denoises_with_it(tmp_path: Path) -> None:
    """distill.rounds: after training, a Ray task teaches the export's one forward its two-view
    output on crops of the sample (a photo that does not decode is skipped, not fatal) and
    writes ``distilled/``; every image is denoised with that export; a rerun skips the step."""
    from pipeline.distributed.build import format_build_summary, run_build_job
    from pipeline.job_config import BuildJobConfig, resolve_job
    from pipeline.models.denoiser import denoiser_digest, load_denoiser
    from pipeline.stages.distill import DISTILLED
    from pipeline.store import select_runs

    src = _folder(tmp_path / "in", 3)
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    overrides = [f"input.uri={src}", f"output_uri={out}", "distill.rounds=2"]
    summary = run_build_job(resolve_job(BuildJobConfig, "build_smoke", overrides))
    step = summary["steps"]["distill"]
    assert not step["skipped"] and step["rounds"] == 2
    assert step["photos"] == 3 and step["skipped_photos"] == 1 and step["crops"] == 6
    trained, distilled = load_denoiser(str(out / "denoiser")), load_denoiser(str(out / "distilled"))
    record = distilled.meta[DISTILLED]
    assert len(record["losses"]) == 2 * record["config"]["train"]["epochs"]
    assert distilled.meta["grid"] == trained.meta["grid"]  # the source's meta carried over
    assert denoiser_digest(distilled) != denoiser_digest(trained)
    (run,) = select_runs(str(out / "features"), method="denoiser")
    assert run.meta.denoiser_digest == denoiser_digest(distilled)  # denoised with the student
    assert summary["denoiser"] == str(out / "distilled")
    assert "distill   2 rounds on 6 crops of 3 images" in format_build_summary(summary)

    again = run_build_job(resolve_job(BuildJobConfig, "build_smoke", overrides))
    assert again["steps"]["distill"]["skipped"] and again["steps"]["train"]["skipped"]
    assert again["steps"]["denoise"]["done"] == 0


def test_distill_key_names_what_makes_the_student(tmp_path: Path) -> None:
    """A distilled export is reused only for the same source weights, photos, sizes and
    settings; resources and threads do not change what is learnt."""
    from pipeline.distributed.distill import distill_key
    from pipeline.job_config import DistillStepConfig
    from pipeline.models.denoiser import Denoiser, DenoiserConfig, save_denoiser

    source = str(tmp_path / "export")
    torch.manual_seed(0)
    save_denoiser(Denoiser(DenoiserConfig(channels=8, grid=3)), source, {})
    base = DistillStepConfig(rounds=2)

    def key(cfg: DistillStepConfig = base, photos: tuple[str, ...] = ("a", "b")) -> str:
        return distill_key(source, list(photos), [224], cfg, None, {})

    same = [DistillStepConfig(rounds=2, num_cpus=4, num_gpus=1, torch_threads=3)]
    assert all(key(cfg) == key() for cfg in same)
    assert key(photos=("b", "a")) == key()  # the listing's order is not the sample's content
    others = [DistillStepConfig(rounds=3), DistillStepConfig(rounds=2, crops_per_image=1)]
    assert len({key(), *(key(cfg) for cfg in others), key(photos=("a",))}) == 4
    assert distill_key(source, ["a", "b"], [518], base, None, {}) != key()
    first = key()
    torch.manual_seed(1)  # the source retrained: other weights
    save_denoiser(Denoiser(DenoiserConfig(channels=8, grid=3)), source, {})
    assert key() != first
