"""Quickstart: clean_dataset on bundled sample photos with the offline weights, then pictures.

    python jobs/quickstart.py [--photos 2] [--out DIR] [key=value ...]

Writes the photos to DIR/photos, runs jobs/clean_dataset's pipeline (job preset
``quickstart``: a local Ray, the offline DINOv2 ViT-S/14, the ``shift`` engine preset) into
DIR/features (committed runs, Parquet), then one figure per photo in DIR/figures
(photo | PCA of raw | PCA of clean | PCA of G | feature norms). Overrides go to the job
config, e.g. ``preset=smoke`` or ``engine.image_size=224``.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep local Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.cli import user_errors  # noqa: E402
from pipeline.distributed.clean import run_clean_job  # noqa: E402
from pipeline.distributed.features import format_summary  # noqa: E402
from pipeline.evaluation.samples import CALIBRATION_PHOTOS, sample_photo, sample_photos  # noqa: E402
from pipeline.evaluation.visualize import feature_figure  # noqa: E402
from pipeline.job_config import resolve_clean_job  # noqa: E402
from pipeline.store.schema import column_to_numpy, read_feature_groups  # noqa: E402


def draw_figures(features: Path, config_digest: str, photos: dict[str, np.ndarray],
                 figures: Path) -> set[str]:
    """One figure per committed photo of the run's config, whatever its token grid (photos of
    other aspects have other grids and are read grid by grid); the names drawn."""
    groups = read_feature_groups(str(features), ["source_uri", "raw", "clean", "artifact"],
                                 config_digest=config_digest)
    drawn = set()
    for table in groups.values():
        raw, clean, artifact = (column_to_numpy(table[c]) for c in ("raw", "clean", "artifact"))
        for i, uri in enumerate(table["source_uri"].to_pylist()):
            name = Path(uri).stem
            if name in photos:
                feature_figure(photos[name], raw[i], clean[i], artifact[i]).save(
                    figures / f"{name}.png")
                drawn.add(name)
    return drawn


@user_errors()
def main() -> None:
    parser = argparse.ArgumentParser(description="clean_dataset on sample photos, with pictures.")
    parser.add_argument("--photos", type=int, default=2, help="how many sample photos")
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart"))
    parser.add_argument("overrides", nargs="*", help="job overrides, e.g. preset=smoke")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    photos = sample_photos(args.photos)
    folder = args.out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in photos.items():
        if not (folder / f"{name}.png").exists():
            Image.fromarray(photo).save(folder / f"{name}.png")
    calibration = args.out / "calibration"  # other bundled photos for the artifact model
    calibration.mkdir(parents=True, exist_ok=True)
    for name in CALIBRATION_PHOTOS:
        if not (calibration / f"{name}.png").exists():
            Image.fromarray(sample_photo(name)).save(calibration / f"{name}.png")
    cfg = resolve_clean_job("quickstart", [f"input.uri={folder}",
                                           f"output.uri={args.out / 'features'}",
                                           f"calibration.uri={calibration}",
                                           "calibration.crops_per_image=15", *args.overrides])
    summary = run_clean_job(cfg)
    print(format_summary(summary))

    figures = args.out / "figures"
    figures.mkdir(exist_ok=True)
    drawn = draw_figures(args.out / "features", summary["config_digest"], photos, figures)
    missing = sorted(set(photos) - drawn)
    if missing:  # quarantined inputs have no features (the summary counts them)
        logging.warning("no features, so no figure, for: %s", ", ".join(missing))
    logging.info("features in %s, figures in %s", (args.out / "features").resolve(),
                 figures.resolve())


if __name__ == "__main__":
    main()
