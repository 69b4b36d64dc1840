"""Stage 2 on a local Ray: Ray Train on a real committed corpus, resume, export, denoise_dataset."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from pipeline.config import output_digest
from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.denoise import denoise_settings, run_denoise_job
from pipeline.distributed.train import run_train_job
from pipeline.engine_config import ResizeConfig
from pipeline.evaluation.samples import sample_photos
from pipeline.job_config import DenoiseJobConfig, TrainJobConfig, resolve_clean_job, resolve_job
from pipeline.models.denoiser import DenoisedViT, load_denoiser, smooth_tokens
from pipeline.models.denoiser_train import ValidationSums, is_validation
from pipeline.models.views import full_view_pixels, token_grid
from pipeline.store import FeatureDataset, column_to_numpy, committed_runs, read_features_table

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _crops(folder: Path, count: int) -> None:
    """``count`` random crops of the bundled photos as JPEG files."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photos = list(sample_photos(8).values())
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        scale = rng.uniform(0.4, 0.9)
        h, w = int(height * scale), int(width * scale)
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = np.ascontiguousarray(photo[y : y + h, x : x + w])
        Image.fromarray(crop).resize((160, int(160 * h / w))).save(folder / f"c{i:03d}.jpg")


@pytest.fixture(scope="session")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, dinov2_weights: Path, local_ray: None
) -> tuple[Path, Path]:
    """(images, features): 24 crops through clean_dataset with the real DINOv2-S/14 weights."""
    root = tmp_path_factory.mktemp("corpus")
    _crops(root / "images", 24)
    cfg = resolve_clean_job(
        "smoke",
        [
            f"input.uri={root / 'images'}",
            f"output.uri={root / 'features'}",
            "model.name=vit_small_patch14_dinov2",
            f"model.weights={dinov2_weights}",
            "engine.fit.steps=120",
            "engine.views.num_views=8",
        ],
    )
    assert run_clean_job(cfg)["done"] == 24
    return root / "images", root / "features"


def _kill_a_train_worker_after_first_checkpoint(
    run_dir: Path, stop: threading.Event, killed: list[int]
) -> None:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not stop.is_set() and not killed:
        # the checkpoint counts once registered in the snapshot, not when its folder appears
        if snapshot.is_file() and '"epoch-0001"' in snapshot.read_text():
            for proc in psutil.Process().children(recursive=True):  # this session's Ray only
                try:
                    if "RayTrainWorker" in " ".join(proc.cmdline()):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                        return
                except psutil.Error:
                    continue
        time.sleep(0.1)


def _val_metrics(export: Path, features: Path, fraction: float) -> dict[str, float]:
    """Validation metrics of an exported denoiser, recomputed without Ray."""
    data = FeatureDataset(str(features))
    model = load_denoiser(str(export))
    sums = ValidationSums()
    for i in range(len(data)):
        item = data[i]
        if is_validation(item["image_id"], fraction):
            raw, clean = item["raw"][None], item["clean"][None]
            with torch.no_grad():
                sums.add(raw, model(raw), clean)
    return sums.metrics()


def _clean_tokens(
    out: Path, file_name: str, grid: tuple[int, int], config_digest: str | None = None
) -> np.ndarray:
    """The committed ``clean`` tokens (h, w, C) float32 of the input named ``file_name``."""
    table = read_features_table(
        str(out), ["source_uri", "clean"], config_digest=config_digest, grid=grid
    )
    names = [Path(u).name for u in table["source_uri"].to_pylist()]
    return column_to_numpy(table["clean"])[names.index(file_name)].astype(np.float32)


def test_train_kill_resume_export_and_denoise(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    images, features = corpus
    storage = tmp_path / "training"
    overrides = [f"input.uri={features}", f"run.storage_path={storage}", "run.name=t1"]
    stop, killed = threading.Event(), []
    watcher = threading.Thread(
        target=_kill_a_train_worker_after_first_checkpoint,
        args=(storage / "t1", stop, killed),
        daemon=True,
    )
    watcher.start()
    try:
        summary = run_train_job(
            resolve_job(TrainJobConfig, "train_smoke", [*overrides, "train.epochs=4"])
        )
    finally:
        stop.set()
        watcher.join()
    assert killed, "no training worker was seen after the first checkpoint"
    # the group restarted from a checkpoint: the step count went on, it did not restart
    steps_per_epoch = (summary["train_images"] // 2) // 4
    assert summary["epoch"] == 4 and summary["steps"] == 4 * steps_per_epoch
    assert summary["resumed_at_steps"] and min(summary["resumed_at_steps"]) >= steps_per_epoch
    assert summary["val_loss"] < summary["val_raw_loss"]  # below the raw-features baseline
    # train.init=pattern: the mean G of the rows of the corpus's most common grid
    assert summary["start"].startswith("mean G of ") and "stage-1 rows" in summary["start"]

    export = Path(summary["export"])
    assert (export / "denoiser.safetensors").is_file() and (export / "denoiser.json").is_file()
    # the export is the model that was validated in training: same metrics without Ray
    again = _val_metrics(export, features, 0.2)
    assert again["val_images"] == summary["val_images"]
    assert again["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-4)

    # a re-submission with the same name resumes from the last checkpoint
    more = run_train_job(resolve_job(TrainJobConfig, "train_smoke", [*overrides, "train.epochs=5"]))
    assert more["steps"] == 5 * steps_per_epoch
    assert more["resumed_at_steps"][-1] == summary["steps"]

    # the online path: committed rows with the schema of clean_dataset
    out = tmp_path / "denoised"
    cfg = resolve_job(
        DenoiseJobConfig,
        "denoise_smoke",
        [f"input.uri={images}", f"output.uri={out}", f"denoiser.uri={export}"],
    )
    result = run_denoise_job(cfg)
    assert result["done"] == 24 and result["method"] == "denoiser"
    methods = read_features_table(str(out), ["method"])["method"].to_pylist()
    assert set(methods) == {"denoiser"}
    # crops of several aspects: rows of several grids, the same raw tokens as stage 1's
    denoised = FeatureDataset(str(out), ("raw", "clean"))
    stage1 = FeatureDataset(str(features), ("raw",))
    assert len({tuple(denoised[i]["raw"].shape[:2]) for i in range(len(denoised))}) > 1
    by_id = {stage1.image_ids[i]: i for i in range(len(stage1))}
    for i in range(len(denoised)):
        torch.testing.assert_close(
            denoised[i]["raw"], stage1[by_id[denoised.image_ids[i]]]["raw"], atol=2e-2, rtol=0
        )
    model = DenoisedViT.from_pretrained(str(export), device="cpu")
    first = sorted(images.glob("*.jpg"))[0]
    rgb = np.asarray(Image.open(first).convert("RGB"))
    grid_h, grid_w = token_grid(ResizeConfig(), rgb.shape[:2], 8 * 14, 14)
    direct = model(full_view_pixels(rgb, (grid_h * 14, grid_w * 14))[None])[0].numpy()
    clean = _clean_tokens(out, first.name, (grid_h, grid_w))
    np.testing.assert_allclose(clean, direct, atol=2e-2)
    # a refresh with the same denoiser does nothing
    assert run_denoise_job(cfg)["done"] == 0
    # smoothing and mirror-averaging its output make another method: a new run, recorded,
    # with the tokens of the library's model under the same options
    options_cfg = resolve_job(
        DenoiseJobConfig,
        "denoise_smoke",
        [
            f"input.uri={images}",
            f"output.uri={out}",
            f"denoiser.uri={export}",
            "denoiser.smoothing=0.5",
            "denoiser.flip=true",
        ],
    )
    assert run_denoise_job(options_cfg)["done"] == 24
    runs = {(r.meta.denoiser_smoothing, r.meta.denoiser_flip): r for r in committed_runs(str(out))}
    assert set(runs) == {(None, None), (0.5, True)}
    options = _clean_tokens(out, first.name, (grid_h, grid_w), runs[0.5, True].config_digest)
    both = DenoisedViT.from_pretrained(str(export), device="cpu", smoothing=0.5, flip=True)
    pixels = full_view_pixels(rgb, (grid_h * 14, grid_w * 14))[None]
    expected = both(pixels)[0].numpy()
    np.testing.assert_allclose(options, expected, atol=2e-2)
    smoothed = smooth_tokens(torch.from_numpy(direct)[None], 0.5)[0].numpy()
    assert np.abs(expected - smoothed).max() > 0.1  # the mirror is in it


def test_each_denoiser_output_option_makes_its_own_digest() -> None:
    """flip and smoothing each change a denoised run's config digest, alone or together, and
    a run with neither keeps the digest it had before they existed (no keys for them)."""
    options = [[], ["denoiser.flip=true"], ["denoiser.smoothing=0.5"]]
    options.append(options[1] + options[2])
    settings = [
        denoise_settings(
            resolve_job(DenoiseJobConfig, "denoise_smoke", ["denoiser.uri=dinov2_vits14", *o]),
            "d" * 64,
            112,
        )
        for o in options
    ]
    digests = {output_digest("test_vit", "w", s, "float16", False) for s in settings}
    assert len(digests) == len(options)
    assert "flip" not in settings[0] and "smoothing" not in settings[0]


def test_s3_storage_and_another_grid(
    corpus: tuple[Path, Path], s3_endpoint: str, tmp_path: Path
) -> None:
    """Checkpoints and export on S3; a denoiser trained on one token grid runs on another."""
    import s3fs

    images, features = corpus
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir("training")
    options = f"{{endpoint_url: '{s3_endpoint}'}}"
    summary = run_train_job(
        resolve_job(
            TrainJobConfig,
            "train_smoke",
            [
                f"input.uri={features}",
                "run.storage_path=s3://training/dvt",
                "run.name=s3run",
                f"run.storage_options={options}",
                "train.epochs=1",
                "compute.workers=1",
                "train.init=zero",
            ],
        )
    )
    assert summary["export"] == "s3://training/dvt/s3run/export" and summary["start"] == "zero"
    assert summary["checkpoint"].startswith("training/dvt/s3run/epoch-0001")
    storage = {"endpoint_url": s3_endpoint}
    model = DenoisedViT.from_pretrained(summary["export"], device="cpu", storage_options=storage)
    assert model.denoiser.cfg.grid == 8
    out = model(torch.rand(2, 3, 14 * 11, 14 * 13))
    assert out.shape == (2, 11, 13, 384) and torch.isfinite(out).all()
    few = tmp_path / "few"  # four images: the job reads the export from S3, at another size
    few.mkdir()
    for path in sorted(images.glob("*.jpg"))[:4]:
        (few / path.name).write_bytes(path.read_bytes())
    result = run_denoise_job(
        resolve_job(
            DenoiseJobConfig,
            "denoise_smoke",
            [
                f"input.uri={few}",
                f"output.uri={tmp_path / 'den'}",
                f"denoiser.uri={summary['export']}",
                f"denoiser.storage_options={options}",
                "image_size=168",
            ],
        )
    )
    assert result["done"] == 4
    grids = read_features_table(str(tmp_path / "den"), ["grid_h", "grid_w"]).to_pylist()
    assert {min(g["grid_h"], g["grid_w"]) for g in grids} == {12}  # 168 px: the short side
