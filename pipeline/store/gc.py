"""Garbage collection of an output: listing the files no manifest lists (``orphaned_files``),
removing them, and the operator task that does both under the lease after sealing dead runs
(``gc_output``, ``jobs/gc_output.py``). No Ray."""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import MissingInput
from pipeline.store.fs import filesystem
from pipeline.store.layout import (
    COMMITS_DIR,
    COMMITTED,
    CONFIG_FILE,
    MANIFEST,
    SEALED,
    SUMMARY_FILE,
)
from pipeline.store.lease import OutputLease
from pipeline.store.runs import list_runs, read_commit_records, seal_dead_runs

logger = logging.getLogger(__name__)


def orphaned_files(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Files of finished (committed or sealed) runs that no manifest lists: parts of tasks
    that died before their record, records and files written after a seal, temp files of
    interrupted writes. Open runs (maybe still going) are never looked into. Full paths."""
    fs, root = filesystem(uri, storage_options)
    orphans = []
    for run in list_runs(fs, root):
        if run.state == "open":
            continue
        if run.damaged:
            logger.warning(
                "gc leaves run %s alone: its control file %s is damaged",
                posixpath.basename(run.path),
                run.damaged,
            )
            continue
        keep = {
            posixpath.join(run.path, n)
            for n in (CONFIG_FILE, SUMMARY_FILE, MANIFEST, COMMITTED, SEALED)
        }
        keep.update(run.feature_files + run.quarantine_files)
        if run.state == "committed":  # its records made the manifest: all of them are kept
            keep.update(fs.find(posixpath.join(run.path, COMMITS_DIR)))
        else:
            sealed = {f.path for f in run.manifest.files}
            for name, record in read_commit_records(fs, run.path):
                if {f.path for f in record.files} <= sealed:
                    keep.add(posixpath.join(run.path, COMMITS_DIR, name))
        orphans += [p for p in sorted(fs.find(run.path)) if p not in keep]
    return orphans


def remove_files(
    uri: str, paths: Sequence[str], storage_options: dict[str, Any] | None = None
) -> None:
    """Delete ``paths`` (from ``orphaned_files``) of the output's filesystem."""
    fs, _ = filesystem(uri, storage_options)
    for path in paths:
        fs.rm(path)


@dataclass(frozen=True)
class GcReport:
    """What a gc pass found: the runs it sealed and the orphaned files (full paths)."""

    sealed: list[str]
    orphans: list[str]
    removed: bool


def gc_output(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    delete: bool = False,
    lease_ttl_s: float = 900.0,
) -> GcReport:
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
