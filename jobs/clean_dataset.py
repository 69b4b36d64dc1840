"""Clean a dataset: images under a URI -> committed Parquet features of a new run.

    python jobs/clean_dataset.py --input URI --output URI [--job quickstart] [key=value ...]
    ray job submit --working-dir . -- python jobs/clean_dataset.py --input ... --output ...

Overrides: ``preset=smoke``, ``model.weights=PATH_OR_URI``, ``compute.actors=4``,
``engine.fit.steps=100`` ... Without a cluster ($RAY_ADDRESS or compute.ray_address) a local
Ray on 127.0.0.1 is started. Re-running only processes images not yet committed.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep local Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from pipeline.cli import user_errors  # noqa: E402
from pipeline.distributed.clean import run_clean_job  # noqa: E402
from pipeline.distributed.features import format_summary  # noqa: E402
from pipeline.job_config import resolve_clean_job  # noqa: E402


@user_errors()
def main() -> None:
    parser = argparse.ArgumentParser(description="DVT stage 1 over a dataset, with Ray Data.")
    parser.add_argument("--input", help="images folder/prefix (path, file://, s3://, ...)")
    parser.add_argument("--output", help="output folder/prefix for committed runs")
    parser.add_argument("--job", default="quickstart", help="job preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    if args.input:
        overrides.append(f"input.uri={args.input}")
    if args.output:
        overrides.append(f"output.uri={args.output}")
    cfg = resolve_clean_job(args.job, overrides)
    summary = run_clean_job(cfg)
    print(format_summary(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
