"""The Arrow format of feature and quarantine files: canonical tensor columns, the features
schema, the one builder of a feature table, the row status of the stages, and Parquet bytes.

Tensors use Arrow's canonical ``arrow.fixed_shape_tensor`` extension type (row-major, shape
(h, w, C)); each file holds one token grid (h, w), so images of other aspects land in other
files.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.meta import RunMeta

SCHEMA_VERSION = 3
"""3: images keep their aspect, so a run's files may hold different token grids (one grid per
file, recorded in its ``FileEntry``); 2: per-task commit records (``_commits/``) and seals.
Runs of versions 1 and 2 (one square grid) read as before."""
TENSOR_COLUMNS = ("raw", "clean", "artifact", "clean_hr")
METRIC_FIELDS = ("final_loss", "r2", "artifact_ratio", "extract_seconds", "fit_seconds", "seconds")


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),  # read | decode | fit
        pa.field("reason", pa.string(), nullable=False),
        pa.field("error_class", pa.string(), nullable=False),
        pa.field("config_digest", pa.string(), nullable=False),
    ]
)


def tensor_type(shape: Sequence[int], dtype: str = "float16") -> pa.FixedShapeTensorType:
    """Arrow's canonical fixed-shape tensor type for (h, w, C) feature maps."""
    return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), list(shape))


def features_schema(
    grid: tuple[int, int],
    channels: int,
    dtype: str = "float16",
    with_artifact: bool = True,
    upsample: int = 1,
) -> pa.Schema:
    """Schema of one feature file: metadata columns, metrics, and (h, w, C) tensors; with
    ``upsample`` = s > 1 also ``clean_hr``, (s*h, s*w, C) content finer than a patch."""
    shape = (grid[0], grid[1], channels)
    fields = [
        pa.field("image_id", pa.string(), nullable=False),  # sha256 of the image bytes
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),  # original size in pixels
        pa.field("height", pa.int32(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("weights_digest", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("config_digest", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),  # "dvt-fit" or "denoiser"
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("grid_h", pa.int32(), nullable=False),
        pa.field("grid_w", pa.int32(), nullable=False),
        pa.field("metrics", pa.struct([pa.field(m, pa.float64()) for m in METRIC_FIELDS])),
        pa.field("raw", tensor_type(shape, dtype), nullable=False),
        pa.field("clean", tensor_type(shape, dtype), nullable=False),
    ]
    if with_artifact:
        fields.append(pa.field("artifact", tensor_type(shape, dtype)))
    if upsample > 1:
        fields.append(
            pa.field(
                "clean_hr",
                tensor_type((grid[0] * upsample, grid[1] * upsample, channels), dtype),
                nullable=False,
            )
        )
    return pa.schema(fields, metadata={"dvt_schema_version": str(SCHEMA_VERSION)})


def tensor_array(
    arrays: np.ndarray | Sequence[np.ndarray], dtype: str = "float16"
) -> pa.ExtensionArray:
    """Same-shape numpy arrays (a sequence, or stacked as one (N, ...) array) as a fixed-shape
    tensor column of ``dtype``."""
    stacked = arrays if isinstance(arrays, np.ndarray) else np.stack(arrays)
    stacked = np.ascontiguousarray(stacked.astype(dtype, copy=False))
    return pa.FixedShapeTensorArray.from_numpy_ndarray(stacked)


Column: TypeAlias = Sequence[Any] | pa.Array | pa.ChunkedArray
"""One value a row: a Python sequence or an Arrow array."""
Tensors: TypeAlias = np.ndarray | Sequence[np.ndarray]
"""(h, w, C) maps of the rows: stacked as (N, h, w, C), or one array a row."""


def feature_table(
    meta: RunMeta,
    code_version: str,
    *,
    image_ids: Column,
    source_uris: Column,
    widths: Column,
    heights: Column,
    metrics: Sequence[Mapping[str, Any]],
    raw: Tensors,
    clean: Tensors,
    artifact: Tensors | None = None,
    clean_hr: Tensors | None = None,
    dtype: str = "float16",
) -> pa.Table:
    """The rows of one feature file (at least one row, one token grid) as a table of
    ``features_schema``: the one place where feature rows are built.

    ``meta`` gives every row's model, weights_digest, layer, config_digest and method; the
    token grid and channels come from ``raw``'s shape; ``artifact`` adds the G column and
    ``clean_hr`` (s*h, s*w, C) the upsampled one. ``metrics`` keep the ``METRIC_FIELDS``
    (missing ones are null)."""
    tensors = {"raw": tensor_array(raw, dtype), "clean": tensor_array(clean, dtype)}
    if artifact is not None:
        tensors["artifact"] = tensor_array(artifact, dtype)
    if clean_hr is not None:
        tensors["clean_hr"] = tensor_array(clean_hr, dtype)
    grid_h, grid_w, channels = (int(d) for d in tensors["raw"].type.shape)
    upsample = int(tensors["clean_hr"].type.shape[0]) // grid_h if clean_hr is not None else 1
    schema = features_schema((grid_h, grid_w), channels, dtype, artifact is not None, upsample)
    n = len(tensors["raw"])
    columns = {
        "image_id": image_ids,
        "source_uri": source_uris,
        "width": widths,
        "height": heights,
        "model": [meta.model] * n,
        "weights_digest": [meta.weights_digest] * n,
        "layer": [meta.layer] * n,
        "config_digest": [meta.config_digest] * n,
        "method": [meta.method] * n,
        "code_version": [code_version] * n,
        "grid_h": [grid_h] * n,
        "grid_w": [grid_w] * n,
        "metrics": [{k: m.get(k) for k in METRIC_FIELDS} for m in metrics],
        **tensors,
    }
    return pa.table(columns, schema=schema)


def rows_feature_table(
    rows: pa.Table, meta: RunMeta, code_version: str, dtype: str, with_artifact: bool
) -> pa.Table:
    """A feature stage's done rows of one token grid (tensors as ``dtype`` bytes per row, with
    ``grid_h``, ``grid_w`` and JSON ``metrics``) -> their feature table (``feature_table``):
    what a write task writes. ``meta.upsample`` > 1 reads the ``clean_hr`` column too."""
    grid_h, grid_w = int(rows["grid_h"][0].as_py()), int(rows["grid_w"][0].as_py())
    channels = int(meta.channels or 0)
    upsample = int(meta.upsample or 1)

    def tensors(name: str, scale: int = 1) -> np.ndarray:
        flat = b"".join(rows[name].to_pylist())
        shape = (len(rows), grid_h * scale, grid_w * scale, channels)
        return np.frombuffer(flat, dtype=dtype).reshape(shape)

    return feature_table(
        meta,
        code_version,
        image_ids=rows["image_id"],
        source_uris=rows["source_uri"],
        widths=rows["width"],
        heights=rows["height"],
        metrics=[json.loads(m) for m in rows["metrics"].to_pylist()],
        raw=tensors("raw"),
        clean=tensors("clean"),
        artifact=tensors("artifact") if with_artifact else None,
        clean_hr=tensors("clean_hr", upsample) if upsample > 1 else None,
        dtype=dtype,
    )


def column_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-shape tensor column as one (N, *shape) numpy array."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [chunk.to_numpy_ndarray() for chunk in chunks if len(chunk)]
    if not parts:
        shape = column.type.shape
        return np.empty((0, *shape), dtype=column.type.value_type.to_pandas_dtype())
    return np.concatenate(parts)


def raw_minus_artifact(table: pa.Table) -> np.ndarray | None:
    """``raw - artifact`` of stage-1 rows as (N, h, w, C) float32, or None without G stored.

    Stage 1 splits each view's tokens into F + G + residual; ``clean`` is F alone, smooth where
    the field is. raw - G keeps F and the image's own residual (fine detail) and drops only the
    positional pattern G: a second artifact-free output for tasks that need detail.
    """
    if "artifact" not in table.column_names:
        return None
    raw = column_to_numpy(table["raw"]).astype(np.float32)
    return raw - column_to_numpy(table["artifact"]).astype(np.float32)


def small_column_paths(schema: pa.Schema) -> list[str]:
    """Parquet paths of every leaf column but the tensors' (a struct's fields, a list's
    elements, at any depth), as ``pq.write_table``'s per-column options name them."""

    def leaves(path: str, kind: pa.DataType) -> list[str]:
        if isinstance(kind, pa.FixedShapeTensorType):
            return []
        if isinstance(kind, pa.ExtensionType):
            return leaves(path, kind.storage_type)
        if pa.types.is_struct(kind):
            return [leaf for child in kind for leaf in leaves(f"{path}.{child.name}", child.type)]
        if isinstance(kind, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
            return leaves(f"{path}.list.element", kind.value_type)
        return [path]

    return [leaf for field in schema for leaf in leaves(field.name, field.type)]


def table_bytes(table: pa.Table) -> tuple[bytes, str]:
    """Parquet bytes of a table (zstd) and their sha256, for content-named, atomic writes.

    Tensor columns are written plain, with neither a dictionary (float16 token values seldom
    fit one, and trying costs time) nor min/max statistics (of a tensor's items, which no
    reader uses): DINOv2-S/14 rows at 518 px encode 2.1x as fast as with pyarrow's defaults,
    into files 3 % smaller (``bench/bench_denoise_stage.py``). Every other column keeps both."""
    buf = io.BytesIO()
    small = small_column_paths(table.schema)
    pq.write_table(table, buf, compression="zstd", use_dictionary=small, write_statistics=small)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()
