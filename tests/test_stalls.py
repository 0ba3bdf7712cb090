"""The stalled-partition guard (streams/stalls.py): which partitions it re-reads, and when."""

from __future__ import annotations

from streams.stalls import PartitionProgress, StallGuard


def test_only_a_partition_without_progress_and_with_records_past_its_commit_is_reread() -> None:
    guard: StallGuard[str] = StallGuard(stall_s=30)
    busy = [PartitionProgress(committed=c, read=c + 5, end=100) for c in range(0, 100, 10)]
    for t, state in enumerate(busy):  # a backlog worked through: progress every 10 s
        assert guard.stalled({"busy": state}, now=10.0 * t) == []
    done = PartitionProgress(committed=100, read=99, end=100)  # idle, everything committed
    after_seek = PartitionProgress(committed=100, read=100, end=100)  # Faust's seek sets read
    for now in (0.0, 40.0, 80.0):
        assert guard.stalled({"done": done, "seek": after_seek}, now) == []
    dropped = PartitionProgress(committed=1, read=29, end=30)  # the race: read, never committed
    unread = PartitionProgress(committed=None, read=None, end=25)  # taken over, never read
    assert guard.stalled({"a": dropped, "b": unread}, now=100.0) == []
    assert guard.stalled({"a": dropped, "b": unread}, now=129.0) == []
    assert sorted(guard.stalled({"a": dropped, "b": unread}, now=130.0)) == ["a", "b"]
    assert guard.stalled({"a": dropped, "b": unread}, now=131.0) == []  # watched afresh
    assert guard.rereads == {"a": 1, "b": 1}
    # without trustworthy end offsets (Tansu) only records read past the commit count
    assert PartitionProgress(committed=1, read=29).behind
    assert not PartitionProgress(committed=30, read=29).behind
    assert not PartitionProgress(committed=None, read=None).behind
    # a partition that moved to another worker is forgotten
    guard.stalled({"a": dropped}, now=200.0)
    guard.stalled({}, now=201.0)
    assert guard.stalled({"a": dropped}, now=235.0) == []  # its clock restarted at 235


def test_a_partition_waiting_for_a_busy_agent_is_reread_only_after_the_busy_limit() -> None:
    guard: StallGuard[str] = StallGuard(stall_s=30, busy_stall_s=300)
    # the agent acknowledges records of other partitions every 10 s: busy, not stuck
    for t in range(0, 300, 10):
        waiting = PartitionProgress(committed=None, read=7, agent_acks=t)
        assert guard.stalled({"clicks:1": waiting}, now=float(t)) == []
    busy = PartitionProgress(committed=None, read=7, agent_acks=300)
    assert guard.stalled({"clicks:1": busy}, now=300.0) == ["clicks:1"]  # the busy limit
    # once the agent goes idle, stall_s is enough again
    idle = PartitionProgress(committed=3, read=7, agent_acks=400)
    assert guard.stalled({"clicks:1": idle}, now=400.0) == []
    assert guard.stalled({"clicks:1": idle}, now=429.0) == []
    assert guard.stalled({"clicks:1": idle}, now=430.0) == ["clicks:1"]
