"""The free baselines every quality figure stands beside, computed the one way both the
evaluation job and the benches use (model code: torch, no Ray).

- ``calib``: raw minus the artifact model's pattern (no training);
- ``tta``: the mean over shifted and flipped views (``pipeline.models.shift``);
- ``calib+tta``: the same with the pattern subtracted from every view;
- ``calib+flip``: calib of the image and of its mirror, averaged on the image's grid (two
  forwards, ``shift.mirror_mean``);
- ``raw - mean G``: raw minus the mean of stage-1 G's (``artifact_model.from_artifacts``).

At s x s cells per token (what ``clean_hr`` stands beside):

- ``bilinear``: token maps upsampled bilinearly (of raw, or of calib+tta);
- ``joint bilateral``: calib+tta upsampled with weights from distance and from the image's
  colours (Kopf et al. 2007), training-free;
- ``sub-patch shift averaging``: views shifted by fractions of a patch, the artifact model
  removed from each, each view shifted back onto the fine grid and averaged
  (``subpatch.shift_average_fine``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine_config import ShiftConfig
from pipeline.models.artifact_model import ArtifactModel
from pipeline.models.shift import mirror_mean, shift_view_tokens, tta_tokens
from pipeline.models.subpatch import cell_colours, shift_average_fine, subpatch_view_tokens
from pipeline.models.views import full_view_pixels
from pipeline.models.vit import FeatureExtractor

BASELINE_TTA = ShiftConfig(views=10, pad=2, flip_prob=0.5)
"""The shift averaging a user would pick: 10 views, offsets of 0-4 patches, half flipped."""


def raw_tokens(
    extractor: FeatureExtractor,
    images: Sequence[np.ndarray],
    size: int | tuple[int, int],
    mirror: bool = False,
) -> np.ndarray:
    """(N, h, w, C) raw tokens of each (H, W, 3) uint8 image's full view of ``size`` px (an int:
    square; else (height, width)), one at a time; ``mirror``: of the full view mirrored
    left-right (on its own grid, ``shift.mirror_mean``)."""
    views = (full_view_pixels(im, size)[None] for im in images)
    return np.stack([extractor(v.flip(-1) if mirror else v)[0].cpu().numpy() for v in views])


def baseline_outputs(
    extractor: FeatureExtractor,
    images: Sequence[np.ndarray],
    size: int,
    model: ArtifactModel,
    tta: ShiftConfig = BASELINE_TTA,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """raw, calib, tta, calib+tta and calib+flip tokens (N, K, K, C) of ``images``, and each
    one's seconds per image (image i's shifted views are drawn with seed i)."""
    model.check(extractor, size)
    start = time.perf_counter()
    raw = raw_tokens(extractor, images, size)
    seconds = {"raw": (time.perf_counter() - start) / len(images)}
    outputs = {"raw": raw, "calib": model.subtract(raw)}
    seconds["calib"] = seconds["raw"]
    pattern = torch.from_numpy(model.pattern).to(extractor.device)
    for name, pat in (("tta", None), ("calib+tta", pattern)):
        start = time.perf_counter()
        outputs[name] = np.stack(
            [tta_tokens(extractor, im, size, tta, i, pat).numpy() for i, im in enumerate(images)]
        )
        seconds[name] = (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    outputs["calib+flip"] = calib_flip(model, raw, raw_tokens(extractor, images, size, mirror=True))
    seconds["calib+flip"] = seconds["raw"] + (time.perf_counter() - start) / len(images)
    return outputs, seconds


def calib_flip(model: ArtifactModel, raw: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """calib+flip of raw tokens (N, K, K, C) and of the same images mirrored (N, K, K, C): the
    artifact model removed from each view, the two averaged on the images' grid."""
    views = (torch.from_numpy(model.subtract(v)) for v in (raw, mirrored))
    return mirror_mean(*views).numpy()


def bilinear_fine(tokens: np.ndarray, scale: int) -> np.ndarray:
    """(h, w, C) -> (s*h, s*w, C): the token map upsampled bilinearly (cell centres)."""
    x = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32)).permute(2, 0, 1)
    up = F.interpolate(x[None], scale_factor=scale, mode="bilinear", align_corners=False)
    return up[0].permute(1, 2, 0).numpy()


def joint_bilateral_fine(
    tokens: np.ndarray,
    colours: torch.Tensor,
    scale: int,
    sigma_space: float = 1.0,
    sigma_colour: float = 0.1,
    radius: int = 2,
) -> np.ndarray:
    """Joint bilateral upsampling of (h, w, C) ``tokens`` to (s*h, s*w, C), guided by the
    image's fine-cell colours (3, s*h, s*w): each cell is the mean of the tokens within
    ``radius`` tokens, weighted by exp(-d^2 / 2 sigma_space^2) (d: distance of the cell's
    centre to the token's, in tokens) and exp(-|I_cell - I_token|^2 / 2 sigma_colour^2)
    (I_token: the mean colour of the token's cells)."""
    height, width, channels = tokens.shape
    x = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
    guide = colours.permute(1, 2, 0).float()  # (s*h, s*w, 3)
    token_colour = F.avg_pool2d(colours[None].float(), scale)[0].permute(1, 2, 0)  # (h, w, 3)
    centre = (torch.arange(height * scale) + 0.5) / scale - 0.5  # cell centres, token units
    centre_x = (torch.arange(width * scale) + 0.5) / scale - 0.5
    home_y, home_x = (
        torch.div(torch.arange(height * scale), scale, rounding_mode="floor"),
        torch.div(torch.arange(width * scale), scale, rounding_mode="floor"),
    )
    total = torch.zeros(height * scale, width * scale, channels)
    norm = torch.zeros(height * scale, width * scale, 1)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ty, tx = home_y + dy, home_x + dx
            inside = ((ty >= 0) & (ty < height))[:, None] & ((tx >= 0) & (tx < width))[None, :]
            ty_c, tx_c = ty.clamp(0, height - 1), tx.clamp(0, width - 1)
            dist = (centre - ty.float())[:, None] ** 2 + (centre_x - tx.float())[None, :] ** 2
            near = token_colour[ty_c][:, tx_c]  # (s*h, s*w, 3)
            weight = (
                torch.exp(-dist / (2 * sigma_space**2))
                * torch.exp(-(guide - near).pow(2).sum(-1) / (2 * sigma_colour**2))
                * inside
            )
            total += weight[..., None] * x[ty_c][:, tx_c]
            norm += weight[..., None]
    return (total / norm.clamp_min(1e-12)).numpy()


def subpatch_average(
    extractor: FeatureExtractor,
    rgb: np.ndarray,
    size: int,
    scale: int,
    hr_views: int,
    model: ArtifactModel,
    seed: int,
) -> np.ndarray:
    """Sub-patch shift averaging of one (H, W, 3) uint8 image at ``size`` px, (s*K, s*K, C):
    the 10 shift views and ``hr_views`` more at the other phases (the views ``clean_hr``
    sees), the artifact model removed from each."""
    grid = size // extractor.patch_size
    tokens, views = shift_view_tokens(extractor, rgb, size, BASELINE_TTA, seed)
    all_tokens, cells, _ = subpatch_view_tokens(
        extractor,
        rgb,
        (grid, grid),
        scale,
        tokens,
        views,
        hr_views,
        BASELINE_TTA.pad,
        BASELINE_TTA.flip_prob,
        seed + 1,
    )
    pattern = torch.from_numpy(model.pattern_for((grid, grid))).to(all_tokens.device)
    return (
        shift_average_fine(all_tokens, cells, pattern, (grid * scale, grid * scale)).cpu().numpy()
    )


FINE_BASELINES = (
    "raw_bilinear",
    "calib+tta_bilinear",
    "calib+tta_joint_bilateral",
    "subpatch_average",
)
"""The free upsamplers ``clean_hr`` stands beside, as named in reports."""


def fine_baseline_outputs(
    extractor: FeatureExtractor,
    images: Sequence[np.ndarray],
    size: int,
    scale: int,
    model: ArtifactModel,
    raw: np.ndarray,
    calib_tta: np.ndarray,
    hr_views: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``FINE_BASELINES`` (N, s*K, s*K, C) of square ``images`` whose raw and calib+tta tokens
    (N, K, K, C) are given, and each one's seconds per image beyond those tokens."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in FINE_BASELINES}
    spent = dict.fromkeys(FINE_BASELINES, 0.0)
    for i, rgb in enumerate(images):
        for name, tokens in (("raw_bilinear", raw[i]), ("calib+tta_bilinear", calib_tta[i])):
            start = time.perf_counter()
            outputs[name].append(bilinear_fine(tokens, scale))
            spent[name] += time.perf_counter() - start
        start = time.perf_counter()
        colours = cell_colours(rgb, (size, size), extractor.patch_size, scale)
        outputs["calib+tta_joint_bilateral"].append(
            joint_bilateral_fine(calib_tta[i], colours, scale)
        )
        spent["calib+tta_joint_bilateral"] += time.perf_counter() - start
        start = time.perf_counter()
        outputs["subpatch_average"].append(
            subpatch_average(extractor, rgb, size, scale, hr_views, model, i)
        )
        spent["subpatch_average"] += time.perf_counter() - start
    return (
        {k: np.stack(v) for k, v in outputs.items()},
        {k: v / len(images) for k, v in spent.items()},
    )
