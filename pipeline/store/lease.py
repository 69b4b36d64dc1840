"""A lease on an output location, so overlapping refreshes never process the same images twice.

Leases are numbered files ``OUTPUT/_leases/lease-<generation>.json``, each created whole and
exclusively (``fs.create_exclusive``: a flushed temp file hard-linked to the name on
disks, one ``If-None-Match: *`` PUT on object stores): of two runs racing for the next
generation exactly one wins, and no reader ever sees a lease file empty or half-written.

Staleness is judged by the store's clock alone, never by the holder's: the holder renews its
file every third of the TTL (each renewal replaces the file, so its modification time moves),
and a lease is stale once the file's age, the store's time of a probe file written now minus
the lease file's modification time, passes the TTL. A lease file that cannot be parsed counts
as held until its age passes the TTL too. A failed renewal is retried with backoff; only when
no renewal has succeeded for ``GIVE_UP`` of the TTL (before anyone can take the lease over)
does the holder count its lease as lost and call ``on_lost``, so that its run stops at once.
Before committing, the holder checks that no newer generation exists (another run took over),
so a run that lost its lease never commits.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.store.fs import create_exclusive, filesystem, put_atomic, read_bytes

logger = logging.getLogger(__name__)

LEASES_DIR = "_leases"
EXIT_LEASE_HELD = 75  # a job refused, or stopped, because another run holds the lease (EX_TEMPFAIL)
GIVE_UP = 0.8
"""The holder counts its lease as lost when no renewal succeeded for this share of the TTL:
before a taker, who needs the file to be a whole TTL old, can take it over."""
_NAME = re.compile(r"lease-(\d{8})\.json$")


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease."""


class LeaseLost(RuntimeError):
    """This run's lease went stale or could not be renewed, and another run may take (or
    took) the output over: this run must stop and never commit."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of one lease file (None fields: the file could not be parsed)."""

    generation: int
    path: str
    owner: str | None
    ttl: float | None
    released: bool = False


def _timestamp(value: Any) -> float:
    """A modification time as fsspec reports it (datetime, epoch seconds or ISO text)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class OutputLease:
    """Exclusive right to commit new runs under ``uri``; use as a context manager.

    ``on_lost(reason)`` is called from the renewer thread when the lease is lost while held
    (a newer generation appeared, or renewals failed for ``GIVE_UP`` of the TTL).
    """

    def __init__(
        self,
        uri: str,
        owner: str,
        ttl_seconds: float = 900.0,
        storage_options: dict[str, Any] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.fs, root = filesystem(uri, storage_options)
        self.folder = posixpath.join(root, LEASES_DIR)
        self.owner = owner
        self.ttl = ttl_seconds
        self.on_lost = on_lost
        self.generation = 0
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _path(self, generation: int) -> str:
        return posixpath.join(self.folder, f"lease-{generation:08d}.json")

    def _latest(self) -> LeaseRecord | None:
        """The newest generation's file, read now (the holder may have renewed it since any
        earlier listing); owner and TTL are None when it cannot be parsed."""
        if not self.fs.exists(self.folder):
            return None
        self.fs.invalidate_cache(self.folder)
        generations = sorted(
            int(m.group(1)) for p in self.fs.ls(self.folder, detail=False) if (m := _NAME.search(p))
        )
        if not generations:
            return None
        path = self._path(generations[-1])
        try:
            doc = json.loads(read_bytes(self.fs, path))
            return LeaseRecord(
                generations[-1],
                path,
                str(doc["owner"]),
                float(doc["ttl_s"]),
                bool(doc.get("released", False)),
            )
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as err:  # empty, cut short or foreign
            logger.warning(
                "lease file %s cannot be parsed (%s): held until it is %g s old",
                path,
                err,
                self.ttl,
            )
            return LeaseRecord(generations[-1], path, None, None)

    def _age(self, path: str) -> float:
        """Seconds since ``path`` was last written, by the store's clock alone: the
        modification time of a probe file written now, minus that of ``path``."""
        written = _timestamp(self.fs.modified(path))
        probe = posixpath.join(self.folder, f"clock-{uuid.uuid4().hex[:12]}")
        put_atomic(self.fs, probe, b"")
        try:
            now = _timestamp(self.fs.modified(probe))
        finally:
            self.fs.rm(probe)
        return now - written

    def _doc(self, released: bool = False) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "ttl_s": self.ttl,
                "released": released,
                "written_by_holder_clock": time.time(),
            }
        ).encode()

    def acquire(self) -> None:
        """Take the next generation, or raise ``LeaseHeld`` while a live lease exists."""
        self.fs.makedirs(self.folder, exist_ok=True)
        latest = self._latest()
        if latest is not None and not latest.released:
            ttl = latest.ttl or self.ttl  # the holder renews every third of its own TTL
            age = self._age(latest.path)
            if age <= ttl:
                holder = latest.owner or "unknown (its lease file cannot be parsed)"
                raise LeaseHeld(
                    f"output is leased by run {holder} (renewed {age:.0f} s ago; "
                    f"stale after {ttl:g} s without renewal); this refresh does "
                    "nothing"
                )
            logger.warning(
                "taking over the stale lease of run %s (not renewed for %.0f s)",
                latest.owner or "unknown",
                age,
            )
        self.generation = (latest.generation if latest else 0) + 1
        try:
            create_exclusive(self.fs, self._path(self.generation), self._doc())
        except FileExistsError as err:
            raise LeaseHeld("another run took the output's lease at the same moment") from err
        self._renewer = threading.Thread(
            target=self._renew_loop, daemon=True, name=f"lease-{self.generation}"
        )
        self._renewer.start()
        logger.info("lease %d on %s taken by %s", self.generation, self.folder, self.owner)

    def _renew_loop(self) -> None:
        """Renew every third of the TTL; retry failures with backoff (1, 2, 4 ... s) until
        ``GIVE_UP`` of the TTL passed without a renewal, then count the lease as lost."""
        period = self.ttl / 3
        last_renewed, failures, wait = time.monotonic(), 0, period
        while not self._stop.wait(wait):
            try:
                self.check()
                put_atomic(self.fs, self._path(self.generation), self._doc())
            except LeaseLost as err:
                self._lose(str(err))
                return
            except Exception as err:  # a transient store error: retried, not fatal
                failures += 1
                left = GIVE_UP * self.ttl - (time.monotonic() - last_renewed)
                if left <= 0:
                    self._lose(
                        f"run {self.owner} could not renew its lease on {self.folder} "
                        f"for {GIVE_UP * self.ttl:.0f} s (last error: {err})"
                    )
                    return
                wait = min(left, period, 2.0 ** (failures - 1))
                logger.warning(
                    "renewal of lease %d failed (%s: %s); retrying in %.1f s",
                    self.generation,
                    type(err).__name__,
                    err,
                    wait,
                )
                continue
            last_renewed, failures, wait = time.monotonic(), 0, period

    def _lose(self, reason: str) -> None:
        self.lost = reason
        logger.error("%s", reason)
        if self.on_lost is not None and not self._stop.is_set():  # not while releasing
            self.on_lost(reason)

    def check(self) -> None:
        """Raise ``LeaseLost`` if this lease was lost or a newer generation exists."""
        if self.lost:
            raise LeaseLost(self.lost)
        latest = self._latest()
        if (
            latest is None
            or latest.generation != self.generation
            or (latest.owner is not None and latest.owner != self.owner)
        ):
            holder = (latest.owner or "another run") if latest else "nobody"
            raise LeaseLost(
                f"run {self.owner} lost the lease on {self.folder} to {holder}; "
                "nothing more is committed"
            )

    def release(self) -> None:
        """Mark the lease released so the next run need not wait for its expiry."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.generation:
            try:
                self.check()
                put_atomic(self.fs, self._path(self.generation), self._doc(released=True))
            except LeaseLost:
                return
            for generation in range(max(1, self.generation - 8), self.generation - 1):
                old = self._path(generation)  # only the latest generations matter
                if self.fs.exists(old):
                    self.fs.rm(old)
            self.fs.invalidate_cache(self.folder)
            for path in self.fs.ls(self.folder, detail=False):  # writes cut short by a crash
                if ".tmp-" in posixpath.basename(path):  # (only the holder writes them)
                    self.fs.rm(path)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
