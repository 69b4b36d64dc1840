"""Denoise a dataset online: images -> ViT + trained denoiser -> committed Parquet features.

    python jobs/denoise_dataset.py --input URI --output URI --denoiser EXPORT_URI [key=value ...]
    python jobs/denoise_dataset.py --input URI --output URI --denoiser dinov2_vits14
    ray job submit --working-dir . -- python jobs/denoise_dataset.py --input s3://... ...

No per-image fit: one ViT forward and one Transformer block per image. The output has the
schema of clean_dataset (``method`` = "denoiser") and the same commit, refresh, quarantine and
summary behaviour. Overrides: ``compute.actors=4``, ``compute.num_gpus=1``, ``batch_size=64``.
"""

from pipeline.cli import run_job

if __name__ == "__main__":
    run_job("denoise")
