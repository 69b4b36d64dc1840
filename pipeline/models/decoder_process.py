"""Image decoding in a child process, so that an input which crashes or hangs the decoder costs
only that input, never the process that reads a dataset.

Codecs are native code: a malformed file can segfault them, spin, or need more memory than the
machine has. ``DecoderProcess`` keeps one child (``python -m pipeline.models.decoder_process``)
and hands it a batch's encoded images one at a time. When it
dies or overruns ``timeout_s`` on an image, the parent knows which image was in flight (images
go one at a time): that image is tried once more alone in a fresh child, and if the child
dies on it again it is reported as ``crashed the reader``; the images after it go on in the
fresh child. A transient failure (a neighbour's memory spike) thus costs nothing, and an input
that kills the decoder on every attempt is set aside while the rest of its batch decodes.

Frames on the pipes (no pickle either way): a 4-byte big-endian length and a JSON header, then
an 8-byte length and the payload (encoded bytes in, RGB pixels out).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO

import numpy as np

logger = logging.getLogger(__name__)

CRASHED = "crashed the reader"
"""The reason recorded for an input that killed the decoder on every attempt."""


@dataclass(frozen=True)
class Decoded:
    """One image's outcome: RGB pixels (H, W, 3 uint8, row-major bytes), or an error."""

    pixels: bytes = b""
    height: int = 0
    width: int = 0
    error_class: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        """The image decoded (no error class was recorded)."""
        return not self.error_class


class DecoderDied(RuntimeError):
    """The child exited (or was killed for overrunning its time) while decoding an image."""


def _write_frame(out: IO[bytes], header: dict, payload: bytes | memoryview = b"") -> None:
    blob = json.dumps(header).encode()
    view = memoryview(payload).cast("B")
    out.write(struct.pack(">I", len(blob)) + blob + struct.pack(">Q", view.nbytes))
    out.write(view)
    out.flush()


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    """``size`` bytes from a pipe, or ``DecoderDied`` at end of file or past ``deadline``."""
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise DecoderDied("timed out")
        chunk = os.read(fd, min(left, 1 << 22))
        if not chunk:
            raise DecoderDied("exited")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None) -> tuple[dict, bytes]:
    (size,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    header = json.loads(_read_exact(fd, size, deadline))
    (length,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
    return header, _read_exact(fd, length, deadline)


class DecoderProcess:
    """A child process that decodes images (``images.decode_image``), restarted when it dies.

    ``decode(batch)`` returns one ``Decoded`` per encoded image, in order; it never raises for
    an image's sake. ``timeout_s`` bounds one image's decoding (0: no bound).
    """

    def __init__(self, max_pixels: int | None, min_side: int, timeout_s: float = 0.0) -> None:
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.timeout_s = timeout_s
        self._child: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            self._child = subprocess.Popen(
                [sys.executable, "-m", "pipeline.models.decoder_process"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
            )
        return self._child

    def _kill(self) -> str:
        """End the child; how it ended (for the reason of the image it was decoding)."""
        child, self._child = self._child, None
        if child is None:
            return "exited"
        if child.poll() is None:
            child.kill()
        code = child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
        self.restarts += 1
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def _run(self, batch: list[bytes], out: list[Decoded | None]) -> None:
        """Decode ``batch`` into the empty slots of ``out`` in one child; ``DecoderDied``
        (with the slots answered so far filled in) when the child dies or times out."""
        child = self._start()
        assert child.stdin is not None and child.stdout is not None
        fd = child.stdout.fileno()
        for i in [i for i, slot in enumerate(out) if slot is None]:
            try:  # one image at a time: neither side ever blocks on a full pipe
                _write_frame(
                    child.stdin,
                    {"max_pixels": self.max_pixels, "min_side": self.min_side},
                    batch[i],
                )
            except OSError as err:  # a broken pipe: the child died
                raise DecoderDied(self._kill()) from err
            deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
            try:
                header, pixels = _read_frame(fd, deadline)
            except DecoderDied as err:
                how = self._kill()
                raise DecoderDied(
                    f"took longer than {self.timeout_s:g} s and was killed"
                    if str(err) == "timed out"
                    else how
                ) from None
            out[i] = Decoded(
                pixels,
                header.get("height", 0),
                header.get("width", 0),
                header.get("error_class", ""),
                header.get("reason", ""),
            )

    def decode(self, batch: list[bytes]) -> list[Decoded]:
        """Each encoded image decoded to RGB, or its error; a crash costs only its image."""
        out: list[Decoded | None] = [None] * len(batch)
        while any(slot is None for slot in out):
            try:
                self._run(batch, out)
            except DecoderDied as first:
                suspect = out.index(None)  # images go in order: the first open slot was in flight
                alone: list[Decoded | None] = [None]
                try:
                    self._run([batch[suspect]], alone)
                    out[suspect] = alone[0]
                except DecoderDied as again:
                    logger.warning("an input killed the decoder twice (%s; %s)", first, again)
                    out[suspect] = Decoded(
                        error_class="DecoderCrashed", reason=f"{CRASHED}: the decoder {again}"
                    )
        return [slot for slot in out if slot is not None]

    def close(self) -> None:
        """End the child (it also ends by itself when this process's pipe closes)."""
        child, self._child = self._child, None
        if child is not None:
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to tidy
            self.close()


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The child's loop: one frame in (settings, encoded bytes), one frame out per image."""
    from pipeline.models.images import decode_image

    while True:
        try:
            header, data = _read_frame(inp.fileno())
        except DecoderDied:
            return  # the parent closed the pipe
        try:
            rgb = decode_image(data, max_pixels=header["max_pixels"], min_side=header["min_side"])
        except Exception as err:  # the image's own error, reported, never fatal
            _write_frame(out, {"error_class": type(err).__name__, "reason": str(err)[:500]})
            continue
        _write_frame(
            out,
            {"height": int(rgb.shape[0]), "width": int(rgb.shape[1])},
            np.ascontiguousarray(rgb).data,
        )


if __name__ == "__main__":
    frames = os.fdopen(os.dup(1), "wb")  # the pipe to the parent, for frames only:
    os.dup2(2, 1)  # anything a library prints goes to stderr instead
    serve(sys.stdin.buffer, frames)
