"""The Ray layer of train_denoiser: corpus, TorchTrainer, checkpoints, resume, export.

Data: the committed stage-1 runs under ``input.uri`` (``method = dvt-fit``), read with Ray Data
and split by image id into train and validation, one token grid at a time (images of other
aspects have other grids), each row's tensors as bytes with its grid so that the grids share one
dataset. Each worker streams its shard and steps on each batch's grids together
(``train_step``); gradients are averaged by DDP (gloo on CPUs, NCCL on GPUs). Every epoch
ends with validation on rank 0 over the whole held-out split (not sharded, so no image is
dropped by the equal split), ``ray.train.report`` of the metrics and a checkpoint from rank 0.
A killed worker restarts the group from the latest checkpoint (``FailureConfig``); a
re-submission with the same ``run.name`` and storage resumes the same way.
The driver exports the final model as safetensors + JSON.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.fs
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from pipeline.config import ConfigError, config_to_dict, redact
from pipeline.distributed.features import init_ray
from pipeline.job_config import TrainJobConfig
from pipeline.models.artifact_model import read_artifact_model
from pipeline.models.denoiser import Denoiser, save_denoiser
from pipeline.models.denoiser_train import (
    TrainConfig,
    ValidationSums,
    is_validation,
    make_optimizer,
    peak_lr,
    train_step,
)
from pipeline.store import column_to_numpy, read_features, sample_features_table
from pipeline.store.readers import run_grids
from pipeline.store.runs import newest_config, stage1_runs

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class Corpus:
    """What the committed stage-1 runs to train on hold (read from their manifests only)."""

    model: str
    weights: str
    weights_digest: str
    grid: int
    channels: int
    config_digests: list[str]
    train_images: int
    val_images: int
    grids: dict[tuple[int, int], int]
    """Rows per token grid (h, w): one grid for square inputs, several with aspects kept."""
    parts: list[tuple[str, tuple[int, int]]]
    """(config digest, token grid) of every part read apart (their tensor types differ)."""
    largest_config: str = ""
    """Config digest of the runs at the largest input size (the denoiser's grid)."""
    artifact_model: str = ""
    """Their stored artifact model (shift and prior presets), "" if they have none."""


PATTERN_SAMPLE = 256
"""Stage-1 rows whose mean G starts the denoiser when the corpus has no stored artifact model."""


def start_pattern(cfg: TrainJobConfig, corpus: Corpus) -> tuple[np.ndarray | None, str]:
    """The (h, w, C) pattern whose negative starts the denoiser's embedding (``train.init``):
    the corpus's artifact model, else the mean G of up to PATTERN_SAMPLE of its rows; and
    where it came from, for the export's metadata."""
    if cfg.train.init == "zero":
        return None, "zero"
    if corpus.artifact_model:
        model, _ = read_artifact_model(corpus.artifact_model, cfg.input.storage_options)
        logger.info("denoiser starts at the artifact model %s", corpus.artifact_model)
        return model.pattern, f"artifact model {corpus.artifact_model}"
    table = sample_features_table(
        cfg.input.uri,
        PATTERN_SAMPLE,
        cfg.input.storage_options,
        method="dvt-fit",
        config_digest=corpus.largest_config,
    )
    if "artifact" not in table.column_names:
        raise ConfigError(
            f"train.init=pattern needs an artifact model or stored G's, and the runs "
            f"under {cfg.input.uri} have neither (written with "
            "output.with_artifact=false): set train.init=zero"
        )
    logger.info("denoiser starts at the mean G of %d stage-1 rows", len(table))
    return (
        column_to_numpy(table["artifact"]).astype(np.float32).mean(0),
        f"mean G of {len(table)} stage-1 rows",
    )


def describe_corpus(cfg: TrainJobConfig) -> Corpus:
    """Check that the runs share one model, weights and channels; count the split by image id.

    Without ``input.config_digest`` the newest run's config is taken: a folder refreshed under
    another config holds each image twice, once per config, with different targets; with
    ``input.all_configs`` every config's runs are pooled (stage 1 at several input sizes).
    """
    runs = stage1_runs(
        cfg.input.uri,
        cfg.input.storage_options,
        cfg.input.config_digest,
        "--input (input.uri) and input.config_digest",
    )
    if not cfg.input.all_configs:
        newest, runs, others = newest_config(runs)
        if others:
            logger.warning(
                "runs under %s come from %d configs: training on the newest (%s); "
                "ignored %s (choose with input.config_digest=..., or pool them with "
                "input.all_configs=true)",
                cfg.input.uri,
                len(others) + 1,
                newest,
                ", ".join(others),
            )
    kinds = {(r.meta.model, r.meta.weights_digest, r.meta.channels) for r in runs}
    if len(kinds) != 1:
        raise ConfigError(
            f"runs under {cfg.input.uri} mix models, weights or channels {kinds}; "
            "pick one with input.config_digest=..."
        )
    model, weights_digest, channels = kinds.pop()
    grid = max(int(r.meta.grid or 0) for r in runs)
    ids = [i for run in runs for i in run.image_ids]
    val = sum(is_validation(i, cfg.train.val_fraction) for i in ids)
    digests = sorted({r.config_digest for r in runs})
    parts: list[tuple[str, tuple[int, int]]] = []
    grids: dict[tuple[int, int], int] = {}
    for digest in digests:  # from the runs listed above: the output is listed once
        of_config = [r for r in runs if r.config_digest == digest]
        for shape, rows in run_grids(cfg.input.uri, of_config, cfg.input.storage_options).items():
            parts.append((digest, shape))
            grids[shape] = grids.get(shape, 0) + rows
    # the start pattern: the artifact model of the largest input size, the denoiser's grid
    largest = [r for r in runs if int(r.meta.grid or 0) == grid]
    stored = sorted({r.meta.artifact_model or "" for r in largest} - {""})
    return Corpus(
        model=model or "",
        weights=runs[0].meta.weights or "hub",
        weights_digest=weights_digest or "",
        grid=grid,
        channels=int(channels or 0),
        config_digests=digests,
        train_images=len(ids) - val,
        val_images=val,
        grids=grids,
        parts=parts,
        largest_config=largest[-1].config_digest,
        artifact_model=stored[-1] if stored else "",
    )


def storage_location(uri: str, options: dict[str, Any]) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray Train's (storage_path, storage_filesystem) for a local path or URI.

    An ``endpoint_url`` in the options (an S3-compatible store) becomes a pyarrow S3 filesystem
    with a scheme-less path; credentials still come from the environment.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return str(Path(parsed.path if parsed.scheme else uri).expanduser().resolve()), None
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get(
        "endpoint_url"
    )
    if parsed.scheme == "s3" and endpoint:
        ep = urlparse(endpoint)
        fs = pyarrow.fs.S3FileSystem(
            endpoint_override=ep.netloc,
            scheme=ep.scheme or "https",
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        )
        return f"{parsed.netloc}{parsed.path}".rstrip("/"), fs
    return uri.rstrip("/"), None


def _split(fraction: float, validation: bool) -> Any:
    """A batch function keeping the rows on one side of the image-id split, as rows of any
    grid: ``raw`` and ``clean`` as bytes, with ``grid_h``, ``grid_w``, ``channels``, ``dtype``
    (tensor columns of different shapes would not share a dataset)."""

    def keep(batch: pa.Table) -> pa.Table:
        mask = [is_validation(i, fraction) == validation for i in batch["image_id"].to_pylist()]
        kept = batch.filter(pa.array(mask, type=pa.bool_()))
        grid_h, grid_w, channels = kept.schema.field("raw").type.shape
        out: dict[str, Any] = {}
        for name in ("raw", "clean"):
            array = column_to_numpy(kept[name])
            out[name] = pa.array([row.tobytes() for row in array], type=pa.binary())
        n = len(kept)
        dtype = str(kept.schema.field("raw").type.value_type.to_pandas_dtype().__name__)
        return pa.table(
            out
            | {
                "grid_h": pa.array([grid_h] * n, pa.int32()),
                "grid_w": pa.array([grid_w] * n, pa.int32()),
                "channels": pa.array([channels] * n, pa.int32()),
                "dtype": pa.array([dtype] * n, pa.string()),
            }
        )

    return keep


def grid_groups(
    rows: dict[str, np.ndarray], device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A batch of ``_split`` rows -> (raw, clean) float32 tensors (B_g, h, w, C), one pair per
    token grid, grids in order of first appearance."""
    members: dict[tuple[int, int, int, str], list[int]] = {}
    for i in range(len(rows["raw"])):
        key = (
            int(rows["grid_h"][i]),
            int(rows["grid_w"][i]),
            int(rows["channels"][i]),
            str(rows["dtype"][i]),
        )
        members.setdefault(key, []).append(i)
    out = []
    for (grid_h, grid_w, channels, dtype), index in members.items():
        pair = []
        for name in ("raw", "clean"):
            stacked = np.stack([np.frombuffer(rows[name][i], dtype=dtype) for i in index])
            tensor = torch.from_numpy(stacked.reshape(len(index), grid_h, grid_w, channels))
            pair.append(tensor.to(device=device, dtype=torch.float32))
        out.append((pair[0], pair[1]))
    return out


def _save_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: dict[str, Any], folder: str
) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": progress},
        os.path.join(folder, STATE_FILE),
    )


def load_checkpoint_state(folder: str) -> dict[str, Any]:
    """A checkpoint's tensors and progress (loaded without unpickling arbitrary objects)."""
    return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One DDP worker: resume if a checkpoint exists, then epochs of train + validation."""
    train_cfg: TrainConfig = config["train"]
    torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(train_cfg.seed)
    model = Denoiser(config["denoiser"])
    if config["start_pattern"] is not None:  # a checkpoint, when there is one, replaces it
        model.start_at(torch.from_numpy(config["start_pattern"]))
    optimizer = make_optimizer(model, train_cfg, config["lr"])
    progress: dict[str, Any] = {"epoch": 0, "step": 0, "resumed_at_steps": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint_state(folder)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        progress = state["progress"]
        progress["resumed_at_steps"] = [*progress["resumed_at_steps"], progress["step"]]
        logger.info("resumed at epoch %d, step %d", progress["epoch"], progress["step"])
    ddp_model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    total = config["total_steps"]
    batch = config["batch_size"]
    for epoch in range(progress["epoch"], train_cfg.epochs):
        began, loss_sum, steps = time.perf_counter(), 0.0, 0
        ddp_model.train()
        for rows in train_shard.iter_batches(
            batch_size=batch,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=4 * batch,
            local_shuffle_seed=train_cfg.seed + epoch,
        ):
            loss = train_step(
                ddp_model,
                optimizer,
                grid_groups(rows, device),
                progress["step"],
                total,
                train_cfg,
                config["lr"],
                model.parameters(),
            )
            loss_sum, steps = loss_sum + loss, steps + 1
            progress["step"] += 1
        seconds = time.perf_counter() - began
        sums = ValidationSums()
        if rank == 0:  # the whole held-out split, unsplit, so no image is dropped
            ddp_model.eval()
            with torch.no_grad():
                for rows in val_shard.iter_batches(batch_size=batch, batch_format="numpy"):
                    for raw, clean in grid_groups(rows, device):
                        sums.add(raw, model(raw), clean)
        totals = torch.tensor([loss_sum, float(steps)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        progress["epoch"] = epoch + 1
        metrics = {
            "epoch": epoch + 1,
            "step": progress["step"],
            "train_loss": float(totals[0] / max(1.0, float(totals[1]))),
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_second": steps * batch * context.get_world_size() / seconds,
            "resumed_at_steps": list(progress["resumed_at_steps"]),
            **sums.metrics(),
        }
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                _save_state(model, optimizer, progress, folder)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=f"epoch-{epoch + 1:04d}",
                )
            else:
                ray.train.report(metrics)


def _rows_of_every_grid(cfg: TrainJobConfig, corpus: Corpus, validation: bool) -> Any:
    """One side of the split as a Ray Dataset of ``_split`` rows, every config's token grids'
    files read apart (their tensor types differ) and then joined."""
    parts = [
        read_features(
            cfg.input.uri,
            ["image_id", "raw", "clean"],
            cfg.input.storage_options,
            method="dvt-fit",
            config_digest=digest,
            grid=grid,
        ).map_batches(_split(cfg.train.val_fraction, validation), batch_format="pyarrow")
        for digest, grid in corpus.parts
    ]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def run_train_job(cfg: TrainJobConfig) -> dict[str, Any]:
    """Train (or resume) the denoiser on the committed corpus, export it; the summary."""
    if not cfg.input.uri:
        raise ConfigError("input.uri (--input) is required: the output URI of clean_dataset")
    corpus = describe_corpus(cfg)
    workers = cfg.compute.workers
    per_worker = corpus.train_images // workers
    if per_worker < 1:
        raise ConfigError(
            f"{corpus.train_images} training images for {workers} workers: "
            "lower compute.workers or add images"
        )
    batch = min(cfg.train.batch_size, per_worker)
    steps_per_epoch = per_worker // batch
    denoiser_cfg = dataclasses.replace(
        cfg.denoiser,
        channels=cfg.denoiser.channels or corpus.channels,
        grid=cfg.denoiser.grid or corpus.grid,
    )
    if denoiser_cfg.channels != corpus.channels:
        raise ConfigError(
            f"denoiser.channels {denoiser_cfg.channels} != corpus channels {corpus.channels}"
        )
    storage_uri = cfg.run.storage_path or f"{cfg.input.uri.rstrip('/')}/training"
    storage_options = cfg.run.storage_options or (
        cfg.input.storage_options if not cfg.run.storage_path else {}
    )
    storage_path, storage_fs = storage_location(storage_uri, storage_options)
    logger.info(
        "corpus: %d train / %d val images, %d token grid(s) %s, %d channels; %d steps/epoch",
        corpus.train_images,
        corpus.val_images,
        len(corpus.grids),
        ", ".join(f"{h}x{w}" for h, w in corpus.grids),
        corpus.channels,
        steps_per_epoch,
    )

    init_ray(cfg.compute.ray_address, cfg.compute.local_num_cpus)
    datasets = {name: _rows_of_every_grid(cfg, corpus, name == "val") for name in ("train", "val")}
    if cfg.input.cache:
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    cores = os.cpu_count() or 1
    loop_config = {
        "train": cfg.train,
        "denoiser": denoiser_cfg,
        "batch_size": batch,
        "total_steps": max(1, steps_per_epoch * cfg.train.epochs),
        "lr": peak_lr(cfg.train, batch * workers),
        "torch_threads": cfg.compute.torch_threads or max(1, cores // workers),
    }
    loop_config["start_pattern"], start = start_pattern(cfg, corpus)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        datasets=datasets,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=cfg.compute.use_gpu,
            resources_per_worker={"CPU": cfg.compute.cpus_per_worker},
        ),
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
    )
    began = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {cfg.run.name} ended without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint_state(folder)
    model = Denoiser(denoiser_cfg)
    model.load_state_dict(state["model"])
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    export_uri = cfg.run.export_uri or f"{storage_uri.rstrip('/')}/{cfg.run.name}/export"
    meta = {
        "model": corpus.model,
        "weights": corpus.weights,
        "weights_digest": corpus.weights_digest,
        "grid": denoiser_cfg.grid,
        "channels": denoiser_cfg.channels,
        "trained_on": cfg.input.uri,
        "config_digests": corpus.config_digests,
        "start": start,
        "metrics": metrics,
        "progress": state["progress"],
        "job": redact(config_to_dict(cfg)),
    }
    save_denoiser(model, export_uri, meta, storage_options)
    return {
        "run": cfg.run.name,
        "export": export_uri,
        "checkpoint": result.checkpoint.path,
        "train_images": corpus.train_images,
        "val_images": corpus.val_images,
        "workers": workers,
        "start": start,
        "seconds": time.perf_counter() - began,
        "steps": int(state["progress"]["step"]),
        "resumed_at_steps": list(state["progress"]["resumed_at_steps"]),
        **metrics,
    }


def format_train_summary(summary: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of training."""
    keys = (
        "train_images",
        "val_images",
        "workers",
        "epoch",
        "steps",
        "train_loss",
        "val_loss",
        "val_raw_loss",
        "val_cos",
        "val_raw_cos",
        "samples_per_second",
        "seconds",
    )
    lines = [f"denoiser run {summary['run']} -> {summary['export']}"]
    for key in keys:
        if key in summary:
            value = summary[key]
            lines.append(
                f"  {key:<20} {value:.4f}" if isinstance(value, float) else f"  {key:<20} {value}"
            )
    if summary.get("resumed_at_steps"):
        lines.append(f"  {'resumed at steps':<20} {summary['resumed_at_steps']}")
    return "\n".join(lines)
