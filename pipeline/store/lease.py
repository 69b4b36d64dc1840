"""A lease on an output location, so overlapping refreshes never process the same images twice.

Leases are numbered files ``OUTPUT/_leases/lease-<generation>.json``, created with an exclusive
create (``O_EXCL`` locally, S3's ``If-None-Match: *`` through s3fs): of two runs racing for the
next generation exactly one wins. A lease holds until it is released or its expiry passes (the
holder renews it while running); a crashed holder's lease goes stale after ``ttl_seconds`` and
the next run takes generation + 1. Before committing, the holder checks that no newer
generation exists (it would mean its lease went stale and another run took over), so a run
that lost its lease never commits.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from pipeline.store.schema import filesystem, put_atomic, read_bytes

logger = logging.getLogger(__name__)

LEASES_DIR = "_leases"
EXIT_LEASE_HELD = 75  # a job refused because another run holds the lease (EX_TEMPFAIL)
_NAME = re.compile(r"lease-(\d{8})\.json$")


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease."""


class LeaseLost(RuntimeError):
    """This run's lease went stale and another run took the output over."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of one lease file."""

    generation: int
    owner: str
    expires: float
    released: bool

    def live(self, now: float) -> bool:
        return not self.released and self.expires > now


class OutputLease:
    """Exclusive right to commit new runs under ``uri``; use as a context manager."""

    def __init__(self, uri: str, owner: str, ttl_seconds: float = 900.0,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = filesystem(uri, storage_options)
        self.folder = posixpath.join(root, LEASES_DIR)
        self.owner = owner
        self.ttl = ttl_seconds
        self.generation = 0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _path(self, generation: int) -> str:
        return posixpath.join(self.folder, f"lease-{generation:08d}.json")

    def _latest(self) -> LeaseRecord | None:
        if not self.fs.exists(self.folder):
            return None
        self.fs.invalidate_cache(self.folder)
        generations = sorted(int(m.group(1)) for p in self.fs.ls(self.folder, detail=False)
                             if (m := _NAME.search(p)))
        if not generations:
            return None
        # the holder may have renewed the file since it was listed
        doc = json.loads(read_bytes(self.fs, self._path(generations[-1])))
        return LeaseRecord(generations[-1], doc["owner"], doc["expires"], doc["released"])

    def _write(self, mode: str, released: bool = False) -> None:
        """Create the generation's file (``xb``: exclusive) or renew it (``wb``: replaced whole,
        so a reader never sees it truncated)."""
        doc = {"owner": self.owner, "acquired": time.time(), "expires": time.time() + self.ttl,
               "released": released}
        data = json.dumps(doc).encode()
        if mode == "wb":
            put_atomic(self.fs, self._path(self.generation), data)
            return
        with self.fs.open(self._path(self.generation), mode) as fh:
            fh.write(data)

    def acquire(self) -> None:
        """Take the next generation, or raise ``LeaseHeld`` while a live lease exists."""
        self.fs.makedirs(self.folder, exist_ok=True)
        latest = self._latest()
        if latest is not None and latest.live(time.time()):
            raise LeaseHeld(f"output is leased by run {latest.owner} until "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(latest.expires))}"
                            f"; this refresh does nothing")
        if latest is not None and not latest.released:
            logger.warning("taking over the stale lease of run %s", latest.owner)
        self.generation = (latest.generation if latest else 0) + 1
        try:
            self._write("xb")
        except FileExistsError as err:
            raise LeaseHeld("another run took the output's lease at the same moment") from err
        self._renewer = threading.Thread(target=self._renew_loop, daemon=True)
        self._renewer.start()
        logger.info("lease %d on %s taken by %s", self.generation, self.folder, self.owner)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.check()
                self._write("wb")
            except Exception:  # a failed renewal surfaces at the commit check
                logger.exception("could not renew lease %d", self.generation)
                return

    def check(self) -> None:
        """Raise ``LeaseLost`` if a newer generation exists (another run took over)."""
        latest = self._latest()
        if latest is None or latest.generation != self.generation or latest.owner != self.owner:
            raise LeaseLost(f"run {self.owner} lost the lease on {self.folder} to "
                            f"{latest.owner if latest else 'nobody'}; nothing is committed")

    def release(self) -> None:
        """Mark the lease released so the next run need not wait for its expiry."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.generation:
            try:
                self.check()
                self._write("wb", released=True)
            except LeaseLost:
                return
            for generation in range(max(1, self.generation - 8), self.generation - 1):
                old = self._path(generation)  # only the latest generations matter
                if self.fs.exists(old):
                    self.fs.rm(old)
            self.fs.invalidate_cache(self.folder)
            for path in self.fs.ls(self.folder, detail=False):  # renewals cut short by a crash
                if ".tmp-" in posixpath.basename(path):  # (only the holder writes them)
                    self.fs.rm(path)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
