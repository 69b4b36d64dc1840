"""The read stage of the feature jobs: source URI -> bytes -> sha256 id -> decoded RGB, or
skipped (already committed for this config) or an error row. It needs fsspec, PIL and the
store, never torch: reader actors on CPU nodes stay small and start fast.

Stages take and return batches as dicts of numpy columns and import no Ray, so they run the
same under Ray Data's actor pools and in a plain loop. Pixels travel as bytes so that every
column is a scalar or binary.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np

from pipeline.models.decoder_process import DecoderProcess
from pipeline.store import committed_ids
from pipeline.store.fs import filesystem
from pipeline.store.readers import IdSet

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


class RowStatus(enum.StrEnum):
    """Where an input row stands between the stages of a feature job (the ``status`` column of
    their batches): plain strings in Arrow columns, so the values never change."""

    READ = "read"
    """Its bytes were read and its id computed; not decoded yet."""
    OK = "ok"
    """Decoded: pixels ready for the feature stage."""
    DONE = "done"
    """Features computed: the sink writes it to a feature file."""
    SKIPPED = "skipped"
    """Already committed for this config: nothing to do."""
    ERROR = "error"
    """Failed (``stage``, ``reason``, ``error_class`` say how): the sink quarantines it."""


PASSTHROUGH = (
    "source_uri",
    "image_id",
    "status",
    "stage",
    "reason",
    "error_class",
    "width",
    "height",
)


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array (bytes / str column) that numpy does not try to broadcast."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def failed_rows(uris: np.ndarray, stage: str, err: Exception, empty: dict[str, Any]) -> Batch:
    """Every row of a batch as an error of ``stage`` (a stage never lets an exception out:
    Ray Data would retry the batch, and a block that still fails is taken for a worker that
    died), with ``empty`` values for the stage's other columns."""
    n = len(uris)
    rows: dict[str, Any] = {
        "source_uri": list(uris),
        "image_id": [""] * n,
        "status": [RowStatus.ERROR] * n,
        "stage": [stage] * n,
        "reason": [f"{type(err).__name__}: {err}"[:500]] * n,
        "error_class": [type(err).__name__] * n,
    }
    rows |= {key: [value] * n for key, value in empty.items()}
    out = {key: object_column(values) for key, values in rows.items()}
    for key, value in empty.items():
        if isinstance(value, int):
            out[key] = np.asarray(rows[key], dtype=np.int32)
    return out


class InputTooLarge(ValueError):
    """An input file over the byte cap (``input.max_bytes``): never read."""


def read_input(fs: fsspec.AbstractFileSystem, uri: str, max_bytes: int) -> bytes:
    """The bytes of a listed input, opened as a plain path of ``fs`` (a name such as
    ``a::b.png`` is never re-parsed as a chained URL); ``InputTooLarge`` over ``max_bytes``,
    checked before reading (and while reading, should the file grow meanwhile)."""
    path = fs._strip_protocol(uri)
    with fs.open(path, "rb") as fh:
        size = getattr(fh, "size", None)
        if size is None:
            size = fs.size(path)
        if size > max_bytes:
            raise InputTooLarge(f"{size} bytes, over the cap input.max_bytes={max_bytes}")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputTooLarge(f"over {max_bytes} bytes (input.max_bytes) when read")
    return data


def read_photos(
    uris: Sequence[str],
    storage_options: dict[str, Any],
    max_bytes: int,
    max_pixels: int,
    min_side: int,
    decode_timeout_s: float,
    purpose: str,
) -> list[np.ndarray]:
    """The (H, W, 3) uint8 photos of ``uris`` that read and decode (in a child process, as the
    readers decode: a poison photo costs only itself); each one that does not is logged as
    skipped by ``purpose`` (calibration, distillation), never fatal."""
    encoded = []
    for uri in uris:
        try:
            fs, _ = filesystem(uri, storage_options)
            encoded.append(read_input(fs, uri, max_bytes))
        except Exception as err:  # a bad input is quarantined by its feature run, not here
            logger.warning("%s skips %s: %s", purpose, uri, err)
    decoder = DecoderProcess(max_pixels, min_side, decode_timeout_s)
    try:
        decoded = decoder.decode(encoded)
    finally:
        decoder.close()
    for failure in (d for d in decoded if not d.ok):
        logger.warning("%s skips an image: %s", purpose, failure.reason)
    return [
        np.frombuffer(d.pixels, np.uint8).reshape(d.height, d.width, 3) for d in decoded if d.ok
    ]


class ReadImages:
    """source_uri -> bytes -> sha256 id -> decoded RGB (or skipped / error), one row each.

    Decoding runs in a child process (``DecoderProcess``): an input that crashes or hangs the
    decoder on every attempt is quarantined (``crashed the reader``), the rest of its batch
    decodes, and this actor lives on.
    """

    def __init__(
        self,
        input_uri: str,
        storage_options: dict[str, Any],
        max_bytes: int,
        max_pixels: int,
        min_side: int,
        decode_timeout_s: float,
        output_uri: str,
        output_storage_options: dict[str, Any],
        config_digest: str,
    ) -> None:
        self.fs, _ = filesystem(input_uri, storage_options)
        self.max_bytes = max_bytes
        self.decoder = DecoderProcess(max_pixels, min_side, decode_timeout_s)
        # 32 bytes an id (a 1 M-image output: ~31 MB per reader actor)
        self.done_ids = IdSet(committed_ids(output_uri, config_digest, output_storage_options))

    def _read(self, uri: str) -> tuple[dict[str, Any], bytes]:
        """The row of one input before decoding, and its bytes when they are to be decoded."""
        row: dict[str, Any] = {
            "source_uri": uri,
            "image_id": "",
            "status": RowStatus.ERROR,
            "stage": "",
            "reason": "",
            "error_class": "",
            "width": 0,
            "height": 0,
            "pixels": b"",
        }
        try:
            data = read_input(self.fs, uri, self.max_bytes)
        except Exception as err:  # any storage failure is this input's, not the job's
            return row | {
                "stage": "read",
                "reason": str(err)[:500],
                "error_class": type(err).__name__,
            }, b""
        row["image_id"] = hashlib.sha256(data).hexdigest()
        if row["image_id"] in self.done_ids:
            return row | {"status": RowStatus.SKIPPED}, b""
        return row | {"status": RowStatus.READ}, data

    def __call__(self, batch: Batch) -> Batch:
        """One output row per listed file: decoded pixels, ``skipped`` or ``error``."""
        try:
            return self._rows(batch)
        except Exception as err:  # a bug of this stage: every row says so
            logger.exception("the read stage failed on a batch of %d", len(batch["source_uri"]))
            return failed_rows(
                batch["source_uri"], "read", err, {"width": 0, "height": 0, "pixels": b""}
            )

    def _rows(self, batch: Batch) -> Batch:
        read = [self._read(str(uri)) for uri in batch["source_uri"]]
        rows = [row for row, _ in read]
        todo = [i for i, row in enumerate(rows) if row["status"] == RowStatus.READ]
        for i, decoded in zip(todo, self.decoder.decode([read[i][1] for i in todo]), strict=True):
            if decoded.ok:
                rows[i] |= {
                    "status": RowStatus.OK,
                    "width": decoded.width,
                    "height": decoded.height,
                    "pixels": decoded.pixels,
                }
            else:
                rows[i] |= {
                    "status": RowStatus.ERROR,
                    "stage": "decode",
                    "reason": decoded.reason,
                    "error_class": decoded.error_class,
                }
        out = {key: object_column([r[key] for r in rows]) for key in rows[0]} if rows else {}
        for key in ("width", "height"):
            out[key] = np.asarray([r[key] for r in rows], dtype=np.int32)
        return out
