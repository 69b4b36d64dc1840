"""The run protocol: commit records, manifests, seals, and the listing of an output's runs.

Finished work is durable as it lands: a write task's commit record makes its files visible to
readers and to the next run's skip logic while the run goes on. A run that dies keeps every
recorded file; the run that takes over its lease seals it (``seal_dead_runs``), fixing which
records count, so a run that lost its lease adds nothing afterwards. Files no record lists
are never read (``pipeline.store.gc`` lists them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import fsspec

from pipeline.config import MissingInput
from pipeline.store.format import SCHEMA_VERSION
from pipeline.store.fs import DamagedFile, damaged, filesystem, put_atomic, read_json, read_many
from pipeline.store.layout import (
    COMMITS_DIR,
    COMMITTED,
    CONFIG_FILE,
    MANIFEST,
    RUNS_DIR,
    SEALED,
    SUMMARY_FILE,
    run_folder,
)
from pipeline.store.meta import RunMeta

logger = logging.getLogger(__name__)


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
        """An entry as a record stores it (older records lack size and grid)."""
        grid = doc.get("grid")
        return cls(
            doc["path"],
            int(doc.get("rows", len(doc["image_ids"]))),
            doc.get("sha256", ""),
            tuple(doc["image_ids"]),
            int(doc.get("bytes", 0)),
            (int(grid[0]), int(grid[1])) if grid else None,
        )


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantine file of a run and the input URIs it lists."""

    path: str
    rows: int
    sha256: str
    uris: tuple[str, ...]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> QuarantineEntry:
        """An entry as a record stores it."""
        return cls(
            doc["path"],
            int(doc.get("rows", len(doc["uris"]))),
            doc.get("sha256", ""),
            tuple(doc["uris"]),
        )


def _entries_doc(
    files: Sequence[FileEntry], quarantine: Sequence[QuarantineEntry]
) -> dict[str, Any]:
    return {
        "files": [dataclasses.asdict(f) for f in files],
        "quarantine": [dataclasses.asdict(q) for q in quarantine],
    }


@dataclass(frozen=True)
class CommitRecord:
    """What one write task made durable: written to ``_commits/`` after its files landed, so
    its images are visible to readers and to the next run's skip logic at once."""

    task: int
    files: tuple[FileEntry, ...] = ()
    quarantine: tuple[QuarantineEntry, ...] = ()

    def to_bytes(self) -> bytes:
        """The record's JSON (sorted keys: the same files give the same bytes)."""
        return json.dumps(
            {"task": self.task, **_entries_doc(self.files, self.quarantine)}, sort_keys=True
        ).encode()

    @property
    def name(self) -> str:
        """Deterministic: a retried task that wrote the same files writes the same record."""
        return f"{self.task:05d}-{hashlib.sha256(self.to_bytes()).hexdigest()[:16]}.json"

    @classmethod
    def from_bytes(cls, data: bytes) -> CommitRecord:
        """A record from its JSON (``KeyError`` / ``ValueError`` when damaged)."""
        doc = json.loads(data)
        return cls(
            int(doc["task"]),
            tuple(FileEntry.from_dict(f) for f in doc["files"]),
            tuple(QuarantineEntry.from_dict(q) for q in doc["quarantine"]),
        )


@dataclass(frozen=True)
class Manifest:
    """A run's files and facts: ``_manifest.json`` of a committed run, ``_SEALED`` of a dead run
    another run took over, or built from the commit records of a run still going."""

    run_id: str
    config_digest: str
    meta: RunMeta
    files: tuple[FileEntry, ...] = ()
    quarantine: tuple[QuarantineEntry, ...] = ()
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        """The manifest's JSON, as ``_manifest.json`` and ``_SEALED`` hold it."""
        return json.dumps(
            {
                "run_id": self.run_id,
                "config_digest": self.config_digest,
                "schema_version": self.schema_version,
                "meta": self.meta.to_dict(),
                **_entries_doc(self.files, self.quarantine),
                "summary": self.summary,
            }
        ).encode()

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Manifest:
        """A manifest from its parsed JSON (older versions lack run id, summary and version)."""
        return cls(
            doc.get("run_id", ""),
            doc["config_digest"],
            RunMeta.from_dict(doc.get("meta")),
            tuple(FileEntry.from_dict(f) for f in doc.get("files", [])),
            tuple(QuarantineEntry.from_dict(q) for q in doc.get("quarantine", [])),
            doc.get("summary") or {},
            int(doc.get("schema_version", 1)),
        )

    @property
    def image_ids(self) -> list[str]:
        """The image ids of every feature file, in order (an id twice if two files hold it)."""
        return [i for f in self.files for i in f.image_ids]


RunState = Literal["committed", "sealed", "open"]
"""How a run's work was found: its manifest (committed), its seal or its commit records."""


@dataclass(frozen=True)
class CommittedRun:
    """A run folder with committed work, oldest first when listed: ``committed`` (finished,
    ``_COMMITTED``), ``sealed`` (died; the run that took its lease over fixed which records
    count) or ``open`` (still going, or died and not yet taken over: every record counts)."""

    path: str
    manifest: Manifest
    state: RunState = "committed"
    damaged: str = ""
    """A control file of the run (manifest or seal) found damaged: the run was read from its
    commit records instead, and gc leaves the run alone."""

    @property
    def feature_files(self) -> list[str]:
        """Full paths of the run's feature files."""
        return [posixpath.join(self.path, f.path) for f in self.manifest.files]

    @property
    def quarantine_files(self) -> list[str]:
        """Full paths of the run's quarantine files."""
        return [posixpath.join(self.path, f.path) for f in self.manifest.quarantine]

    @property
    def meta(self) -> RunMeta:
        """model, weights_digest, layer, method, channels, grid ... of the run's rows."""
        return self.manifest.meta

    @property
    def config_digest(self) -> str:
        """The config digest the run's rows were made under."""
        return self.manifest.config_digest

    @property
    def image_ids(self) -> list[str]:
        """The image ids the run committed (its manifest's)."""
        return self.manifest.image_ids


def write_run_config(
    fs: fsspec.AbstractFileSystem, run_path: str, resolved: dict[str, Any]
) -> None:
    """``config.json``: the resolved job config and the run's meta (written first)."""
    fs.makedirs(run_path, exist_ok=True)
    put_atomic(fs, posixpath.join(run_path, CONFIG_FILE), json.dumps(resolved, indent=2).encode())


def read_run_config(fs: fsspec.AbstractFileSystem, run_path: str) -> dict[str, Any]:
    """A run's ``config.json`` (``DamagedFile`` when unparsable)."""
    return read_json(fs, posixpath.join(run_path, CONFIG_FILE))


def write_commit_record(fs: fsspec.AbstractFileSystem, run_path: str, record: CommitRecord) -> str:
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


def read_commit_records(
    fs: fsspec.AbstractFileSystem, run_path: str, names: Sequence[str] | None = None
) -> list[tuple[str, CommitRecord]]:
    """(name, record) of a run's commit records, sorted by name (all, or just ``names``)."""
    folder = posixpath.join(run_path, COMMITS_DIR)
    names = sorted(commit_record_names(fs, run_path) if names is None else names)
    blobs = read_many(fs, [posixpath.join(folder, n) for n in names])
    records = []
    for name, blob in zip(names, blobs, strict=True):
        try:
            records.append((name, CommitRecord.from_bytes(blob)))
        except (ValueError, KeyError, TypeError) as err:  # its task's files stay unread
            logger.warning(
                "%s",
                damaged(
                    posixpath.join(folder, name),
                    f"a commit record of {len(blob)} bytes that cannot "
                    f"be parsed ({err}); its files are left out",
                ),
            )
    return records


def manifest_from_records(
    run_id: str,
    config_digest: str,
    meta: RunMeta,
    records: Sequence[CommitRecord],
    summary: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a run as the union of its commit records (a file listed twice, by a
    retried task, counts once)."""
    files: dict[str, FileEntry] = {}
    quarantine: dict[str, QuarantineEntry] = {}
    for record in records:
        files.update((f.path, f) for f in record.files if f.path not in files)
        quarantine.update((q.path, q) for q in record.quarantine if q.path not in quarantine)
    return Manifest(
        run_id,
        config_digest,
        meta,
        tuple(files.values()),
        tuple(quarantine.values()),
        summary or {},
    )


def commit_run(fs: fsspec.AbstractFileSystem, run_path: str, manifest: Manifest) -> None:
    """Close a finished run: summary, manifest, then ``_COMMITTED`` (written last)."""
    put_atomic(
        fs, posixpath.join(run_path, SUMMARY_FILE), json.dumps(manifest.summary, indent=2).encode()
    )
    put_atomic(fs, posixpath.join(run_path, MANIFEST), manifest.to_bytes())
    put_atomic(fs, posixpath.join(run_path, COMMITTED), manifest.run_id.encode())


def _run_ids(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The run folders under an output, oldest first; object-store listings cached by this
    process are dropped first, so markers and records written since are seen."""
    runs_root = posixpath.join(root, RUNS_DIR)
    fs.invalidate_cache(runs_root)
    if not fs.exists(runs_root):
        return []
    ids = sorted(
        name
        for entry in fs.ls(runs_root, detail=True)
        if entry["type"] == "directory"  # stray files (.DS_Store ...) are no runs
        and not (name := posixpath.basename(entry["name"].rstrip("/"))).startswith(".")
    )
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
    meta = RunMeta.from_dict(resolved.get("meta"))
    records = [r for _, r in read_commit_records(fs, run_path)]
    return manifest_from_records(
        resolved.get("run_id", posixpath.basename(run_path)),
        meta.config_digest or "",
        meta,
        records,
    )


def seal_dead_runs(
    uri: str, storage_options: dict[str, Any] | None, current_run_id: str
) -> list[str]:
    """Called by a run that holds the output's lease, before it lists what is committed: every
    other run without a marker is dead (only the lease holder runs), and gets ``_SEALED``, the
    manifest of the records it had. A record such a run writes later (it lost its lease and
    has not noticed yet) is never read. Returns the sealed run ids."""
    fs, root = filesystem(uri, storage_options)
    sealed = []
    for run_id in _run_ids(fs, root):
        path = run_folder(root, run_id)
        if (
            run_id == current_run_id
            or fs.exists(posixpath.join(path, COMMITTED))
            or fs.exists(posixpath.join(path, SEALED))
        ):
            continue
        if fs.exists(posixpath.join(path, CONFIG_FILE)):
            manifest = _open_manifest(fs, path)
            if manifest is None:  # a damaged config: left as it is, and warned about
                continue
        else:  # died before its config: it committed nothing
            manifest = Manifest(run_id, "", RunMeta())
        put_atomic(fs, posixpath.join(path, SEALED), manifest.to_bytes())
        sealed.append(run_id)
    return sealed


def list_runs(fs: fsspec.AbstractFileSystem, root: str) -> list[CommittedRun]:
    """Every run folder with a config or a marker, oldest first, with the files that count:
    the manifest's (committed), the seal's (sealed), or its commit records' so far (open)."""
    runs = []
    for run_id in _run_ids(fs, root):
        path = run_folder(root, run_id)
        closed: tuple[tuple[str, str, RunState], ...] = (
            (COMMITTED, MANIFEST, "committed"),
            (SEALED, SEALED, "sealed"),
        )
        for marker, listing, state in closed:
            if fs.exists(posixpath.join(path, marker)):
                control = posixpath.join(path, listing)
                try:
                    runs.append(
                        CommittedRun(path, Manifest.from_doc(read_json(fs, control)), state)
                    )
                except (DamagedFile, FileNotFoundError, KeyError, TypeError) as err:
                    # the commit records the manifest (or seal) was made from still count
                    logger.warning(
                        "%s; the run is read from its commit records instead",
                        err
                        if isinstance(err, DamagedFile)
                        else damaged(control, f"unreadable ({err!r})"),
                    )
                    manifest = _open_manifest(fs, path)
                    if manifest is not None:
                        runs.append(CommittedRun(path, manifest, state, damaged=control))
                break
        else:
            if (manifest := _open_manifest(fs, path)) is not None:
                runs.append(CommittedRun(path, manifest, "open"))
    return runs


def committed_runs(uri: str, storage_options: dict[str, Any] | None = None) -> list[CommittedRun]:
    """Every run under an output URI with committed work, oldest first (run ids sort by time).
    Unlisted files (of a task that died before its record, or written after a seal) are never
    read."""
    fs, root = filesystem(uri, storage_options)
    return [
        run
        for run in list_runs(fs, root)
        if run.state == "committed" or run.manifest.files or run.manifest.quarantine
    ]


def select_runs(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    config_digest: str | None = None,
) -> list[CommittedRun]:
    """The committed runs under ``uri`` whose rows came from ``method`` / ``config_digest``."""
    return [
        run
        for run in committed_runs(uri, storage_options)
        if (config_digest is None or run.config_digest == config_digest)
        and (method is None or run.meta.method == method)
    ]


def stage1_runs(
    uri: str, storage_options: dict[str, Any] | None, config_digest: str | None, flag: str
) -> list[CommittedRun]:
    """The committed stage-1 (``dvt-fit``) runs under ``uri`` (of ``config_digest`` when given);
    ``MissingInput`` when there are none, naming the option to check (``flag``)."""
    runs = select_runs(uri, storage_options, method="dvt-fit", config_digest=config_digest)
    if not runs:
        of = f" of config {config_digest}" if config_digest else ""
        raise MissingInput(f"no committed stage-1 runs{of} under {uri}: check {flag}")
    return runs


def newest_config_digest(
    uri: str, storage_options: dict[str, Any] | None = None, *, method: str | None = None
) -> str:
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
