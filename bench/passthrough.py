"""Baseline: a raw Faust passthrough agent (one ``Topic.send`` per event, no validation).

Run by ``bench/ingest.py`` as ``python -m bench.passthrough IN OUT BOOTSTRAP APP_ID``.
"""

from __future__ import annotations

import sys

import faust


def main() -> None:
    source, sink, bootstrap, app_id = sys.argv[1:5]
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        topic_partitions=4,
    )
    out = app.topic(sink, value_serializer="raw", key_serializer="raw")

    @app.agent(app.topic(source, value_serializer="raw", key_serializer="raw"))
    async def passthrough(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await out.send(key=event.message.key, value=event.message.value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
