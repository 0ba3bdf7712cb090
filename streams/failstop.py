"""Fail-stop for Faust agents.

Faust acknowledges a micro-batch when the loop body returns *or raises*, and commits
acknowledged offsets after flushing the producer. An exception escaping a batch after a partial
send would therefore lose the rest of it. Agents catch every unexpected error and call
:func:`fail_stop`, which ends the process before any commit can happen; the restarted worker
redelivers the batch (at-least-once) and consumers drop duplicates by their deterministic ids.
"""

from __future__ import annotations

import logging
import os
from typing import NoReturn

LOG = logging.getLogger(__name__)
EXIT_UNEXPECTED = 70


def fail_stop(where: str) -> NoReturn:
    """Log the current exception and exit at once with ``EXIT_UNEXPECTED`` (no clean-up)."""
    LOG.exception("unexpected error in %s; stopping before commit", where)
    logging.shutdown()
    os._exit(EXIT_UNEXPECTED)
