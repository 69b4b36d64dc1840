"""Every reader of committed features: ids, tables, per-grid groups, samples, the quarantine,
a Ray Dataset (``read_features``, which imports Ray only when called) and a torch Dataset
(``FeatureDataset``, which imports torch only when indexed).

An image held by two files (one image under two URIs, or a dead run and its re-run racing) is
read from the first one only. ``read_features_table`` reads one grid (``grid=``) or a folder of
one; ``read_feature_groups`` gives a table per grid; ``FeatureDataset`` yields rows of any grid.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store.format import QUARANTINE_SCHEMA, TENSOR_COLUMNS, column_to_numpy
from pipeline.store.fs import DamagedFile, damaged, filesystem
from pipeline.store.runs import CommittedRun, committed_runs, newest_config_digest, select_runs


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
        """Bytes held by the digests array."""
        return int(self._ids.nbytes)


_HEX = frozenset("0123456789abcdef")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and _HEX.issuperset(text)


def committed_ids(
    uri: str, config_digest: str | None = None, storage_options: dict[str, Any] | None = None
) -> set[str]:
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
                out.append(
                    OwnedFile(
                        posixpath.join(run.path, entry.path),
                        frozenset(repeated),
                        entry.grid,
                        entry.rows - len(repeated),
                        entry.bytes,
                        entry.image_ids,
                    )
                )
    return out


def _file_grid(fs: fsspec.AbstractFileSystem, owned: OwnedFile) -> tuple[int, int]:
    """The (h, w) token grid of a feature file's rows: from its record, else its footer."""
    if owned.grid is not None:
        return owned.grid
    with fs.open(owned.path, "rb") as fh:
        shape = pq.read_schema(fh).field("raw").type.shape
    return int(shape[0]), int(shape[1])


def _files_by_grid(
    fs: fsspec.AbstractFileSystem, files: Sequence[OwnedFile]
) -> dict[tuple[int, int], list[OwnedFile]]:
    """Files grouped by token grid, grids in order of first appearance."""
    groups: dict[tuple[int, int], list[OwnedFile]] = {}
    for owned in files:
        groups.setdefault(_file_grid(fs, owned), []).append(owned)
    return groups


def _one_grid(
    fs: fsspec.AbstractFileSystem,
    uri: str,
    files: Sequence[OwnedFile],
    columns: Sequence[str] | None,
    grid: Sequence[int] | None,
) -> list[OwnedFile]:
    """The files of token grid ``grid``; with None, all of them where no tensor column is read
    or they share one grid, else a ValueError that says how to read a folder of several."""
    if grid is None and columns is not None and not set(columns) & set(TENSOR_COLUMNS):
        return list(files)
    groups = _files_by_grid(fs, files)
    if grid is not None:
        return groups.get((int(grid[0]), int(grid[1])), [])
    if len(groups) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in groups)
        raise ValueError(
            f"rows under {uri} have {len(groups)} token grids ({listed}): tensors "
            "of different shapes do not stack; pass grid=(h, w), or read them "
            "with read_feature_groups() or FeatureDataset"
        )
    return list(files)


def _read_tables(
    fs: fsspec.AbstractFileSystem, files: Sequence[OwnedFile], columns: Sequence[str] | None
) -> Iterator[pa.Table]:
    """Each file's table, without the rows of the ids it is to leave out, checked against its
    record (size, rows, image ids); ``DamagedFile`` naming the file when it differs."""
    for owned in files:
        yield _read_owned(fs, owned, columns)


def _read_owned(
    fs: fsspec.AbstractFileSystem, owned: OwnedFile, columns: Sequence[str] | None
) -> pa.Table:
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
                raise damaged(path, f"{size} bytes where its record says {owned.size}")
            table = pq.read_table(fh, columns=wanted)
    except FileNotFoundError:
        raise damaged(path, "missing, though a commit record lists it") from None
    except (OSError, pa.ArrowException) as err:
        if isinstance(err, DamagedFile):
            raise
        raise damaged(path, f"cannot be read as Parquet ({err})") from None
    if owned.ids is not None and tuple(table["image_id"].to_pylist()) != owned.ids:
        raise damaged(
            path,
            f"{table.num_rows} rows whose image ids differ from the "
            f"{len(owned.ids)} its record lists",
        )
    if leave_out:
        keep = pc.invert(pc.is_in(table["image_id"], pa.array(sorted(leave_out))))
        table = table.filter(keep)
    if check_ids and columns and "image_id" not in columns:
        table = table.drop_columns(["image_id"])
    return table


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def read_features_table(
    uri: str,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    config_digest: str | None = None,
    grid: Sequence[int] | None = None,
) -> pa.Table:
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


def read_feature_groups(
    uri: str,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    config_digest: str | None = None,
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


def sample_features_table(
    uri: str,
    count: int,
    storage_options: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    config_digest: str | None = None,
    grid: Sequence[int] | None = None,
) -> pa.Table:
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
    table = pa.concat_tables(tables, promote_options="permissive")  # one table a picked file
    return table.take(spread_indices(len(table), count))


def _rows_by_grid(groups: dict[tuple[int, int], list[OwnedFile]]) -> dict[tuple[int, int], int]:
    """Rows per token grid of files grouped by ``_files_by_grid``."""
    return {grid: sum(owned.rows for owned in files) for grid, files in groups.items()}


def spread_indices(length: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct indices spread evenly over range(length)."""
    return np.unique(np.linspace(0, length - 1, min(length, count)).round().astype(np.int64))


def read_quarantine_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every quarantined input (uri, stage, reason, error class) of the committed runs."""
    fs, _ = filesystem(uri, storage_options)
    files = [
        OwnedFile(posixpath.join(run.path, q.path), frozenset(), None, q.rows, 0)
        for run in committed_runs(uri, storage_options)
        for q in run.manifest.quarantine
    ]
    return _concat(list(_read_tables(fs, files, None))) or QUARANTINE_SCHEMA.empty_table()


def read_committed_files(
    batch: pa.Table, uri: str, storage_options: dict[str, Any] | None, columns: Sequence[str] | None
) -> pa.Table:
    """Ray Data's read of committed feature files: a batch of ``{"path", "leave_out", "size",
    "ids"}`` rows (one per file) -> the files' rows without the ids each is to leave out,
    checked against their records (the same code as every other reader). Plain Python: the
    store imports no Ray."""
    fs, _ = filesystem(uri, storage_options)
    files = [
        OwnedFile(path, frozenset(leave_out), None, 0, size, tuple(ids))
        for path, leave_out, size, ids in zip(
            batch["path"].to_pylist(),
            batch["leave_out"].to_pylist(),
            batch["size"].to_pylist(),
            batch["ids"].to_pylist(),
            strict=True,
        )
    ]
    return pa.concat_tables(list(_read_tables(fs, files, columns)))


def read_features(
    uri: str,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    config_digest: str | None = None,
    grid: Sequence[int] | None = None,
) -> Any:
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
        raise FileNotFoundError(
            f"no committed feature runs under {uri} (method={method}, "
            f"config_digest={config_digest}, grid={grid})"
        )
    items = [
        {
            "path": owned.path,
            "leave_out": sorted(owned.leave_out),
            "size": owned.size,
            "ids": list(owned.ids or ()),
        }
        for owned in files
    ]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_committed_files,  # type: ignore[arg-type]  # Ray's stubs omit fn_kwargs' args
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "uri": uri,
            "storage_options": storage_options,
            "columns": list(columns) if columns else None,
        },
    )


def feature_grids(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    config_digest: str | None = None,
) -> dict[tuple[int, int], int]:
    """Rows per token grid (h, w) of the committed rows, grids in order of first appearance."""
    runs = select_runs(uri, storage_options, method=method, config_digest=config_digest)
    return run_grids(uri, runs, storage_options)


def run_grids(
    uri: str, runs: Sequence[CommittedRun], storage_options: dict[str, Any] | None = None
) -> dict[tuple[int, int], int]:
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

    def __init__(
        self,
        uri: str,
        tensors: Sequence[str] = ("raw", "clean"),
        storage_options: dict[str, Any] | None = None,
        *,
        config_digest: str | None = None,
    ) -> None:
        digest = config_digest or newest_config_digest(uri, storage_options)
        groups = read_feature_groups(
            uri, ["image_id", *tensors], storage_options, config_digest=digest
        )
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
