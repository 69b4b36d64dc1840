"""The output lease on a local folder and on a real S3 API: exclusive, whole files, staleness by
the store's clock, renewals that survive transient errors, takeover, fencing."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import posixpath
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import user_errors
from pipeline.store import lease as lease_module
from pipeline.store.fs import create_exclusive
from pipeline.store.lease import EXIT_LEASE_HELD, LeaseHeld, LeaseLost, OutputLease


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict]:
    if request.param == "local":
        return str(tmp_path / "out"), {}
    import s3fs

    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lease-{time.time_ns()}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
    return f"s3://{bucket}/out", {"endpoint_url": endpoint}


def _slack(options: dict) -> float:
    """S3 keeps modification times to the second: ages read there are off by up to 1 s."""
    return 1.5 if options else 0.3


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
    with pytest.raises(FileExistsError):  # a loser that read the same latest generation
        create_exclusive(winner.fs, winner._path(winner.generation), b"{}")
    assert winner._latest().owner == "run-a"  # the winner's file, untouched
    winner.release()


def test_stale_lease_is_taken_over_and_the_old_holder_cannot_commit(
    location: tuple[str, dict],
) -> None:
    uri, options = location
    crashed = OutputLease(uri, "run-a", 1.0, options)
    crashed.acquire()
    crashed._stop.set()  # the holder stops renewing, as if its driver died
    time.sleep(1.0 + _slack(options))
    with OutputLease(uri, "run-b", 60, options) as taker:
        assert taker.generation == 2
        with pytest.raises(LeaseLost):
            crashed.check()


def test_checks_while_the_lease_is_renewed(location: tuple[str, dict]) -> None:
    """The holder checks its lease (as the commit does) while its renewer rewrites the file
    every 50 ms: a check never reads a half-written file or a stale listing's version."""
    uri, options = location
    with OutputLease(uri, "run-a", 0.15, options) as lease:
        path = lease._path(lease.generation)
        first_written = lease.fs.modified(path)
        deadline = time.time() + 3
        checks = 0
        while time.time() < deadline:
            lease.check()
            checks += 1
        assert lease.fs.modified(path) > first_written  # the renewer ran meanwhile
        lease.fs.pipe_file(path + ".tmp-0badc0de", b"{")  # a crash's leftover
    assert checks > 10 and lease.lost is None
    lease.fs.invalidate_cache(lease.folder)
    left = [posixpath.basename(p) for p in lease.fs.ls(lease.folder, detail=False)]
    assert left == [f"lease-{lease.generation:08d}.json"]  # release leaves no temp file


def test_a_transient_error_in_a_renewal_does_not_lose_the_lease(
    location: tuple[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One renewal fails (the store answers 503): it is retried, the lease stays live past
    several TTLs, and another run still finds it held (before: the renewer gave up for good
    and the next refresh took a live run over)."""
    uri, options = location
    real_put = lease_module.put_atomic
    failures = []

    def flaky_put(fs, path, data):  # type: ignore[no-untyped-def]
        if path.endswith(".json") and not failures:
            failures.append(path)
            raise OSError(503, "Service Unavailable (injected)")
        return real_put(fs, path, data)

    monkeypatch.setattr(lease_module, "put_atomic", flaky_put)
    ttl = 2.0 + 2 * _slack(options)
    lost: list[str] = []
    with OutputLease(uri, "run-a", ttl, options, on_lost=lost.append) as holder:
        time.sleep(2.5 * ttl)
        assert failures, "the injected error never happened"
        with pytest.raises(LeaseHeld, match="run-a"):
            OutputLease(uri, "run-b", ttl, options).acquire()
        holder.check()
    assert not lost and holder.lost is None


def test_renewals_failing_for_most_of_the_ttl_lose_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store stays down, the holder counts its lease as lost (and its run stops)
    before a taker could see the file a whole TTL old."""

    def down(fs, path, data):  # type: ignore[no-untyped-def]
        raise OSError(503, "Service Unavailable (injected)")

    lost: list[str] = []
    holder = OutputLease(str(tmp_path / "out"), "run-a", 1.5, on_lost=lost.append)
    holder.acquire()
    monkeypatch.setattr(lease_module, "put_atomic", down)
    taken = time.monotonic()
    while not lost and time.monotonic() - taken < 5:
        time.sleep(0.05)
    assert lost and "could not renew" in lost[0]
    assert time.monotonic() - taken < 1.5  # before the TTL passed
    with pytest.raises(LeaseLost):
        holder.check()
    monkeypatch.undo()
    holder.release()


def test_the_holders_clock_plays_no_part(
    location: tuple[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder whose clock runs 10 minutes behind keeps its lease: staleness is the file's age
    by the store's clock (before: ``expires`` written by the holder's clock was compared
    with the taker's, so a skew of 2/3 of the TTL let a refresh take a live run over)."""
    uri, options = location
    monkeypatch.setattr(lease_module.time, "time", lambda: time.monotonic() - 600)
    holder = OutputLease(uri, "run-a", 60, options)
    holder.acquire()
    monkeypatch.undo()
    with pytest.raises(LeaseHeld, match="run-a"):
        OutputLease(uri, "run-b", 60, options).acquire()
    holder.release()


def test_an_unparsable_lease_is_held_until_it_is_a_ttl_old(location: tuple[str, dict]) -> None:
    """An empty or cut-short lease file (a crash in the moment of writing, a power loss) blocks
    takeover for one TTL, then is taken over: it never blocks the output for good."""
    uri, options = location
    probe = OutputLease(uri, "probe", 1.0, options)
    probe.fs.makedirs(probe.folder, exist_ok=True)
    probe.fs.pipe_file(probe._path(1), b"")
    with pytest.raises(LeaseHeld, match="cannot be parsed"):
        OutputLease(uri, "run-a", 1.0, options).acquire()
    time.sleep(1.0 + _slack(options))
    with OutputLease(uri, "run-b", 1.0, options) as taker:
        assert taker.generation == 2


def _race(uri: str, owner: str, start: object, done: object, log: str, delay: float) -> None:
    """One racer in a child process: what a job does with the lease, exit code included."""
    with open(log, "w") as sink, contextlib.redirect_stderr(sink), user_errors():
        os.dup2(sink.fileno(), 2)
        start.wait()  # type: ignore[attr-defined]
        time.sleep(delay)  # starts a little apart, so some losers look while the winner writes
        with OutputLease(uri, owner, 60):
            done.wait(10)  # type: ignore[attr-defined]  # hold it until the loser is done
    os._exit(0)


def test_two_processes_racing_200_times_one_wins_the_other_exits_75(tmp_path: Path) -> None:
    """Two processes start together 200 times on a fresh local output: each time one takes the
    lease and the other exits 75 with one line, never a traceback (before: the file was
    created empty and written afterwards, and a loser could read it empty)."""
    ctx = multiprocessing.get_context("fork")
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(200):
        uri = str(tmp_path / f"out{i}")
        start, done = ctx.Barrier(2), ctx.Event()
        logs = [str(tmp_path / f"race{i}-{n}.log") for n in range(2)]
        delays = rng.uniform(0, 0.0005, 2)
        racers = [
            ctx.Process(target=_race, args=(uri, f"run-{n}", start, done, logs[n], delays[n]))
            for n in range(2)
        ]
        for racer in racers:
            racer.start()
        deadline = time.monotonic() + 10
        while all(r.is_alive() for r in racers) and time.monotonic() < deadline:
            time.sleep(0.002)  # the loser ends first
        done.set()
        for racer in racers:
            racer.join(30)
        codes = sorted(r.exitcode for r in racers)
        text = [Path(log).read_text() for log in logs]
        outcomes.append(codes)
        assert codes == [0, EXIT_LEASE_HELD], (i, codes, text)
        assert not any("Traceback" in t for t in text), text
        (line,) = [t for t in text if t.strip()]
        assert line.startswith("lease held:") and line.count("\n") == 1, line
    assert len(outcomes) == 200


def _take_and_release(uri: str, times: int) -> None:
    for n in range(times):
        with OutputLease(uri, f"run-{n}", 60):
            pass


def test_a_reader_never_sees_a_lease_file_empty(tmp_path: Path) -> None:
    """While one process takes and releases the lease 300 times, a reader polling the lease
    folder sees each file whole or not at all (before: created empty, then written)."""
    uri = str(tmp_path / "out")
    folder = tmp_path / "out" / "_leases"
    folder.mkdir(parents=True)
    writer = multiprocessing.get_context("fork").Process(target=_take_and_release, args=(uri, 300))
    writer.start()
    sizes = []
    while writer.is_alive():
        for name in os.listdir(folder):
            if lease_module._NAME.fullmatch(name):  # a lease file, not a temp file
                with contextlib.suppress(FileNotFoundError):
                    sizes.append(len((folder / name).read_bytes()))
    writer.join()
    assert writer.exitcode == 0
    assert len(sizes) > 300 and min(sizes) > 0, (len(sizes), sizes.count(0))
