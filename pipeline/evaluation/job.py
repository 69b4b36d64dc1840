"""The evaluation job's steps, with no Ray in them: fit the evaluation inputs with the features'
own config, measure, report. ``pipeline.distributed.evaluate`` runs them with clean_dataset's
Ray pipeline as the fit and its input listing as the photo lister.

The committed runs under ``features.uri`` give the pictures, G agreement and fit diagnostics.
The measures that need controlled inputs (random crops for the position-explained variance,
the stereo pair and the masked photos) run those inputs through clean_dataset's pipeline with
the very job config saved with the features (so "clean" means the same thing), into
``out/work``; the denoiser, when given, is applied to their raw tokens directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image

from pipeline.config import ConfigError, apply_overrides, drop_redacted, from_dict
from pipeline.evaluation.metrics import (
    MatchCount,
    crop_pair_matching,
    g_agreement,
    paired_difference,
    pooled_accuracy,
    position_explained_variance,
    shift_consistency,
)
from pipeline.evaluation.probes import (
    MaskedImage,
    StereoPair,
    boundary_accuracy,
    disparity_to_tokens,
    labels_to_tokens,
    mask_views,
    motorcycle_pair,
    paired_summary,
    prototype_miou,
    quokka,
    stereo_accuracy,
    stereo_window_counts,
    stereo_windows,
    voc_sample,
)
from pipeline.evaluation.report import (
    METHODS,
    artifact_grid,
    fit_diagnostics,
    shifted_pair,
    write_report,
)
from pipeline.evaluation.samples import CALIBRATION_PHOTOS, sample_photo, sample_photos
from pipeline.evaluation.visualize import feature_figure
from pipeline.job_config import CleanJobConfig, EvaluateConfig
from pipeline.models.artifact_model import ArtifactModel, calibrate, from_artifacts
from pipeline.models.baselines import (
    FINE_BASELINES,
    baseline_outputs,
    fine_baseline_outputs,
    raw_tokens,
)
from pipeline.models.crops import CropBox, overlap_share, random_crop_box
from pipeline.models.denoiser import Denoiser, load_denoiser, require_export
from pipeline.models.engine import resolve_image_size
from pipeline.models.images import decode_image
from pipeline.models.shift import mirror_mean
from pipeline.models.subpatch import pool_fine
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor, load_extractor
from pipeline.store import (
    column_to_numpy,
    raw_minus_artifact,
    read_features_table,
    sample_features_table,
)
from pipeline.store.fs import filesystem
from pipeline.store.readers import spread_indices
from pipeline.store.runs import read_run_config, stage1_runs

logger = logging.getLogger(__name__)

MIN_PAIR_OVERLAP = 0.25


def _features_job(cfg: EvaluateConfig) -> tuple[CleanJobConfig, str, str]:
    """The job config saved with the evaluated runs (latest digest unless one is given), its
    digest, and its artifact model's URI ("" for the field method)."""
    runs = stage1_runs(
        cfg.features.uri,
        cfg.features.storage_options,
        cfg.features.config_digest,
        "--features (features.uri) and features.config_digest",
    )
    run = runs[-1]
    fs, _ = filesystem(cfg.features.uri, cfg.features.storage_options)
    saved = read_run_config(fs, run.path)
    job = apply_overrides(from_dict(CleanJobConfig, drop_redacted(saved["job"])), cfg.stage1)
    return job, run.config_digest, run.meta.artifact_model or ""


FitInputs = Callable[[CleanJobConfig], dict[str, Any]]
"""Runs a clean job config over its input folder and returns the job's summary."""
ListPhotos = Callable[[str], list[str]]
"""The image URIs under a folder or prefix (a user error when there are none)."""


def _photos(cfg: EvaluateConfig, list_photos: ListPhotos) -> dict[str, np.ndarray]:
    if not cfg.images:
        return dict(list(sample_photos().items())[: cfg.max_photos])
    photos = {}
    for uri in list_photos(cfg.images)[: cfg.max_photos]:
        with fsspec.open(uri, "rb") as fh:
            photos[Path(uri).stem] = decode_image(fh.read())
    if len(photos) < 2:
        raise ConfigError(f"{cfg.images} holds {len(photos)} photos; the evaluation needs two")
    return photos


def _mask_sets(cfg: EvaluateConfig) -> dict[str, list[MaskedImage]]:
    """Per labelled photo: the whole photo and ``cfg.mask_crops`` crops (deterministic; a seed
    stream of its own, so the position-explained-variance crops do not change with it)."""
    if not cfg.probes:
        return {}
    rng = np.random.default_rng([cfg.seed, 1])
    return {s.name: mask_views(s, cfg.mask_crops, rng) for s in (voc_sample(), quokka())}


def _stereo_windows(cfg: EvaluateConfig) -> dict[str, StereoPair]:
    """``cfg.stereo_windows`` offset windows of the stereo pair by input name, whose left and
    right images are ``<name>_left`` and ``<name>_right`` (none without the probes; a seed
    stream of their own, like the mask sets'; the seed is in the names, since inputs already
    written are reused)."""
    if not cfg.probes or not cfg.stereo_windows:
        return {}
    windows = stereo_windows(motorcycle_pair(), cfg.stereo_windows, seed=[cfg.seed, 2])
    return {f"probes/stereo_window_s{cfg.seed}_{k:02d}": w for k, w in enumerate(windows)}


def _stereo_window_scores(
    rows: dict[str, dict[str, np.ndarray]], windows: dict[str, StereoPair], methods: list[str]
) -> dict[str, dict[str, float]]:
    """Per method: stereo accuracy pooled over the windows with its error over windows, and its
    difference from raw's on the same windows (paired)."""
    scored = {
        m: pooled_accuracy(
            stereo_window_counts(
                np.stack([rows[f"{name}_left"][m] for name in windows]),
                np.stack([rows[f"{name}_right"][m] for name in windows]),
                list(windows.values()),
            )
        )
        for m in methods
    }
    raw = scored["raw"]
    out = {}
    for m, (value, stderr, replicates) in scored.items():
        diff, diff_stderr = paired_difference(value, replicates, raw[0], raw[2])
        out[m] = {
            "value": value,
            "stderr": stderr,
            "minus_raw": diff,
            "minus_raw_stderr": diff_stderr,
        }
    return out


def _photo_of(crop_name: str) -> str:
    """``crops/<photo>--<k>`` -> ``<photo>``."""
    return crop_name.removeprefix("crops/").split("--")[0]


def _crop_boxes(photos: dict[str, np.ndarray], cfg: EvaluateConfig) -> dict[str, CropBox]:
    """``crops/<photo>--<k>`` -> its box in the photo (deterministic from the seed)."""
    rng = np.random.default_rng(cfg.seed)
    return {
        f"crops/{name}--{k:02d}": random_crop_box(photo.shape[0], photo.shape[1], rng)
        for name, photo in photos.items()
        for k in range(cfg.crops_per_photo)
    }


def _input_images(
    photos: dict[str, np.ndarray],
    boxes: dict[str, CropBox],
    masks: dict[str, list[MaskedImage]],
    windows: dict[str, StereoPair],
    probes: bool,
) -> dict[str, np.ndarray]:
    """Every evaluation input by row name: the crops, and the probe images."""
    images = {name: box.apply(photos[_photo_of(name)]) for name, box in boxes.items()}
    if probes:
        pair = motorcycle_pair()
        images |= {"probes/stereo_left": pair.left, "probes/stereo_right": pair.right}
        for name, window in windows.items():
            images |= {f"{name}_left": window.left, f"{name}_right": window.right}
        images |= {f"probes/{v.name}": v.rgb for views in masks.values() for v in views}
    return images


def _write_inputs(folder: Path, images: dict[str, np.ndarray]) -> None:
    """<folder>/<name>.png for every input, each written once."""
    for name, rgb in images.items():
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.fromarray(rgb).save(path)


def _matching(
    rows: dict[str, dict[str, np.ndarray]],
    boxes: dict[str, CropBox],
    methods: list[str],
    tolerance: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Crop-pair correspondence per method: pooled hit rate (within ``tolerance`` cells of the
    rows' own grid) over pairs of crops of one photo that overlap by at least a quarter, with
    its jackknife error over photos."""
    names = sorted(boxes)
    photo = {n: _photo_of(n) for n in names}
    pairs = [
        (a, b)
        for a in names
        for b in names
        if a != b and photo[a] == photo[b] and overlap_share(boxes[a], boxes[b]) >= MIN_PAIR_OVERLAP
    ]
    out = {}
    for m in methods:
        counts: dict[str, list[MatchCount]] = {}
        for a, b in pairs:
            counts.setdefault(photo[a], []).append(
                crop_pair_matching(rows[a][m], boxes[a], rows[b][m], boxes[b], tolerance)
            )
        value, stderr, _ = pooled_accuracy(counts)
        out[m] = {"value": value, "stderr": stderr, "pairs": len(pairs)}
    return out


def _add_baselines(
    rows: dict[str, dict[str, np.ndarray]],
    images: dict[str, np.ndarray],
    extractor: FeatureExtractor,
    size: int,
    model: ArtifactModel,
    mean_g: np.ndarray | None,
) -> dict[str, float]:
    """Add calib, tta, calib+tta, calib+flip (and raw - mean G of the corpus) to every row;
    return each one's seconds per image."""
    names = sorted(images)
    outputs, seconds = baseline_outputs(extractor, [images[n] for n in names], size, model)
    for i, name in enumerate(names):
        for method in ("calib", "tta", "calib+tta", "calib+flip"):
            rows[name][method] = outputs[method][i]
        if mean_g is not None:
            rows[name]["raw_minus_mean_g"] = rows[name]["raw"] - mean_g
    if mean_g is not None:
        seconds["raw_minus_mean_g"] = seconds["raw"]
    return seconds


def _rows_by_name(uri: str, digest: str) -> dict[str, dict[str, np.ndarray]]:
    """Tokens of the committed rows of one config digest, keyed ``<folder>/<file stem>``:
    raw, clean and, where G was stored, raw - G (F plus the per-image residual: artifact-free,
    detail kept)."""
    table = read_features_table(uri)
    table = table.filter(pc.equal(table["config_digest"], digest))
    raw, clean = column_to_numpy(table["raw"]), column_to_numpy(table["clean"])
    detail = raw_minus_artifact(table)
    fine = column_to_numpy(table["clean_hr"]) if "clean_hr" in table.column_names else None
    rows = {}
    for i, uri_i in enumerate(table["source_uri"].to_pylist()):
        path = Path(uri_i)
        rows[f"{path.parent.name}/{path.stem}"] = {
            "raw": raw[i].astype(np.float32),
            "clean": clean[i].astype(np.float32),
            **({"raw_minus_g": detail[i]} if detail is not None else {}),
            **({"clean_hr": fine[i].astype(np.float32)} if fine is not None else {}),
        }
    return rows


def _denoise(denoiser: Denoiser, raw: np.ndarray, mirrored: np.ndarray | None = None) -> np.ndarray:
    """raw (h, w, C) or (N, h, w, C) -> denoised tokens of the same shape; with ``mirrored``,
    the raw tokens of the same images mirrored, the two-view mean (``DenoisedViT`` flip)."""
    batch = raw[None] if raw.ndim == 3 else raw
    with torch.no_grad():
        out = denoiser(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        if mirrored is not None:
            other = mirrored[None] if mirrored.ndim == 3 else mirrored
            out = mirror_mean(
                out, denoiser(torch.from_numpy(np.ascontiguousarray(other, dtype=np.float32)))
            )
    return out[0].numpy() if raw.ndim == 3 else out.numpy()


def _mirrored_raw(
    extractor: FeatureExtractor, rgb: np.ndarray, grid: tuple[int, int]
) -> np.ndarray:
    """Raw tokens (h, w, C) of (H, W, 3) ``rgb``'s full view on ``grid``, mirrored left-right."""
    pixels = (grid[0] * extractor.patch_size, grid[1] * extractor.patch_size)
    return raw_tokens(extractor, [rgb], pixels, mirror=True)[0]


def _shift(
    photos: dict[str, np.ndarray],
    extractor: FeatureExtractor,
    denoiser: Denoiser | None,
    size: int,
    shift: int,
    flip: bool = False,
) -> dict[str, float]:
    """Shift consistency of raw and denoised tokens (with ``flip``, averaged with the mirrored
    pair's), averaged over photos."""
    scores: dict[str, list[float]] = {"raw": [], "denoised": []}
    for photo in photos.values():
        a, b = shifted_pair(photo, size, extractor.patch_size, shift)
        pixels = torch.stack([full_view_pixels(a, size), full_view_pixels(b, size)])
        raw = extractor(pixels).numpy()
        scores["raw"].append(shift_consistency(raw[0], raw[1], (shift, shift)))
        if denoiser is not None:
            mirrored = extractor(pixels.flip(-1)).numpy() if flip else None
            den = _denoise(denoiser, raw, mirrored)
            scores["denoised"].append(shift_consistency(den[0], den[1], (shift, shift)))
    return {k: float(np.mean(v)) for k, v in scores.items() if v}


def _mask_probe(
    rows: dict[str, dict[str, np.ndarray]],
    masks: dict[str, list[MaskedImage]],
    methods: list[str],
    grid: int,
) -> dict[str, Any]:
    """Mask-probe mIoU per labelled photo (mean over its views) and over all views, with each
    method's paired difference from raw on the same views."""
    scores: dict[str, dict[str, list[float]]] = {}
    for name, views in masks.items():
        scores[name] = {m: [] for m in methods}
        for view in views:
            labels = labels_to_tokens(view.labels, grid)
            for m in methods:
                scores[name][m].append(prototype_miou(rows[f"probes/{view.name}"][m], labels))
    scores["all"] = {m: [v for name in masks for v in scores[name][m]] for m in methods}
    paired = {name: paired_summary(by_method) for name, by_method in scores.items()}
    return {
        "masks": {name: {m: s["mean"] for m, s in p.items()} for name, p in paired.items()},
        "masks_paired": paired,
        "mask_views": {name: len(by_method["raw"]) for name, by_method in scores.items()},
    }


def _finer_than_a_patch(
    rows: dict[str, dict[str, np.ndarray]],
    images: dict[str, np.ndarray],
    boxes: dict[str, CropBox],
    masks: dict[str, list[MaskedImage]],
    extractor: FeatureExtractor,
    size: int,
    scale: int,
    hr_views: int,
    model: ArtifactModel,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The fine-grid measures of ``clean_hr`` beside the free upsamplers (each row gains them,
    (s*K, s*K, C)): crop-pair matching within one cell and within one token, stereo within one
    cell, boundary sharpness on the labelled views; and clean_hr average-pooled to the token
    grid: PEV and matching. Seconds per image of each baseline beyond its tokens."""
    names = sorted(rows)
    outputs, spent = fine_baseline_outputs(
        extractor,
        [images[n] for n in names],
        size,
        scale,
        model,
        np.stack([rows[n]["raw"] for n in names]),
        np.stack([rows[n]["calib+tta"] for n in names]),
        hr_views,
    )
    for i, name in enumerate(names):
        rows[name] |= {method: outputs[method][i] for method in FINE_BASELINES}
    methods = [*FINE_BASELINES, "clean_hr"]
    fine: dict[str, Any] = {
        "scale": scale,
        "methods": methods,
        "matching": _matching(rows, boxes, methods),
        "token_share": _matching(rows, boxes, methods, float(scale)),
        "seconds_per_image": {
            "raw_bilinear": seconds["raw"] + spent["raw_bilinear"],
            "calib+tta_bilinear": seconds["calib+tta"] + spent["calib+tta_bilinear"],
            "calib+tta_joint_bilateral": seconds["calib+tta"] + spent["calib+tta_joint_bilateral"],
            "subpatch_average": spent["subpatch_average"],
        },
    }
    crop_names = sorted(boxes)
    pooled = {
        n: {"clean_hr": np.asarray(pool_fine(rows[n]["clean_hr"], scale))} for n in crop_names
    }
    pev = position_explained_variance(
        np.stack([pooled[n]["clean_hr"] for n in crop_names]),
        np.asarray([_photo_of(n) for n in crop_names]),
    )
    fine["pooled"] = {
        "pev": pev.value,
        "pev_stderr": pev.stderr,
        "matching": _matching(pooled, boxes, ["clean_hr"])["clean_hr"],
    }
    grid = size // extractor.patch_size * scale
    if "probes/stereo_left" in rows:
        disparity = disparity_to_tokens(motorcycle_pair().disparity, grid)
        left, right = rows["probes/stereo_left"], rows["probes/stereo_right"]
        fine["stereo"] = {m: stereo_accuracy(left[m], right[m], disparity) for m in methods}
    views = [v for by_photo in masks.values() for v in by_photo]
    if views:
        labels = [labels_to_tokens(v.labels, grid) for v in views]
        fine["boundary"] = {
            m: float(
                np.nanmean(
                    [
                        boundary_accuracy(rows[f"probes/{v.name}"][m], lab)
                        for v, lab in zip(views, labels, strict=True)
                    ]
                )
            )
            for m in methods
        }
        fine["boundary_views"] = len(views)
    return fine


def run_evaluation(cfg: EvaluateConfig, fit: FitInputs, list_photos: ListPhotos) -> dict[str, Any]:
    """Write the report folder; return its metrics. ``fit`` cleans the evaluation inputs
    (clean_dataset's job), ``list_photos`` lists ``cfg.images``."""
    if not cfg.features.uri:
        raise ConfigError("features.uri (--features) is required: the output of clean_dataset")
    job, digest, features_artifact_model = _features_job(cfg)
    if cfg.denoiser.uri:  # before any model loads
        require_export(cfg.denoiser.uri, cfg.denoiser.storage_options)
    out = Path(cfg.out)
    extractor = load_extractor(job.model.name, job.model.weights, device="cpu")
    denoiser = (
        load_denoiser(
            cfg.denoiser.uri,
            storage_options=cfg.denoiser.storage_options,
            smoothing=cfg.denoiser.smoothing,
        )
        if cfg.denoiser.uri
        else None
    )
    size = resolve_image_size(job.engine, extractor)
    grid = size // extractor.patch_size
    photos = _photos(cfg, list_photos)
    masks = _mask_sets(cfg)
    boxes = _crop_boxes(photos, cfg)
    windows = _stereo_windows(cfg)
    images = _input_images(photos, boxes, masks, windows, cfg.probes)
    _write_inputs(out / "work" / "inputs", images)
    # the probes compare tokens position by position: every crop on one square grid
    fitted = [
        f"input.uri={out / 'work' / 'inputs'}",
        f"output.uri={out / 'work' / 'stage1'}",
        "engine.resize.aspect=square",
    ]
    if job.engine.method == "shift":  # the features' own artifact model, so clean means the same
        fitted.append(f"calibration.model_uri={features_artifact_model}")
    stage1 = fit(apply_overrides(job, fitted))
    if stage1["config_digest"] != digest and job.engine.resize.aspect == "square":
        logger.warning(
            "evaluation inputs fitted under config %s, features under %s",
            stage1["config_digest"],
            digest,
        )
    rows = _rows_by_name(str(out / "work" / "stage1"), stage1["config_digest"])
    denoise_seconds = 0.0
    if denoiser is not None:
        began = time.perf_counter()
        for name, row in rows.items():  # rows of inputs an earlier evaluation wrote are not
            # scored, so they need no mirror
            flip = cfg.denoiser.flip and name in images
            grid_hw = row["raw"].shape[:2]
            mirrored = _mirrored_raw(extractor, images[name], grid_hw) if flip else None
            row["denoised"] = _denoise(denoiser, row["raw"], mirrored)
        denoise_seconds = (time.perf_counter() - began) / len(rows)
    # the corpus's G (rows spread over it) for raw - mean G, figures and G agreement
    table = sample_features_table(
        cfg.features.uri, 64, cfg.features.storage_options, method="dvt-fit", config_digest=digest
    )
    has_g = "artifact" in table.column_names
    artifacts: list[np.ndarray] = (
        list(column_to_numpy(table["artifact"]).astype(np.float32)) if has_g else []
    )
    mean_g = (
        from_artifacts(artifacts, job.model.name, extractor.weights_digest, size).pattern_for(
            (grid, grid)
        )
        if has_g
        else None
    )  # on the probes' grid
    calibration = calibrate(
        extractor,
        {n: sample_photo(n) for n in CALIBRATION_PHOTOS},
        size,
        cfg.calibration_crops,
        cfg.seed,
    )
    seconds = _add_baselines(rows, images, extractor, size, calibration, mean_g)

    methods = [m for m in METHODS if m in next(iter(rows.values()))]
    crop_names = sorted(boxes)
    groups = np.asarray([_photo_of(n) for n in crop_names])
    pev = {
        m: position_explained_variance(np.stack([rows[n][m] for n in crop_names]), groups)
        for m in methods
    }
    metrics: dict[str, Any] = {
        "model": job.model.name,
        "weights_digest": extractor.weights_digest,
        "features_uri": cfg.features.uri,
        "config_digest": digest,
        "denoiser_uri": cfg.denoiser.uri or None,
        "denoiser_smoothing": cfg.denoiser.smoothing if cfg.denoiser.uri else None,
        "denoiser_flip": cfg.denoiser.flip if cfg.denoiser.uri else None,
        "image_size": size,
        "methods": methods,
        "pev": {m: e.value for m, e in pev.items()},
        "pev_stderr": {m: e.stderr for m, e in pev.items()},
        "pev_crops": len(crop_names),
        "pev_photos": len(set(groups)),
        "matching": _matching(rows, boxes, methods),
        "shift": _shift(photos, extractor, denoiser, size, cfg.shift_patches, cfg.denoiser.flip),
        "shift_patches": cfg.shift_patches,
        "seconds_per_image": seconds,
        "calibration": {
            "photos": list(CALIBRATION_PHOTOS),
            "crops": calibration.samples,
            "seconds": calibration.seconds,
        },
    }
    if cfg.probes:
        disparity = disparity_to_tokens(motorcycle_pair().disparity, grid)
        left, right = rows["probes/stereo_left"], rows["probes/stereo_right"]
        metrics["stereo"] = {m: stereo_accuracy(left[m], right[m], disparity) for m in methods}
        if windows:
            metrics["stereo_windows"] = _stereo_window_scores(rows, windows, methods)
            metrics["stereo_window_count"] = len(windows)
        metrics.update(_mask_probe(rows, masks, methods, grid))

    if job.engine.upsample > 1:
        metrics["fine"] = _finer_than_a_patch(
            rows,
            images,
            boxes,
            masks,
            extractor,
            size,
            job.engine.upsample,
            job.engine.hr.views,
            calibration,
            seconds,
        )

    summary = read_features_table(
        cfg.features.uri, ["config_digest", "metrics"], cfg.features.storage_options
    )
    summary = summary.filter(pc.equal(summary["config_digest"], digest))
    metrics["fit"] = fit_diagnostics(summary["metrics"].to_pylist())
    metrics["seconds_per_image"] |= {
        m: metrics["fit"].get("seconds_mean", float("nan")) for m in ("clean", "raw_minus_g")
    }
    if "fine" in metrics:  # clean_hr is made in the same pass as clean
        metrics["fine"]["seconds_per_image"]["clean_hr"] = metrics["seconds_per_image"]["clean"]
    if denoiser is not None:  # the ViT forward, then the block (with flip: the mirror's too)
        metrics["seconds_per_image"]["denoised"] = seconds["raw"] + denoise_seconds
    shown = spread_indices(len(table), cfg.figures)
    metrics["g_agreement"] = g_agreement(list(artifacts)) if has_g else float("nan")
    metrics["g_agreement_images"] = len(artifacts)

    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    uris = table["source_uri"].to_pylist()
    for k, i in enumerate(shown):
        with fsspec.open(uris[i], "rb", **job.input.storage_options) as fh:
            photo = decode_image(fh.read())
        raw = column_to_numpy(table["raw"][i : i + 1])[0].astype(np.float32)
        clean = column_to_numpy(table["clean"][i : i + 1])[0].astype(np.float32)
        g = artifacts[i] if has_g else np.zeros_like(raw)
        name = f"image-{k:02d}-{Path(uris[i]).stem[:32]}.png"
        denoised = None
        if denoiser is not None:
            flipped = _mirrored_raw(extractor, photo, raw.shape[:2]) if cfg.denoiser.flip else None
            denoised = _denoise(denoiser, raw, flipped)
        feature_figure(photo, raw, clean, g, denoised).save(figures_dir / name)
        figures.append(f"figures/{name}")
    if has_g and len(artifacts) >= 2:
        pick = spread_indices(len(table), 8)
        artifact_grid([artifacts[j] for j in pick], [Path(uris[j]).stem for j in pick]).save(
            figures_dir / "artifact_grid.png"
        )
        figures.append("figures/artifact_grid.png")
    for stale in figures_dir.glob("image-*.png"):  # figures of an earlier evaluation
        if f"figures/{stale.name}" not in figures:
            stale.unlink()
    write_report(out, metrics, figures)
    logger.info("report in %s", out.resolve())
    return metrics
