"""Submission ids derived from a run, so that Ray refuses a duplicate submission.

The id is ``dvt-<job>-<slot>-<hash of job, input, output and overrides>``: a scheduler that
fires twice in the same slot (or a person re-running the same command) gets the same id, and
``ray job submit --submission-id`` refuses an id that already exists. Overlapping runs in
different slots are made safe by the output's lease (``pipeline.store.lease``) instead.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

SLOTS = {"none": "", "daily": "%Y%m%d", "hourly": "%Y%m%dT%H", "minutely": "%Y%m%dT%H%M"}


def submission_id(
    job: str,
    input_uri: str,
    output_uri: str,
    overrides: list[str],
    slot: str = "hourly",
    now: datetime | None = None,
) -> str:
    """dvt-<job>-<slot>-<16 hex>: the same for the same run in the same time slot."""
    if slot not in SLOTS:
        raise ValueError(f"slot {slot!r} is not one of {sorted(SLOTS)}")
    stamp = (now or datetime.now(UTC)).strftime(SLOTS[slot]) if SLOTS[slot] else "once"
    key = "\n".join([job, input_uri.rstrip("/"), output_uri.rstrip("/"), *sorted(overrides)])
    name = job.replace("_", "-")
    return f"dvt-{name}-{stamp.lower()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
