"""Where the pipeline's ``logging`` lines go: INFO and above to stderr, one format for the
commands and for the Ray tasks whose progress a user waits on (Ray forwards a worker's stderr
to the driver's output, but a worker's root logger shows only warnings)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def log_info_to_stderr() -> None:
    """Send INFO lines and above to stderr, for the whole process (a command's; nothing changes
    once the root logger has a handler)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


@contextlib.contextmanager
def pipeline_info_to_stderr() -> Iterator[None]:
    """While it runs, the pipeline's own INFO lines (logger ``pipeline``) go to stderr, and no
    other library's; undone after, since a Ray worker lives on to run other tasks."""
    logger = logging.getLogger("pipeline")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not twice where the root logger has a handler too
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
