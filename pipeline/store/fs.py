"""Filesystems and the atomic writes and reads every file of an output goes through: a crash or
a power loss never leaves a truncated file under its final name, and a file found damaged is
named in the error (``DamagedFile``)."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec


def filesystem(
    uri: str, storage_options: dict[str, Any] | None = None
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


def absolute_uri(uri: str) -> str:
    """A local path made absolute against this process's working directory, so that the
    workers of a Ray cluster (which run elsewhere) read and write where the user meant; a URI
    with a scheme, and "", unchanged."""
    if not uri or "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A small file's bytes in one GET, with no ETag cached by an earlier listing (a file
    rewritten since, like the lease, would fail that ETag's If-Match on S3)."""
    return fs.cat_file(path)


class DamagedFile(OSError):
    """A file of an output is not what its run recorded (missing, cut short, rewritten, or
    unparsable): the message names the file and how to mend the output."""


def damaged(path: str, what: str) -> DamagedFile:
    """A ``DamagedFile`` for ``path``: what is wrong with it, and how to mend the output."""
    return DamagedFile(
        f"{path}: {what}. The output was changed or damaged after this file "
        "was committed (a power loss, a copy cut short, another writer): "
        "restore the file, or move its run folder away and run the job again, "
        "which fits that run's images anew"
    )


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """A control file's JSON, or ``DamagedFile`` naming it when it is empty or unparsable
    (``FileNotFoundError`` when it does not exist)."""
    data = read_bytes(fs, path)
    try:
        return json.loads(data)
    except ValueError as err:
        raise damaged(path, f"{len(data)} bytes that are not JSON ({err})") from None


READ_THREADS = 16
"""Small objects (commit records) read at once from an object store, where each read is a
round trip: 10,000 records take about 1/16 of the sequential time."""


def read_many(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> list[bytes]:
    """The bytes of each path, in order: on an object store by up to ``READ_THREADS`` threads,
    on a local disk one after another (threads only slow small local reads down)."""
    if len(paths) <= 1 or is_local(fs):
        return [read_bytes(fs, path) for path in paths]
    with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        return list(pool.map(lambda path: read_bytes(fs, path), paths))


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
