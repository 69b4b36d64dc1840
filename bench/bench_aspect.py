"""clean_dataset on a mixed-aspect folder beside a square-only one: throughput and token counts.

Run: python bench/bench_aspect.py [--images 24] [--job quickstart] [key=value ...]

Three runs of ``run_clean_job`` on one local Ray, the same job config, into one output (the
artifact model of ``shift``-type presets is calibrated once, by a warm-up run that is not
timed):

- square folder: crops of the bundled photos at 1:1, the aspect kept (the grid is square);
- mixed folder: crops of the same photos at 4:3, 3:4, 16:9, 1:1, 3:2, 2:3, 2:1 and 1:2, the
  aspect kept: each image on its own grid, images of one grid fitted together;
- the mixed folder squashed (``engine.resize.aspect=square``): the layout before aspects were
  kept.

Reports wall seconds and images per second of each run, the engine's own seconds per image
(extraction + fit, summed over images by the sink), and tokens per image, so that the cost of
the larger kept-aspect grids reads apart from the pipeline's batching by grid.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

from pipeline.distributed.clean import run_clean_job
from pipeline.evaluation.samples import sample_photos
from pipeline.job_config import resolve_clean_job
from pipeline.store import read_features_table

MIXED = (4 / 3, 3 / 4, 16 / 9, 1.0, 3 / 2, 2 / 3, 2.0, 1 / 2)
"""Width / height of the mixed folder's images, in turn."""
SHORT_SIDE = 320


def make_images(folder: Path, count: int, aspects: tuple[float, ...], offset: int) -> None:
    """``count`` JPEGs: the largest crop of each bundled photo at the next aspect, its short
    side resized to SHORT_SIDE px; ``offset`` shifts the crops so that no two bytes agree."""
    folder.mkdir(parents=True)
    photos = list(sample_photos(8).values())
    for i in range(count):
        photo = photos[i % len(photos)]
        aspect = aspects[i % len(aspects)]
        height, width = photo.shape[:2]
        w = min(width, int(height * aspect))
        h = min(height, int(w / aspect))
        shift = 2 * (i // len(photos)) + offset
        y, x = min(shift, height - h), min(shift, width - w)
        crop = Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w]))
        scale = SHORT_SIDE / min(h, w)
        crop.resize((round(w * scale), round(h * scale))).save(
            folder / f"img{i:04d}.jpg", quality=92
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--job", default="quickstart")
    parser.add_argument("--out", type=Path, default=Path("bench/results/aspect.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report: dict[str, object] = {
        "job": args.job,
        "overrides": args.overrides,
        "images": args.images,
        "short_side_px": SHORT_SIDE,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root / "warmup", 2, (1.0,), offset=101)
        make_images(root / "square", args.images, (1.0,), offset=0)
        make_images(root / "mixed", args.images, MIXED, offset=1)
        out = root / "out"
        ray.init(num_cpus=8, include_dashboard=False, _temp_dir="/tmp/dvt-bench-ray")
        runs = {
            "warmup": ("warmup", []),
            "square folder": ("square", []),
            "mixed folder": ("mixed", []),
            "mixed folder, squashed": ("mixed", ["engine.resize.aspect=square"]),
        }
        for name, (folder, extra) in runs.items():
            cfg = resolve_clean_job(
                args.job,
                [f"input.uri={root / folder}", f"output.uri={out}", *args.overrides, *extra],
            )
            start = time.perf_counter()
            summary = run_clean_job(cfg)
            wall = time.perf_counter() - start
            if name == "warmup":
                continue
            rows = read_features_table(
                str(out), ["grid_h", "grid_w"], config_digest=summary["config_digest"]
            ).to_pylist()
            tokens = [r["grid_h"] * r["grid_w"] for r in rows]
            report[name] = {
                "images": summary["done"],
                "seconds": wall,
                "images_per_second": summary["done"] / wall,
                "engine_seconds_per_image": summary["seconds_per_image"],
                "tokens_per_image": float(np.mean(tokens)),
                "grids": len({(r["grid_h"], r["grid_w"]) for r in rows}),
            }
        ray.shutdown()
    square, mixed = report["square folder"], report["mixed folder"]
    report["mixed_over_square_images_per_second"] = (
        mixed["images_per_second"] / square["images_per_second"]
    )
    report["mixed_over_square_tokens_per_image"] = (
        mixed["tokens_per_image"] / square["tokens_per_image"]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
