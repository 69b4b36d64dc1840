"""The online path: images -> ViT -> trained denoiser, no per-image fit.

Images are resized to the input the stage-1 engine uses for its full view (``views.token_grid``
under the same ``ResizeConfig``), so the ``raw`` tokens here equal the ``raw`` column
clean_dataset writes for the same image and size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.engine_config import ResizeConfig
from pipeline.models.denoiser import DenoisedViT
from pipeline.models.engine import CleanResult, fit_batches
from pipeline.models.images import ImageLike, content_id, to_rgb
from pipeline.models.views import full_view_pixels, token_grid


def online_image_size(model: DenoisedViT, image_size: int | None = None) -> int:
    """``image_size``, or the size whose token grid the denoiser was trained on; checked to be
    a multiple of the patch."""
    patch = model.extractor.patch_size
    size = image_size or model.denoiser.cfg.grid * patch
    if size % patch:
        raise ValueError(f"image_size {size} is not a multiple of the patch size {patch}")
    return size


def denoise_images(
    model: DenoisedViT,
    images: Sequence[ImageLike],
    image_size: int | None = None,
    batch_size: int = 16,
    ids: Sequence[str] | None = None,
    resize: ResizeConfig | None = None,
) -> list[CleanResult]:
    """Raw and denoised tokens (h, w, C) of each image; ``artifact`` is raw - clean.

    image_size: the input size (square side, or short side with the aspect kept; default: the
    size the denoiser was trained at). resize: how images become inputs (default: aspect kept,
    as ``clean_dataset``'s default); images of one token grid share a forward pass.
    """
    size = online_image_size(model, image_size)
    resize = resize or ResizeConfig()
    patch = model.extractor.patch_size
    rgbs = [to_rgb(image, min_side=patch) for image in images]
    ids = list(ids) if ids is not None else [content_id(rgb) for rgb in rgbs]
    if len(ids) != len(rgbs):
        raise ValueError(f"{len(ids)} ids for {len(rgbs)} images")
    grids = [token_grid(resize, rgb.shape[:2], size, patch) for rgb in rgbs]
    results: dict[int, CleanResult] = {}
    for chunk in fit_batches(grids, batch_size):
        began = time.perf_counter()
        grid_h, grid_w = grids[chunk[0]]
        pixels = torch.stack(
            [full_view_pixels(rgbs[i], (grid_h * patch, grid_w * patch)) for i in chunk]
        )
        views = model.extract(pixels)
        raw = views[: len(chunk)]  # the images' own tokens; the rest are their mirrors
        vit_seconds = time.perf_counter() - began
        clean = model.denoise(views)
        seconds = (time.perf_counter() - began) / len(chunk)
        for b, index in enumerate(chunk):
            r, c = raw[b].cpu().numpy(), clean[b].cpu().numpy()
            ok = bool(np.isfinite(c).all())
            results[index] = CleanResult(
                image_id=ids[index],
                raw=r,
                clean=c,
                artifact=r - c,
                metrics={"extract_seconds": vit_seconds / len(chunk), "seconds": seconds},
                ok=ok,
                error=None if ok else "denoiser output is not finite",
            )
    return [results[i] for i in range(len(rgbs))]
