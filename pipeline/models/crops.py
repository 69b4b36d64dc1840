"""Crops of a photo with known geometry (numpy only): the evaluation's crops, the mask probe's
labelled crops, and the crop pairs of the correspondence probe all come from here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropBox:
    """A crop of an image: rows y:y+h, columns x:x+w, then mirrored left-right if ``flip``."""

    y: int
    x: int
    h: int
    w: int
    flip: bool

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Cut (H, W, ...) ``array`` (a photo or its label map) the same way."""
        crop = array[self.y : self.y + self.h, self.x : self.x + self.w]
        return np.ascontiguousarray(crop[:, ::-1] if self.flip else crop)

    def to_photo(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised crop coordinates (u across, v down, in [0, 1]) -> photo pixels (x, y)."""
        u = 1.0 - u if self.flip else u
        return self.x + u * self.w, self.y + v * self.h

    def from_photo(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Photo pixels (x, y) -> normalised crop coordinates (u, v); outside the crop they
        leave [0, 1)."""
        u, v = (x - self.x) / self.w, (y - self.y) / self.h
        return (1.0 - u if self.flip else u), v


def random_crop_box(
    height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = (0.3, 0.9)
) -> CropBox:
    """A random place, scale (share of each side) and horizontal flip in a height x width image."""
    s = rng.uniform(*scale)
    h, w = max(16, int(height * s)), max(16, int(width * s))
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return CropBox(y, x, h, w, bool(rng.random() < 0.5))


def random_crop(
    photo: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.3, 0.9)
) -> np.ndarray:
    """A random place, scale (share of each side) and horizontal flip of (H, W, 3) ``photo``."""
    return random_crop_box(photo.shape[0], photo.shape[1], rng, scale).apply(photo)


def overlap_share(a: CropBox, b: CropBox) -> float:
    """Area of the intersection of two crops over the smaller crop's area."""
    dy = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    dx = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    return max(0, dy) * max(0, dx) / min(a.h * a.w, b.h * b.w)
