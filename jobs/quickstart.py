"""Quickstart: clean_dataset on bundled sample photos with the offline weights, then pictures.

    python jobs/quickstart.py [--photos 2] [--out DIR] [key=value ...]

Writes the photos to DIR/photos, runs jobs/clean_dataset's pipeline (job preset
``quickstart``: a local Ray, the offline DINOv2 ViT-S/14, the ``shift`` engine preset) into
DIR/features (committed runs, Parquet), then one figure per photo in DIR/figures
(photo | PCA of raw | PCA of clean | PCA of G | feature norms). Overrides go to the job
config, e.g. ``preset=smoke`` or ``engine.image_size=224``.
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("quickstart")
