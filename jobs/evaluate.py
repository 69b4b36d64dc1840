"""Show and measure that features are artifact-free: a report folder with pictures and numbers.

    python jobs/evaluate.py --features FEATURES_URI [--denoiser EXPORT] [--out outputs/report]
                            [--job evaluate] [key=value ...]

Writes report.md (figures inline, every measure defined), metrics.json and figures/*.png:
per-image PCA pictures (photo, raw, clean, denoised, G, norms), a grid of G from several
photos, position-explained variance over random crops, G agreement, shift consistency, fit
diagnostics, and the stereo and mask probes; raw / clean / denoised side by side. The crops and
probe images are fitted with the features' own saved job config (``stage1=[...]`` overrides it).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep local Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from pipeline.cli import user_errors  # noqa: E402
from pipeline.distributed.evaluate import run_evaluation  # noqa: E402
from pipeline.job_config import EvaluateConfig, resolve_job  # noqa: E402


@user_errors()
def main() -> None:
    parser = argparse.ArgumentParser(description="Artifact evaluation report.")
    parser.add_argument("--features", help="output URI of clean_dataset (committed runs)")
    parser.add_argument("--denoiser", help="exported denoiser to evaluate beside raw and clean")
    parser.add_argument("--out", help="report folder")
    parser.add_argument("--job", default="evaluate", help="job preset name or YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    for key, value in (("features.uri", args.features), ("denoiser.uri", args.denoiser),
                       ("out", args.out)):
        if value:
            overrides.append(f"{key}={value}")
    metrics = run_evaluation(resolve_job(EvaluateConfig, args.job, overrides))
    print(json.dumps({k: metrics[k] for k in ("pev", "shift", "stereo", "masks", "g_agreement")
                      if k in metrics}, indent=2))


if __name__ == "__main__":
    main()
