"""clean_dataset pipeline benchmark: throughput vs a plain loop, and peak memory at 1x and 4x.

Run: python bench/bench_pipeline.py [--images 12] [--job quickstart] [key=value ...]
Both sides use the same model, preset and images (JPEG files made from the bundled photos).
The plain loop reads, decodes and calls ``clean_images`` one image at a time; the pipeline is
``run_clean_job`` on a local Ray that is started fresh for each size (and timed separately), so
one run's idle workers and object-store pages never count in the other's memory figures.
Each size runs twice: once timed, once with peak memory sampled over this process plus every
Ray process (the sampler's own CPU time stays out of the timing). Throughput is reported end to
end and as the marginal rate between the two sizes, (N4 - N1) / (T4 - T1), which cancels the
fixed cost of starting the actor pools and loading the model in them.
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
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import ray
from PIL import Image

from pipeline import clean_images, load_extractor
from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.features import list_images
from pipeline.evaluation.samples import sample_photos
from pipeline.job_config import resolve_clean_job
from pipeline.models.images import decode_image


class PeakMemory:
    """Samples this process and its descendants (Ray's workers included).

    peak: largest summed RSS (shared pages counted once per process that maps them);
    peak_uss: largest summed USS (memory unique to each process: no double counting);
    peak_largest: largest single-process RSS; peak_processes: most processes alive at once.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval, self._stop = interval, threading.Event()
        self.peak = self.peak_uss = self.peak_largest = self.peak_processes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss = uss = largest = count = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss, uss, count = rss + info.rss, uss + info.uss, count + 1
                largest = max(largest, info.rss)
            self.peak, self.peak_uss = max(self.peak, rss), max(self.peak_uss, uss)
            self.peak_largest = max(self.peak_largest, largest)
            self.peak_processes = max(self.peak_processes, count)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_images(folder: Path, count: int) -> None:
    """``count`` distinct JPEGs from the bundled photos (shifted crops so bytes differ)."""
    photos = list(sample_photos(8).values())
    for i in range(count):
        photo = photos[i % len(photos)]
        shift = 4 * (i // len(photos))
        crop = photo[shift:, shift:]
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"img{i:04d}.jpg", quality=92)


def plain_loop(cfg, uris: list[str]) -> float:
    """Seconds for read + decode + clean_images, one image at a time."""
    ext = load_extractor(cfg.model.name, cfg.model.weights)
    start = time.perf_counter()
    for uri in uris:
        rgb = decode_image(Path(uri).read_bytes(), min_side=ext.patch_size)
        clean_images(ext, [rgb], cfg.engine)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--job", default="quickstart")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report: dict[str, object] = {"overrides": args.overrides}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 4):
            images = Path(tmp) / f"images{scale}"
            images.mkdir()
            make_images(images, args.images * scale)
            # two runs per size, each on a fresh local Ray: one timed with nothing else on
            # the CPU, one with the memory sampler (reading every process's page tables
            # costs CPU time that is not the pipeline's)
            for run in ("timed", "sampled"):
                t0 = time.perf_counter()
                ray.init(num_cpus=8, include_dashboard=False, _temp_dir="/tmp/dvt-bench-ray")
                report[f"ray_start_seconds_{scale}x_{run}"] = time.perf_counter() - t0
                cfg = resolve_clean_job(
                    args.job,
                    [
                        f"input.uri={images}",
                        f"output.uri={Path(tmp) / f'out{scale}-{run}'}",
                        *args.overrides,
                    ],
                )
                if run == "timed":
                    start = time.perf_counter()
                    summary = run_clean_job(cfg)
                    wall = time.perf_counter() - start
                    report[f"pipeline_{scale}x"] = {
                        "images": summary["done"],
                        "seconds": wall,
                        "images_per_second": summary["done"] / wall,
                    }
                else:
                    with PeakMemory() as mem:
                        run_clean_job(cfg)
                    report[f"pipeline_{scale}x"].update(
                        {
                            "peak_rss_gib": mem.peak / 2**30,
                            "peak_uss_gib": mem.peak_uss / 2**30,
                            "peak_largest_process_gib": mem.peak_largest / 2**30,
                            "peak_processes": mem.peak_processes,
                        }
                    )
                ray.shutdown()
            if scale == 1:
                loop_cfg = cfg
        # last, so that its model and buffers do not sit in the pipeline's memory figures
        loop = plain_loop(loop_cfg, list_images(loop_cfg.input))
        report["plain_loop_1x"] = {
            "images": args.images,
            "seconds": loop,
            "images_per_second": args.images / loop,
        }
    loop_rate = report["plain_loop_1x"]["images_per_second"]
    report["pipeline_over_plain_loop"] = report["pipeline_1x"]["images_per_second"] / loop_rate
    report["pipeline_4x_over_plain_loop"] = report["pipeline_4x"]["images_per_second"] / loop_rate
    p1, p4 = report["pipeline_1x"], report["pipeline_4x"]
    marginal = (p4["images"] - p1["images"]) / (p4["seconds"] - p1["seconds"])
    report["pipeline_marginal_images_per_second"] = marginal
    report["pipeline_marginal_over_plain_loop"] = marginal / loop_rate
    for key in ("peak_rss_gib", "peak_uss_gib", "peak_largest_process_gib"):
        report[f"{key}_4x_over_1x"] = report["pipeline_4x"][key] / report["pipeline_1x"][key]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
