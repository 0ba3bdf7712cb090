"""Re-read a partition whose processing stopped: the guard against a Faust rebalance race.

Measured on Kafka 3.9 with faust-streaming 0.15.3 (tests/test_scaleout.py, two workers in one
group, one SIGKILLed mid-stream): after the rebalance, a survivor sometimes keeps a partition
whose records were all fetched but some never reached an agent. Faust resumes the stream
partitions before it has seeked them to the committed offsets, while its flow is running; a
batch delivered from the old position in that window moves the partition's read offset past
the records fetched again after the seek, which are then dropped as already read
(faust-streaming#596 describes the race). Those records are never processed and never
acknowledged, and the partition's commits stop at them: 1 to 3 of 900 reviews, and once 378,
were never labelled while the worker ran.

A second form was seen too: a partition taken over from the killed worker stayed unread,
with records in it, until the end of the run.

Both are visible from outside: for ``stall_s`` neither the committed offset nor the read offset
of a partition moved, although it has records past its committed offset (by the broker's end
offsets where they can be trusted; where not, Tansu, by records read past the committed
offset). Such a partition is resumed and re-read from its committed offset; every output id is
deterministic, so a re-read makes duplicates downstream consumers drop, never different data.
An agent busy with one message for longer than ``stall_s`` would be re-read too (duplicates
only), so the default is well above any message's processing time here.

A re-read is only safe because Faust no longer counts skipped offsets as acknowledged
(``streams.app.never_commit_past_unread_records``): a stale record delivered right after the
seek made Faust see a "gap", commit past the records being re-read, and drop them as already
read (1 review in 900 lost, 1 run in 3 on Kafka, before that change).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # a partition's key (Faust's TP)


@dataclass(frozen=True)
class PartitionProgress:
    """Where a partition stands: ``committed`` (the offset the group resumes from; ``None``:
    nothing committed yet), ``read`` (the last offset handed to the agents; Faust sets it to the
    committed offset when it seeks; ``None``: none yet), ``end`` (the broker's end offset;
    ``None``: not known, or not trustworthy on this broker) and ``agent_acks`` (how many records
    the agents reading this partition's topic have acknowledged so far, on any partition: while
    it grows they are busy, and this partition may simply be waiting its turn)."""

    committed: int | None
    read: int | None
    end: int | None = None
    agent_acks: int = 0

    @property
    def behind(self) -> bool:
        """Records past the committed offset: by the end offset when known, else by what was
        read."""
        done = self.committed or 0
        if self.end is not None:
            return self.end > done
        return self.read is not None and self.read > done


@dataclass
class _Watch:
    position: tuple[int | None, int | None, int | None]  # committed, read, end
    since: float  # when the position was first seen
    agent_acks: int
    agents_since: float  # when the agents' acknowledgements last moved


class StallGuard(Generic[K]):
    """Tells which partitions to re-read: no progress for ``stall_s`` while the agents reading
    it are idle too, or for ``busy_stall_s`` (default 10 x ``stall_s``) even while they are busy
    elsewhere. (Measured: with a backlog, a partition waited over 30 s for a busy label agent,
    and re-reading it only duplicated work; bench.throughput.)

    >>> guard: StallGuard[str] = StallGuard(stall_s=30)
    >>> stuck = PartitionProgress(committed=1, read=29)  # read 2..29, committed none of them
    >>> guard.stalled({"p0": stuck}, now=0.0)
    []
    >>> guard.stalled({"p0": stuck}, now=31.0)  # no progress for 31 s below the end
    ['p0']
    >>> guard.stalled({"p0": stuck}, now=40.0)  # re-read: the clock starts again
    []
    >>> guard.stalled({"p0": PartitionProgress(30, 29)}, now=100.0)  # all committed
    []
    >>> unread = PartitionProgress(committed=None, read=None, end=25)  # taken over, never read
    >>> guard.stalled({"p1": unread}, now=100.0), guard.stalled({"p1": unread}, now=131.0)
    ([], ['p1'])
    >>> waiting = [PartitionProgress(5, 9, agent_acks=n) for n in (0, 50, 90, 90)]
    >>> [guard.stalled({"p2": w}, now=t) for w, t in zip(waiting, (0.0, 31.0, 62.0, 93.0))]
    [[], [], [], ['p2']]
    """

    def __init__(self, stall_s: float, busy_stall_s: float | None = None) -> None:
        self.stall_s = stall_s
        self.busy_stall_s = 10 * stall_s if busy_stall_s is None else busy_stall_s
        self._since: dict[K, _Watch] = {}
        self.rereads: dict[K, int] = {}

    def stalled(self, progress: Mapping[K, PartitionProgress], now: float) -> list[K]:
        """The partitions to re-read now (each is then watched afresh)."""
        out = []
        for tp, state in progress.items():
            if not state.behind:
                self._since.pop(tp, None)
                continue
            position = (state.committed, state.read, state.end)
            seen = self._since.get(tp)
            if seen is None or seen.position != position:
                # progress (or a first look): restart the clock
                self._since[tp] = _Watch(position, now, state.agent_acks, now)
                continue
            if state.agent_acks != seen.agent_acks:
                seen.agent_acks, seen.agents_since = state.agent_acks, now
            idle = now - seen.agents_since >= self.stall_s
            waited = now - seen.since
            if (waited >= self.stall_s and idle) or waited >= self.busy_stall_s:
                out.append(tp)
                self.rereads[tp] = self.rereads.get(tp, 0) + 1
                self._since.pop(tp)
        for tp in set(self._since) - set(progress):  # no longer assigned here
            del self._since[tp]
        return out
