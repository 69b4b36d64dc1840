"""Crashes at any point, then a re-run: every good input is committed exactly once."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from pipeline.distributed.clean import run_clean_job
from pipeline.job_config import resolve_clean_job
from pipeline.store import committed_ids, read_features_table
from pipeline.store.layout import RUNS_DIR

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _make_inputs(folder: Path, photos: dict[str, np.ndarray], count: int) -> set[str]:
    """``count`` distinct small JPEGs; returns their ids (sha256 of the bytes)."""
    import hashlib

    folder.mkdir(parents=True)
    ids = set()
    base = list(photos.values())
    for i in range(count):
        crop = base[i % len(base)][2 * i :, 2 * i :]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(crop)).resize((128, 96)).save(buf, format="JPEG")
        (folder / f"img{i:02d}.jpg").write_bytes(buf.getvalue())
        ids.add(hashlib.sha256(buf.getvalue()).hexdigest())
    return ids


def _overrides(src: str, out: str) -> list[str]:
    # one image per read block, per fit and per file, so parts land one by one while the
    # job runs; a short lease, so that the killed driver's lease goes stale within the test
    return [
        f"input.uri={src}",
        f"output.uri={out}",
        "engine.images_per_fit=1",
        "engine.fit.steps=60",
        "engine.views.num_views=6",
        "output.target_file_mb=0",
        "output.lease_ttl_s=3",
        "compute.read_batch_size=1",
    ]


def _run_ids_of(fs, root: str) -> set[str]:
    fs.invalidate_cache()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{RUNS_DIR}", detail=False)}


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """(output URI, storage options): a local folder, or a bucket on moto's S3 server."""
    if request.param == "local":
        return str(tmp_path / "out"), {}
    import s3fs

    endpoint = request.getfixturevalue("s3_endpoint")
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("crash-out")
    return "s3://crash-out/dvt", {"endpoint_url": endpoint}


@pytest.mark.usefixtures("local_ray")
def test_driver_killed_at_several_points_keeps_its_work(
    tmp_path: Path, photos: dict[str, np.ndarray], storage: tuple[str, dict[str, str]]
) -> None:
    """The driver is killed when about a third and two thirds of the images are committed
    (local disk; on S3 at half). Every run fits only what no earlier run committed, a killed run
    loses at most the images in flight, and the union is every input exactly once."""
    from pipeline.store import committed_runs
    from pipeline.store.fs import filesystem

    out, options = storage
    src = tmp_path / "in"
    ids = _make_inputs(src, photos, 8)
    extra = [f"output.storage_options={json.dumps(options)}"] if options else []
    fs, root = filesystem(out, options)
    env = dict(os.environ, DVT_RAY_TMP=str(Path("/tmp") / f"dvt-kill-{os.getpid()}"))
    visible: set[str] = set()
    fitted_by_run: dict[str, set[str]] = {}
    for fraction in (0.34, 0.67) if not options else (0.5,):
        before = _run_ids_of(fs, root) if fs.exists(f"{root}/{RUNS_DIR}") else set()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "jobs" / "clean_dataset.py"),
                "--job",
                "smoke",
                *_overrides(str(src), out),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 240
            while time.time() < deadline:
                assert proc.poll() is None, "the job ended before the kill point"
                if len(committed_ids(out, storage_options=options)) >= fraction * len(ids):
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"{fraction:.0%} of the images were not committed in time")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
            proc.wait()
        # the dead driver's lease goes stale; a write task that was already storing its file
        # may still land its record meanwhile (it counts: durable as it lands)
        time.sleep(3.5)
        (run_id,) = _run_ids_of(fs, root) - before
        runs = {r.path.rsplit("/", 1)[-1]: r for r in committed_runs(out, options)}
        assert runs[run_id].state == "open"  # killed: no marker, its records count
        now = committed_ids(out, storage_options=options)
        fitted_by_run[run_id] = set(runs[run_id].image_ids)
        assert not fitted_by_run[run_id] & visible, "a run fitted an image already committed"
        assert visible <= now and now <= ids
        parts = fs.glob(f"{root}/{RUNS_DIR}/{run_id}/part-*.parquet")
        assert len(parts) - len(fitted_by_run[run_id]) <= 1  # lost: at most the one in flight
        visible = now

    summary = run_clean_job(resolve_clean_job("smoke", [*_overrides(str(src), out), *extra]))
    assert summary["done"] == len(ids) - len(visible)  # fits only what was not committed
    got = read_features_table(out, ["image_id"], options)["image_id"].to_pylist()
    assert sorted(got) == sorted(ids)  # every input, once
    states = [r.state for r in committed_runs(out, options)]
    assert states == ["sealed"] * len(fitted_by_run) + ["committed"]
    # a re-run of the finished output fits nothing
    assert (
        run_clean_job(resolve_clean_job("smoke", [*_overrides(str(src), out), *extra]))["done"] == 0
    )


def _kill_clean_actor_once(stop: threading.Event, killed: list[int]) -> None:
    """Wait for a busy cleaning actor, then SIGKILL it (Ray restarts it, retries its batch).

    Only this test session's Ray is searched (descendants of this process): other Ray jobs on
    the machine are left alone.
    """
    while not stop.is_set() and not killed:
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(proc.cmdline())
                if (
                    "CleanImages" in cmd
                    and "MapWorker" in cmd
                    and proc.cpu_percent(interval=0.5) > 20
                ):  # mid-fit, not idle
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
                    return
            except psutil.Error:
                pass
        time.sleep(0.2)


@pytest.mark.usefixtures("local_ray")
def test_actor_killed_mid_fit(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    ids = _make_inputs(src, photos, 5)
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_clean_actor_once, args=(stop, killed), daemon=True)
    watcher.start()
    try:
        summary = run_clean_job(resolve_clean_job("smoke", _overrides(src, out)))
    finally:
        stop.set()
        watcher.join()
    assert killed, "the cleaning actor was never seen busy"
    got = read_features_table(str(out), ["image_id"])["image_id"].to_pylist()
    assert sorted(got) == sorted(ids) and summary["done"] == len(ids)
    assert summary["commit_records"] >= len(ids)  # one file and record per image
