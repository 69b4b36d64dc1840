"""What every job's entry point shares: user errors end as one line and exit code 2, a run
refused or stopped by the output's lease ends with exit code 75."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from pipeline.config import ConfigError
from pipeline.store.lease import EXIT_LEASE_HELD, LeaseHeld, LeaseLost

EXIT_USER_ERROR = 2
"""A job refused its config or inputs (like argparse's usage errors)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``ConfigError`` (a bad preset, override, value or missing input) into one line
    on stderr and exit code 2; ``LeaseHeld`` (another run holds the output: this refresh does
    nothing) and ``LeaseLost`` (this run was stopped: another took the output over) into one
    line and exit code 75 (EX_TEMPFAIL: try later). Every other exception keeps its traceback
    (a real bug)."""
    try:
        yield
    except ConfigError as err:
        logging.shutdown()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except LeaseHeld as err:
        logging.shutdown()
        print(f"lease held: {err}", file=sys.stderr)
        sys.exit(EXIT_LEASE_HELD)
    except LeaseLost as err:
        logging.shutdown()
        print(f"error: lease lost: {err}", file=sys.stderr)
        sys.exit(EXIT_LEASE_HELD)
