"""Artifact-model files: a positional pattern (h, w, C) float32 and its facts, as one
safetensors file written atomically (where: ``layout.artifact_model_uri``). The sha256 of the
bytes identifies the pattern; runs that subtract it record it. numpy only:
``pipeline.models.artifact_model`` converts these to and from ``ArtifactModel``."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.store.format import SCHEMA_VERSION
from pipeline.store.fs import filesystem, put_atomic

PATTERN = "pattern"
"""The file's one tensor."""
SCHEMA_KEY = "dvt_schema_version"
"""The metadata key of the store's schema version (written beside the pattern's facts)."""


def write_pattern_file(
    uri: str,
    pattern: np.ndarray,
    facts: Mapping[str, str],
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Store ``pattern`` (h, w, C) with ``facts`` (strings) at ``uri`` atomically; returns the
    sha256 of the bytes."""
    from safetensors.numpy import save

    meta = {**facts, SCHEMA_KEY: str(SCHEMA_VERSION)}
    data = save({PATTERN: np.ascontiguousarray(pattern, dtype=np.float32)}, meta)
    fs, path = filesystem(uri, storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    put_atomic(fs, path, data)
    return hashlib.sha256(data).hexdigest()


def read_pattern_file(
    uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, str], str]:
    """(pattern (h, w, C) float32, its facts, the sha256 of the bytes) of a file written by
    ``write_pattern_file``."""
    from safetensors.numpy import load

    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    # safetensors: an 8-byte little-endian header length, then the JSON header
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    facts = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != SCHEMA_KEY}
    return load(data)[PATTERN], facts, hashlib.sha256(data).hexdigest()
