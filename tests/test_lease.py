"""The output lease on a local folder and on a real S3 API: exclusive, stale takeover, fencing."""

from __future__ import annotations

import posixpath
import time
from pathlib import Path

import pytest

from pipeline.store.lease import LeaseHeld, LeaseLost, OutputLease


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict]:
    if request.param == "local":
        return str(tmp_path / "out"), {}
    import s3fs

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lease-{time.time_ns()}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
    return f"s3://{bucket}/out", {"endpoint_url": endpoint}


def test_exclusive_then_released(location: tuple[str, dict]) -> None:
    uri, options = location
    first = OutputLease(uri, "run-a", 60, options)
    first.acquire()
    with pytest.raises(LeaseHeld, match="run-a"):
        OutputLease(uri, "run-b", 60, options).acquire()
    first.check()
    first.release()
    with OutputLease(uri, "run-c", 60, options) as third:
        assert third.generation == 2


def test_racing_for_the_same_generation(location: tuple[str, dict]) -> None:
    uri, options = location
    winner = OutputLease(uri, "run-a", 60, options)
    winner.acquire()
    loser = OutputLease(uri, "run-b", 60, options)
    loser.generation = winner.generation  # it read the same latest generation
    with pytest.raises(FileExistsError):
        loser._write("xb")
    winner.release()


def test_stale_lease_is_taken_over_and_the_old_holder_cannot_commit(
        location: tuple[str, dict]) -> None:
    uri, options = location
    crashed = OutputLease(uri, "run-a", 1.0, options)
    crashed.acquire()
    crashed._stop.set()  # the holder stops renewing, as if its driver died
    time.sleep(1.5)
    with OutputLease(uri, "run-b", 60, options) as taker:
        assert taker.generation == 2
        with pytest.raises(LeaseLost):
            crashed.check()


def test_checks_while_the_lease_is_renewed(location: tuple[str, dict]) -> None:
    """The holder checks its lease (as the commit does) while its renewer rewrites the file
    every 50 ms: a check never reads a half-written file or a stale listing's version."""
    uri, options = location
    with OutputLease(uri, "run-a", 0.15, options) as lease:
        renewed_at = lease._latest()
        deadline = time.time() + 3
        checks = 0
        while time.time() < deadline:
            lease.check()
            checks += 1
        latest = lease._latest()
        assert latest is not None and renewed_at is not None
        assert latest.expires > renewed_at.expires  # the renewer ran meanwhile
        lease.fs.pipe_file(lease._path(lease.generation) + ".tmp-0badc0de", b"{")  # a crash's
    assert checks > 10
    lease.fs.invalidate_cache(lease.folder)
    left = [posixpath.basename(p) for p in lease.fs.ls(lease.folder, detail=False)]
    assert left == [f"lease-{lease.generation:08d}.json"]  # release leaves no temp file
