"""Clean features for a whole dataset at the online denoiser's cost: stage 1 on a sample, the
denoiser trained on it, then every image denoised, in one command.

    python jobs/build_features.py --input URI --output URI [--job build] [key=value ...]
    ray job submit --working-dir . -- python jobs/build_features.py --input s3://... \\
        --output s3://... sample=2000 'clean=[compute.num_gpus=1]' 'denoise=[compute.actors=8]'

Writes ``OUTPUT/sample`` (stage 1 on ``sample`` images spread over the listing),
``OUTPUT/denoiser`` (the export) and ``OUTPUT/features`` (every image). Each step is skipped
where its output is already committed, so a rerun resumes and a grown folder only costs its
new images. Overrides: ``sample=2000``, ``clean=[preset=shift]``, ``train=[train.epochs=20]``,
``denoise=[batch_size=64]``. Without a cluster a local Ray on 127.0.0.1 is started.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep local Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from pipeline.cli import user_errors  # noqa: E402
from pipeline.distributed.build import format_build_summary, run_build_job  # noqa: E402
from pipeline.job_config import BuildJobConfig, resolve_job  # noqa: E402


@user_errors()
def main() -> None:
    parser = argparse.ArgumentParser(description="Stage 1 on a sample, train, denoise all.")
    parser.add_argument("--input", help="images: a folder or URI")
    parser.add_argument("--output", help="root of the sample, denoiser and features outputs")
    parser.add_argument("--job", default="build", help="job preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    for key, value in (("input.uri", args.input), ("output_uri", args.output)):
        if value:
            overrides.append(f"{key}={value}")
    summary = run_build_job(resolve_job(BuildJobConfig, args.job, overrides))
    print(format_build_summary(summary))
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
