"""Inputs that kill or hang a worker, and inputs over the caps: each is quarantined with its
reason while the rest commit, and the run finishes (nothing is retried forever).

The faults are real process deaths: ``tests/faults/sitecustomize.py``, on PYTHONPATH, makes
the decoder or the cleaning actor kill itself (SIGKILL) on marked inputs, as a codec or a
kernel with a bug would."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.models.decoder_process import CRASHED, DecoderProcess
from pipeline.store.schema import read_features_table, read_quarantine_table

ROOT = Path(__file__).resolve().parents[1]
FAULTS = Path(__file__).resolve().parent / "faults"
sys.path.insert(0, str(FAULTS))
from sitecustomize import HANG_THE_DECODER, KILL_THE_CLEANER, KILL_THE_DECODER  # noqa: E402

sys.path.remove(str(FAULTS))


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_header(side: int) -> bytes:
    """A PNG whose header claims side x side pixels, with a few bytes of pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p))


def test_the_decoder_process_sets_aside_what_kills_or_hangs_it(
        photos: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert np.array_equal(np.frombuffer(out[0].pixels, np.uint8).reshape(48, 64, 3),
                          np.asarray(Image.open(io.BytesIO(good)).convert("RGB")))
    decoder.close()


@pytest.mark.slow
def test_poison_inputs_are_quarantined_and_the_run_finishes(
        tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """One input kills the reader's decoder on every attempt, one kills the cleaning actor on
    every attempt, one is over the byte cap, one is a decompression bomb: each is quarantined
    with its reason and the rest commit (before: the killed worker was restarted and the batch
    retried forever, while the driver kept renewing its lease)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i, photo in enumerate(list(photos.values())[:3]):
        (src / f"good{i}.jpg").write_bytes(_jpeg(np.asarray(
            Image.fromarray(photo).resize((80 + 8 * i, 64)))))
    small = np.asarray(Image.fromarray(photos["coffee"]).resize((70, 56)))
    (src / "kills_decoder.jpg").write_bytes(_jpeg(small) + KILL_THE_DECODER)
    height, width = KILL_THE_CLEANER
    (src / "kills_cleaner.jpg").write_bytes(_jpeg(np.asarray(
        Image.fromarray(photos["astronaut"]).resize((width, height)))))
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    (src / "too_big.png").write_bytes(_png(noise))  # ~270 KB of noise
    (src / "bomb.png").write_bytes(_png_header(50_000))
    proc = subprocess.run(
        [sys.executable, "jobs/clean_dataset.py", "--job", "smoke", "--input", str(src),
         "--output", str(out), "engine.fit.steps=10", "input.max_bytes=150000",
         "compute.max_task_retries=1"],
        cwd=ROOT, env=dict(_env(), DVT_RAY_TMP=f"/tmp/dvt-faults-{os.getpid()}"),
        capture_output=True, text=True, timeout=500)
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
    names = {Path(u).name for u in read_features_table(str(out), ["source_uri"])[
        "source_uri"].to_pylist()}
    assert names == {"good0.jpg", "good1.jpg", "good2.jpg"}
    assert summary["inputs"] == 7 == summary["done"] + summary["quarantined"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
