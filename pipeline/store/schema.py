"""The on-disk contract of feature outputs: paths, names, manifests, commit records, atomic
writes, and every reader of it.

An output URI holds one folder per run::

    OUTPUT/runs/<run_id>/config.json                   the resolved config (written first)
    OUTPUT/runs/<run_id>/part-<task>-<hash>.parquet    features, one row per image
    OUTPUT/runs/<run_id>/quarantine-<task>-<hash>.parquet  inputs that failed, with reasons
    OUTPUT/runs/<run_id>/_commits/<task>-<hash>.json   one per write task, after its files
    OUTPUT/runs/<run_id>/summary.json                  counters and timings (at the end)
    OUTPUT/runs/<run_id>/_manifest.json                the files and image ids of the run
    OUTPUT/runs/<run_id>/_COMMITTED                    written last: the run is complete
    OUTPUT/runs/<run_id>/_SEALED                       a dead run, closed by the next run
    OUTPUT/artifact_models/<model>-<weights>-<size>px-<settings>.safetensors
                                                       the dataset-level artifact model

Finished work is durable as it lands: a write task's commit record makes its files visible to
readers and to the next run's skip logic while the run goes on. A run that dies keeps every
recorded file; the run that takes over its lease seals it (``seal_dead_runs``), fixing which
records count, so a run that lost its lease adds nothing afterwards. Files no record lists
are never read, and ``orphaned_files`` lists them for ``jobs/gc_output.py``. An image held by
two files (one image under two URIs, or a dead run and its re-run racing) is read from the
first one only. Tensors use Arrow's canonical ``arrow.fixed_shape_tensor`` extension type
(row-major, shape (h, w, C)); each file holds one token grid (h, w), so images of other aspects
land in other files. ``read_features_table`` reads one grid (``grid=``) or a folder of one;
``read_feature_groups`` gives a table per grid; ``FeatureDataset`` yields rows of any grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:  # the model code imports torch; readers of Parquet need not
    from pipeline.models.artifact_model import ArtifactModel

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""3: images keep their aspect, so a run's files may hold different token grids (one grid per
file, recorded in its ``FileEntry``); 2: per-task commit records (``_commits/``) and seals.
Runs of versions 1 and 2 (one square grid) read as before."""
RUNS_DIR = "runs"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
COMMITS_DIR = "_commits"
MANIFEST = "_manifest.json"
SEALED = "_SEALED"
COMMITTED = "_COMMITTED"
TENSOR_COLUMNS = ("raw", "clean", "artifact", "clean_hr")
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
                    with_artifact: bool = True, upsample: int = 1) -> pa.Schema:
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
        fields.append(pa.field("clean_hr", tensor_type(
            (grid[0] * upsample, grid[1] * upsample, channels), dtype), nullable=False))
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


def _fsync(path: str | Path) -> None:
    """Flush a local file's bytes, or a folder's entries (a rename or link in it), to the
    disk: a power loss cannot undo what came before."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, data: bytes) -> None:
    """Write a new local file and flush it to the disk before returning."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _temp_name(path: str) -> str:
    """A temp file beside ``path`` (gc lists leftovers of interrupted writes by ``.tmp-``)."""
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def local_atomic(target: Path) -> Iterator[Path]:
    """A temp path beside a local ``target``, moved onto it when the block ends cleanly (and
    removed when it fails): a crash or a power loss never leaves a truncated file under the
    final name (the temp file is flushed to disk before the rename, the folder after it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches and reports may be shared
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(target.parent)


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write bytes so that a crash never leaves a truncated file under the final name: on a
    local disk a temp file flushed to disk, renamed, and the folder flushed (so a power loss
    leaves the old file or the new one, whole); on object stores one PUT."""
    if is_local(fs):
        folder = posixpath.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = _temp_name(path)
        try:
            _write_synced(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync(folder)
    else:  # object stores make a single PUT visible whole or not at all
        with fs.open(path, "wb") as fh:
            fh.write(data)


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create ``path`` holding ``data`` only if it does not exist yet (``FileExistsError``
    otherwise), and never visible empty or half-written: on a local disk a flushed temp file
    hard-linked to the name (the link fails if the name exists), on object stores one
    conditional PUT (``If-None-Match: *``)."""
    if not is_local(fs):
        with fs.open(path, "xb") as fh:
            fh.write(data)
        return
    folder = posixpath.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = _temp_name(path)
    _write_synced(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: an exclusive create, then the bytes
        with open(path, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        os.unlink(tmp)
    _fsync(folder)


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

    from pipeline.models.artifact_model import ArtifactModel

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


# --------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class FileEntry:
    """One feature file of a run (path relative to the run folder) and the images it holds."""

    path: str
    rows: int
    sha256: str
    image_ids: tuple[str, ...]
    bytes: int = 0
    grid: tuple[int, int] | None = None
    """(h, w) token grid of every row of the file; None in records of schema version < 3."""

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FileEntry:
        grid = doc.get("grid")
        return cls(doc["path"], int(doc.get("rows", len(doc["image_ids"]))),
                   doc.get("sha256", ""), tuple(doc["image_ids"]), int(doc.get("bytes", 0)),
                   (int(grid[0]), int(grid[1])) if grid else None)


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantine file of a run and the input URIs it lists."""

    path: str
    rows: int
    sha256: str
    uris: tuple[str, ...]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> QuarantineEntry:
        return cls(doc["path"], int(doc.get("rows", len(doc["uris"]))), doc.get("sha256", ""),
                   tuple(doc["uris"]))


def _entries_doc(files: Sequence[FileEntry], quarantine: Sequence[QuarantineEntry]
                 ) -> dict[str, Any]:
    return {"files": [dataclasses.asdict(f) for f in files],
            "quarantine": [dataclasses.asdict(q) for q in quarantine]}


@dataclass(frozen=True)
class CommitRecord:
    """What one write task made durable: written to ``_commits/`` after its files landed, so
    its images are visible to readers and to the next run's skip logic at once."""

    task: int
    files: tuple[FileEntry, ...] = ()
    quarantine: tuple[QuarantineEntry, ...] = ()

    def to_bytes(self) -> bytes:
        return json.dumps({"task": self.task, **_entries_doc(self.files, self.quarantine)},
                          sort_keys=True).encode()

    @property
    def name(self) -> str:
        """Deterministic: a retried task that wrote the same files writes the same record."""
        return f"{self.task:05d}-{hashlib.sha256(self.to_bytes()).hexdigest()[:16]}.json"

    @classmethod
    def from_bytes(cls, data: bytes) -> CommitRecord:
        doc = json.loads(data)
        return cls(int(doc["task"]), tuple(FileEntry.from_dict(f) for f in doc["files"]),
                   tuple(QuarantineEntry.from_dict(q) for q in doc["quarantine"]))


@dataclass(frozen=True)
class Manifest:
    """A run's files and facts: ``_manifest.json`` of a committed run, ``_SEALED`` of a dead run
    another run took over, or built from the commit records of a run still going."""

    run_id: str
    config_digest: str
    meta: dict[str, Any]
    files: tuple[FileEntry, ...] = ()
    quarantine: tuple[QuarantineEntry, ...] = ()
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "config_digest": self.config_digest,
                           "schema_version": self.schema_version, "meta": self.meta,
                           **_entries_doc(self.files, self.quarantine),
                           "summary": self.summary}).encode()

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Manifest:
        return cls(doc.get("run_id", ""), doc["config_digest"], doc.get("meta") or {},
                   tuple(FileEntry.from_dict(f) for f in doc.get("files", [])),
                   tuple(QuarantineEntry.from_dict(q) for q in doc.get("quarantine", [])),
                   doc.get("summary") or {}, int(doc.get("schema_version", 1)))

    @property
    def image_ids(self) -> list[str]:
        return [i for f in self.files for i in f.image_ids]


RUN_STATES = ("committed", "sealed", "open")


@dataclass(frozen=True)
class CommittedRun:
    """A run folder with committed work, oldest first when listed: ``committed`` (finished,
    ``_COMMITTED``), ``sealed`` (died; the run that took its lease over fixed which records
    count) or ``open`` (still going, or died and not yet taken over: every record counts)."""

    path: str
    manifest: Manifest
    state: str = "committed"
    damaged: str = ""
    """A control file of the run (manifest or seal) found damaged: the run was read from its
    commit records instead, and gc leaves the run alone."""

    @property
    def feature_files(self) -> list[str]:
        return [posixpath.join(self.path, f.path) for f in self.manifest.files]

    @property
    def quarantine_files(self) -> list[str]:
        return [posixpath.join(self.path, f.path) for f in self.manifest.quarantine]

    @property
    def meta(self) -> dict[str, Any]:
        """model, weights_digest, layer, method, channels, grid ... of the run's rows."""
        return self.manifest.meta

    @property
    def config_digest(self) -> str:
        return self.manifest.config_digest

    @property
    def image_ids(self) -> list[str]:
        return self.manifest.image_ids


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


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A small file's bytes in one GET, with no ETag cached by an earlier listing (a file
    rewritten since, like the lease, would fail that ETag's If-Match on S3)."""
    return fs.cat_file(path)


class DamagedFile(OSError):
    """A file of an output is not what its run recorded (missing, cut short, rewritten, or
    unparsable): the message names the file and how to mend the output."""


def _damaged(path: str, what: str) -> DamagedFile:
    return DamagedFile(f"{path}: {what}. The output was changed or damaged after this file "
                       "was committed (a power loss, a copy cut short, another writer): "
                       "restore the file, or move its run folder away and run the job again, "
                       "which fits that run's images anew")


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """A control file's JSON, or ``DamagedFile`` naming it when it is empty or unparsable
    (``FileNotFoundError`` when it does not exist)."""
    data = read_bytes(fs, path)
    try:
        return json.loads(data)
    except ValueError as err:
        raise _damaged(path, f"{len(data)} bytes that are not JSON ({err})") from None


def run_folder(output_root: str, run_id: str) -> str:
    """The folder of run ``run_id`` under an output's bare path."""
    return posixpath.join(output_root, RUNS_DIR, run_id)


def write_run_config(fs: fsspec.AbstractFileSystem, run_path: str, resolved: dict[str, Any]
                     ) -> None:
    """``config.json``: the resolved job config and the run's meta (written first)."""
    fs.makedirs(run_path, exist_ok=True)
    put_atomic(fs, posixpath.join(run_path, CONFIG_FILE), json.dumps(resolved, indent=2).encode())


def read_run_config(fs: fsspec.AbstractFileSystem, run_path: str) -> dict[str, Any]:
    """A run's ``config.json`` (``DamagedFile`` when unparsable)."""
    return read_json(fs, posixpath.join(run_path, CONFIG_FILE))


def write_commit_record(fs: fsspec.AbstractFileSystem, run_path: str, record: CommitRecord
                        ) -> str:
    """Make a write task's files visible (call after they landed); the record's name."""
    put_atomic(fs, posixpath.join(run_path, COMMITS_DIR, record.name), record.to_bytes())
    return record.name


def commit_record_names(fs: fsspec.AbstractFileSystem, run_path: str) -> list[str]:
    """The names of a run's commit records as listed now (uncached)."""
    folder = posixpath.join(run_path, COMMITS_DIR)
    fs.invalidate_cache(folder)
    if not fs.exists(folder):
        return []
    return [posixpath.basename(p) for p in fs.ls(folder, detail=False) if p.endswith(".json")]


def read_commit_records(fs: fsspec.AbstractFileSystem, run_path: str,
                        names: Sequence[str] | None = None) -> list[tuple[str, CommitRecord]]:
    """(name, record) of a run's commit records, sorted by name (all, or just ``names``)."""
    folder = posixpath.join(run_path, COMMITS_DIR)
    names = sorted(commit_record_names(fs, run_path) if names is None else names)
    blobs = _read_many(fs, [posixpath.join(folder, n) for n in names])
    records = []
    for name, blob in zip(names, blobs, strict=True):
        try:
            records.append((name, CommitRecord.from_bytes(blob)))
        except (ValueError, KeyError, TypeError) as err:  # its task's files stay unread
            logger.warning("%s", _damaged(posixpath.join(folder, name),
                                          f"a commit record of {len(blob)} bytes that cannot "
                                          f"be parsed ({err}); its files are left out"))
    return records


READ_THREADS = 16
"""Small objects (commit records) read at once from an object store, where each read is a
round trip: 10,000 records take about 1/16 of the sequential time."""


def _read_many(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> list[bytes]:
    """The bytes of each path, in order: on an object store by up to ``READ_THREADS`` threads,
    on a local disk one after another (threads only slow small local reads down)."""
    if len(paths) <= 1 or is_local(fs):
        return [read_bytes(fs, path) for path in paths]
    with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        return list(pool.map(lambda path: read_bytes(fs, path), paths))


def manifest_from_records(run_id: str, config_digest: str, meta: dict[str, Any],
                          records: Sequence[CommitRecord], summary: dict[str, Any] | None = None
                          ) -> Manifest:
    """The manifest of a run as the union of its commit records (a file listed twice, by a
    retried task, counts once)."""
    files: dict[str, FileEntry] = {}
    quarantine: dict[str, QuarantineEntry] = {}
    for record in records:
        files.update((f.path, f) for f in record.files if f.path not in files)
        quarantine.update((q.path, q) for q in record.quarantine if q.path not in quarantine)
    return Manifest(run_id, config_digest, meta, tuple(files.values()),
                    tuple(quarantine.values()), summary or {})


def commit_run(fs: fsspec.AbstractFileSystem, run_path: str, manifest: Manifest) -> None:
    """Close a finished run: summary, manifest, then ``_COMMITTED`` (written last)."""
    put_atomic(fs, posixpath.join(run_path, SUMMARY_FILE),
               json.dumps(manifest.summary, indent=2).encode())
    put_atomic(fs, posixpath.join(run_path, MANIFEST), manifest.to_bytes())
    put_atomic(fs, posixpath.join(run_path, COMMITTED), manifest.run_id.encode())


def _run_ids(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The run folders under an output, oldest first; object-store listings cached by this
    process are dropped first, so markers and records written since are seen."""
    runs_root = posixpath.join(root, RUNS_DIR)
    fs.invalidate_cache(runs_root)
    if not fs.exists(runs_root):
        return []
    ids = sorted(name for entry in fs.ls(runs_root, detail=True)
                 if entry["type"] == "directory"  # stray files (.DS_Store ...) are no runs
                 and not (name := posixpath.basename(entry["name"].rstrip("/"))).startswith("."))
    for run_id in ids:
        fs.invalidate_cache(run_folder(root, run_id))
    return ids


def _open_manifest(fs: fsspec.AbstractFileSystem, run_path: str) -> Manifest | None:
    """A run without a marker, from its config and commit records; None before its config."""
    try:
        resolved = read_run_config(fs, run_path)
    except FileNotFoundError:
        return None
    except DamagedFile as err:  # no config digest: the run's rows cannot be told apart
        logger.warning("run left out: %s", err)
        return None
    meta = resolved.get("meta") or {}
    records = [r for _, r in read_commit_records(fs, run_path)]
    return manifest_from_records(resolved.get("run_id", posixpath.basename(run_path)),
                                 meta.get("config_digest", ""), meta, records)


def seal_dead_runs(uri: str, storage_options: dict[str, Any] | None, current_run_id: str
                   ) -> list[str]:
    """Called by a run that holds the output's lease, before it lists what is committed: every
    other run without a marker is dead (only the lease holder runs), and gets ``_SEALED``, the
    manifest of the records it had. A record such a run writes later (it lost its lease and
    has not noticed yet) is never read. Returns the sealed run ids."""
    fs, root = filesystem(uri, storage_options)
    sealed = []
    for run_id in _run_ids(fs, root):
        path = run_folder(root, run_id)
        if run_id == current_run_id or fs.exists(posixpath.join(path, COMMITTED)) or \
                fs.exists(posixpath.join(path, SEALED)):
            continue
        if fs.exists(posixpath.join(path, CONFIG_FILE)):
            manifest = _open_manifest(fs, path)
            if manifest is None:  # a damaged config: left as it is, and warned about
                continue
        else:  # died before its config: it committed nothing
            manifest = Manifest(run_id, "", {})
        put_atomic(fs, posixpath.join(path, SEALED), manifest.to_bytes())
        sealed.append(run_id)
    return sealed


def _runs(fs: fsspec.AbstractFileSystem, root: str) -> list[CommittedRun]:
    """Every run folder with a config or a marker, oldest first, with the files that count:
    the manifest's (committed), the seal's (sealed), or its commit records' so far (open)."""
    runs = []
    for run_id in _run_ids(fs, root):
        path = run_folder(root, run_id)
        for marker, listing, state in ((COMMITTED, MANIFEST, "committed"),
                                       (SEALED, SEALED, "sealed")):
            if fs.exists(posixpath.join(path, marker)):
                control = posixpath.join(path, listing)
                try:
                    runs.append(CommittedRun(path, Manifest.from_doc(read_json(fs, control)),
                                             state))
                except (DamagedFile, FileNotFoundError, KeyError, TypeError) as err:
                    # the commit records the manifest (or seal) was made from still count
                    logger.warning("%s; the run is read from its commit records instead",
                                   err if isinstance(err, DamagedFile)
                                   else _damaged(control, f"unreadable ({err!r})"))
                    manifest = _open_manifest(fs, path)
                    if manifest is not None:
                        runs.append(CommittedRun(path, manifest, state, damaged=control))
                break
        else:
            if (manifest := _open_manifest(fs, path)) is not None:
                runs.append(CommittedRun(path, manifest, "open"))
    return runs


def committed_runs(uri: str, storage_options: dict[str, Any] | None = None
                   ) -> list[CommittedRun]:
    """Every run under an output URI with committed work, oldest first (run ids sort by time).
    Unlisted files (of a task that died before its record, or written after a seal) are never
    read."""
    fs, root = filesystem(uri, storage_options)
    return [run for run in _runs(fs, root) if run.state == "committed"
            or run.manifest.files or run.manifest.quarantine]


def select_runs(uri: str, storage_options: dict[str, Any] | None = None, *,
                method: str | None = None, config_digest: str | None = None
                ) -> list[CommittedRun]:
    """The committed runs under ``uri`` whose rows came from ``method`` / ``config_digest``."""
    return [run for run in committed_runs(uri, storage_options)
            if (config_digest is None or run.config_digest == config_digest)
            and (method is None or run.meta.get("method") == method)]


def orphaned_files(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Files of finished (committed or sealed) runs that no manifest lists: parts of tasks
    that died before their record, records and files written after a seal, temp files of
    interrupted writes. Open runs (maybe still going) are never looked into. Full paths."""
    fs, root = filesystem(uri, storage_options)
    orphans = []
    for run in _runs(fs, root):
        if run.state == "open":
            continue
        if run.damaged:
            logger.warning("gc leaves run %s alone: its control file %s is damaged",
                           posixpath.basename(run.path), run.damaged)
            continue
        keep = {posixpath.join(run.path, n) for n in (CONFIG_FILE, SUMMARY_FILE, MANIFEST,
                                                     COMMITTED, SEALED)}
        keep.update(run.feature_files + run.quarantine_files)
        if run.state == "committed":  # its records made the manifest: all of them are kept
            keep.update(fs.find(posixpath.join(run.path, COMMITS_DIR)))
        else:
            sealed = {f.path for f in run.manifest.files}
            for name, record in read_commit_records(fs, run.path):
                if {f.path for f in record.files} <= sealed:
                    keep.add(posixpath.join(run.path, COMMITS_DIR, name))
        orphans += [p for p in sorted(fs.find(run.path)) if p not in keep]
    return orphans


def remove_files(uri: str, paths: Sequence[str], storage_options: dict[str, Any] | None = None
                 ) -> None:
    """Delete ``paths`` (from ``orphaned_files``) of the output's filesystem."""
    fs, _ = filesystem(uri, storage_options)
    for path in paths:
        fs.rm(path)


class IdSet:
    """A set of image ids held as one sorted array of 32-byte sha256 digests (32 bytes an id,
    against ~150 for a Python set of hex strings): what every reader actor keeps to skip
    inputs. Ids that are not sha256 hex (none that this pipeline writes) go to a plain set."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        digests, self._other = set(), set()
        for i in ids:
            (digests.add(bytes.fromhex(i)) if _is_sha256(i) else self._other.add(i))
        self._ids = np.array(sorted(digests), dtype="S32") if digests else np.empty(0, "S32")

    def __len__(self) -> int:
        return len(self._ids) + len(self._other)

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, str):
            return False
        if not _is_sha256(image_id):
            return image_id in self._other
        key = np.array(bytes.fromhex(image_id), dtype="S32")
        at = int(np.searchsorted(self._ids, key))
        return at < len(self._ids) and self._ids[at] == key

    @property
    def nbytes(self) -> int:
        return int(self._ids.nbytes)


_HEX = frozenset("0123456789abcdef")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and _HEX.issuperset(text)


def committed_ids(uri: str, config_digest: str | None = None,
                  storage_options: dict[str, Any] | None = None) -> set[str]:
    """Image ids already committed under ``uri`` (for one config digest, if given)."""
    runs = select_runs(uri, storage_options, config_digest=config_digest)
    return {i for run in runs for i in run.image_ids}


@dataclass(frozen=True)
class OwnedFile:
    """A feature file to read, the ids in it that an earlier file already holds (left out), and
    its rows' token grid (h, w) where the record says it (None: read from the file)."""

    path: str
    leave_out: frozenset[str]
    grid: tuple[int, int] | None
    rows: int = 0
    size: int = 0
    """The file's size in bytes as its record has it (0: not recorded, not checked)."""
    ids: tuple[str, ...] | None = None
    """The image ids its record lists, in order (None: not checked)."""


def _owned_files(runs: Sequence[CommittedRun]) -> list[OwnedFile]:
    """Feature files in reading order: an image that two files hold (the same bytes under two
    URIs in one run, or a crashed run's record and its re-run racing) is read from the first
    only, per config digest, so no reader yields an image twice."""
    seen: dict[str, set[str]] = {}
    out = []
    for run in runs:
        done = seen.setdefault(run.config_digest, set())
        for entry in run.manifest.files:
            repeated = done.intersection(entry.image_ids)
            done.update(entry.image_ids)
            if len(repeated) < len(entry.image_ids):
                out.append(OwnedFile(posixpath.join(run.path, entry.path), frozenset(repeated),
                                     entry.grid, entry.rows - len(repeated), entry.bytes,
                                     entry.image_ids))
    return out


def _file_grid(fs: fsspec.AbstractFileSystem, owned: OwnedFile) -> tuple[int, int]:
    """The (h, w) token grid of a feature file's rows: from its record, else its footer."""
    if owned.grid is not None:
        return owned.grid
    with fs.open(owned.path, "rb") as fh:
        shape = pq.read_schema(fh).field("raw").type.shape
    return int(shape[0]), int(shape[1])


def _files_by_grid(fs: fsspec.AbstractFileSystem, files: Sequence[OwnedFile]
                   ) -> dict[tuple[int, int], list[OwnedFile]]:
    """Files grouped by token grid, grids in order of first appearance."""
    groups: dict[tuple[int, int], list[OwnedFile]] = {}
    for owned in files:
        groups.setdefault(_file_grid(fs, owned), []).append(owned)
    return groups


def _one_grid(fs: fsspec.AbstractFileSystem, uri: str, files: Sequence[OwnedFile],
              columns: Sequence[str] | None, grid: Sequence[int] | None) -> list[OwnedFile]:
    """The files of token grid ``grid``; with None, all of them where no tensor column is read
    or they share one grid, else a ValueError that says how to read a folder of several."""
    if grid is None and columns is not None and not set(columns) & set(TENSOR_COLUMNS):
        return list(files)
    groups = _files_by_grid(fs, files)
    if grid is not None:
        return groups.get((int(grid[0]), int(grid[1])), [])
    if len(groups) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in groups)
        raise ValueError(f"rows under {uri} have {len(groups)} token grids ({listed}): tensors "
                         "of different shapes do not stack; pass grid=(h, w), or read them "
                         "with read_feature_groups() or FeatureDataset")
    return list(files)


def _read_tables(fs: fsspec.AbstractFileSystem, files: Sequence[OwnedFile],
                 columns: Sequence[str] | None) -> Iterator[pa.Table]:
    """Each file's table, without the rows of the ids it is to leave out, checked against its
    record (size, rows, image ids); ``DamagedFile`` naming the file when it differs."""
    for owned in files:
        yield _read_owned(fs, owned, columns)


def _read_owned(fs: fsspec.AbstractFileSystem, owned: OwnedFile,
                columns: Sequence[str] | None) -> pa.Table:
    path, leave_out = owned.path, owned.leave_out
    wanted = list(columns) if columns else None
    check_ids = owned.ids is not None or bool(leave_out)
    if check_ids and wanted is not None and "image_id" not in wanted:
        wanted.append("image_id")
    try:
        with fs.open(path, "rb") as fh:
            size = getattr(fh, "size", None)
            size = fs.size(path) if size is None else size
            if owned.size and size != owned.size:
                raise _damaged(path, f"{size} bytes where its record says {owned.size}")
            table = pq.read_table(fh, columns=wanted)
    except FileNotFoundError:
        raise _damaged(path, "missing, though a commit record lists it") from None
    except (OSError, pa.ArrowException) as err:
        if isinstance(err, DamagedFile):
            raise
        raise _damaged(path, f"cannot be read as Parquet ({err})") from None
    if owned.ids is not None and tuple(table["image_id"].to_pylist()) != owned.ids:
        raise _damaged(path, f"{table.num_rows} rows whose image ids differ from the "
                             f"{len(owned.ids)} its record lists")
    if leave_out:
        keep = pc.invert(pc.is_in(table["image_id"], pa.array(sorted(leave_out))))
        table = table.filter(keep)
    if check_ids and columns and "image_id" not in columns:
        table = table.drop_columns(["image_id"])
    return table


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
    newest = runs[-1].config_digest
    kept = [run for run in runs if run.config_digest == newest]
    others = sorted({run.config_digest for run in runs} - {newest})
    return newest, kept, others


def read_features_table(uri: str, columns: Sequence[str] | None = None,
                        storage_options: dict[str, Any] | None = None, *,
                        method: str | None = None, config_digest: str | None = None,
                        grid: Sequence[int] | None = None) -> pa.Table:
    """The committed feature rows under ``uri`` as one pyarrow Table (only the runs of
    ``method`` / ``config_digest`` when given, only the rows of token grid ``grid`` = (h, w)
    when given; tensors of a folder of several grids need ``grid`` or
    ``read_feature_groups``)."""
    fs, _ = filesystem(uri, storage_options)
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    files = _one_grid(fs, uri, _owned_files(runs), columns, grid)
    table = _concat(list(_read_tables(fs, files, columns)))
    if table is None:
        where = "" if grid is None else f" of grid {grid[0]}x{grid[1]}"
        raise FileNotFoundError(f"no committed feature rows{where} under {uri}")
    return table


def read_feature_groups(uri: str, columns: Sequence[str] | None = None,
                        storage_options: dict[str, Any] | None = None, *,
                        method: str | None = None, config_digest: str | None = None
                        ) -> dict[tuple[int, int], pa.Table]:
    """The committed feature rows under ``uri``, one pyarrow Table per token grid (h, w):
    images of other aspects have other grids, and their tensors do not stack."""
    fs, _ = filesystem(uri, storage_options)
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    groups = _files_by_grid(fs, _owned_files(runs))
    if not groups:
        raise FileNotFoundError(f"no committed feature runs under {uri}")
    tables = {g: _concat(list(_read_tables(fs, files, columns))) for g, files in groups.items()}
    return {g: t for g, t in tables.items() if t is not None and len(t)}


def sample_features_table(uri: str, count: int, storage_options: dict[str, Any] | None = None,
                          *, method: str | None = None, config_digest: str | None = None,
                          grid: Sequence[int] | None = None) -> pa.Table:
    """Up to ``count`` committed rows spread evenly over the files, reading only the files
    they come from (pictures and checks on a large corpus without loading all of it). Rows of
    one token grid: ``grid``, or in a folder of several the grid with the most rows."""
    fs, _ = filesystem(uri, storage_options)
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    files = _owned_files(runs)
    if not files:
        raise FileNotFoundError(f"no committed feature runs under {uri}")
    groups = _files_by_grid(fs, files)  # footers read once, for records without a grid
    if grid is not None:
        files = groups.get((int(grid[0]), int(grid[1])), [])
    elif len(groups) > 1:
        rows = _rows_by_grid(groups)
        files = groups[max(rows, key=lambda g: rows[g])]  # ties: the first seen
    if not files:
        raise FileNotFoundError(f"no committed feature rows of grid {grid} under {uri}")
    picked = [files[i] for i in spread_indices(len(files), count)]
    per_file = -(-count // len(picked))
    tables = [t.take(spread_indices(len(t), per_file)) for t in _read_tables(fs, picked, None)]
    table = _concat(tables)
    return table.take(spread_indices(len(table), count))


def _rows_by_grid(groups: dict[tuple[int, int], list[OwnedFile]]
                  ) -> dict[tuple[int, int], int]:
    """Rows per token grid of files grouped by ``_files_by_grid``."""
    return {grid: sum(owned.rows for owned in files) for grid, files in groups.items()}


def spread_indices(length: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct indices spread evenly over range(length)."""
    return np.unique(np.linspace(0, length - 1, min(length, count)).round().astype(np.int64))


def read_quarantine_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every quarantined input (uri, stage, reason, error class) of the committed runs."""
    fs, _ = filesystem(uri, storage_options)
    files = [OwnedFile(posixpath.join(run.path, q.path), frozenset(), None, q.rows, 0)
             for run in committed_runs(uri, storage_options) for q in run.manifest.quarantine]
    return _concat(list(_read_tables(fs, files, None))) or QUARANTINE_SCHEMA.empty_table()


def read_committed_files(batch: pa.Table, uri: str, storage_options: dict[str, Any] | None,
                         columns: Sequence[str] | None) -> pa.Table:
    """Ray Data's read of committed feature files: a batch of ``{"path", "leave_out", "size",
    "ids"}`` rows (one per file) -> the files' rows without the ids each is to leave out,
    checked against their records (the same code as every other reader). Plain Python: the
    store imports no Ray."""
    fs, _ = filesystem(uri, storage_options)
    files = [OwnedFile(path, frozenset(leave_out), None, 0, size, tuple(ids))
             for path, leave_out, size, ids in zip(
                 batch["path"].to_pylist(), batch["leave_out"].to_pylist(),
                 batch["size"].to_pylist(), batch["ids"].to_pylist(), strict=True)]
    return pa.concat_tables(list(_read_tables(fs, files, columns)))


def read_features(uri: str, columns: Sequence[str] | None = None,
                  storage_options: dict[str, Any] | None = None, *,
                  method: str | None = None, config_digest: str | None = None,
                  grid: Sequence[int] | None = None) -> Any:
    """A Ray Dataset of the committed rows (``iter_torch_batches`` yields (B, h, w, C)).

    ``method`` ("dvt-fit", or a denoiser's method name) and ``config_digest`` keep only the
    runs that produced their rows that way; ``grid`` = (h, w) only the rows of that token grid
    (needed for tensors of a folder of several grids: ``feature_grids`` lists them).

    The manifests already name every file, so one task a file reads it (``ray.data.from_items``
    and ``read_committed_files``) instead of ``ray.data.read_parquet``, which in Ray 2.60 lists
    again and starts 32 footer-reading actors for every call.
    """
    import ray.data  # Ray stays out of the import path of non-Ray users

    fs, _ = filesystem(uri, storage_options)
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    files = _one_grid(fs, uri, _owned_files(runs), columns, grid)
    if not files:
        raise FileNotFoundError(f"no committed feature runs under {uri} (method={method}, "
                                f"config_digest={config_digest}, grid={grid})")
    items = [{"path": owned.path, "leave_out": sorted(owned.leave_out), "size": owned.size,
              "ids": list(owned.ids or ())} for owned in files]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_committed_files, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"uri": uri, "storage_options": storage_options,
                   "columns": list(columns) if columns else None})


def feature_grids(uri: str, storage_options: dict[str, Any] | None = None, *,
                  method: str | None = None, config_digest: str | None = None
                  ) -> dict[tuple[int, int], int]:
    """Rows per token grid (h, w) of the committed rows, grids in order of first appearance."""
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    return run_grids(uri, runs, storage_options)


def run_grids(uri: str, runs: Sequence[CommittedRun],
              storage_options: dict[str, Any] | None = None) -> dict[tuple[int, int], int]:
    """``feature_grids`` of runs already selected (no second listing of the output)."""
    fs, _ = filesystem(uri, storage_options)
    return _rows_by_grid(_files_by_grid(fs, _owned_files(runs)))


class FeatureDataset:
    """A map-style torch Dataset over committed rows, without Ray.

    Item i is a dict with ``image_id`` and float32 tensors ``raw`` and ``clean`` (h, w, C) on
    that image's own token grid (rows of one grid follow one another). Rows are loaded eagerly
    per grid into memory-friendly fp16 numpy arrays. A folder refreshed under another config
    holds rows of both; ``config_digest`` picks one (default: the newest run's), so no image
    appears twice with two different targets.
    """

    def __init__(self, uri: str, tensors: Sequence[str] = ("raw", "clean"),
                 storage_options: dict[str, Any] | None = None, *,
                 config_digest: str | None = None) -> None:
        digest = config_digest or newest_config_digest(uri, storage_options)
        groups = read_feature_groups(uri, ["image_id", *tensors], storage_options,
                                     config_digest=digest)
        self.image_ids: list[str] = []
        self._arrays: list[dict[str, np.ndarray]] = []
        self._where: list[tuple[int, int]] = []  # (group, row in it) of item i
        for table in groups.values():
            self.image_ids.extend(table.column("image_id").to_pylist())
            self._where.extend((len(self._arrays), row) for row in range(len(table)))
            self._arrays.append({name: column_to_numpy(table.column(name)) for name in tensors})

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        group, row = self._where[index]
        item: dict[str, Any] = {"image_id": self.image_ids[index]}
        for name, array in self._arrays[group].items():
            item[name] = torch.from_numpy(array[row].astype(np.float32))
        return item
