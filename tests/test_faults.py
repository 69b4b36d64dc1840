"""Inputs that kill or hang a worker, and inputs over the caps: each is quarantined with its
reason while the rest commit, and the run finishes (nothing is retried forever).

The faults are real process deaths: ``tests/faults/sitecustomize.py``, on PYTHONPATH, makes
the decoder or the cleaning actor kill itself (SIGKILL) on marked inputs, as a codec or a
kernel with a bug would."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.models.decoder_process import CRASHED, DecoderProcess
from pipeline.store import read_features_table, read_quarantine_table

ROOT = Path(__file__).resolve().parents[1]
FAULTS = Path(__file__).resolve().parent / "faults"
sys.path.insert(0, str(FAULTS))
from sitecustomize import HANG_THE_DECODER, KILL_THE_CLEANER, KILL_THE_DECODER  # noqa: E402

sys.path.remove(str(FAULTS))


RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(.*? pid=\d+(, ip=[^)]*)?\)")
"""The prefix of a line Ray forwards from a worker's output, e.g. ``(MapWorker(...) pid=7)``:
it can arrive after the driver's own last line."""


def _last_own_line(stderr: str) -> str:
    """The driver's last line of ``stderr``, skipping lines forwarded from Ray's workers."""
    return [line for line in stderr.strip().splitlines() if not RAY_FORWARDED.match(line)][-1]


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_header(side: int) -> bytes:
    """A PNG whose header claims side x side pixels, with a few bytes of pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p),
    )


def test_the_decoder_process_sets_aside_what_kills_or_hangs_it(
    photos: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    good = _jpeg(np.asarray(Image.fromarray(photos["chelsea"]).resize((64, 48))))
    decoder = DecoderProcess(max_pixels=10**8, min_side=14, timeout_s=5)
    batch = [good, good + KILL_THE_DECODER, good, good + HANG_THE_DECODER, good, b"text"]
    out = decoder.decode(batch)
    assert [d.ok for d in out] == [True, False, True, False, True, False]
    assert out[1].reason.startswith(CRASHED) and "SIGKILL" in out[1].reason
    assert out[3].reason.startswith(CRASHED) and "longer than 5 s" in out[3].reason
    assert out[5].error_class == "ValueError"  # an ordinary error is the image's own
    assert all((d.height, d.width) == (48, 64) for d in out[::2])
    assert np.array_equal(
        np.frombuffer(out[0].pixels, np.uint8).reshape(48, 64, 3),
        np.asarray(Image.open(io.BytesIO(good)).convert("RGB")),
    )
    decoder.close()


@pytest.mark.slow
def test_poison_inputs_are_quarantined_and_the_run_finishes(
    tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    """One input kills the reader's decoder on every attempt, one kills the cleaning actor on
    every attempt, one is over the byte cap, one is a decompression bomb: each is quarantined
    with its reason and the rest commit (before: the killed worker was restarted and the batch
    retried forever, while the driver kept renewing its lease)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i, photo in enumerate(list(photos.values())[:3]):
        (src / f"good{i}.jpg").write_bytes(
            _jpeg(np.asarray(Image.fromarray(photo).resize((80 + 8 * i, 64))))
        )
    small = np.asarray(Image.fromarray(photos["coffee"]).resize((70, 56)))
    (src / "kills_decoder.jpg").write_bytes(_jpeg(small) + KILL_THE_DECODER)
    height, width = KILL_THE_CLEANER
    (src / "kills_cleaner.jpg").write_bytes(
        _jpeg(np.asarray(Image.fromarray(photos["astronaut"]).resize((width, height))))
    )
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    (src / "too_big.png").write_bytes(_png(noise))  # ~270 KB of noise
    (src / "bomb.png").write_bytes(_png_header(50_000))
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/clean_dataset.py",
            "--job",
            "smoke",
            "--input",
            str(src),
            "--output",
            str(out),
            "engine.fit.steps=10",
            "input.max_bytes=150000",
            "compute.max_task_retries=1",
        ],
        cwd=ROOT,
        env=dict(_env(), DVT_RAY_TMP=f"/tmp/dvt-faults-{os.getpid()}"),
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    bad = {Path(r["source_uri"]).name: r for r in read_quarantine_table(str(out)).to_pylist()}
    assert set(bad) == {"kills_decoder.jpg", "kills_cleaner.jpg", "too_big.png", "bomb.png"}
    assert bad["kills_decoder.jpg"]["reason"].startswith(CRASHED)
    assert bad["kills_decoder.jpg"]["stage"] == "decode"
    assert "crashed a worker" in bad["kills_cleaner.jpg"]["reason"]
    assert "input.max_bytes" in bad["too_big.png"]["reason"]
    assert bad["too_big.png"]["stage"] == "read"
    assert "bomb" in bad["bomb.png"]["reason"]
    names = {
        Path(u).name
        for u in read_features_table(str(out), ["source_uri"])["source_uri"].to_pylist()
    }
    assert names == {"good0.jpg", "good1.jpg", "good2.jpg"}
    assert summary["inputs"] == 7 == summary["done"] + summary["quarantined"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_a_run_that_loses_its_lease_stops_at_once(
    tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    """Another run takes the output over while a run is going (its lease was taken as stale,
    or by hand): the run stops its graph within a renewal period, commits nothing more, and
    exits 75 with one line that says so (before: it computed on until its commit check)."""
    from pipeline.store import committed_runs
    from pipeline.store.fs import create_exclusive
    from pipeline.store.lease import EXIT_LEASE_HELD, OutputLease

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    base = list(photos.values())
    for i in range(24):
        crop = np.ascontiguousarray(base[i % 3][4 * i :, 4 * i :])
        (src / f"img{i:02d}.jpg").write_bytes(
            _jpeg(np.asarray(Image.fromarray(crop).resize((96, 80))))
        )
    job = subprocess.Popen(
        [
            sys.executable,
            "jobs/clean_dataset.py",
            "--job",
            "smoke",
            "--input",
            str(src),
            "--output",
            str(out),
            "engine.fit.steps=400",
            "output.lease_ttl_s=6",
            "output.target_file_mb=0",
        ],  # a commit record for every few images
        cwd=ROOT,
        env=dict(os.environ, DVT_RAY_TMP=f"/tmp/dvt-lost-{os.getpid()}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not any(run.manifest.files for run in committed_runs(str(out))):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.5)  # the run is going: its first images are committed
        probe = OutputLease(str(out), "intruder", 60)
        latest = probe._latest()
        create_exclusive(
            probe.fs,
            probe._path(latest.generation + 1),
            json.dumps({"owner": "intruder", "ttl_s": 60}).encode(),
        )
        taken = time.monotonic()
        code = job.wait(timeout=120)
        stopped_after = time.monotonic() - taken
    finally:
        if job.poll() is None:
            job.kill()
    _stdout, stderr = job.communicate()
    assert code == EXIT_LEASE_HELD, stderr[-3000:]
    last = _last_own_line(stderr)
    assert last.startswith("error: lease lost:") and "intruder" in last, last
    assert "Traceback" not in stderr.split("lease lost")[-1]
    print(f"stopped {stopped_after:.1f} s after the takeover: {last}")
    assert stopped_after < 60, stopped_after  # a renewal period, then Ray's shutdown
    (run,) = committed_runs(str(out))
    assert run.state == "open" and len(run.image_ids) < 24  # stopped, and never committed


def _test_vit_weights(path: Path, shift: float) -> None:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    save_file({k: (v + shift).contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.mark.slow
def test_weights_replaced_during_a_run_stop_it_with_a_clear_error(tmp_path: Path) -> None:
    """The weights file is replaced after the driver computed the run's config digest from it:
    the actors refuse the other bytes, and the job ends with one line naming the file, exit
    code 2, and no committed run (before: the actors used the new file under the old
    digest)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 80, 3), np.uint8)).save(
            src / f"{i}.jpg"
        )
    weights, other = tmp_path / "vit.safetensors", tmp_path / "other.safetensors"
    _test_vit_weights(weights, 0.0)
    _test_vit_weights(other, 0.01)
    job = subprocess.Popen(
        [
            sys.executable,
            "jobs/clean_dataset.py",
            "--job",
            "smoke",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out"),
            f"model.weights={weights}",
            "engine.fit.steps=10",
        ],
        cwd=ROOT,
        env=dict(os.environ, DVT_RAY_TMP=f"/tmp/dvt-digest-{os.getpid()}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert job.stderr is not None
    seen = []
    for line in job.stderr:  # the driver logs the digest of what it loaded
        seen.append(line)
        if "loaded test_vit" in line:
            os.replace(other, weights)
            break
    _, rest = job.communicate(timeout=300)
    assert job.returncode == 2, "".join(seen) + rest[-3000:]
    last = _last_own_line(rest)
    assert last.startswith("error: the ViT weights at") and str(weights) in last, last
    from pipeline.store import committed_runs

    assert not [r for r in committed_runs(str(tmp_path / "out")) if r.state == "committed"]


def test_a_stage_refuses_an_artifact_model_that_changed(tmp_path: Path) -> None:
    from pipeline.engine_config import engine_preset
    from pipeline.models.artifact_model import ArtifactModel, write_artifact_model
    from pipeline.models.vit import load_extractor
    from pipeline.stages.features import CleanImages, LoadedOtherBytes

    vit = load_extractor("test_vit", weights="random", device="cpu")
    uri = str(tmp_path / "pattern.safetensors")
    pattern = np.zeros((7, 7, vit.embed_dim), np.float32)
    sha = write_artifact_model(
        uri, ArtifactModel("test_vit", vit.weights_digest, 112, pattern, 8, "test")
    )
    kwargs = {
        "model_name": "test_vit",
        "weights": "random",
        "engine": engine_preset("shift_smoke"),
        "dtype": "float16",
        "with_artifact": True,
        "artifact_model_uri": uri,
        "weights_digest": vit.weights_digest,
    }
    CleanImages(**kwargs, artifact_model_sha256=sha)  # the recorded bytes: accepted
    write_artifact_model(
        uri, ArtifactModel("test_vit", vit.weights_digest, 112, pattern + 1, 8, "test")
    )
    with pytest.raises(LoadedOtherBytes, match=r"artifact model at .*pattern\.safetensors"):
        CleanImages(**kwargs, artifact_model_sha256=sha)
