"""Denoise a dataset online: images -> ViT + trained denoiser -> committed Parquet features.

    python jobs/denoise_dataset.py --input URI --output URI --denoiser EXPORT_URI [key=value ...]
    python jobs/denoise_dataset.py --input URI --output URI --denoiser dinov2_vits14
    ray job submit --working-dir . -- python jobs/denoise_dataset.py --input s3://... ...

No per-image fit: one ViT forward and one Transformer block per image. The output has the
schema of clean_dataset (``method`` = "denoiser") and the same commit, refresh, quarantine and
summary behaviour. Overrides: ``compute.actors=4``, ``compute.num_gpus=1``, ``batch_size=64``.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep local Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from pipeline.cli import user_errors  # noqa: E402
from pipeline.distributed.denoise import run_denoise_job  # noqa: E402
from pipeline.distributed.features import format_summary  # noqa: E402
from pipeline.job_config import DenoiseJobConfig, resolve_job  # noqa: E402


@user_errors()
def main() -> None:
    parser = argparse.ArgumentParser(description="Online DVT denoising over a dataset.")
    parser.add_argument("--input", help="images folder/prefix (path, file://, s3://, ...)")
    parser.add_argument("--output", help="output folder/prefix for committed runs")
    parser.add_argument("--denoiser", help="exported denoiser (train_denoiser's export) or "
                        "a shipped one by name (dinov2_vits14)")
    parser.add_argument("--job", default="denoise", help="job preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    for key, value in (("input.uri", args.input), ("output.uri", args.output),
                       ("denoiser.uri", args.denoiser)):
        if value:
            overrides.append(f"{key}={value}")
    summary = run_denoise_job(resolve_job(DenoiseJobConfig, args.job, overrides))
    print(format_summary(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
