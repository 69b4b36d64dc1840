"""The commit protocol without a pipeline: records visible as they land, seals, one copy of each
image for every reader, orphans listed and removed without touching committed data. On local
disk and on moto's S3 server."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from pipeline.store import (
    DamagedFile,
    RunMeta,
    column_to_numpy,
    committed_ids,
    committed_runs,
    feature_table,
    orphaned_files,
    read_features_table,
)
from pipeline.store.format import table_bytes
from pipeline.store.fs import filesystem, put_atomic
from pipeline.store.gc import remove_files
from pipeline.store.layout import COMMITS_DIR, run_folder
from pipeline.store.readers import IdSet
from pipeline.store.runs import (
    CommitRecord,
    FileEntry,
    commit_run,
    manifest_from_records,
    seal_dead_runs,
    write_commit_record,
    write_run_config,
)

GRID, CHANNELS = (2, 2), 4


def image_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _part(ids: list[str], value: float) -> pa.Table:
    n = len(ids)
    maps = [np.full((*GRID, CHANNELS), value, np.float32) for _ in ids]
    meta = RunMeta(model="m", weights_digest="w", layer=11, config_digest="c", method="dvt-fit")
    return feature_table(
        meta,
        "0",
        image_ids=ids,
        source_uris=[f"file:///{i[:6]}.jpg" for i in ids],
        widths=[8] * n,
        heights=[8] * n,
        metrics=[{"r2": 0.9}] * n,
        raw=maps,
        clean=maps,
    )


class Run:
    """A run as the Ray layer drives it: config first, then parts and records task by task."""

    def __init__(self, uri: str, options: dict, run_id: str, digest: str = "c") -> None:
        self.uri, self.options, self.run_id, self.digest = uri, options, run_id, digest
        self.fs, root = filesystem(uri, options)
        self.path = run_folder(root, run_id)
        write_run_config(
            self.fs,
            self.path,
            {
                "run_id": run_id,
                "meta": {"config_digest": digest, "method": "dvt-fit", "model": "m"},
            },
        )

    def part(self, task: int, ids: list[str], value: float = 0.0, record: bool = True) -> str:
        data, digest = table_bytes(_part(ids, value))
        name = f"part-{task:05d}-{digest[:16]}.parquet"
        put_atomic(self.fs, posixpath.join(self.path, name), data)
        if record:
            write_commit_record(
                self.fs,
                self.path,
                CommitRecord(task, (FileEntry(name, len(ids), digest, tuple(ids), len(data)),)),
            )
        return name

    def commit(self) -> None:
        from pipeline.store.runs import read_commit_records

        records = [r for _, r in read_commit_records(self.fs, self.path)]
        commit_run(
            self.fs,
            self.path,
            manifest_from_records(self.run_id, self.digest, RunMeta(), records, {"done": 0}),
        )


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[str, dict]]:
    if request.param == "local":
        yield str(tmp_path / "out"), {}
        return
    import s3fs

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"proto-{tmp_path.name.lower().replace('_', '-')[-20:]}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
    yield f"s3://{bucket}/out", {"endpoint_url": endpoint}


def _ids(uri: str, options: dict) -> list[str]:
    return read_features_table(uri, ["image_id"], options)["image_id"].to_pylist()


def test_work_is_visible_as_it_lands_and_a_seal_fixes_it(output: tuple[str, dict]) -> None:
    uri, options = output
    a, b, c, d = (image_id(n) for n in "abcd")
    dead = Run(uri, options, "20260101T000000Z-c-000001")
    dead.part(0, [a, b])
    assert committed_ids(uri, "c", options) == {a, b}  # no marker yet: the record counts
    assert [r.state for r in committed_runs(uri, options)] == ["open"]
    stray = dead.part(1, [c], record=False)  # the task died before its record
    assert sorted(_ids(uri, options)) == sorted([a, b])

    # the next run takes the lease over: the dead run is sealed with what it had
    assert seal_dead_runs(uri, options, "20260102T000000Z-c-000002") == [dead.run_id]
    assert seal_dead_runs(uri, options, "20260102T000000Z-c-000002") == []  # once
    late = dead.part(2, [d])  # the dead run's zombie writes on: never read
    assert [r.state for r in committed_runs(uri, options)] == ["sealed"]
    assert committed_ids(uri, "c", options) == {a, b}

    rerun = Run(uri, options, "20260102T000000Z-c-000002")
    rerun.part(0, [c, d])
    rerun.commit()
    assert sorted(_ids(uri, options)) == sorted([a, b, c, d])

    # gc: exactly the files no manifest lists; removing them changes no reader's rows
    fs, _ = filesystem(uri, options)
    put_atomic(fs, posixpath.join(rerun.path, "part-00009-x.parquet.tmp-1234"), b"partial")
    orphans = sorted(posixpath.basename(p) for p in orphaned_files(uri, options))
    late_record = [
        p
        for p in fs.ls(posixpath.join(dead.path, COMMITS_DIR), detail=False)
        if posixpath.basename(p).startswith("00002-")
    ]
    assert orphans == sorted(
        [stray, late, posixpath.basename(late_record[0]), "part-00009-x.parquet.tmp-1234"]
    )
    before = read_features_table(uri, None, options)
    remove_files(uri, orphaned_files(uri, options), options)
    assert orphaned_files(uri, options) == []
    assert read_features_table(uri, None, options).equals(before)


def test_an_image_in_two_files_is_read_once(output: tuple[str, dict]) -> None:
    """Within a run (one image under two URIs) and across runs (a dead run and its re-run):
    the first copy is read; counts and tensors come from it."""
    uri, options = output
    a, b, c = (image_id(n) for n in "abc")
    first = Run(uri, options, "20260101T000000Z-c-000001")
    first.part(0, [a, b], value=1.0)
    first.part(1, [b, c], value=2.0)  # b again, from another task
    seal_dead_runs(uri, options, "20260102T000000Z-c-000002")
    second = Run(uri, options, "20260102T000000Z-c-000002")
    second.part(0, [a], value=3.0)  # a again, from the re-run
    second.commit()
    table = read_features_table(uri, ["image_id", "raw"], options)
    got = dict(
        zip(
            table["image_id"].to_pylist(),
            [float(r.flatten()[0]) for r in column_to_numpy(table["raw"])],
            strict=True,
        )
    )
    assert len(table) == 3 and got == {a: 1.0, b: 1.0, c: 2.0}
    just_ids = read_features_table(uri, ["raw"], options)
    assert just_ids.column_names == ["raw"] and len(just_ids) == 3


@pytest.mark.usefixtures("local_ray")
def test_the_ray_reader_reads_each_image_once(tmp_path) -> None:
    from pipeline.store import read_features

    uri = str(tmp_path / "out")
    a, b = image_id("a"), image_id("b")
    run = Run(uri, {}, "20260101T000000Z-c-000001")
    run.part(0, [a], value=1.0)
    run.part(1, [a, b], value=2.0)
    rows = read_features(uri, ["image_id", "raw"]).take_all()
    assert sorted(r["image_id"] for r in rows) == sorted([a, b])
    assert {r["image_id"]: float(np.asarray(r["raw"]).flatten()[0]) for r in rows}[a] == 1.0
    assert list(read_features(uri, ["raw"]).take_all()[0]) == ["raw"]


def test_id_set_is_exact_and_small() -> None:
    ids = [image_id(str(i)) for i in range(1000)]
    held = IdSet(ids[:500])
    assert len(held) == 500 and held.nbytes == 500 * 32
    assert all(i in held for i in ids[:500]) and not any(i in held for i in ids[500:])
    assert "not-an-id" not in held and image_id("x") not in IdSet()
    assert "odd" in IdSet(["odd", image_id("y")]) and len(IdSet(["odd"])) == 1


def test_gc_seals_dead_runs_and_removes_only_orphans(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.store.gc import gc_output
    from pipeline.store.lease import LeaseHeld, OutputLease

    uri = str(tmp_path / "out")
    a, b = image_id("a"), image_id("b")
    dead = Run(uri, {}, "20260101T000000Z-c-000001")
    dead.part(0, [a, b])
    stray = dead.part(1, [image_id("c")], record=False)
    # a run is going: gc leaves everything alone
    with OutputLease(uri, "a-live-run", 60.0), pytest.raises(LeaseHeld):
        gc_output(uri)
    listed = gc_output(uri)
    assert listed.sealed == [dead.run_id] and not listed.removed
    assert [posixpath.basename(p) for p in listed.orphans] == [stray]
    assert (Path(dead.path) / stray).exists()  # listing removes nothing
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "jobs" / "gc_output.py"), "--output", uri, "--delete"],
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
    )
    assert done.stdout.splitlines()[0].endswith(stray) and '"removed": true' in done.stdout
    assert not (Path(dead.path) / stray).exists()
    assert sorted(_ids(uri, {})) == sorted([a, b]) and gc_output(uri).orphans == []


def test_damaged_files_are_named_and_other_runs_stay_readable(
    output: tuple[str, dict], caplog: pytest.LogCaptureFixture
) -> None:
    """A zero-byte commit record or manifest (what a power loss can leave), a part cut short
    or rewritten by someone else, and a stray file under runs/: every error names the file,
    and the runs they do not touch read as before (before: JSONDecodeError naming no file,
    silent reads of rewritten parts, every reader broken by a .DS_Store)."""
    uri, options = output
    a, b, c, d, e = (image_id(n) for n in "abcde")
    committed = Run(uri, options, "20260101T000000Z-c-000001")
    committed.part(0, [a])
    committed.part(1, [b])
    committed.commit()
    other = Run(uri, options, "20260102T000000Z-x-000002", digest="x")
    damaged_part = other.part(0, [c])
    other.commit()
    going = Run(uri, options, "20260103T000000Z-c-000003")
    going.part(0, [d])
    going.part(1, [e])
    fs = committed.fs
    fs.pipe_file(posixpath.join(posixpath.dirname(committed.path), ".DS_Store"), b"\0\0")
    record = sorted(fs.ls(posixpath.join(going.path, COMMITS_DIR), detail=False))[1]
    fs.pipe_file(record, b"")  # task 1's record of the open run, zeroed
    manifest = posixpath.join(committed.path, "_manifest.json")
    fs.pipe_file(manifest, b"")  # the committed run's manifest, zeroed

    with caplog.at_level("WARNING"):
        ids = sorted(
            read_features_table(uri, ["image_id"], options, config_digest="c")[
                "image_id"
            ].to_pylist()
        )
    assert ids == sorted([a, b, d])  # the manifest rebuilt from its records; e's record lost
    assert posixpath.basename(record) in caplog.text and "_manifest.json" in caplog.text
    assert next(r.damaged for r in committed_runs(uri, options)).endswith("_manifest.json")

    part = posixpath.join(other.path, damaged_part)
    data = fs.cat_file(part)
    fs.pipe_file(part, data[: len(data) // 2])  # cut short
    with pytest.raises(DamagedFile, match=damaged_part):
        read_features_table(uri, ["image_id"], options, config_digest="x")
    fs.pipe_file(part, table_bytes(_part([c, c], 1.0))[0])  # rewritten: changed values, id twice
    with pytest.raises(DamagedFile, match=damaged_part):
        read_features_table(uri, None, options, config_digest="x")
    assert sorted(_ids_of(uri, options, "c")) == sorted([a, b, d])  # the other runs still read

    with caplog.at_level("WARNING"):  # gc neither crashes nor touches the damaged run
        orphans = orphaned_files(uri, options)
    assert not any(p.startswith(committed.path) for p in orphans)
    assert "gc leaves run" in caplog.text


def _ids_of(uri: str, options: dict, digest: str) -> list[str]:
    return read_features_table(uri, ["image_id"], options, config_digest=digest)[
        "image_id"
    ].to_pylist()


def test_local_writes_are_flushed_to_disk_before_they_count(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put_atomic flushes the temp file before the rename and the folder after it, so a power
    loss leaves the old file or the new one whole, never a zero-byte record."""
    import os

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    fs, root = filesystem(str(tmp_path / "out"))
    put_atomic(fs, posixpath.join(root, "runs", "r", "_commits", "00000-x.json"), b"{}")
    assert len(synced) == 2  # the file's bytes, then the folder's entry
    assert (tmp_path / "out" / "runs" / "r" / "_commits" / "00000-x.json").read_bytes() == b"{}"
