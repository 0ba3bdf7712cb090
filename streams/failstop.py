"""Fail-stop for Faust agents.

Faust acknowledges a micro-batch when the loop body returns *or raises*, and commits
acknowledged offsets after flushing the producer. An exception escaping a batch after a partial
send would therefore lose the rest of it. Agents catch every unexpected error and call
:func:`fail_stop`, which ends the process before any commit can happen; the restarted worker
redelivers the batch (at-least-once) and consumers drop duplicates by their deterministic ids.

One policy for every agent (:func:`stop_on_error`): *any* exception escaping a batch, including
``asyncio.CancelledError``, stops the process. Cancellation is included on purpose: a worker
shutting down cancels an agent wherever it awaits, and a batch cancelled half-sent must not be
acknowledged either. Shutdowns between batches (the usual case: agents wait for their next
message outside the guarded block) are unaffected and exit cleanly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

LOG = logging.getLogger(__name__)
EXIT_UNEXPECTED = 70


def fail_stop(where: str) -> NoReturn:
    """Log the current exception and exit at once with ``EXIT_UNEXPECTED`` (no clean-up)."""
    LOG.exception("unexpected error in %s; stopping before commit", where)
    logging.shutdown()
    os._exit(EXIT_UNEXPECTED)


@contextmanager
def stop_on_error(where: str) -> Iterator[None]:
    """Guard one batch of an agent: any ``BaseException`` inside ends the process at once."""
    try:
        yield
    except BaseException:
        fail_stop(where)
