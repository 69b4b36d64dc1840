"""Operating the jobs: overlapping refreshes, no credentials in any output, the cluster config."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from pipeline.store import committed_runs, read_features_table
from pipeline.store.lease import EXIT_LEASE_HELD

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, photos: dict[str, np.ndarray], count: int) -> None:
    folder.mkdir(parents=True)
    base = list(photos.values())
    for i in range(count):
        buf = io.BytesIO()
        crop = np.ascontiguousarray(base[i % len(base)][3 * i :, 3 * i :])
        Image.fromarray(crop).resize((128, 96)).save(buf, format="JPEG")
        (folder / f"img{i:02d}.jpg").write_bytes(buf.getvalue())


def _job(src: str, out: str, tag: str, env: dict[str, str], *extra: str) -> subprocess.Popen:
    env = dict(env, DVT_RAY_TMP=f"/tmp/dvt-op-{tag}-{os.getpid()}")
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "jobs" / "clean_dataset.py"),
            "--job",
            "smoke",
            "--input",
            src,
            "--output",
            out,
            "engine.fit.steps=40",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _watch_listeners(pids: list[int], seen: set[str], stop: threading.Event) -> None:
    """Addresses on which the jobs and every process they start listen."""
    while not stop.is_set():
        for pid in pids:
            try:
                procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    seen.update(
                        c.laddr.ip
                        for c in proc.net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN
                    )
                except psutil.Error:
                    continue
        time.sleep(0.5)


def test_two_concurrent_refreshes_commit_each_image_once(
    tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, photos, 6)
    jobs = [_job(str(src), str(out), tag, dict(os.environ)) for tag in ("a", "b")]
    listening: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_listeners, args=([j.pid for j in jobs], listening, stop), daemon=True
    )
    watcher.start()
    results = [(job.wait(timeout=400), *job.communicate()) for job in jobs]
    stop.set()
    watcher.join()
    assert listening and not listening & {"0.0.0.0", "::"}, listening  # loopback only
    codes = sorted(code for code, _, _ in results)
    assert all(code in (0, EXIT_LEASE_HELD) for code in codes), results
    held = [err for code, _, err in results if code == EXIT_LEASE_HELD]
    assert all("leased by run" in err or "same moment" in err for err in held)
    ids = read_features_table(str(out), ["image_id"])["image_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 6  # every image once, whatever the interleaving
    assert sum(run.manifest.summary["done"] for run in committed_runs(str(out))) == 6


FAKE_KEY_ID = "AKIAFAKELEAKCHECK7Q3Z"
FAKE_SECRET = "fAkE/SeCrEt+LeakCheck0123456789abcdefXYZ"


def test_no_credentials_in_logs_config_or_parquet(
    tmp_path: Path, photos: dict[str, np.ndarray], s3_endpoint: str
) -> None:
    import s3fs

    env = dict(os.environ, AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=FAKE_KEY_ID, secret=FAKE_SECRET)
    fs.mkdir("leak-in")
    fs.mkdir("leak-out")
    local = tmp_path / "in"
    _images(local, photos, 3)
    for path in local.iterdir():
        fs.pipe(f"leak-in/photos/{path.name}", path.read_bytes())
    # a user who also puts the keys into the job's storage options
    options = f"{{endpoint_url: '{s3_endpoint}', key: '{FAKE_KEY_ID}', secret: '{FAKE_SECRET}'}}"
    job = _job(
        "s3://leak-in/photos",
        "s3://leak-out/dvt",
        "leak",
        env,
        f"input.storage_options={options}",
        f"output.storage_options={options}",
    )
    code = job.wait(timeout=400)
    stdout, stderr = job.communicate()
    assert code == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["done"] == 3

    texts = {"stdout": stdout, "stderr": stderr}
    for path in fs.find("leak-out/dvt"):  # config, summary, manifest, Parquet bytes, lease
        texts[path] = fs.cat(path).decode("latin-1")
    ray_logs = Path(f"/tmp/dvt-op-leak-{os.getpid()}")
    for path in ray_logs.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ".json"):
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 8 and any(p.endswith(".parquet") for p in texts)
    for name, text in texts.items():
        for secret in (FAKE_KEY_ID, FAKE_SECRET):
            assert secret not in text, f"credential found in {name}"
    saved = json.loads(next(v for k, v in texts.items() if k.endswith("config.json")))
    assert saved["job"]["input"]["storage_options"]["secret"] == "***"
