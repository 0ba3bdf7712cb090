"""A Faust app with one table, run as a process by tests/test_brokers.py's recovery test.

``TABLE_APP_MODE=fill`` writes one table key per record of its input topic, up to 500 at a
time (its changelog gets many-record producer batches, the last one included), and prints
``FILLED <n>`` once it holds ``TABLE_APP_KEYS`` keys; ``count`` recovers the table, prints
``KEYS <n>`` once recovery is complete, and writes nothing. ``TABLE_APP_PATCHED=1`` applies
the worker's recovery fix for brokers whose end offsets are not high watermarks
(streams.app.recover_tables_to_the_last_record).
"""

from __future__ import annotations

import os
import sys

import faust

from streams.app import recover_tables_to_the_last_record


def build() -> faust.App:
    """The app the environment describes (read here, not at import: pytest imports this
    module for its doctests)."""
    bootstrap = os.environ["TABLE_APP_BOOTSTRAP"]
    mode = os.environ["TABLE_APP_MODE"]
    wanted = int(os.environ["TABLE_APP_KEYS"])
    app = faust.App(
        os.environ["TABLE_APP_ID"],
        broker=f"kafka://{bootstrap}",
        # recovered into RocksDB as in the worker; filled in memory (take() batches have no
        # event context, which RocksDB needs for a write's partition)
        store="rocksdb://" if mode == "count" else "memory://",
        datadir=os.environ["TABLE_APP_DATADIR"],
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=1,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        # each micro-batch of table writes leaves as one producer batch, the last one included
        producer_linger=0.2,
        producer_max_batch_size=1_000_000,
        web_enabled=False,
        web_port=int(os.environ["TABLE_APP_PORT"]),
    )
    if os.environ.get("TABLE_APP_PATCHED") == "1":
        recover_tables_to_the_last_record(app, bootstrap)
    source = app.topic(os.environ["TABLE_APP_TOPIC"], value_serializer="raw", key_serializer="raw")
    # use_partitioner: written from take() batches, outside an event's context (one partition)
    keys = app.Table("keys", default=int, partitions=1, use_partitioner=True)
    reported = []

    if mode == "fill":

        @app.agent(source)
        async def fill(stream: faust.StreamT) -> None:
            async for values in stream.take(500, within=1.0):
                for value in values:
                    keys[value.decode()] = 1

    @app.timer(0.5)
    async def report() -> None:
        if reported or not app.tables.recovery.completed.is_set():
            return
        if mode == "count":
            print(f"KEYS {len(keys)}", flush=True)
            reported.append(True)
        elif len(keys) >= wanted:
            print(f"FILLED {len(keys)}", flush=True)
            reported.append(True)

    return app


if __name__ == "__main__":
    sys.argv[1:] = ["worker", "--loglevel", "warn"]
    build().main()
