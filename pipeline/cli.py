"""What every job's entry point shares: user errors end as one line and exit code 2."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from pipeline.config import ConfigError

EXIT_USER_ERROR = 2
"""A job refused its config or inputs (like argparse's usage errors)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``ConfigError`` (a bad preset, override, value or missing input) into one line
    on stderr and exit code 2; every other exception keeps its traceback (a real bug)."""
    try:
        yield
    except ConfigError as err:
        logging.shutdown()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
