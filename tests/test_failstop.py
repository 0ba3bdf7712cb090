"""The one fail-stop policy of every agent: any exception escaping a batch, cancellation
included, ends the process before an acknowledgement; waiting between batches does not."""

from __future__ import annotations

import asyncio

import pytest

from streams import failstop


class Stopped(Exception):
    """Stands in for ``os._exit`` so the test process survives."""


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Stopped

    monkeypatch.setattr(failstop.os, "_exit", fake_exit)
    monkeypatch.setattr(failstop.logging, "shutdown", lambda: None)
    return codes


async def _agent(started: asyncio.Event, inside: asyncio.Event, sent: list[int]) -> None:
    """One batch: a first send, then a second that never completes (a stuck broker)."""
    started.set()
    await asyncio.sleep(0.05)  # waiting for the next batch: outside the guard
    with failstop.stop_on_error("test.agent"):
        sent.append(1)
        inside.set()
        await asyncio.sleep(3600)
        sent.append(2)


def test_cancelled_mid_batch_stops_the_process(exits: list[int]) -> None:
    async def main() -> None:
        started, inside, sent = asyncio.Event(), asyncio.Event(), []
        task = asyncio.create_task(_agent(started, inside, sent))
        await inside.wait()
        task.cancel()
        with pytest.raises(Stopped):
            await task
        assert sent == [1]

    asyncio.run(main())
    assert exits == [failstop.EXIT_UNEXPECTED]


def test_cancelled_between_batches_is_a_clean_shutdown(exits: list[int]) -> None:
    async def main() -> None:
        started, inside, sent = asyncio.Event(), asyncio.Event(), []
        task = asyncio.create_task(_agent(started, inside, sent))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sent == []

    asyncio.run(main())
    assert exits == []


@pytest.mark.parametrize("error", [RuntimeError("send failed"), KeyboardInterrupt()])
def test_any_error_in_a_batch_stops_the_process(exits: list[int], error: BaseException) -> None:
    with pytest.raises(Stopped), failstop.stop_on_error("test.agent"):
        raise error
    assert exits == [failstop.EXIT_UNEXPECTED]
