"""The pipeline's own costs at scale: listing and skip logic for many inputs (local disk and
moto's S3 server), the committed-id set's memory per reader actor, and the overhead per image
of a run over many tiny images with the smoke preset.

Run: python bench/bench_protocol.py [--objects 100000] [--images 1000] [--out ...]
     [--parts list,ids,overhead] [--backends local,s3] [--stage OVERRIDE ...]

1. Listing: ``--objects`` one-byte objects under a prefix; seconds and peak Python memory
   (tracemalloc) of ``list_images`` on the driver.
2. Skip logic: an output holding ``--objects`` committed ids, half in a committed run's
   manifest and half in the commit records (100 ids each) of a run still open; seconds and
   peak memory of ``committed_ids`` and of building the ``IdSet`` a reader actor keeps, its
   bytes per id, and both extrapolated to 1 M ids (beside a plain Python set of the hex ids).
3. Overhead: ``run_clean_job`` over ``--images`` tiny JPEGs with the smoke preset (its fit cut
   to a few steps by ``--stage``, default ``LIGHT_STAGE``) on a local Ray; wall seconds per
   image against the stage's own seconds per image (the fit, summed over images, over the
   actors that ran them): the rest is the pipeline's (listing, reading, decoding, moving rows,
   writing files and commit records).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import argparse
import hashlib
import io
import json
import logging
import socket
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.distributed.clean import run_clean_job
from pipeline.distributed.features import list_images
from pipeline.job_config import InputConfig, resolve_clean_job
from pipeline.store import Manifest, RunMeta, committed_ids
from pipeline.store.fs import filesystem
from pipeline.store.layout import run_folder
from pipeline.store.readers import IdSet
from pipeline.store.runs import (
    CommitRecord,
    FileEntry,
    commit_run,
    write_commit_record,
    write_run_config,
)

LIGHT_STAGE = ("engine.fit.steps=10", "engine.views.num_views=2")
"""The overhead run's fit: a few steps, so that the pipeline's own share is not lost in the
fit's run-to-run spread (what the pipeline does around the stage does not depend on it)."""
BENCH_FAST_SECONDS = 75.0
"""Seconds of one `fast` fit at 224 px on this 2-core CPU (docs/performance.md, "Choosing the
default")."""


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int, int]:
    """fn's result, its seconds, its peak Python allocation and what it left allocated when it
    returned (bytes, numpy included; the result and any cache it filled)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak, retained


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
    files = tuple(
        FileEntry(f"part-{k:05d}.parquet", 100, "", tuple(ids[k * 100 : (k + 1) * 100]))
        for k in range(half // 100)
    )
    commit_run(fs, done, Manifest("done", "c", RunMeta(), files))
    going = run_folder(root, "20260102T000000Z-c-000002")
    write_run_config(fs, going, {"run_id": "going", "meta": {"config_digest": "c"}})

    def record(k: int) -> None:
        chunk = tuple(ids[half + k * 100 : half + (k + 1) * 100])
        write_commit_record(
            fs, going, CommitRecord(k, (FileEntry(f"part-{k:05d}.parquet", len(chunk), "", chunk),))
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(record, range((count - half) // 100)))


def listing_figures(uri_in: str, options: dict[str, Any], count: int) -> dict[str, Any]:
    """Seconds and peak memory of listing ``count`` input objects on the driver."""
    make_objects(uri_in, options, count)
    listed, list_s, list_peak, list_kept = measured(
        lambda: list_images(InputConfig(uri=uri_in, storage_options=options))
    )
    assert len(listed) == count
    return {
        "objects": count,
        "list_seconds": list_s,
        "list_peak_mb": list_peak / 2**20,
        "list_retained_mb": list_kept / 2**20,
        "list_seconds_at_1m": list_s * 1e6 / count,
    }


def id_figures(uri_out: str, options: dict[str, Any], count: int) -> dict[str, Any]:
    """Seconds and peak memory of the skip logic over ``count`` committed ids, and the memory
    of the id set a reader actor keeps."""
    make_output(uri_out, options, count)
    ids, ids_s, ids_peak, _ = measured(lambda: committed_ids(uri_out, "c", options))
    held, set_s, set_peak, _ = measured(lambda: IdSet(ids))
    # a plain set of the hex strings, strings included (tracemalloc would count only the
    # table: the strings are shared with ``ids``)
    plain = sys.getsizeof(ids) + sum(sys.getsizeof(i) for i in ids)
    assert len(ids) == count == len(held)
    per_id = held.nbytes / count
    return {
        "ids": count,
        "commit_records": (count - count // 2) // 100,
        "committed_ids_seconds": ids_s,
        "committed_ids_peak_mb": ids_peak / 2**20,
        "committed_ids_seconds_at_1m": ids_s * 1e6 / count,
        "id_set_seconds": set_s,
        "id_set_build_peak_mb": set_peak / 2**20,
        "id_set_bytes_per_id": per_id,
        "id_set_mb_at_1m": per_id * 1e6 / 2**20,
        "python_set_bytes_per_id": plain / count,
        "python_set_mb_at_1m": plain / count * 1e6 / 2**20,
    }


def storage_figures(
    root: str, options: dict[str, Any], count: int, parts: set[str]
) -> dict[str, Any]:
    """The listing and skip-logic figures asked for, under ``root`` (a folder or a bucket)."""
    figures: dict[str, Any] = {}
    if "list" in parts:
        figures.update(listing_figures(f"{root}/in", options, count))
    if "ids" in parts:
        figures.update(id_figures(f"{root}/out", options, count))
    return figures


def moto_endpoint() -> tuple[str, Any]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return f"http://127.0.0.1:{port}", server


def overhead(images: int, folder: Path, stage_overrides: list[str]) -> dict[str, Any]:
    """The smoke preset (with ``stage_overrides``) over ``images`` tiny JPEGs on a local Ray,
    into an output of its own."""
    src = folder / "tiny"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, "JPEG")
        (src / f"t{i:05d}.jpg").write_bytes(buf.getvalue())
    cfg = resolve_clean_job(
        "smoke",
        [
            f"input.uri={src}",
            f"output.uri={folder / 'tiny-out'}",
            "compute.actors=2",
            "compute.readers=1",
            *stage_overrides,
        ],
    )
    start = time.perf_counter()
    summary = run_clean_job(cfg)
    wall = time.perf_counter() - start
    stage = summary["seconds_per_image"] / cfg.compute.actors  # per image, actors in parallel
    per_image = wall / images
    return {
        "images": images,
        "done": summary["done"],
        "actors": cfg.compute.actors,
        "wall_seconds": wall,
        "wall_seconds_per_image": per_image,
        "stage_seconds_per_image": stage,
        "overhead_seconds_per_image": per_image - stage,
        "overhead_share_of_fast_fit": (per_image - stage) / BENCH_FAST_SECONDS,
        "commit_records": summary["commit_records"],
        "stage_overrides": stage_overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument(
        "--parts", default="list,ids,overhead", help="comma-separated: list, ids, overhead"
    )
    parser.add_argument("--backends", default="local,s3", help="comma-separated: local, s3")
    parser.add_argument(
        "--stage",
        nargs="*",
        default=list(LIGHT_STAGE),
        help="overrides of the smoke preset's fit for the overhead run",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/protocol.json"))
    args = parser.parse_args()
    parts, backends = set(args.parts.split(",")), set(args.backends.split(","))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    import s3fs

    report: dict[str, Any] = {
        "command": " ".join(["python bench/bench_protocol.py", *sys.argv[1:]])
    }
    with tempfile.TemporaryDirectory(prefix="dvt-proto-") as tmp:
        if parts & {"list", "ids"} and "local" in backends:
            report["local"] = storage_figures(tmp, {}, args.objects, parts)
            print(json.dumps(report["local"], indent=2), flush=True)
        if parts & {"list", "ids"} and "s3" in backends:
            endpoint, server = moto_endpoint()
            try:
                s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench")
                report["s3"] = storage_figures(
                    "s3://bench", {"endpoint_url": endpoint}, args.objects, parts
                )
                print(json.dumps(report["s3"], indent=2), flush=True)
            finally:
                server.stop()
        if "overhead" in parts:
            report["overhead"] = overhead(args.images, Path(tmp), args.stage)
            print(json.dumps(report["overhead"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
