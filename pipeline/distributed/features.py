"""The Ray layer shared by every feature job (clean_dataset, denoise_dataset): listing, the
dataset graph, local Ray, closing the run, the summary (the datasink is ``sink.FeatureSink``).

Graph: file list (driver) -> ReadImages (actor pool) -> the job's feature stage (actor pool,
GPUs from config) -> FeatureSink. Each write task writes content-named Parquet files into the
run folder and then its commit record, so its images are committed as soon as it ends; when
every task is done, the driver closes the run (manifest, summary, ``_COMMITTED``).
``pipeline.store`` owns every name and format on disk.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import os
import posixpath
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import ray
import ray.data

from pipeline import __version__
from pipeline.config import ConfigError, MissingInput, output_digest, redact
from pipeline.distributed.sink import FeatureSink, empty_result, merge_results, uri_keys
from pipeline.engine_config import ResizeConfig
from pipeline.job_config import ComputeConfig, InputConfig, OutputConfig
from pipeline.models.vit import FeatureExtractor
from pipeline.stages.features import CleanImages, LoadedOtherBytes
from pipeline.stages.read import ReadImages
from pipeline.store.fs import filesystem, full_uri
from pipeline.store.layout import run_folder
from pipeline.store.lease import LeaseLost, OutputLease
from pipeline.store.meta import RunMeta
from pipeline.store.runs import (
    commit_record_names,
    commit_run,
    manifest_from_records,
    read_commit_records,
    seal_dead_runs,
    write_run_config,
)

logger = logging.getLogger(__name__)


def list_images(inputs: InputConfig) -> list[str]:
    """Sorted full URIs of the input files matching include and not exclude patterns (at most
    ``inputs.sample`` of them, spread evenly); ``MissingInput`` (a user error) when the input
    does not exist or nothing matches."""
    fs, root = filesystem(inputs.uri, inputs.storage_options)
    if not fs.exists(root):
        raise MissingInput(
            f"input {inputs.uri} does not exist: check --input (input.uri) and "
            "input.storage_options"
        )
    uris = []
    try:
        paths = sorted(fs.find(root))
    finally:
        # an object store's listing cache would keep ~1.2 KB an object for the whole run
        # (1.2 GB on the driver for 1 M inputs); the URIs alone are ~0.1 KB
        fs.invalidate_cache()
    for path in paths:
        name, rel = posixpath.basename(path).lower(), posixpath.relpath(path, root)
        if not any(fnmatch.fnmatch(name, pat.lower()) for pat in inputs.include):
            continue
        if any(fnmatch.fnmatch(rel, pat) for pat in inputs.exclude):
            continue
        uris.append(full_uri(fs, path))
    if not uris:
        raise MissingInput(
            f"no input file under {inputs.uri} matches input.include="
            f"{inputs.include} and input.exclude={inputs.exclude} "
            f"({len(paths)} files listed): check the patterns"
        )
    if 0 < inputs.sample < len(uris):  # evenly spread: first, ..., near the last
        uris = [uris[k * len(uris) // inputs.sample] for k in range(inputs.sample)]
    return uris


def init_ray(address: str | None, local_num_cpus: int) -> None:
    """Join ``address`` / $RAY_ADDRESS, or start a local Ray on 127.0.0.1 with that many CPUs."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        num_cpus=local_num_cpus,
        include_dashboard=False,
        _temp_dir=os.environ.get("DVT_RAY_TMP", "/tmp/dvt-ray"),
    )


@dataclass(frozen=True)
class FeatureMethod:
    """What the feature stage of a job runs (the stage-1 fit or a trained denoiser)."""

    stage: type[CleanImages]
    """A stage class of ``pipeline.stages.features`` (``CleanImages`` or ``DenoiseImages``)."""
    stage_kwargs: dict[str, Any]
    """Its constructor arguments (the model loads once per actor)."""
    batch_size: int
    """Images per call of the stage."""
    extractor: FeatureExtractor
    """The ViT, loaded on the driver for its digest, patch size and channels."""
    image_size: int
    """Square input size in pixels; the token grid is image_size / patch."""
    settings: dict[str, Any]
    """Everything besides model and weights that decides the features (hashed into the
    config digest)."""
    resize: ResizeConfig
    """How inputs are resized: with ``keep``, a row holds up to ``max_tokens_ratio`` times the
    square grid's tokens (what sizes the files)."""
    meta: RunMeta = dataclasses.field(default_factory=RunMeta)
    """The job's own facts recorded with the run (e.g. the denoiser's digest); the common ones
    (model, weights, layer, config digest ...) are filled in by ``run_feature_job``."""
    upsample: int = 1
    """Cells per token side of the ``clean_hr`` column (1: no such column)."""

    @property
    def square_grid(self) -> int:
        """Tokens per side of a square input."""
        return self.image_size // self.extractor.patch_size

    def max_row_bytes(self, dtype: str, with_artifact: bool) -> int:
        """The largest a stored row's tensors can be: 2 or 3 (h, w, C) columns (and clean_hr,
        s*s times one) at the most tokens an image of any aspect gets."""
        tokens = self.resize.max_tokens(self.square_grid)
        columns = (3 if with_artifact else 2) + (self.upsample**2 if self.upsample > 1 else 0)
        return int(columns * tokens * self.extractor.embed_dim * np.dtype(dtype).itemsize)


def require_io(inputs: InputConfig, output: OutputConfig) -> list[str]:
    """The input files of a job (``list_images``), or a user error for a job without an
    input or an output, an input that does not exist or patterns that select nothing, before
    anything loads."""
    if not inputs.uri or not output.uri:
        raise ConfigError("both input.uri (--input) and output.uri (--output) are required")
    return list_images(inputs)


def _stop_main_thread(reason: str) -> None:
    """The lease was lost: interrupt the driver's main thread, which waits on the graph, so
    the graph stops at once (Ray Data shuts its operators down on an interrupt)."""
    logger.error("stopping the run: %s", reason)
    os.kill(os.getpid(), signal.SIGINT)


def run_feature_job(
    job: dict[str, Any],
    inputs: InputConfig,
    output: OutputConfig,
    compute: ComputeConfig,
    method: FeatureMethod,
    uris: list[str],
) -> dict[str, Any]:
    """Run one pass over ``uris`` (``require_io``'s listing of ``inputs``) into a new committed
    run under ``output.uri``.

    ``job`` is the resolved job config, saved with the run. Returns the summary. Raises
    ``LeaseHeld`` when another run holds the output, ``LeaseLost`` when this run lost its lease
    while running (its graph is stopped at once; the work its records hold counts).
    """
    start = time.perf_counter()
    extractor = method.extractor
    digest = output_digest(
        extractor.model_name,
        extractor.weights_digest,
        method.settings,
        output.dtype,
        output.with_artifact,
    )
    meta = dataclasses.replace(
        method.meta,
        model=extractor.model_name,
        weights=extractor.weights,
        weights_digest=extractor.weights_digest,
        layer=extractor.layer,
        config_digest=digest,
        channels=extractor.embed_dim,
        method=method.stage.method,
        patch_size=extractor.patch_size,
        grid=method.square_grid,
    )  # a square input's grid; rows hold their own grid_h, grid_w
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{digest[:8]}-{uuid.uuid4().hex[:6]}"
    lease = OutputLease(
        output.uri, run_id, output.lease_ttl_s, output.storage_options, on_lost=_stop_main_thread
    )
    lease.acquire()  # before the output is read: a concurrent refresh stops here
    try:
        sealed = seal_dead_runs(output.uri, output.storage_options, run_id)
        if sealed:
            logger.warning(
                "sealed %d dead run(s) (their committed work counts): %s",
                len(sealed),
                ", ".join(sealed),
            )
        return _run_leased(
            job, inputs, output, compute, method, uris, run_id, digest, meta, lease, start
        )
    except KeyboardInterrupt:
        if lease.lost:
            raise LeaseLost(
                f"{lease.lost}. The graph was stopped; what this run committed "
                "before counts, and the run that takes the output over goes on "
                "from there"
            ) from None
        raise
    finally:
        lease.release()


def _run_leased(
    job: dict[str, Any],
    inputs: InputConfig,
    output: OutputConfig,
    compute: ComputeConfig,
    method: FeatureMethod,
    uris: list[str],
    run_id: str,
    digest: str,
    meta: RunMeta,
    lease: OutputLease,
    start: float,
) -> dict[str, Any]:
    """The body of ``run_feature_job`` while this run holds the output's lease."""
    out_fs, out_root = filesystem(output.uri, output.storage_options)
    run_path = run_folder(out_root, run_id)
    write_run_config(
        out_fs,
        run_path,
        {"job": redact(job), "meta": meta.to_dict(), "run_id": run_id, "code_version": __version__},
    )
    logger.info("run %s: %d input files, config %s", run_id, len(uris), digest)

    init_ray(compute.ray_address, compute.local_num_cpus)
    # every file stays under the target, whatever the aspects of its rows
    row_bytes = method.max_row_bytes(output.dtype, output.with_artifact)
    rows_per_file = max(1, output.target_file_mb * 2**20 // row_bytes)
    sink = FeatureSink(
        run_folder(output.uri.rstrip("/"), run_id),
        output.storage_options,
        meta,
        output.dtype,
        output.with_artifact,
        rows_per_file,
    )
    graph = Graph(inputs, output, compute, method, digest, sink)
    with ProgressLog(out_fs, run_path, len(uris), compute.progress_s):
        results = [graph.run(uris)]
        missing = _unaccounted(uris, results)
        retried_alone = len(missing)
        if missing:  # workers died on every retry: each input once more, alone
            logger.warning(
                "%d input(s) lost with workers that died on every retry; trying them one at a time",
                len(missing),
            )
            results.append(graph.run(missing, alone=True))
            missing = _unaccounted(missing, results[-1:])
    if missing:  # whatever still kills its worker is set aside; the run finishes
        logger.error(
            "quarantined %d input(s) that killed a worker on every attempt: %s",
            len(missing),
            ", ".join(missing[:5]),
        )
        results.append(
            sink.commit_failures(
                missing,
                "worker",
                f"{CRASHED_WORKER} (the reader or the {method.stage.stage} "
                f"actor died on it {compute.max_task_retries + 1} times, alone)",
                "WorkerCrashed",
                task=LOST_TASK,
            )
        )
    result = merge_results(results)
    records = [r for _, r in read_commit_records(out_fs, run_path)]
    manifest = manifest_from_records(run_id, digest, meta, records)
    unique = len(set(manifest.image_ids))
    repeats = len(manifest.image_ids) - unique  # one image under two URIs, in two tasks
    wall = time.perf_counter() - start
    summary = {
        "run_id": run_id,
        "method": method.stage.method,
        "inputs": len(uris),
        "done": unique,
        "skipped_committed": result["skipped"],
        "quarantined": sum(q.rows for q in manifest.quarantine),
        "duplicates_in_run": result["duplicates"] + repeats,
        "seconds": wall,
        "images_per_second": unique / wall if wall else 0.0,
        "seconds_per_image": result["fit_seconds"] / max(1, result["done"]),
        "config_digest": digest,
        "commit_records": len(records),
        "retried_alone": retried_alone,
    }
    lease.check()  # a run whose lease went stale never commits
    commit_run(out_fs, run_path, dataclasses.replace(manifest, summary=summary))
    return summary


class ProgressLog:
    """A driver thread that logs, every ``interval_s``, how many of a run's inputs its write
    tasks have committed (images and quarantined inputs), the rate and the most time left; it
    reads only the commit records that landed since its last look. Inputs skipped as
    already committed by an earlier run are not counted (this run's work is), so on a
    refresh the time left is an upper bound."""

    def __init__(self, fs: Any, run_path: str, total: int, interval_s: float) -> None:
        self.fs, self.run_path, self.total, self.interval_s = fs, run_path, total, interval_s
        self.seen: set[str] = set()
        self.committed = 0
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")

    def __enter__(self) -> ProgressLog:
        self.started = time.perf_counter()
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def poll(self) -> int:
        """Read the commit records that are new since the last call; the inputs committed."""
        new = [n for n in commit_record_names(self.fs, self.run_path) if n not in self.seen]
        for _, record in read_commit_records(self.fs, self.run_path, new):
            self.committed += sum(f.rows for f in record.files)
            self.committed += sum(q.rows for q in record.quarantine)
        self.seen.update(new)
        return self.committed

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                done = self.poll()
            except Exception as err:  # progress is a courtesy: never stop the run for it
                logger.debug("progress: %s", err)
                continue
            wall = time.perf_counter() - self.started
            rate = done / wall
            # inputs an earlier run committed are skipped, far faster than a fit: the rest
            # takes at most this long
            left = f", at most {(self.total - done) / rate / 60:.0f} min left" if rate else ""
            logger.info(
                "progress: %d of %d listed inputs committed in %.0f s (%.2f images/s%s)",
                done,
                self.total,
                wall,
                rate,
                left,
            )


CRASHED_WORKER = "crashed a worker on every attempt"
LOST_TASK = 99_999
"""Task number of the driver's own commit record, for inputs no write task accounted for."""


def _unaccounted(uris: list[str], results: list[dict[str, Any]]) -> list[str]:
    """The inputs no write task reported (done, skipped or quarantined) in ``results``."""
    handled = np.concatenate([r["handled"] for r in results])
    return [u for u, seen in zip(uris, np.isin(uri_keys(uris), handled), strict=True) if not seen]


class Graph:
    """The Ray Data graph of a feature job: file list -> ReadImages (actor pool) -> the job's
    stage (actor pool, GPUs from config) -> the committing sink; ``run`` passes it over some
    inputs and returns the write tasks' merged counters."""

    def __init__(
        self,
        inputs: InputConfig,
        output: OutputConfig,
        compute: ComputeConfig,
        method: FeatureMethod,
        digest: str,
        sink: FeatureSink,
    ) -> None:
        self.inputs, self.output, self.compute, self.method = inputs, output, compute, method
        self.digest, self.sink = digest, sink

    def run(self, uris: list[str], alone: bool = False) -> dict[str, Any]:
        """Pass the graph over ``uris``; ``alone``: one image a batch and one task in flight
        per actor, so that an actor killed by one image takes no other image down with it."""
        context = ray.data.DataContext.get_current()  # a dataset keeps the context it was
        errored_before = context.max_errored_blocks  # made in: set it before, restore after
        context.max_errored_blocks = -1
        self.sink.result = {}
        try:
            self._dataset(uris, alone).write_datasink(self.sink)
        except ray.exceptions.RayError as err:  # a worker refused a file that changed
            changed = re.search(rf"{LoadedOtherBytes.__name__}: (.+)", str(err))
            if changed:
                raise LoadedOtherBytes(changed.group(1)) from None
            raise
        finally:
            context.max_errored_blocks = errored_before
        return self.sink.result or empty_result()

    def _dataset(self, uris: list[str], alone: bool) -> ray.data.Dataset:
        inputs, output, compute, method = self.inputs, self.output, self.compute, self.method
        in_flight: dict[str, Any] = {"max_tasks_in_flight_per_actor": 1} if alone else {}
        read_batch_size = 1 if alone else compute.read_batch_size
        stage_batch_size = 1 if alone else method.batch_size
        # finite restarts and retries (Ray Data's default is forever, which would stall the
        # run while its lease is renewed); a block whose worker died on every retry is
        # dropped (max_errored_blocks) and its inputs found missing by the driver
        retries: dict[str, Any] = {
            "ray_remote_args_fn": functools.partial(
                dict, max_restarts=compute.max_restarts, max_task_retries=compute.max_task_retries
            )
        }
        ds: ray.data.Dataset = ray.data.from_items(
            [{"source_uri": u} for u in uris], override_num_blocks=max(1, min(len(uris), 64))
        )
        ds = ds.map_batches(
            ReadImages,
            batch_size=read_batch_size,
            fn_constructor_kwargs={
                "input_uri": inputs.uri,
                "storage_options": inputs.storage_options,
                "max_bytes": inputs.max_bytes,
                "max_pixels": inputs.max_pixels,
                "min_side": method.extractor.patch_size,
                "decode_timeout_s": inputs.decode_timeout_s,
                "output_uri": output.uri,
                "output_storage_options": output.storage_options,
                "config_digest": self.digest,
            },
            compute=ray.data.ActorPoolStrategy(size=compute.readers, **in_flight),
            num_cpus=compute.reader_num_cpus,
            **retries,
        )
        # One call at a time per actor, run on the actor's own thread: by default Ray Data
        # hands the UDF to a helper thread, where torch's CPU kernels kept ~1.6 of 2 cores
        # busy instead of 2 (the fit ran 15-25 % slower than in a plain process).
        memory: dict[str, Any] = (
            {"memory": int(compute.memory_gb * 2**30)} if compute.memory_gb else {}
        )
        return ds.map_batches(
            method.stage,
            batch_size=stage_batch_size,
            fn_constructor_kwargs=method.stage_kwargs,
            compute=ray.data.ActorPoolStrategy(
                size=compute.actors,
                enable_true_multi_threading=True,
                max_concurrent_calls_per_actor=1,
                **in_flight,
            ),
            num_cpus=compute.num_cpus,
            num_gpus=compute.num_gpus or None,
            **memory,
            **retries,
        )


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of a job."""
    lines = [f"run {summary['run_id']}"]
    for key in ("inputs", "done", "skipped_committed", "quarantined", "duplicates_in_run"):
        lines.append(f"  {key:<22} {summary[key]}")
    lines.append(f"  {'images/s':<22} {summary['images_per_second']:.3f}")
    lines.append(
        f"  {'s/image (' + summary['method'] + ')':<22} {summary['seconds_per_image']:.2f}"
    )
    lines.append(f"  {'wall seconds':<22} {summary['seconds']:.1f}")
    return "\n".join(lines)
