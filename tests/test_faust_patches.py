"""The two changes to faust-streaming's acknowledgements (streams/app.py): a record Faust
skipped is never counted as processed. Real Faust objects, no broker."""

from __future__ import annotations

import faust
from faust.events import Event
from faust.types import TP, Message

from streams.app import never_ack_skipped_records


def _event(app: faust.App, generation: int | None, offset: int = 5) -> Event:
    message = Message("t", 0, offset, 0.0, 0, {}, b"k", b"v", None, generation_id=generation)
    message.refcount = 1
    return Event(app, b"k", b"v", {}, message)


def test_a_record_skipped_during_a_rebalance_is_not_acknowledged() -> None:
    never_ack_skipped_records()
    never_ack_skipped_records()  # idempotent: patched once
    app = faust.App("patch-test", broker="kafka://localhost:1")
    app.consumer_generation_id = 3
    app.flow_control.suspend()  # a rebalance in progress
    paused = _event(app, 3)
    assert paused.ack() is False and not paused.message.acked
    app.flow_control.resume()
    stale = _event(app, 2)  # fetched under the previous generation
    assert stale.ack() is False and not stale.message.acked
    current = _event(app, 3)
    assert current.ack() is True and current.message.acked
    assert current.message.tp == TP("t", 0)
    unknown = _event(app, None)  # not from the consumer (no generation): acknowledged
    assert unknown.ack() is True


def test_an_offset_jump_in_delivery_is_not_acknowledged() -> None:
    import asyncio

    from faust.transport.consumer import Consumer

    from streams.app import never_commit_past_unread_records

    never_commit_past_unread_records()

    from collections import defaultdict

    from intervaltree import IntervalTree

    class Recorder:  # the state Faust's own _add_gap writes the skipped offsets to
        def __init__(self) -> None:
            self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
            self._committed_offset = {TP("t", 0): 3}

    consumer = Recorder()
    asyncio.run(Consumer._add_gap(consumer, TP("t", 0), 10, 14))  # type: ignore[arg-type]
    assert not any(consumer._gap.values())  # nothing counted as acknowledged


def test_a_commit_never_passes_a_record_not_yet_acknowledged() -> None:
    from collections import defaultdict

    from faust.transport.consumer import Consumer

    from streams.app import LOG_STARTS, never_commit_past_unread_records

    never_commit_past_unread_records()
    tp = TP("commit-rule", 0)

    class Offsets:  # the consumer state Faust's own commit rule reads and trims
        def __init__(self, committed: int | None, acked: list[int]) -> None:
            self._committed_offset = {tp: committed}
            self._acked = {tp: list(acked)}
            self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
            self._acked_index[tp] = set(acked)

    def commit(committed: int | None, acked: list[int]) -> int | None:
        return Consumer._new_offset(Offsets(committed, acked), tp)  # type: ignore[arg-type]

    # Faust's own rule committed 8 here, past offset 5, which no agent had acknowledged
    assert commit(5, [6, 7]) is None
    assert commit(5, [5, 6, 8]) == 7  # the run from the committed offset, not past the hole
    # nothing committed yet: where the partition starts must be known first
    LOG_STARTS.pop(tp, None)
    assert commit(None, [0, 1]) is None
    LOG_STARTS[tp] = 0
    assert commit(None, [8, 9, 10]) is None  # a takeover that has not delivered 0-7 yet
    assert commit(None, [0, 1, 2, 8]) == 3
    assert commit(0, [1, 2]) is None  # committed 0 was skipped by Faust's check altogether
    LOG_STARTS[tp] = 40  # retention removed 0-39: the run starts at the log start
    assert commit(12, [40, 41]) == 42


def test_only_partitions_whose_commit_waits_ask_for_their_first_offset() -> None:
    import asyncio

    from streams.app import LOG_STARTS, record_log_starts

    ready, new, behind_retention, idle = (TP("log-starts", p) for p in range(4))

    class Consumer:  # what record_log_starts reads, and the broker's answer
        def __init__(self) -> None:
            self._committed_offset = {ready: 5, new: None, behind_retention: 5, idle: None}
            self._acked = {ready: [5, 6], new: [0, 1], behind_retention: [40], idle: []}
            self.asked: list[TP] = []

        def assignment(self) -> set[TP]:
            return {ready, new, behind_retention, idle}

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            self.asked.extend(tps)
            return {tp: {new: 0, behind_retention: 40}.get(tp, 0) for tp in tps}

    for tp in (ready, new, behind_retention, idle):
        LOG_STARTS.pop(tp, None)
    consumer = Consumer()
    asyncio.run(record_log_starts(consumer))
    assert sorted(consumer.asked) == sorted([new, behind_retention])
    assert LOG_STARTS[new] == 0 and LOG_STARTS[behind_retention] == 40
    consumer.asked.clear()
    asyncio.run(record_log_starts(consumer))  # every commit can go ahead now: nothing asked
    assert consumer.asked == []
