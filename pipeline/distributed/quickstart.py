"""The quickstart job: a few bundled photos cleaned on a local Ray by clean_dataset's pipeline,
and a picture of each (photo, raw, clean, G) drawn from the committed features."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.distributed.clean import run_clean_job
from pipeline.evaluation.samples import CALIBRATION_PHOTOS, sample_photo, sample_photos
from pipeline.evaluation.visualize import feature_figure
from pipeline.job_config import resolve_clean_job
from pipeline.store import column_to_numpy, read_feature_groups

logger = logging.getLogger(__name__)


def draw_figures(
    features: Path, config_digest: str, photos: dict[str, Any], figures: Path
) -> set[str]:
    """One figure per committed photo of the run's config, whatever its token grid (photos of
    other aspects have other grids and are read grid by grid); the names drawn."""
    groups = read_feature_groups(
        str(features), ["source_uri", "raw", "clean", "artifact"], config_digest=config_digest
    )
    drawn = set()
    for table in groups.values():
        raw, clean, artifact = (column_to_numpy(table[c]) for c in ("raw", "clean", "artifact"))
        for i, uri in enumerate(table["source_uri"].to_pylist()):
            name = Path(uri).stem
            if name in photos:
                feature_figure(photos[name], raw[i], clean[i], artifact[i]).save(
                    figures / f"{name}.png"
                )
                drawn.add(name)
    return drawn


def run_quickstart(count: int, out: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Clean ``count`` bundled photos into ``out/features`` (the quickstart job, calibrated on
    other bundled photos) and draw a figure of each in ``out/figures``; the job's summary."""
    photos = sample_photos(count)
    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in photos.items():
        if not (folder / f"{name}.png").exists():
            Image.fromarray(photo).save(folder / f"{name}.png")
    calibration = out / "calibration"  # other bundled photos for the artifact model
    calibration.mkdir(parents=True, exist_ok=True)
    for name in CALIBRATION_PHOTOS:
        if not (calibration / f"{name}.png").exists():
            Image.fromarray(sample_photo(name)).save(calibration / f"{name}.png")
    cfg = resolve_clean_job(
        "quickstart",
        [
            f"input.uri={folder}",
            f"output.uri={out / 'features'}",
            f"calibration.uri={calibration}",
            "calibration.crops_per_image=15",
            *overrides,
        ],
    )
    summary = run_clean_job(cfg)

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    drawn = draw_figures(out / "features", summary["config_digest"], photos, figures)
    missing = sorted(set(photos) - drawn)
    if missing:  # quarantined inputs have no features (the summary counts them)
        logger.warning("no features, so no figure, for: %s", ", ".join(missing))
    logger.info("features in %s, figures in %s", (out / "features").resolve(), figures.resolve())
    return summary
