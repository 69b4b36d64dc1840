"""The pipeline's own costs at scale: listing and skip logic for many inputs (local disk and
moto's S3 server), the committed-id set's memory per reader actor, and the overhead per image
of a run over many tiny images with the smoke preset.

Run: python bench/bench_protocol.py [--objects 100000] [--images 1000] [--out ...]

1. Listing: ``--objects`` one-byte objects under a prefix; seconds and peak Python memory
   (tracemalloc) of ``list_images`` on the driver.
2. Skip logic: an output holding ``--objects`` committed ids, half in a committed run's
   manifest and half in the commit records (100 ids each) of a run still open; seconds and
   peak memory of ``committed_ids`` and of building the ``IdSet`` a reader actor keeps, its
   bytes per id, and both extrapolated to 1 M ids (beside a plain Python set of the hex ids).
3. Overhead: ``run_clean_job`` over ``--images`` tiny JPEGs with the smoke preset on a local
   Ray; wall seconds per image against the stage's own seconds per image (the fit, summed over
   images, over the actors that ran them): the rest is the pipeline's (listing, reading,
   decoding, moving rows, writing files and commit records).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.distributed.clean import run_clean_job  # noqa: E402
from pipeline.distributed.features import list_images  # noqa: E402
from pipeline.job_config import InputConfig, resolve_clean_job  # noqa: E402
from pipeline.store.schema import (  # noqa: E402
    CommitRecord,
    FileEntry,
    IdSet,
    Manifest,
    commit_run,
    committed_ids,
    filesystem,
    run_folder,
    write_commit_record,
    write_run_config,
)

BENCH_FAST_SECONDS = 75.0
"""Seconds of one `fast` fit at 224 px on this 2-core CPU (README, "Choosing the default")."""


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """fn's result, its seconds and its peak Python allocation (bytes, numpy included)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def make_objects(uri: str, options: dict[str, Any], count: int) -> None:
    """``count`` one-byte .jpg objects under ``uri`` (threads: moto answers one at a time)."""
    fs, root = filesystem(uri, options)
    fs.makedirs(root, exist_ok=True)
    for folder in range(count // 1000 + 1):  # local disk: parents first (S3: no-op)
        fs.makedirs(f"{root}/{folder:04d}", exist_ok=True)

    def put(i: int) -> None:
        fs.pipe_file(f"{root}/{i // 1000:04d}/img{i:07d}.jpg", b"x")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def make_output(uri: str, options: dict[str, Any], count: int) -> None:
    """An output with ``count`` committed ids: half in a committed run, half in 100-id commit
    records of an open run."""
    fs, root = filesystem(uri, options)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(count)]
    half = count // 2
    done = run_folder(root, "20260101T000000Z-c-000001")
    write_run_config(fs, done, {"run_id": "done", "meta": {"config_digest": "c"}})
    files = tuple(FileEntry(f"part-{k:05d}.parquet", 100, "", tuple(ids[k * 100:(k + 1) * 100]))
                  for k in range(half // 100))
    commit_run(fs, done, Manifest("done", "c", {}, files))
    going = run_folder(root, "20260102T000000Z-c-000002")
    write_run_config(fs, going, {"run_id": "going", "meta": {"config_digest": "c"}})

    def record(k: int) -> None:
        chunk = tuple(ids[half + k * 100:half + (k + 1) * 100])
        write_commit_record(fs, going, CommitRecord(k, (FileEntry(f"part-{k:05d}.parquet",
                                                                  len(chunk), "", chunk),)))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(record, range((count - half) // 100)))


def storage_figures(uri_in: str, uri_out: str, options: dict[str, Any], count: int
                    ) -> dict[str, Any]:
    make_objects(uri_in, options, count)
    make_output(uri_out, options, count)
    listed, list_s, list_peak = measured(
        lambda: list_images(InputConfig(uri=uri_in, storage_options=options)))
    ids, ids_s, ids_peak = measured(lambda: committed_ids(uri_out, "c", options))
    held, set_s, set_peak = measured(lambda: IdSet(ids))
    plain, _, plain_peak = measured(lambda: set(ids))
    assert len(listed) == count and len(ids) == count == len(held) == len(plain)
    per_id = held.nbytes / count
    return {"objects": count, "list_seconds": list_s, "list_peak_mb": list_peak / 2**20,
            "committed_ids_seconds": ids_s, "committed_ids_peak_mb": ids_peak / 2**20,
            "id_set_seconds": set_s, "id_set_bytes_per_id": per_id,
            "id_set_mb_at_1m": per_id * 1e6 / 2**20,
            "python_set_bytes_per_id": plain_peak / count,
            "python_set_mb_at_1m": plain_peak / count * 1e6 / 2**20,
            "list_seconds_at_1m": list_s * 1e6 / count,
            "committed_ids_seconds_at_1m": ids_s * 1e6 / count}


def moto_endpoint() -> tuple[str, Any]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return f"http://127.0.0.1:{port}", server


def overhead(images: int, folder: Path) -> dict[str, Any]:
    """The smoke preset over ``images`` tiny JPEGs on a local Ray."""
    src = folder / "tiny"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, "JPEG")
        (src / f"t{i:05d}.jpg").write_bytes(buf.getvalue())
    cfg = resolve_clean_job("smoke", [f"input.uri={src}", f"output.uri={folder / 'out'}",
                                      "compute.actors=2", "compute.readers=1"])
    start = time.perf_counter()
    summary = run_clean_job(cfg)
    wall = time.perf_counter() - start
    stage = summary["seconds_per_image"] / cfg.compute.actors  # per image, actors in parallel
    per_image = wall / images
    return {"images": images, "done": summary["done"], "actors": cfg.compute.actors,
            "wall_seconds": wall, "wall_seconds_per_image": per_image,
            "stage_seconds_per_image": stage, "overhead_seconds_per_image": per_image - stage,
            "overhead_share_of_fast_fit": (per_image - stage) / BENCH_FAST_SECONDS,
            "commit_records": summary["commit_records"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/protocol.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import s3fs

    report: dict[str, Any] = {"command": " ".join(["python bench/bench_protocol.py",
                                                   *sys.argv[1:]])}
    with tempfile.TemporaryDirectory(prefix="dvt-proto-") as tmp:
        report["local"] = storage_figures(f"{tmp}/in", f"{tmp}/out", {}, args.objects)
        print(json.dumps(report["local"], indent=2), flush=True)
        endpoint, server = moto_endpoint()
        try:
            s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench")
            options = {"endpoint_url": endpoint}
            report["s3"] = storage_figures("s3://bench/in", "s3://bench/out", options,
                                           args.objects)
            print(json.dumps(report["s3"], indent=2), flush=True)
        finally:
            server.stop()
        report["overhead"] = overhead(args.images, Path(tmp))
    print(json.dumps(report["overhead"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
