"""Where the pipeline's ``logging`` lines go: INFO and above to stderr, one format for the
commands and for the Ray tasks whose progress a user waits on (Ray forwards a worker's stderr
to the driver's output, but a worker's root logger shows only warnings)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def log_info_to_stderr() -> None:
    """Send INFO lines and above to stderr (nothing changes once the root logger has a
    handler)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
