"""Pictures of features: PCA to RGB with one basis per row, feature-norm maps, side by side."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def pca_basis(features: list[np.ndarray], components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Mean (C,) and top principal directions (C, components) of all tokens of ``features``."""
    tokens = np.concatenate([f.reshape(-1, f.shape[-1]) for f in features]).astype(np.float64)
    mean = tokens.mean(0)
    _, _, vt = np.linalg.svd(tokens - mean, full_matrices=False)
    return mean, vt[:components].T


def pca_rgb(
    features: np.ndarray, mean: np.ndarray, basis: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """(h, w, C) features projected on ``basis`` and scaled by [lo, hi] to (h, w, 3) uint8."""
    proj = (features.reshape(-1, features.shape[-1]) - mean) @ basis
    scaled = (proj - lo) / np.maximum(hi - lo, 1e-8)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8).reshape(*features.shape[:2], 3)


def shared_pca_images(features: list[np.ndarray]) -> list[np.ndarray]:
    """PCA-to-RGB of several (h, w, C) maps in ONE basis, so colours are comparable."""
    mean, basis = pca_basis(features)
    proj = np.concatenate([(f.reshape(-1, f.shape[-1]) - mean) @ basis for f in features])
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    return [pca_rgb(f, mean, basis, lo, hi) for f in features]


def norm_image(features: np.ndarray, vmax: float) -> np.ndarray:
    """Per-token L2 norm of (h, w, C) features as a grey (h, w, 3) uint8 map, 0..vmax."""
    norms = np.linalg.norm(features, axis=-1) / max(vmax, 1e-8)
    grey = (np.clip(norms, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def panel_row(panels: list[tuple[str, np.ndarray]], height: int = 224) -> Image.Image:
    """Label and lay out (H, W, 3) uint8 panels side by side, each scaled to ``height``."""
    tiles = []
    for title, array in panels:
        image = Image.fromarray(array)
        width = max(1, round(image.width * height / image.height))
        resample = (
            Image.Resampling.NEAREST if image.height < height // 4 else Image.Resampling.BILINEAR
        )
        tile = Image.new("RGB", (width, height + 18), "white")
        tile.paste(image.resize((width, height), resample), (0, 18))
        ImageDraw.Draw(tile).text((4, 3), title, fill="black")
        tiles.append(tile)
    row = Image.new(
        "RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height + 18), "white"
    )
    x = 0
    for tile in tiles:
        row.paste(tile, (x, 0))
        x += tile.width + 4
    return row


def feature_figure(
    photo: np.ndarray,
    raw: np.ndarray,
    clean: np.ndarray,
    artifact: np.ndarray,
    denoised: np.ndarray | None = None,
) -> Image.Image:
    """Photo | PCA raw | PCA clean | [PCA denoised] | PCA of G | norm raw | norm clean."""
    maps = [raw, clean] + ([denoised] if denoised is not None else [])
    rgbs = shared_pca_images(maps)
    (g_rgb,) = shared_pca_images([artifact])
    vmax = float(np.percentile(np.linalg.norm(raw, axis=-1), 99))
    panels = [("photo", photo), ("raw (PCA)", rgbs[0]), ("clean F (PCA)", rgbs[1])]
    if denoised is not None:
        panels.append(("denoised (PCA)", rgbs[2]))
    panels += [
        ("artifact G (PCA)", g_rgb),
        ("|raw|", norm_image(raw, vmax)),
        ("|clean|", norm_image(clean, vmax)),
    ]
    return panel_row(panels)
