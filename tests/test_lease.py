"""The output lease on a local folder and on a real S3 API: exclusive, stale takeover, fencing."""

from __future__ import annotations

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
