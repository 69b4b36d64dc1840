"""The on-disk contract of feature outputs, and every reader of it.

An output URI holds one folder per run::

    OUTPUT/runs/<run_id>/part-<n>-<hash>.parquet      features, one row per image
    OUTPUT/runs/<run_id>/quarantine-<n>-<hash>.parquet inputs that failed, with reasons
    OUTPUT/runs/<run_id>/config.json                   the resolved config of the run
    OUTPUT/runs/<run_id>/summary.json                  counters and timings
    OUTPUT/runs/<run_id>/_manifest.json                the files and image ids of the run
    OUTPUT/runs/<run_id>/_COMMITTED                    written last: the run is complete
    OUTPUT/artifact_models/<model>-<weights>-<size>px-<settings>.safetensors
                                                       the dataset-level artifact model

Readers trust only runs with ``_COMMITTED`` and only the files their manifest lists, so
leftovers of a crashed run are never read. Tensors use Arrow's canonical
``arrow.fixed_shape_tensor`` extension type (row-major, shape (h, w, C)).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # the model code imports torch; readers of Parquet need not
    from pipeline.artifact_model import ArtifactModel

SCHEMA_VERSION = 1
RUNS_DIR = "runs"
MANIFEST = "_manifest.json"
COMMITTED = "_COMMITTED"
TENSOR_COLUMNS = ("raw", "clean", "artifact")
METRIC_FIELDS = ("final_loss", "r2", "artifact_ratio", "extract_seconds", "fit_seconds", "seconds")

QUARANTINE_SCHEMA = pa.schema([
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.string()),
    pa.field("stage", pa.string(), nullable=False),  # read | decode | fit
    pa.field("reason", pa.string(), nullable=False),
    pa.field("error_class", pa.string(), nullable=False),
    pa.field("config_digest", pa.string(), nullable=False),
])


def tensor_type(shape: Sequence[int], dtype: str = "float16") -> pa.FixedShapeTensorType:
    """Arrow's canonical fixed-shape tensor type for (h, w, C) feature maps."""
    return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), list(shape))


def features_schema(grid: tuple[int, int], channels: int, dtype: str = "float16",
                    with_artifact: bool = True) -> pa.Schema:
    """Schema of one feature file: metadata columns, metrics, and (h, w, C) tensors."""
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
    return pa.schema(fields, metadata={"dvt_schema_version": str(SCHEMA_VERSION)})


def tensor_array(arrays: Sequence[np.ndarray], dtype: str = "float16") -> pa.ExtensionArray:
    """Stack same-shape numpy arrays into a fixed-shape tensor column of ``dtype``."""
    stacked = np.ascontiguousarray(np.stack(arrays).astype(dtype, copy=False))
    return pa.FixedShapeTensorArray.from_numpy_ndarray(stacked)


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


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write bytes so that a crash never leaves a truncated file under the final name."""
    if is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    else:  # object stores make a single PUT visible whole or not at all
        with fs.open(path, "wb") as fh:
            fh.write(data)


# --------------------------------------------------------------------------- artifact models

ARTIFACT_MODELS_DIR = "artifact_models"


def artifact_model_uri(output_uri: str, model: str, weights_digest: str, image_size: int,
                       settings_digest: str) -> str:
    """Where an output keeps the artifact model of (model, weights, input size) estimated with
    the settings of ``settings_digest``: a deterministic name, so every later run (a refresh,
    a re-run after a crash) finds and reuses the same model instead of estimating another."""
    safe = model.replace("/", "_")
    name = f"{safe}-{weights_digest[:12]}-{image_size}px-{settings_digest[:12]}.safetensors"
    return posixpath.join(output_uri.rstrip("/"), ARTIFACT_MODELS_DIR, name)


def write_artifact_model(uri: str, model: ArtifactModel,
                         storage_options: dict[str, Any] | None = None) -> str:
    """Store ``model`` at ``uri`` atomically (safetensors: the pattern, and its facts as
    metadata); returns the sha256 of the bytes, which identifies the pattern."""
    from safetensors.numpy import save

    meta = {"model": model.model, "weights_digest": model.weights_digest,
            "image_size": str(model.image_size), "samples": str(model.samples),
            "source": model.source, "seconds": repr(model.seconds),
            "dvt_schema_version": str(SCHEMA_VERSION)}
    data = save({"pattern": np.ascontiguousarray(model.pattern, dtype=np.float32)}, meta)
    fs, path = filesystem(uri, storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    put_atomic(fs, path, data)
    return hashlib.sha256(data).hexdigest()


def read_artifact_model(uri: str, storage_options: dict[str, Any] | None = None
                        ) -> tuple[ArtifactModel, str]:
    """An artifact model written by ``write_artifact_model`` and the sha256 of its bytes."""
    from safetensors.numpy import load

    from pipeline.artifact_model import ArtifactModel

    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    # safetensors: an 8-byte little-endian header length, then the JSON header
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = header.get("__metadata__") or {}
    model = ArtifactModel(meta["model"], meta["weights_digest"], int(meta["image_size"]),
                          load(data)["pattern"], int(meta["samples"]), meta["source"],
                          float(meta.get("seconds", "0")))
    return model, hashlib.sha256(data).hexdigest()


def table_bytes(table: pa.Table) -> tuple[bytes, str]:
    """Parquet bytes of a table (zstd) and their sha256, for content-named, atomic writes."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CommittedRun:
    """A committed run folder and its manifest (files relative to the run folder)."""

    path: str
    manifest: dict[str, Any]

    @property
    def feature_files(self) -> list[str]:
        return [posixpath.join(self.path, f["path"]) for f in self.manifest["files"]]

    @property
    def quarantine_files(self) -> list[str]:
        return [posixpath.join(self.path, f["path"]) for f in self.manifest["quarantine"]]

    @property
    def meta(self) -> dict[str, Any]:
        """model, weights_digest, layer, method, channels, grid ... of the run's rows."""
        return self.manifest.get("meta") or {}

    @property
    def image_ids(self) -> list[str]:
        return [i for f in self.manifest["files"] for i in f["image_ids"]]


def filesystem(uri: str, storage_options: dict[str, Any] | None = None
               ) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and bare path for a URI (credentials from the environment)."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (paths carry no protocol prefix)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A bare path of ``fs`` as a URI that fsspec opens anywhere (s3://..., or a local path)."""
    if is_local(fs):
        return path
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path}"


def committed_runs(uri: str, storage_options: dict[str, Any] | None = None
                   ) -> list[CommittedRun]:
    """Every committed run under an output URI, oldest first (run ids sort by time)."""
    fs, root = filesystem(uri, storage_options)
    runs_root = posixpath.join(root, RUNS_DIR)
    if not fs.exists(runs_root):
        return []
    runs = []
    for entry in sorted(fs.ls(runs_root, detail=False)):
        run_path = entry.rstrip("/")
        if not fs.exists(posixpath.join(run_path, COMMITTED)):
            continue  # crashed or still running: never read
        with fs.open(posixpath.join(run_path, MANIFEST), "rb") as fh:
            runs.append(CommittedRun(run_path, json.load(fh)))
    return runs


def select_runs(uri: str, storage_options: dict[str, Any] | None = None, *,
                method: str | None = None, config_digest: str | None = None
                ) -> list[CommittedRun]:
    """The committed runs under ``uri`` whose rows came from ``method`` / ``config_digest``."""
    return [run for run in committed_runs(uri, storage_options)
            if (config_digest is None or run.manifest.get("config_digest") == config_digest)
            and (method is None or run.meta.get("method") == method)]


def committed_ids(uri: str, config_digest: str | None = None,
                  storage_options: dict[str, Any] | None = None) -> set[str]:
    """Image ids already committed under ``uri`` (for one config digest, if given)."""
    runs = select_runs(uri, storage_options, config_digest=config_digest)
    return {i for run in runs for i in run.image_ids}


def _read_tables(fs: fsspec.AbstractFileSystem, paths: list[str],
                 columns: Sequence[str] | None) -> Iterator[pa.Table]:
    for path in paths:
        with fs.open(path, "rb") as fh:
            yield pq.read_table(fh, columns=list(columns) if columns else None)


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def newest_config_digest(uri: str, storage_options: dict[str, Any] | None = None, *,
                         method: str | None = None) -> str:
    """The config digest of the newest committed run under ``uri`` (of ``method``, if given):
    what a reader takes when a folder holds rows of several configs and none was chosen."""
    runs = select_runs(uri, storage_options, method=method)
    if not runs:
        raise FileNotFoundError(f"no committed feature runs under {uri} (method={method})")
    return newest_config(runs)[0]


def newest_config(runs: Sequence[CommittedRun]) -> tuple[str, list[CommittedRun], list[str]]:
    """Of committed ``runs`` (oldest first, non-empty): the newest run's config digest, the runs
    of that config, and the other configs' digests (sorted)."""
    newest = runs[-1].manifest["config_digest"]
    kept = [run for run in runs if run.manifest["config_digest"] == newest]
    others = sorted({run.manifest["config_digest"] for run in runs} - {newest})
    return newest, kept, others


def read_features_table(uri: str, columns: Sequence[str] | None = None,
                        storage_options: dict[str, Any] | None = None, *,
                        method: str | None = None, config_digest: str | None = None
                        ) -> pa.Table:
    """The committed feature rows under ``uri`` as one pyarrow Table (only the runs of
    ``method`` / ``config_digest`` when given)."""
    fs, _ = filesystem(uri, storage_options)
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    files = [f for run in runs for f in run.feature_files]
    table = _concat(list(_read_tables(fs, files, columns)))
    if table is None:
        raise FileNotFoundError(f"no committed feature runs under {uri}")
    return table


def sample_features_table(uri: str, count: int, storage_options: dict[str, Any] | None = None,
                          *, method: str | None = None, config_digest: str | None = None
                          ) -> pa.Table:
    """Up to ``count`` committed rows spread evenly over the files, reading only the files
    they come from (pictures and checks on a large corpus without loading all of it)."""
    fs, _ = filesystem(uri, storage_options)
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    files = [f for run in runs for f in run.feature_files]
    if not files:
        raise FileNotFoundError(f"no committed feature runs under {uri}")
    picked = [files[i] for i in spread_indices(len(files), count)]
    per_file = -(-count // len(picked))
    tables = [t.take(spread_indices(len(t), per_file)) for t in _read_tables(fs, picked, None)]
    table = _concat(tables)
    return table.take(spread_indices(len(table), count))


def spread_indices(length: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct indices spread evenly over range(length)."""
    return np.unique(np.linspace(0, length - 1, min(length, count)).round().astype(np.int64))


def read_quarantine_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every quarantined input (uri, stage, reason, error class) of the committed runs."""
    fs, _ = filesystem(uri, storage_options)
    files = [f for run in committed_runs(uri, storage_options) for f in run.quarantine_files]
    return _concat(list(_read_tables(fs, files, None))) or QUARANTINE_SCHEMA.empty_table()


def read_features(uri: str, columns: Sequence[str] | None = None,
                  storage_options: dict[str, Any] | None = None, *,
                  method: str | None = None, config_digest: str | None = None) -> Any:
    """A Ray Dataset of the committed rows (``iter_torch_batches`` yields (B, h, w, C)).

    ``method`` ("dvt-fit", or a denoiser's method name) and ``config_digest`` keep only the
    runs that produced their rows that way.
    """
    import ray.data  # Ray stays out of the import path of non-Ray users

    fs, _ = filesystem(uri, storage_options)
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    files = [f for run in runs for f in run.feature_files]
    if not files:
        raise FileNotFoundError(f"no committed feature runs under {uri} "
                                f"(method={method}, config_digest={config_digest})")
    return ray.data.read_parquet(files, filesystem=fs, columns=list(columns) if columns else None)


class FeatureDataset:
    """A map-style torch Dataset over committed rows, without Ray.

    Item i is a dict with ``image_id`` and float32 tensors ``raw`` and ``clean`` (h, w, C).
    Rows are loaded eagerly per file into memory-friendly fp16 numpy arrays. A folder refreshed
    under another config holds rows of both; ``config_digest`` picks one (default: the newest
    run's), so no image appears twice with two different targets.
    """

    def __init__(self, uri: str, tensors: Sequence[str] = ("raw", "clean"),
                 storage_options: dict[str, Any] | None = None, *,
                 config_digest: str | None = None) -> None:
        digest = config_digest or newest_config_digest(uri, storage_options)
        table = read_features_table(uri, ["image_id", *tensors], storage_options,
                                    config_digest=digest)
        self.image_ids: list[str] = table.column("image_id").to_pylist()
        self.tensors = {name: column_to_numpy(table.column(name)) for name in tensors}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        item: dict[str, Any] = {"image_id": self.image_ids[index]}
        for name, array in self.tensors.items():
            item[name] = torch.from_numpy(array[index].astype(np.float32))
        return item
