"""Keep one bad record from stopping a stream: run a batch function, and when it raises, find
the record(s) it raises on and set them aside with the error.

Kafka Streams' exception handlers and Quix Streams' ``on_processing_error`` make the same
choice: a deterministic error on one record would otherwise stop the consumer before it commits,
the restarted consumer would meet the same record, and the whole partition would stop for good.
The set-aside records become dead letters (reason ``processing_error``); infrastructure failures
(a send that fails, the broker gone) are not caught here and still stop the process.

No library does this for an arbitrary batch function, so it is written here: bisection finds
``f`` poison records among ``n`` in about ``2 f log2(n)`` calls instead of ``n``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")

OnProcessingError = Literal["dead_letter", "stop"]


@dataclass(frozen=True, slots=True)
class Failure(Generic[T]):
    """A record a batch function raised on, with the error as text."""

    item: T
    error: str


def describe(exc: BaseException) -> str:
    """``"ValueError: bad value"``: the error's type and message, on one line.

    >>> describe(ValueError("bad\\nvalue"))
    'ValueError: bad value'
    """
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def isolate_failures(
    fn: Callable[[Sequence[T]], list[R]],
    items: Sequence[T],
    policy: OnProcessingError = "dead_letter",
) -> tuple[list[R], list[Failure[T]]]:
    """Run ``fn(items)``; if it raises, bisect to the items it raises on.

    Returns the outputs of every call that succeeded (in input order) and the failed items.
    With ``policy="stop"`` the first error propagates instead. ``fn`` may be called again on
    parts of a batch it failed on, so it must tolerate re-running (the labelers do: their ids
    are deterministic; a stateful label model sees those records twice).

    >>> def halve(xs):
    ...     if 0 in xs:
    ...         raise ZeroDivisionError("division by zero")
    ...     return [10 // x for x in xs]
    >>> out, failed = isolate_failures(halve, [1, 2, 0, 5])
    >>> out, [(f.item, f.error) for f in failed]
    ([10, 5, 2], [(0, 'ZeroDivisionError: division by zero')])
    """
    if not items:
        return [], []
    try:
        return list(fn(items)), []
    except Exception as exc:
        if policy == "stop":
            raise
        if len(items) == 1:
            return [], [Failure(items[0], describe(exc))]
    mid = len(items) // 2
    left_out, left_failed = isolate_failures(fn, items[:mid], policy)
    right_out, right_failed = isolate_failures(fn, items[mid:], policy)
    return left_out + right_out, left_failed + right_failed
