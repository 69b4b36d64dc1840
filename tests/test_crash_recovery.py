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

from pipeline.job_config import resolve_clean_job
from pipeline.lease import LEASES_DIR
from pipeline.ray_clean import run_clean_job
from pipeline.schema import COMMITTED, RUNS_DIR, committed_ids, read_features_table

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _make_inputs(folder: Path, photos: dict[str, np.ndarray], count: int) -> set[str]:
    """``count`` distinct small JPEGs; returns their ids (sha256 of the bytes)."""
    import hashlib

    folder.mkdir(parents=True)
    ids = set()
    base = list(photos.values())
    for i in range(count):
        crop = base[i % len(base)][2 * i:, 2 * i:]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(crop)).resize((128, 96)).save(buf, format="JPEG")
        (folder / f"img{i:02d}.jpg").write_bytes(buf.getvalue())
        ids.add(hashlib.sha256(buf.getvalue()).hexdigest())
    return ids


def _overrides(src: Path, out: Path) -> list[str]:
    # one image per read block, per fit and per file, so parts land one by one while the
    # job runs; a short lease, so that the killed driver's lease goes stale within the test
    return [f"input.uri={src}", f"output.uri={out}", "engine.images_per_fit=1",
            "engine.fit.steps=150", "output.target_file_mb=0", "output.lease_ttl_s=3",
            "compute.read_batch_size=1"]


@pytest.mark.usefixtures("local_ray")
def test_driver_killed_before_commit_then_rerun(tmp_path: Path,
                                                photos: dict[str, np.ndarray]) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    ids = _make_inputs(src, photos, 12)  # parts of the first images land seconds before the last
    env = dict(os.environ, DVT_RAY_TMP=str(Path("/tmp") / f"dvt-kill-{os.getpid()}"))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "clean_dataset.py"), "--job", "smoke",
         *_overrides(src, out)],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(out.glob(f"{RUNS_DIR}/*/part-*.parquet")):
            assert proc.poll() is None, "the job ended before writing any part"
            time.sleep(0.05)
        assert list(out.glob(f"{RUNS_DIR}/*/part-*.parquet")), "no part written in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    (crashed,) = list((out / RUNS_DIR).iterdir())
    assert not (crashed / COMMITTED).exists()
    assert committed_ids(str(out)) == set()  # parts of an uncommitted run are never read
    with pytest.raises(FileNotFoundError):
        read_features_table(str(out))
    (lease,) = [p for p in (out / LEASES_DIR).iterdir()]
    assert not json.loads(lease.read_text())["released"]  # the dead driver's lease ...
    time.sleep(3.5)  # ... goes stale, and the re-run takes over
    summary = run_clean_job(resolve_clean_job("smoke", _overrides(src, out)))
    got = read_features_table(str(out), ["image_id"])["image_id"].to_pylist()
    assert sorted(got) == sorted(ids) and summary["done"] == len(ids)


def _kill_clean_actor_once(stop: threading.Event, killed: list[int]) -> None:
    """Wait for a busy cleaning actor, then SIGKILL it (Ray restarts it, retries its batch).

    Only this test session's Ray is searched (descendants of this process): other Ray jobs on
    the machine are left alone.
    """
    while not stop.is_set() and not killed:
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(proc.cmdline())
                if ("CleanImages" in cmd and "MapWorker" in cmd
                        and proc.cpu_percent(interval=0.5) > 20):  # mid-fit, not idle
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
