"""Train the online denoiser on committed stage-1 runs with Ray Train, then export it.

    python jobs/train_denoiser.py --input FEATURES_URI [--job train] [key=value ...]
    ray job submit --working-dir . -- python jobs/train_denoiser.py --input s3://... \\
        run.storage_path=s3://bucket/training compute.workers=4 compute.use_gpu=true

Overrides: ``train.epochs=20``, ``train.batch_size=64``, ``run.name=dinov2s``,
``run.export_uri=PATH_OR_URI`` ... Re-running with the same ``run.name`` and storage resumes
from the last checkpoint. Without a cluster a local Ray on 127.0.0.1 is started.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep local Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from pipeline.cli import user_errors  # noqa: E402
from pipeline.distributed.train import format_train_summary, run_train_job  # noqa: E402
from pipeline.job_config import TrainJobConfig, resolve_job  # noqa: E402


@user_errors()
def main() -> None:
    parser = argparse.ArgumentParser(description="Train the DVT online denoiser (Ray Train).")
    parser.add_argument("--input", help="output URI of clean_dataset (committed runs)")
    parser.add_argument("--job", default="train", help="job preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    if args.input:
        overrides.append(f"input.uri={args.input}")
    summary = run_train_job(resolve_job(TrainJobConfig, args.job, overrides))
    print(format_train_summary(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
