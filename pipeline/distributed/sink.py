"""The committing datasink of the feature jobs: each write task writes its rows as
content-named Parquet files (one per token grid) and a quarantine file, then the commit record
that makes them visible. Plain pyarrow and the store: a write task never imports torch.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from pipeline import __version__
from pipeline.store.schema import (
    METRIC_FIELDS,
    QUARANTINE_SCHEMA,
    CommitRecord,
    FileEntry,
    QuarantineEntry,
    features_schema,
    filesystem,
    put_atomic,
    table_bytes,
    write_commit_record,
)


def empty_result() -> dict[str, Any]:
    """What a write task (or a whole run) reports when it wrote nothing."""
    return {"done": 0, "skipped": 0, "errors": 0, "duplicates": 0, "fit_seconds": 0.0}


class FeatureSink(Datasink):
    """Writes one run's feature and quarantine Parquet files, each task's followed by its
    commit record (the driver closes the run afterwards)."""

    def __init__(self, run_uri: str, storage_options: dict[str, Any], meta: dict[str, Any],
                 dtype: str, with_artifact: bool, rows_per_file: int) -> None:
        self.run_uri = run_uri
        self.storage_options = storage_options
        self.meta = meta  # model, weights_digest, layer, config_digest, channels, ...
        self.dtype = dtype
        self.with_artifact = with_artifact
        self.rows_per_file = rows_per_file
        self.result: dict[str, Any] = {}

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def _features(self, rows: pa.Table) -> pa.Table:
        """Rows of one token grid -> a feature table of the schema's (h, w, C) tensors."""
        grid_h, grid_w = int(rows["grid_h"][0].as_py()), int(rows["grid_w"][0].as_py())
        channels = self.meta["channels"]
        schema = features_schema((grid_h, grid_w), channels, self.dtype, self.with_artifact)
        shape = (len(rows), grid_h, grid_w, channels)

        def tensors(name: str) -> pa.ExtensionArray:
            flat = b"".join(rows[name].to_pylist())
            array = np.frombuffer(flat, dtype=self.dtype).reshape(shape)
            return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array))

        metrics = [json.loads(m) for m in rows["metrics"].to_pylist()]
        n = len(rows)
        columns = {
            "image_id": rows["image_id"], "source_uri": rows["source_uri"],
            "width": rows["width"], "height": rows["height"],
            "model": [self.meta["model"]] * n, "weights_digest": [self.meta["weights_digest"]] * n,
            "layer": [self.meta["layer"]] * n, "config_digest": [self.meta["config_digest"]] * n,
            "method": [self.meta["method"]] * n, "code_version": [__version__] * n,
            "grid_h": rows["grid_h"], "grid_w": rows["grid_w"],
            "metrics": [{k: m.get(k) for k in METRIC_FIELDS} for m in metrics],
            "raw": tensors("raw"), "clean": tensors("clean"),
        }
        if self.with_artifact:
            columns["artifact"] = tensors("artifact")
        return pa.table(columns, schema=schema)

    def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:
        """One write task: its rows -> one feature file per token grid (one, unless the
        images' aspects differ) and at most one quarantine file, then the commit record that
        makes them visible."""
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if len(t)]
        out = empty_result()
        if not tables:
            return out
        rows = pa.concat_tables(tables, promote_options="permissive")
        status = np.asarray(rows["status"].to_pylist(), dtype=object)
        fs, run_path = filesystem(self.run_uri, self.storage_options)
        done = rows.filter(pa.array(status == "done"))
        done, out["duplicates"] = _first_of_each_id(done)
        files, quarantined = [], []
        for group in _by_grid(done):
            table = self._features(group)
            data, digest = table_bytes(table)
            name = f"part-{ctx.task_idx:05d}-{digest[:16]}.parquet"
            put_atomic(fs, posixpath.join(run_path, name), data)
            files.append(FileEntry(name, len(group), digest,
                                   tuple(group["image_id"].to_pylist()), len(data),
                                   (int(group["grid_h"][0].as_py()),
                                    int(group["grid_w"][0].as_py()))))
            out["fit_seconds"] += float(sum(m["seconds"] for m in table["metrics"].to_pylist()))
        failed = rows.filter(pa.array(status == "error"))
        if len(failed):
            quarantine = pa.table({
                "source_uri": failed["source_uri"],
                "image_id": [i or None for i in failed["image_id"].to_pylist()],
                "stage": failed["stage"], "reason": failed["reason"],
                "error_class": failed["error_class"],
                "config_digest": [self.meta["config_digest"]] * len(failed),
            }, schema=QUARANTINE_SCHEMA)
            data, digest = table_bytes(quarantine)
            name = f"quarantine-{ctx.task_idx:05d}-{digest[:16]}.parquet"
            put_atomic(fs, posixpath.join(run_path, name), data)
            quarantined.append(QuarantineEntry(name, len(failed), digest,
                                               tuple(failed["source_uri"].to_pylist())))
        if files or quarantined:
            write_commit_record(fs, run_path, CommitRecord(ctx.task_idx, tuple(files),
                                                           tuple(quarantined)))
        out["done"], out["errors"] = len(done), len(failed)  # duplicates set above
        out["skipped"] = int((status == "skipped").sum())
        return out

    def on_write_complete(self, write_result: Any) -> None:
        """Driver side, after every write task: the counters of all tasks."""
        merged = empty_result()
        for r in (r for r in write_result.write_returns if r):
            for key in ("done", "skipped", "errors", "duplicates", "fit_seconds"):
                merged[key] += r[key]
        self.result = merged


def _by_grid(rows: pa.Table) -> list[pa.Table]:
    """Rows split by token grid (grid_h, grid_w), grids in order of first appearance."""
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
