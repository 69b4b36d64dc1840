"""Label-free measures of positional artifacts in patch features (numpy, no Ray, no torch).

Features are (N, h, w, C) or (h, w, C) float arrays. Each function says what it measures and
what a clean result looks like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.job_config import MIN_PEV_PHOTOS
from pipeline.models.crops import CropBox


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def token_distance(x: np.ndarray, target: np.ndarray) -> float:
    """Mean over tokens of d = 1 - cos(x, target), cosine over the last (channel) axis."""
    return float((1.0 - (_unit(x) * _unit(target)).sum(axis=-1)).mean())


def g_agreement(artifacts: list[np.ndarray]) -> float:
    """Mean pairwise cosine of flattened artifact maps G estimated on different images.

    Well above 0 means G is the model's positional pattern, not image content.
    """
    flat = [_unit(g.reshape(-1)) for g in artifacts]
    sims = [float(flat[i] @ flat[j]) for i in range(len(flat)) for j in range(i + 1, len(flat))]
    return float(np.mean(sims)) if sims else float("nan")


@dataclass(frozen=True)
class PevEstimate:
    """Position-explained variance with its uncertainty.

    value: the mean over ``splits`` random halvings of the photos.
    stderr: delete-one-photo jackknife standard error of ``value`` (the photos are the sample).
    photos, crops, splits: what it was computed from.
    replicates: the jackknife's leave-one-photo-out values; two estimates on the same crops with
    the same seed share their splits, so ``paired_difference`` of their replicates is paired.
    """

    value: float
    stderr: float
    photos: int
    crops: int
    splits: int
    replicates: tuple[float, ...] = ()


def _split_explained(sums: np.ndarray, counts: np.ndarray, halves: np.ndarray) -> float:
    """Mean over ``halves`` (S, P) bool of <mean_A, mean_B> per position, summed over channels.

    sums (P, T, C): per photo, the sum of its centred crops at each token position; counts (P,).
    """
    out = []
    for half in halves:
        mean_a = sums[half].sum(0) / counts[half].sum()
        mean_b = sums[~half].sum(0) / counts[~half].sum()
        out.append(float((mean_a * mean_b).sum(-1).mean()))
    return float(np.mean(out))


def _random_halves(photos: int, splits: int, rng: np.random.Generator) -> np.ndarray:
    """(splits, photos) bool: each row puts a random half of the photos (floor) on one side."""
    halves = np.zeros((splits, photos), dtype=bool)
    for row in halves:
        row[rng.permutation(photos)[: photos // 2]] = True
    return halves


def position_explained_variance(
    features: np.ndarray,
    groups: np.ndarray,
    *,
    splits: int = 32,
    seed: int = 0,
    min_photos: int = MIN_PEV_PHOTOS,
) -> PevEstimate:
    """Share of token variance explained by token position, cross-validated between photos.

    features (N, h, w, C) of crops whose content is scrambled relative to the token grid
    (random place, scale, flip); groups (N,) the source photo of each crop. Every crop is
    centred on its own mean token first, so what a photo's content adds to all its tokens
    (its colour, its subject) is not mistaken for position, nor anti-correlated between halves.
    The photos are then split at random into two halves ``splits`` times; the explained part is
    the dot product of the two halves' per-position means (what is not tied to position
    averages out independently in each half), over the mean squared norm of the centred tokens.
    About 0 for features without a positional component; a pattern p added to every crop reads
    |p - mean p|^2 over the total. The standard error is a delete-one-photo jackknife.
    """
    if features.ndim != 4 or len(features) != len(groups):
        raise ValueError(
            f"expected (N, h, w, C) features and N groups, got {features.shape}, {len(groups)}"
        )
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(names) < min_photos:
        raise ValueError(
            f"position-explained variance needs crops of at least {min_photos} "
            f"photos (got {len(names)}): with fewer, which photo falls in which "
            "half decides the figure"
        )
    if splits < 2:
        raise ValueError(f"splits must be >= 2, got {splits}")
    x = features.astype(np.float64).reshape(len(features), -1, features.shape[-1])
    x = x - x.mean(axis=1, keepdims=True)  # each crop centred on its own mean
    crop_power = (x**2).sum(-1).mean(1)  # (N,) mean squared norm of each crop's tokens
    total = float(crop_power.mean())
    sums = np.zeros((len(names), *x.shape[1:]))
    np.add.at(sums, inverse, x)
    counts = np.bincount(inverse, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    value = _split_explained(sums, counts, _random_halves(len(names), splits, rng)) / total
    keep = np.ones(len(names), dtype=bool)
    jack = []
    for p in range(len(names)):
        keep[p] = False
        halves = _random_halves(len(names) - 1, splits, rng)
        rest_total = float(crop_power[inverse != p].mean())
        jack.append(_split_explained(sums[keep], counts[keep], halves) / rest_total)
        keep[p] = True
    return PevEstimate(
        value, jackknife_stderr(jack), len(names), len(features), splits, tuple(jack)
    )


def jackknife_stderr(replicates: Sequence[float] | np.ndarray) -> float:
    """Standard error from delete-one replicates: sqrt((n - 1) / n * sum (r - mean r)^2)."""
    r = np.asarray(replicates, dtype=np.float64)
    n = len(r)
    return float(np.sqrt((n - 1) / n * ((r - r.mean()) ** 2).sum())) if n > 1 else float("nan")


def paired_difference(
    a: float, a_replicates: Sequence[float], b: float, b_replicates: Sequence[float]
) -> tuple[float, float]:
    """a - b and its jackknife standard error, from delete-one replicates over the same units:
    far tighter than either error alone when a and b are measured on the same photos."""
    if len(a_replicates) != len(b_replicates):
        raise ValueError("paired replicates must leave out the same units")
    diff = np.asarray(a_replicates, dtype=np.float64) - np.asarray(b_replicates, np.float64)
    return a - b, jackknife_stderr(diff)


def shift_consistency(a: np.ndarray, b: np.ndarray, offset: tuple[int, int]) -> float:
    """Mean cosine between tokens that see the same content in two crops offset by patches.

    a, b (h, w, C): features of crops A and B of one photo, B starting ``offset`` = (dy, dx)
    whole patches below/right of A, so token b[i, j] sees what a[i + dy, j + dx] sees. 1 for
    features that depend on content only; a positional pattern lowers it.
    """
    dy, dx = offset
    height, width = a.shape[:2]
    if not (0 <= dy < height and 0 <= dx < width) or a.shape != b.shape:
        raise ValueError(f"offset {offset} and shapes {a.shape}, {b.shape} leave no overlap")
    overlap_a = a[dy:, dx:]
    overlap_b = b[: height - dy, : width - dx]
    return float((_unit(overlap_a) * _unit(overlap_b)).sum(axis=-1).mean())


@dataclass(frozen=True)
class MatchCount:
    """Hits and tokens scored by the correspondence probe on one crop pair."""

    hits: int
    total: int


def crop_pair_matching(
    a: np.ndarray, box_a: CropBox, b: np.ndarray, box_b: CropBox, tolerance: float = 1.0
) -> MatchCount:
    """Correspondence of two crops of one photo with known geometry (free labels).

    a (ha, wa, C), b (hb, wb, C): token features of crops ``box_a`` and ``box_b``, each crop
    resized to its token grid. For every token of A whose centre lies inside B, its nearest
    cosine match among all of B's tokens is a hit when it lies within ``tolerance`` tokens
    (Chebyshev, in B's grid) of the true position. Features that follow content score high; a
    positional pattern pulls matches to the same grid cell and lowers it.
    """
    (ha, wa), (hb, wb) = a.shape[:2], b.shape[:2]
    rows, cols = np.meshgrid(np.arange(ha), np.arange(wa), indexing="ij")
    px, py = box_a.to_photo((cols + 0.5) / wa, (rows + 0.5) / ha)
    ub, vb = box_b.from_photo(px, py)
    inside = (ub >= 0) & (ub < 1) & (vb >= 0) & (vb < 1)
    if not inside.any():
        return MatchCount(0, 0)
    true_i, true_j = vb[inside] * hb - 0.5, ub[inside] * wb - 0.5
    sims = _unit(a[inside]) @ _unit(b).reshape(hb * wb, -1).T  # (n, hb * wb)
    best = np.argmax(sims, axis=1)
    err = np.maximum(np.abs(best // wb - true_i), np.abs(best % wb - true_j))
    return MatchCount(int((err <= tolerance).sum()), int(inside.sum()))


def pooled_accuracy(counts: dict[str, list[MatchCount]]) -> tuple[float, float, tuple[float, ...]]:
    """Pooled hit rate over every pair, its standard error with photos as the sample (a
    delete-one-photo jackknife), and the jackknife's replicates: counts maps photo -> its
    pairs' counts."""
    per_photo = np.asarray(
        [[sum(c.hits for c in cs), sum(c.total for c in cs)] for cs in counts.values() if cs],
        dtype=np.float64,
    )
    if len(per_photo) == 0 or per_photo[:, 1].sum() == 0:
        return float("nan"), float("nan"), ()
    value = float(per_photo[:, 0].sum() / per_photo[:, 1].sum())
    totals = per_photo.sum(0)
    jack = (totals[0] - per_photo[:, 0]) / np.maximum(totals[1] - per_photo[:, 1], 1)
    return value, jackknife_stderr(jack), tuple(float(j) for j in jack)
