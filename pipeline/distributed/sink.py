"""The committing datasink of the feature jobs: each write task writes its rows as
content-named Parquet files (one per token grid) and a quarantine file, then the commit record
that makes them visible. Plain pyarrow and the store: a write task never imports torch.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from pipeline import __version__
from pipeline.stages.read import RowStatus
from pipeline.store import QUARANTINE_SCHEMA, RunMeta
from pipeline.store.format import rows_feature_table, table_bytes
from pipeline.store.fs import filesystem, put_atomic
from pipeline.store.runs import CommitRecord, FileEntry, QuarantineEntry, write_commit_record

COUNTERS = ("done", "skipped", "errors", "duplicates", "fit_seconds")


def empty_result() -> dict[str, Any]:
    """What a write task (or a whole run) reports when it wrote nothing; ``handled`` holds
    ``uri_keys`` of every input it accounted for (done, skipped or quarantined)."""
    return {
        "done": 0,
        "skipped": 0,
        "errors": 0,
        "duplicates": 0,
        "fit_seconds": 0.0,
        "handled": np.empty(0, np.uint64),
    }


def uri_keys(uris: Iterable[str]) -> np.ndarray:
    """8-byte keys of input URIs (uint64): what the driver keeps to find inputs that no write
    task accounted for (8 MB for 1 M inputs)."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little")
            for u in uris
        ),
        dtype=np.uint64,
    )


class FeatureSink(Datasink):
    """Writes one run's feature and quarantine Parquet files, each task's followed by its
    commit record (the driver closes the run afterwards)."""

    def __init__(
        self,
        run_uri: str,
        storage_options: dict[str, Any],
        meta: RunMeta,
        dtype: str,
        with_artifact: bool,
        rows_per_file: int,
    ) -> None:
        self.run_uri = run_uri
        self.storage_options = storage_options
        self.meta = meta  # model, weights_digest, layer, config_digest, channels, ...
        self.dtype = dtype
        self.with_artifact = with_artifact
        self.rows_per_file = rows_per_file
        self.result: dict[str, Any] = {}

    @property
    def min_rows_per_write(self) -> int:
        """Rows Ray Data gathers before a write task: one Parquet file's worth."""
        return self.rows_per_file

    def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:
        """One write task: its rows -> one feature file per token grid (one, unless the
        images' aspects differ) and at most one quarantine file, then the commit record that
        makes them visible."""
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if len(t)]
        if not tables:
            return empty_result()
        return self.commit_rows(
            pa.concat_tables(tables, promote_options="permissive"), ctx.task_idx
        )

    def commit_failures(
        self, uris: Sequence[str], stage: str, reason: str, error_class: str, task: int
    ) -> dict[str, Any]:
        """Quarantine inputs the driver found no row for (their workers died on every
        attempt), with the same files and commit record as a write task's."""
        n = len(uris)
        return self.commit_rows(
            pa.table(
                {
                    "source_uri": list(uris),
                    "image_id": [""] * n,
                    "status": [RowStatus.ERROR] * n,
                    "stage": [stage] * n,
                    "reason": [reason] * n,
                    "error_class": [error_class] * n,
                }
            ),
            task,
        )

    def commit_rows(self, rows: pa.Table, task: int) -> dict[str, Any]:
        """Rows of the stages (``RowStatus`` done / skipped / error) -> feature files, a
        quarantine file and the commit record, named by ``task``; the task's counters."""
        out = empty_result()
        status = np.asarray(rows["status"].to_pylist(), dtype=object)
        fs, run_path = filesystem(self.run_uri, self.storage_options)
        done = rows.filter(pa.array(status == RowStatus.DONE))
        done, out["duplicates"] = _first_of_each_id(done)
        files, quarantined = [], []
        for group in _by_grid(done):
            table = rows_feature_table(
                group, self.meta, __version__, self.dtype, self.with_artifact
            )
            data, digest = table_bytes(table)
            name = f"part-{task:05d}-{digest[:16]}.parquet"
            put_atomic(fs, posixpath.join(run_path, name), data)
            files.append(
                FileEntry(
                    name,
                    len(group),
                    digest,
                    tuple(group["image_id"].to_pylist()),
                    len(data),
                    (int(group["grid_h"][0].as_py()), int(group["grid_w"][0].as_py())),
                )
            )
            out["fit_seconds"] += float(sum(m["seconds"] for m in table["metrics"].to_pylist()))
        failed = rows.filter(pa.array(status == RowStatus.ERROR))
        if len(failed):
            quarantine = pa.table(
                {
                    "source_uri": failed["source_uri"],
                    "image_id": [i or None for i in failed["image_id"].to_pylist()],
                    "stage": failed["stage"],
                    "reason": failed["reason"],
                    "error_class": failed["error_class"],
                    "config_digest": [self.meta.config_digest] * len(failed),
                },
                schema=QUARANTINE_SCHEMA,
            )
            data, digest = table_bytes(quarantine)
            name = f"quarantine-{task:05d}-{digest[:16]}.parquet"
            put_atomic(fs, posixpath.join(run_path, name), data)
            quarantined.append(
                QuarantineEntry(name, len(failed), digest, tuple(failed["source_uri"].to_pylist()))
            )
        if files or quarantined:
            write_commit_record(fs, run_path, CommitRecord(task, tuple(files), tuple(quarantined)))
        out["done"], out["errors"] = len(done), len(failed)  # duplicates set above
        out["skipped"] = int((status == RowStatus.SKIPPED).sum())
        out["handled"] = uri_keys(rows["source_uri"].to_pylist())
        return out

    def on_write_complete(self, write_result: Any) -> None:
        """Driver side, after every write task: the counters of all tasks."""
        self.result = merge_results([r for r in write_result.write_returns if r])


def merge_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The counters of several write tasks (or passes) added up, their handled keys joined."""
    merged = empty_result()
    for result in results:
        for key in COUNTERS:
            merged[key] += result[key]
    merged["handled"] = np.concatenate([merged["handled"], *(r["handled"] for r in results)])
    return merged


def _by_grid(rows: pa.Table) -> list[pa.Table]:
    """Rows split by token grid (grid_h, grid_w), grids in order of first appearance."""
    if not len(rows):
        return []
    grids = list(zip(rows["grid_h"].to_pylist(), rows["grid_w"].to_pylist(), strict=True))
    order = list(dict.fromkeys(grids))
    return [rows.filter(pa.array([g == grid for g in grids], type=pa.bool_())) for grid in order]


def _first_of_each_id(rows: pa.Table) -> tuple[pa.Table, int]:
    """Rows with the first occurrence of each image id, and how many repeats were dropped."""
    seen: set[str] = set()
    keep = []
    for image_id in rows["image_id"].to_pylist():
        keep.append(image_id not in seen)
        seen.add(image_id)
    return rows.filter(pa.array(keep, type=pa.bool_())), len(keep) - sum(keep)
