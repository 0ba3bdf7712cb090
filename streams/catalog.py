"""What the worker's model-backed agents share: one cached encoder, a thread per stage for
model work (off the event loop), and the catalog cache of every item's title and category."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from ecrec_stream.config import Settings
from ecrec_stream.device import name_os_thread

LOG = logging.getLogger(__name__)

# The model threads ("lanes") of a worker: each label task and drift has its own, so a stage
# never queues behind another's model call (torch leaves the GIL while it computes).
Lane = Literal["relevance", "sentiment", "drift"]
LANES: tuple[Lane, ...] = ("relevance", "sentiment", "drift")


class SharedModelWork:
    """One cached encoder for the label and drift agents (a review embedded for a label
    function is a cache hit for the drift detector, and one being embedded is waited for, not
    embedded twice) and a model thread per lane: relevance labelling, sentiment labelling and
    drift. Drift's embeddings had held the label agents' thread up to 1 s at a time; apart,
    they run side by side: at 100 reviews/s the review agent's worst lag went 5.1 -> 1.6 s
    (bench.throughput --paced). At 1,000 session events/s the session agent's calls then
    waited 8 s of a 40-s run behind the review agent's (timed per call): the two label tasks
    got a thread each."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        import torch

        from ecrec_stream.device import inference_threads
        from ecrec_stream.embedding import CachedEncoder, SentenceTransformerEncoder
        from ecrec_stream.embedding.int8 import Int8Encoder

        torch.set_num_threads(inference_threads(settings.embedding.worker_threads))
        encoder: SentenceTransformerEncoder | Int8Encoder
        if settings.embedding.worker_quantization == "int8":
            encoder = Int8Encoder(settings.embedding, threads=torch.get_num_threads())
        else:
            encoder = SentenceTransformerEncoder(settings.embedding)
        LOG.info(
            "encoder %s on %s in %s: %d torch thread(s), %d pass thread(s)",
            encoder.name,
            encoder.device,
            encoder.precision,
            torch.get_num_threads(),
            encoder.pass_threads,
        )
        self.encoder = CachedEncoder(encoder)
        self.encoder_info = {  # what the worker's stats say of it
            "name": encoder.name,
            "version": encoder.version,
            "device": encoder.device,
            "precision": encoder.precision,
            "pass_threads": encoder.pass_threads,
        }
        self._threads = {
            lane: ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"ecrec-{lane}", initializer=name_os_thread
            )
            for lane in LANES
        }
        self.catalog = CatalogCache(bootstrap, settings.topics.valid_items)

    async def off_loop(self, lane: Lane, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on ``lane``'s model thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads[lane], fn, *args)


class CatalogCache:
    """Item titles (for the content relevance function) and top-level categories (for drift),
    read from ``valid_items`` (all partitions, from the beginning) by a confluent-kafka consumer
    thread: every worker needs every item, not just its own partitions' share."""

    def __init__(self, bootstrap: str, topic: str, capacity: int = 1_000_000) -> None:
        import threading

        self.bootstrap = bootstrap
        self.topic = topic
        self.capacity = capacity
        self._titles: dict[str, str] = {}
        self._categories: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ecrec-titles", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def get(self, item_id: str) -> str | None:
        return self._titles.get(item_id)

    def category(self, item_id: str) -> str | None:
        """The item's top-level category, ``None`` when unknown or uncategorised."""
        return self._categories.get(item_id)

    def __len__(self) -> int:
        return len(self._titles)

    def _run(self) -> None:
        name_os_thread()
        from streams.kafka import partition_reader

        consumer = partition_reader(self.bootstrap, [self.topic], name="ecrec-titles")
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(500, timeout=0.2):
                    if msg.error() is not None:
                        continue
                    # Plain JSON, not the pydantic model: the ingest agent validated these
                    # already, and this thread shares the worker's CPU with the agents.
                    try:
                        events = json.loads(msg.value() or b"")["events"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    for item in events:
                        if item.get("type") != "item":
                            continue
                        item_id = item["item_id"]
                        if item.get("op") == "delete":
                            self._titles.pop(item_id, None)
                            self._categories.pop(item_id, None)
                        elif len(self._titles) < self.capacity or item_id in self._titles:
                            self._titles[item_id] = item.get("title") or ""
                            if path := item.get("category_path"):
                                self._categories[item_id] = path[0]
        finally:
            consumer.close()
