"""The read stage of the feature jobs: source URI -> bytes -> sha256 id -> decoded RGB, or
skipped (already committed for this config) or an error row. It needs fsspec, PIL and the
store, never torch: reader actors on CPU nodes stay small and start fast.

Stages take and return batches as dicts of numpy columns and import no Ray, so they run the
same under Ray Data's actor pools and in a plain loop. Pixels travel as bytes so that every
column is a scalar or binary.
"""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec
import numpy as np

from pipeline.models.images import decode_image
from pipeline.store.schema import IdSet, committed_ids

Batch = dict[str, np.ndarray]
PASSTHROUGH = ("source_uri", "image_id", "status", "stage", "reason", "error_class",
               "width", "height")


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array (bytes / str column) that numpy does not try to broadcast."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class ReadImages:
    """source_uri -> bytes -> sha256 id -> decoded RGB (or skipped / error), one row each."""

    def __init__(self, storage_options: dict[str, Any], max_pixels: int, min_side: int,
                 output_uri: str, output_storage_options: dict[str, Any],
                 config_digest: str) -> None:
        self.storage_options = storage_options
        self.max_pixels = max_pixels
        self.min_side = min_side
        # 32 bytes an id (a 1 M-image output: ~31 MB per reader actor)
        self.done_ids = IdSet(committed_ids(output_uri, config_digest, output_storage_options))

    def _row(self, uri: str) -> dict[str, Any]:
        row: dict[str, Any] = {"source_uri": uri, "image_id": "", "status": "error", "stage": "",
                               "reason": "", "error_class": "", "width": 0, "height": 0,
                               "pixels": b""}
        try:
            with fsspec.open(uri, "rb", **self.storage_options) as fh:
                data = fh.read()
        except Exception as err:  # any storage failure is this input's, not the job's
            return row | {"stage": "read", "reason": str(err)[:500],
                          "error_class": type(err).__name__}
        row["image_id"] = hashlib.sha256(data).hexdigest()
        if row["image_id"] in self.done_ids:
            return row | {"status": "skipped"}
        try:
            rgb = decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side)
        except Exception as err:
            return row | {"stage": "decode", "reason": str(err)[:500],
                          "error_class": type(err).__name__}
        height, width = rgb.shape[:2]
        return row | {"status": "ok", "width": width, "height": height, "pixels": rgb.tobytes()}

    def __call__(self, batch: Batch) -> Batch:
        rows = [self._row(str(uri)) for uri in batch["source_uri"]]
        out = {key: object_column([r[key] for r in rows]) for key in rows[0]} if rows else {}
        for key in ("width", "height"):
            out[key] = np.asarray([r[key] for r in rows], dtype=np.int32)
        return out
