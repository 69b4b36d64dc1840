"""`ray job submit` of clean_dataset against a local head on 127.0.0.1, ended by its PID."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.distributed.submission import submission_id
from pipeline.store import committed_runs, read_features_table

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _readme_submit_command() -> str:
    """The ``ray job submit`` of clean_dataset against a local head in docs/operations.md,
    joined."""
    from test_readme import readme_commands

    (command,) = [
        c
        for c in readme_commands((ROOT / "docs" / "operations.md").read_text())
        if c.startswith("ray job submit --runtime-env")
        and "jobs/clean_dataset.py" in c
        and "$PWD" in c
    ]
    return command


def test_ray_job_submit_quickstart(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """The command of docs/operations.md as written (run by bash in a checkout-like folder, with
    RAY_ADDRESS exported as the page says), shortened by ``--job smoke``; then the same run
    under a submission id, and Ray refusing that id a second time."""
    for name in ("jobs", "conf", "pipeline", "pyproject.toml"):
        (tmp_path / name).symlink_to(ROOT / name)
    src, out = tmp_path / "photos", tmp_path / "features"
    src.mkdir()
    for name, photo in photos.items():
        buf = io.BytesIO()
        Image.fromarray(photo).resize((128, 96)).save(buf, format="JPEG")
        (src / f"{name}.jpg").write_bytes(buf.getvalue())
    ray_bin = str(Path(sys.executable).with_name("ray"))
    gcs_port, dash_port = _free_port(), _free_port()
    temp_dir = f"/tmp/dvt-head-{os.getpid()}"
    env = dict(
        os.environ,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as activated
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            "--num-cpus=8",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            # free ports: another Ray (the session's local one) may hold the default ones
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                assert time.time() < deadline, "the dashboard did not come up"
                time.sleep(1)
        env["RAY_ADDRESS"] = address
        readme = f"{_readme_submit_command()} --job smoke"
        for _attempt in range(30):  # the job agent can come up after the dashboard
            submit = subprocess.run(
                ["bash", "-c", readme],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                cwd=tmp_path,
            )
            if "No available agent" not in submit.stdout + submit.stderr:
                break
            time.sleep(2)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout, submit.stdout[-3000:]
        job_args = ["--job", "smoke", "--input", str(src), "--output", str(out)]
        sub_id = submission_id("clean_dataset", str(src), str(out), job_args, "hourly")
        command = [
            ray_bin,
            "job",
            "submit",
            "--runtime-env",
            "conf/runtime_env.yaml",
            f"--submission-id={sub_id}",
            "--",
            "python",
            "jobs/clean_dataset.py",
            *job_args,
        ]
        first = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        assert first.returncode == 0 and "succeeded" in first.stdout, first.stdout[-3000:]
        # the same run in the same slot again: Ray refuses the duplicate submission id
        again = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert again.returncode != 0 and "already exists" in again.stdout + again.stderr, (
            again.stdout[-2000:] + again.stderr[-2000:]
        )
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its own cluster
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
    first_run, refresh = committed_runs(str(out))
    assert first_run.manifest.summary["done"] == 3
    assert refresh.manifest.summary["skipped_committed"] == 3  # the submitted refresh
    assert read_features_table(str(out)).num_rows == 3
