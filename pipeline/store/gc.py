"""Operator tasks on an output that need the lease but no Ray: sealing dead runs and removing
the files no manifest lists (``jobs/gc_output.py``)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.config import MissingInput
from pipeline.store.lease import OutputLease
from pipeline.store.schema import filesystem, orphaned_files, remove_files, seal_dead_runs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcReport:
    """What a gc pass found: the runs it sealed and the orphaned files (full paths)."""

    sealed: list[str]
    orphans: list[str]
    removed: bool


def gc_output(uri: str, storage_options: dict[str, Any] | None = None, *, delete: bool = False,
              lease_ttl_s: float = 900.0) -> GcReport:
    """Under the output's lease (so no run is going): seal dead runs, then list, and with
    ``delete`` remove, every file no manifest or seal lists. Committed data is never touched:
    readers return the same rows before and after. Raises ``LeaseHeld`` while a run holds it."""
    options = storage_options or {}
    fs, root = filesystem(uri, options)
    if not fs.exists(root):
        raise MissingInput(f"output {uri} does not exist: check --output")
    with OutputLease(uri, f"gc-{uuid.uuid4().hex[:8]}", lease_ttl_s, options):
        sealed = seal_dead_runs(uri, options, current_run_id="")
        orphans = orphaned_files(uri, options)
        if delete and orphans:
            remove_files(uri, orphans, options)
            logger.info("removed %d orphaned files under %s", len(orphans), uri)
    return GcReport(sealed, orphans, delete)
