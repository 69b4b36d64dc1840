"""Images per second of denoise_dataset's work on this machine (its GPU when it has one), stage by
stage, without Ray: what one actor of each pool does, so that it runs where Ray is not installed.

Run: python bench/bench_denoise_stage.py --model vit_base_patch14_dinov2 --image-size 518 \
    [--images 256] [--batch-size 16] [--photo-size 640x480] [--flip]

Inputs: ``--images`` JPEG files (quality 90) of random crops of the bundled evaluation photos
(smooth random images where their wheels are not installed), resized to ``--photo-size``, on
local disk (where the package is not installed: ``PYTHONPATH=. python3 bench/...``). The
denoiser: a fresh (random) block for the ViT's token grid at ``--image-size`` with the ViT's
``--weights`` (default random: timing only), exported and loaded by
``DenoisedViT.from_pretrained`` as the job loads it. Timed, each on the same rows, batch after
batch as the job hands them out:

- read: ``stages.read.ReadImages`` (file bytes, sha256 id, decode in its child process), the
  job's reader actor, on one CPU core;
- denoise: ``stages.features.DenoiseImages`` (resize, ViT, block, tokens to float16 row bytes),
  the job's GPU actor, after one warm-up batch; CUDA is synchronised by the stage's copy of
  the tokens to host memory;
- encode: ``store.format.table_bytes`` on the feature table a write task builds from the
  stage's rows (``rows_feature_table``; raw + clean + artifact columns, zstd): the Parquet
  file it uploads, per batch; beside it, the same tables written with pyarrow's defaults
  (``encode_pyarrow_default``), the write's baseline. Its rate depends on the tokens' values:
  time it with real weights where they are at hand.

The job runs these as pipelined pools (readers on CPUs, the stage on GPUs, writers on CPUs), so
its rate is about the slowest pool: min(denoise x GPUs, read x reader cores, encode x writer
cores); the bound printed takes this machine's cores for readers and writers (listing, object
storage and Ray's overheads aside). Writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline import load_extractor
from pipeline.evaluation.samples import EVALUATION_PHOTOS, sample_photo
from pipeline.models.crops import random_crop
from pipeline.models.denoiser import Denoiser, DenoiserConfig, save_denoiser
from pipeline.models.vit import default_device
from pipeline.stages.features import DenoiseImages
from pipeline.stages.read import ReadImages, RowStatus
from pipeline.store import RunMeta
from pipeline.store.format import rows_feature_table, table_bytes


def source_photos() -> list[np.ndarray]:
    """The evaluation photos, or, where their wheels are not installed (a bare GPU machine),
    smooth random images of their size: the ViT's cost does not depend on the content."""
    try:
        return [sample_photo(name) for name in EVALUATION_PHOTOS]
    except Exception as err:  # the wheels, or their data, are missing here
        logging.warning("no sample photos (%s): timing on smooth random images instead", err)
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (len(EVALUATION_PHOTOS), 24, 32, 3), dtype=np.uint8)
        return [
            np.asarray(Image.fromarray(c).resize((640, 480), Image.Resampling.BICUBIC))
            for c in coarse
        ]


def write_photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[str]:
    """``count`` JPEG files of random crops of ``source_photos`` at ``size`` (w, h)."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    paths = []
    for k in range(count):
        crop = random_crop(photos[k % len(photos)], rng, (0.5, 1.0))
        path = folder / f"photo-{k:05d}.jpg"
        Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def random_export(folder: Path, model: str, weights: str, image_size: int) -> tuple[str, str]:
    """A fresh denoiser for ``model``'s grid at ``image_size``, exported as train_denoiser
    exports; its URI and the ViT's weights digest."""
    extractor = load_extractor(model, weights, device="cpu")
    grid = image_size // extractor.patch_size
    denoiser = Denoiser(DenoiserConfig(channels=extractor.embed_dim, grid=grid))
    meta = {"model": model, "weights": weights, "weights_digest": extractor.weights_digest}
    save_denoiser(denoiser, str(folder), meta)
    return str(folder), extractor.weights_digest


def done_rows(rows: dict[str, Any]) -> pa.Table:
    """The stage's done rows as the Arrow table a write task receives."""
    ok = [i for i, status in enumerate(rows["status"]) if status == RowStatus.DONE]
    if not ok:
        raise SystemExit(f"a batch had no denoised row: {set(rows['reason'])}")
    return pa.table({key: [values[i] for i in ok] for key, values in rows.items()})


def pyarrow_default_bytes(table: pa.Table) -> int:
    """Size of the table written by pyarrow's defaults with zstd (dictionary and statistics on
    every column) and hashed, what ``table_bytes`` did before: the write's baseline."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    hashlib.sha256(data)
    return len(data)


def batches(items: list[str], size: int) -> list[list[str]]:
    """``items`` in consecutive batches of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch14_dinov2")
    parser.add_argument("--weights", default="random", help="ViT weight spec (timing only)")
    parser.add_argument("--image-size", type=int, default=518)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="denoise_dataset batch_size")
    parser.add_argument("--photo-size", default="640x480", help="input files' width x height")
    parser.add_argument("--flip", action="store_true", help="denoiser.flip=true (two forwards)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/denoise_stage.json"))
    args = parser.parse_args()
    if args.images < 1 or args.batch_size < 1:
        parser.error("--images and --batch-size must be at least 1")
    width, height = (int(v) for v in args.photo_size.lower().split("x"))
    device = default_device()
    with tempfile.TemporaryDirectory(prefix="dvt-dstage-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        uris = write_photos(root / "in", args.images, (width, height), seed=0)
        export, weights_digest = random_export(
            root / "export", args.model, args.weights, args.image_size
        )
        stage = DenoiseImages(
            export,
            args.weights,
            args.image_size,
            args.batch_size,
            "float16",
            with_artifact=True,
            weights_digest=weights_digest,
            flip=args.flip,
        )
        reader = ReadImages(
            str(root / "in"),
            {},
            max_bytes=64 << 20,
            max_pixels=100_000_000,
            min_side=stage.model.extractor.patch_size,
            decode_timeout_s=60.0,
            output_uri=str(root / "out"),
            output_storage_options={},
            config_digest="bench",
        )
        chunks = batches(uris, args.batch_size)
        seconds = {"read": 0.0, "denoise": 0.0, "encode": 0.0, "encode_pyarrow_default": 0.0}
        stage(reader({"source_uri": np.asarray(chunks[0], dtype=object)}))  # warm-up
        extractor = stage.model.extractor
        meta = RunMeta(
            model=args.model,
            weights=args.weights,
            weights_digest=weights_digest,
            layer=extractor.layer,
            config_digest="bench",
            channels=extractor.embed_dim,
            method=DenoiseImages.method,
            patch_size=extractor.patch_size,
        )
        done, sizes = 0, {"encode": 0, "encode_pyarrow_default": 0}
        for chunk in chunks:
            began = time.perf_counter()
            rows = reader({"source_uri": np.asarray(chunk, dtype=object)})
            read = time.perf_counter()
            out = stage(rows)
            denoised = time.perf_counter()
            table = rows_feature_table(done_rows(out), meta, "bench", "float16", True)
            encoding = time.perf_counter()
            sizes["encode"] += len(table_bytes(table)[0])
            encoded = time.perf_counter()
            sizes["encode_pyarrow_default"] += pyarrow_default_bytes(table)
            seconds["read"] += read - began
            seconds["denoise"] += denoised - read
            seconds["encode"] += encoded - encoding
            seconds["encode_pyarrow_default"] += time.perf_counter() - encoded
            done += len(table)
    if done != args.images:
        raise SystemExit(f"only {done} of {args.images} images were denoised")
    rates = {step: args.images / s for step, s in seconds.items()}
    cores = os.cpu_count() or 1
    accelerators = torch.cuda.device_count() if device.type == "cuda" else 1
    bound = min(rates["denoise"] * accelerators, rates["read"] * cores, rates["encode"] * cores)
    report = {
        "command": "python bench/bench_denoise_stage.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "weights": args.weights,
        "image_size": args.image_size,
        "photo_size": [width, height],
        "batch_size": args.batch_size,
        "flip": args.flip,
        "images": args.images,
        "images_per_second": rates,
        "file_megabytes_per_image": {k: v / args.images / 1e6 for k, v in sizes.items()},
        "cpu_cores": cores,
        "accelerators": accelerators,
        "job_bound_images_per_second": bound,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
