"""build_features against stage 1 on every image: what each step costs per image, and what the
whole dataset would cost either way.

Run: python bench/bench_build.py [--images 40] [--sample 10] [key=value ...]

The dataset: ``--images`` random square crops (side 0.4-0.9) of the bundled photos, written as
JPEG files. One ``build_features`` run (the ``build`` job preset, overrides appended: e.g.
``'clean=[engine.image_size=224]'``) on a fresh local Ray; its summary gives each step's
seconds and images. Seconds per image of stage 1 and of denoising are each step's engine time
over its images (the stages' own clocks, as in clean_dataset's summary); the projection for
N images is stage 1 on all N against stage 1 on the sample, training, and denoising all N.
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.distributed.build import run_build_job
from pipeline.evaluation.samples import sample_photos
from pipeline.job_config import BuildJobConfig, resolve_job
from pipeline.models.crops import random_crop


def write_crops(folder: Path, count: int, seed: int) -> None:
    """``count`` random square crops of the bundled photos as JPEG files."""
    folder.mkdir(parents=True)
    photos = list(sample_photos().values())
    rng = np.random.default_rng(seed)
    for k in range(count):
        crop = random_crop(photos[k % len(photos)], rng, (0.4, 0.9))
        Image.fromarray(crop).save(folder / f"crop-{k:04d}.jpg", quality=95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--sample", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/build.json"))
    parser.add_argument("overrides", nargs="*", help="build job overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="dvt-build-") as tmp:
        write_crops(Path(tmp) / "in", args.images, args.seed)
        cfg = resolve_job(
            BuildJobConfig,
            "build",
            [
                f"input.uri={tmp}/in",
                f"output_uri={tmp}/out",
                f"sample={args.sample}",
                *args.overrides,
            ],
        )
        summary = run_build_job(cfg)
    steps = summary["steps"]
    stage1 = steps["clean"]["seconds_per_image"]
    denoise = steps["denoise"]["seconds_per_image"]
    train = steps["train"]["step_seconds"]
    rows = {
        "stage 1 (clean_dataset), s / image": stage1,
        "denoise (ViT + block), s / image": denoise,
        "denoise / stage 1": denoise / stage1,
        "training on the sample, s": train,
    }
    for n in (args.images, 10_000, 1_000_000):
        rows[f"{n} images: stage 1 on all, s"] = stage1 * n
        rows[f"{n} images: build (sample {args.sample}), s"] = (
            stage1 * args.sample + train + denoise * n
        )
    print("| figure | value |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.3g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python bench/bench_build.py "
                + " ".join(
                    f"--images {args.images} --sample {args.sample}".split() + args.overrides
                ),
                "rows": rows,
                "summary": summary,
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
