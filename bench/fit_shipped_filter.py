"""Fit the local filter of the denoiser shipped for DINOv2 ViT-S/14 (after
``build_shipped_denoiser.py``): the trained block frozen, a residual depthwise k x k filter over
the token grid fitted alone to ``shift`` targets at 224 and 518 px, stored in fp16.

Run: python bench/fit_shipped_filter.py [--kernel 7] [--sizes 224 518] [--crops 20 8]
         [--steps 1500] [--denoiser dinov2_vits14] [--out FOLDER]

Targets: ``bench_denoiser_recipe.training_targets`` (cached under --cache): ``--crops`` random
crops (scale 0.3-1, place, flip) of each of the 13 photos of ``DENOISER_TRAINING_PHOTOS`` (none
evaluated or probed) at each size, square, through ``shift`` with the calibration photos'
artifact model. ``fit_local_filter`` gives each size the same share of steps. Any filter the
source already has is dropped first, so a rerun refits from the block alone; a source that
``distill_shipped_two_view.py`` trained further is refused (its block is not the built one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
from bench_baselines import SHARED_WEIGHTS
from bench_denoiser_recipe import artifact_model, parse_shipped_step, training_targets

from pipeline import load_extractor
from pipeline.models.denoiser import load_denoiser, save_denoiser, with_local_filter
from pipeline.models.denoiser_train import LocalFilterFit, fit_local_filter
from pipeline.stages.distill import DISTILLED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", type=int, default=7, help="the filter's side (odd)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518])
    parser.add_argument(
        "--crops", type=int, nargs="+", default=[20, 8], help="crops per photo at each size"
    )
    parser.add_argument("--steps", type=int, default=LocalFilterFit.steps)
    parser.add_argument("--denoiser", default="dinov2_vits14", help="the trained block")
    args = parse_shipped_step(parser)
    args.cache.mkdir(parents=True, exist_ok=True)
    source = load_denoiser(args.denoiser)
    if DISTILLED in source.meta:  # its block is no longer the one the filter was fitted on
        sys.exit(f"{args.denoiser} was distilled after its filter: rebuild the block first")
    ext = load_extractor("vit_small_patch14_dinov2", weights=str(SHARED_WEIGHTS), device="cpu")
    denoiser = with_local_filter(source, args.kernel)
    pairs = []
    for size, count in zip(args.sizes, args.crops, strict=True):
        raw, clean = training_targets(
            ext, size, count, args.cache, artifact_model(ext, size, args.cache)
        )
        pairs.append((torch.from_numpy(raw), torch.from_numpy(clean)))
    cfg = LocalFilterFit(steps=args.steps)
    began = time.perf_counter()
    losses = fit_local_filter(denoiser, pairs, cfg)
    seconds = time.perf_counter() - began
    logging.info("filter fitted in %.0f s; losses %s", seconds, [round(x, 4) for x in losses])
    meta = dict(denoiser.meta)  # save_denoiser writes its own config and digest
    sizes = " and ".join(
        f"{size} px ({len(raw)} crops)" for size, (raw, _) in zip(args.sizes, pairs, strict=True)
    )
    meta["local_filter"] = {
        "kernel": args.kernel,
        "fit": vars(cfg),
        "targets": f"shift at {sizes} of the same 13 photos, the block frozen",
        "seconds": round(seconds, 1),
        "losses": [round(x, 5) for x in losses],
        "command": "python bench/fit_shipped_filter.py " + " ".join(sys.argv[1:]),
    }
    save_denoiser(denoiser, str(args.out), meta, dtype=torch.float16)
    print(json.dumps({k: v for k, v in meta["local_filter"].items() if k != "losses"}, indent=2))


if __name__ == "__main__":
    main()
