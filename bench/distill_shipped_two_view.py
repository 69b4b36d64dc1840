"""Distil the two-view output of the denoiser shipped for DINOv2 ViT-S/14 into its one forward
(after ``build_shipped_denoiser.py`` and ``fit_shipped_filter.py``), stored in fp16.

Run: python bench/distill_shipped_two_view.py [--rounds 4] [--sizes 224 518] [--crops 20 20]
         [--train epochs=6 ...] [--denoiser dinov2_vits14] [--out FOLDER]

The teacher is the source denoiser with ``flip`` (``DenoisedViT(flip=True)``: its output on an
image and on the mirrored image mapped back, averaged; two ViT forwards). Its targets need no
stage 1: ``--crops`` random crops (scale 0.3-1, place, flip) of each of the 13 photos of
``DENOISER_TRAINING_PHOTOS`` (none evaluated or probed; other draws than the targets of the
block and the filter) at each size, square; their raw and mirrored raw tokens are cached under
--cache. The student starts as the teacher (block and filter) and is trained on raw -> the
teacher's two-view tokens (``denoiser_train.distil_two_view``: ``train_denoiser`` with
``DISTILL_TRAINING``, build_features' ``distill.train`` default, and ``--train``'s overrides).
A source that was distilled already resumes (``--rounds`` is the total, the settings must be
the same; each invocation's export, and so the next round's teacher, is stored in fp16), so a
rerun never distils twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_baselines import SHARED_WEIGHTS
from bench_denoiser_recipe import _save, parse_shipped_step

from pipeline import load_extractor
from pipeline.config import apply_overrides
from pipeline.evaluation.samples import DENOISER_TRAINING_PHOTOS, sample_photo
from pipeline.job_config import DISTILL_TRAINING
from pipeline.models.denoiser import load_denoiser, save_denoiser
from pipeline.models.denoiser_train import distil_two_view
from pipeline.models.vit import FeatureExtractor
from pipeline.stages.distill import DISTILLED, crop_views


def view_tokens(
    ext: FeatureExtractor, size: int, per_photo: int, cache: Path
) -> tuple[np.ndarray, np.ndarray]:
    """raw and mirrored raw tokens (N, K, K, C) float16 of ``per_photo`` random crops of each
    training photo at ``size`` px (cached); the crops are drawn from their own seed stream."""
    path = cache / f"views_{size}_{per_photo}.npz"
    if not path.exists():
        photos = [sample_photo(name) for name in DENOISER_TRAINING_PHOTOS]
        began = time.perf_counter()
        ((raw, mirrored),) = crop_views(
            ext, photos, [size], per_photo, np.random.default_rng([size, 1])
        )
        logging.info(
            "%d px: %d crops, both views, in %.0f s", size, len(raw), time.perf_counter() - began
        )
        _save(path, raw=raw.numpy(), mirrored=mirrored.numpy())
    with np.load(path) as data:
        return data["raw"], data["mirrored"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518])
    parser.add_argument(
        "--crops", type=int, nargs="+", default=[20, 20], help="crops per photo at each size"
    )
    parser.add_argument(
        "--train", nargs="*", default=[], help="overrides of DISTILL_TRAINING (TrainConfig)"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="distillations, each student the next teacher"
    )
    parser.add_argument("--denoiser", default="dinov2_vits14", help="the teacher (and start)")
    args = parse_shipped_step(parser)
    teacher = load_denoiser(args.denoiser)
    cfg = apply_overrides(DISTILL_TRAINING, args.train)
    crops = [[size, count] for size, count in zip(args.sizes, args.crops, strict=True)]
    done = teacher.meta.get(DISTILLED, {})  # a distilled source resumes: --rounds is the total
    if done and (done.get("crops") != crops or done.get("train") != vars(cfg)):
        sys.exit(f"{args.denoiser} was distilled with other settings: rebuild it first")
    previous = done.get("rounds", 0)
    if previous >= args.rounds:
        sys.exit(f"{args.denoiser} has {previous} rounds already (--rounds is the total)")
    args.cache.mkdir(parents=True, exist_ok=True)
    ext = load_extractor("vit_small_patch14_dinov2", weights=str(SHARED_WEIGHTS), device="cpu")
    views = [
        tuple(torch.from_numpy(a) for a in view_tokens(ext, size, count, args.cache))
        for size, count in crops
    ]
    began = time.perf_counter()
    student, losses = distil_two_view(teacher, views, cfg, args.rounds - previous)
    losses = list(done.get("losses", [])) + losses
    seconds = time.perf_counter() - began + done.get("seconds", 0.0)
    meta = dict(teacher.meta)  # save_denoiser writes its own config and digest
    sizes = " and ".join(
        f"{size} px ({len(raw)} crops)" for size, (raw, _) in zip(args.sizes, views, strict=True)
    )
    meta[DISTILLED] = {
        "teacher": "the block and filter above with flip (two views), frozen; each further "
        "round's teacher is the last round's student",
        "rounds": args.rounds,
        "targets": f"the teacher's two-view tokens at {sizes} of the same 13 photos",
        "crops": crops,
        "train": vars(cfg),
        "seconds": round(seconds, 1),
        "losses": [round(x, 5) for x in losses],
        "command": "python bench/distill_shipped_two_view.py " + " ".join(sys.argv[1:]),
        "resumed_from_rounds": previous,
    }
    save_denoiser(student, str(args.out), meta, dtype=torch.float16)
    print(json.dumps({k: v for k, v in meta[DISTILLED].items() if k != "losses"}, indent=2))


if __name__ == "__main__":
    main()
