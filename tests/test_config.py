"""Settings from ECREC_* variables."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from ecrec_stream.config import Settings, bootstrap_servers, load_settings
from ecrec_stream.device import name_os_thread
from ecrec_stream.exceptions import ConfigError


def test_env_overrides_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECREC_BROKER", "kafka://k1:9092,k2:9093")
    monkeypatch.setenv("ECREC_INDEX__BATCH_MAX", "32")
    monkeypatch.setenv("ECREC_TOPICS__ITEMS", "shop.items")
    monkeypatch.setenv("ECREC_EMBEDDING__MODEL", "/srv/models/e5")
    settings = load_settings()
    assert not settings.uses_embedded_broker
    assert bootstrap_servers(settings.broker) == "k1:9092,k2:9093"
    assert settings.index.batch_max == 32 and settings.topics.items == "shop.items"
    assert settings.embedding.model == "/srv/models/e5"
    with pytest.raises(ValidationError):
        settings.partitions = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("url", ["http://x:1", "kafka://", "kafka://host", "host:port"])
def test_bad_broker_urls_are_rejected(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError):
        bootstrap_servers(url)
    monkeypatch.setenv("ECREC_BROKER", url)
    with pytest.raises((ConfigError, ValidationError)):
        Settings()


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECREC_INDEX__BATCH_MAX", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_a_misspelt_variable_is_an_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ECREC_LABELS__ENABELD", "false")
    with pytest.raises(ConfigError, match="did you mean ECREC_LABELS__ENABLED"):
        load_settings()
    monkeypatch.delenv("ECREC_LABELS__ENABELD")
    monkeypatch.setenv("ECREC_INDX__SEARCH_MODE", "dense")
    with pytest.raises(ConfigError, match="did you mean ECREC_INDEX__SEARCH_MODE"):
        load_settings()


def test_every_setting_and_the_bench_variables_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ECREC_LABELS__ANNOTATOR__LLM__DEVICE", "cpu")
    monkeypatch.setenv("ECREC_SHARED_DATA", "/data")
    assert load_settings().labels.annotator.llm.device == "cpu"


def test_an_unknown_override_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="prot"):
        load_settings(index={"prot": 1})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names: Linux /proc")
def test_model_threads_carry_their_names_at_the_os_level() -> None:
    """An executor started with ``name_os_thread`` names its thread for the OS (what
    ``top -H`` and the throughput bench's CPU by thread read), cut to Linux's 15 bytes."""
    with ThreadPoolExecutor(
        1, thread_name_prefix="ecrec-sentiment", initializer=name_os_thread
    ) as pool:
        comm = pool.submit(
            lambda: Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
        ).result()
    assert comm.strip() == "ecrec-sentiment_0"[:15]


def test_garbage_collections_are_timed_per_generation() -> None:
    """The worker's ``/ecrec/stats`` shows how long the collector stopped the process: every
    collection is counted under its generation and timed (one timer for the process)."""
    import gc

    from streams.process import gc_pauses

    pauses = gc_pauses()
    assert gc_pauses() is pauses and gc.callbacks.count(pauses._callback) == 1
    before, took = pauses.as_dict()["gen2"], pauses.total_s[2]
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    gc.collect()
    after = pauses.as_dict()["gen2"]
    assert after["collections"] == before["collections"] + 1
    assert after["collected"] >= before["collected"] + 1  # the cycle
    assert pauses.total_s[2] > took and pauses.max_s[2] > 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_worker_runs_on_the_event_loop_and_switch_interval_it_is_given(loop: str) -> None:
    """``event_loop`` picks the loop new event loops are made of; ``gil_switch_interval_ms``
    sets Python's switch interval and ``gc_young_threshold`` the young collections' threshold
    (all process-wide: restored here)."""
    import asyncio
    import gc

    from streams.process import running_event_loop, use_event_loop

    interval, policy = sys.getswitchinterval(), asyncio.get_event_loop_policy()
    thresholds = gc.get_threshold()

    async def running() -> str:
        return running_event_loop()

    try:
        use_event_loop(
            load_settings(event_loop=loop, gil_switch_interval_ms=2.5, gc_young_threshold=12_345)
        )
        assert sys.getswitchinterval() == pytest.approx(0.0025)
        assert gc.get_threshold() == (12_345, *thresholds[1:])
        assert asyncio.run(running()) == loop
        gc.set_threshold(*thresholds)
        use_event_loop(load_settings(event_loop=loop, gc_young_threshold=0))
        assert gc.get_threshold() == thresholds  # 0: Python's own
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
        asyncio.set_event_loop_policy(policy)
