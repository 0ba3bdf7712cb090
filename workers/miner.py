"""The robustness miner of an index replica (``ECREC_ROBUSTNESS__ENABLED=true``): it reads the
relevance examples on ``ecrec.examples``, perturbs their queries, searches the replica's own
live index (the serving model, swapped with it) and sends the pairs the index loses back to
``ecrec.examples`` for the trainer (:mod:`ecrec_stream.labels.adversarial`).

It starts once the replica has caught up with the catalog (before that every search would miss),
reads every partition by manual assignment and keeps its offsets in a small state file
(:mod:`ecrec_stream.state`), written only after the producer has flushed what those messages
mined: a crash re-mines a batch under the same ids, and the trainer's buffer drops the
duplicates (at-least-once plus idempotent ids). Its own examples come back to it and are skipped
(they are augmented).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ecrec_stream.config import Settings
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.labels.adversarial import AdversarialMiner
from ecrec_stream.labels.examples import ExampleBatch, TrainingExample, example_batch_messages
from ecrec_stream.state import load_state, save_state
from streams.kafka import ensure_topics, fetch, new_producer, partition_reader

LOG = logging.getLogger(__name__)
STATE_KIND = "robustness_miner"
STATE_VERSION = 1


class RobustnessMinerThread:
    """Mines adversarial pairs from ``ecrec.examples`` with ``live`` on a thread of its own."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        live: LiveItemIndex,
        caught_up: threading.Event,
    ) -> None:
        cfg = settings.robustness
        self.settings = settings
        self.bootstrap = bootstrap
        self.live = live
        self.caught_up = caught_up
        self.topic = settings.topics.examples
        self.state_path = cfg.state_path or Path(settings.index.data_dir) / "miner.state"
        self.offsets: dict[int, int] = self._load_offsets()
        mode = live.resolve_mode(cfg.search_mode)
        self.miner = AdversarialMiner(
            lambda queries, k: live.search_ids(queries, k, mode),
            kinds=cfg.kinds,
            k=cfg.k,
            seed=cfg.seed,
            sample_share=cfg.sample_share,
            max_per_example=cfg.max_per_example,
        )
        self.messages_read = 0
        self.committed_messages = 0  # read, mined, delivered and their offsets saved
        self.skipped_messages = 0
        self.sent_messages = 0
        self.oversized = 0
        self.error: str | None = None
        self._delivery_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ecrec-miner", daemon=True)

    def _load_offsets(self) -> dict[int, int]:
        state = load_state(self.state_path, kind=STATE_KIND, version=STATE_VERSION)
        if state is None:
            return {}
        return {int(p): int(o) for p, o in state["offsets"].items()}

    def _save_offsets(self) -> None:
        state = {"offsets": {str(p): o for p, o in self.offsets.items()}, "stats": self.stats()}
        save_state(self.state_path, state, kind=STATE_KIND, version=STATE_VERSION)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def stats(self) -> dict[str, Any]:
        return {
            **self.miner.stats.as_dict(),
            "messages_read": self.messages_read,
            "committed_messages": self.committed_messages,
            "skipped_messages": self.skipped_messages,
            "sent_messages": self.sent_messages,
            "oversized": self.oversized,
            "running": self._thread.is_alive(),
            "error": self.error,
        }

    def _run(self) -> None:
        while not self.caught_up.wait(0.2):
            if self._stop.is_set():
                return
        try:
            ensure_topics(self.bootstrap, [self.topic], self.settings.partitions)
            consumer = partition_reader(
                self.bootstrap,
                [self.topic],
                name=f"ecrec-miner-{self.settings.index.replica_id}",
                offsets={self.topic: self.offsets},
            )
        except Exception as exc:  # an optional stage: the index keeps serving without it
            LOG.exception("the robustness miner could not start")
            self.error = repr(exc)
            return
        producer = new_producer(self.bootstrap)
        try:
            while not self._stop.is_set():
                messages = fetch(consumer, 64, 0.2)
                if messages:
                    self._mine_messages(messages, producer)
        except Exception as exc:
            # Offsets were not advanced past the failed messages: a restart mines them again.
            LOG.exception("the robustness miner stopped on an error; the index keeps serving")
            self.error = repr(exc)
        finally:
            consumer.close()
            producer.flush(10)

    def _delivered(self, err: Any, message: Any) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))

    def _mine_messages(self, messages: list[Any], producer: Any) -> None:
        examples: list[TrainingExample] = []
        advanced = dict(self.offsets)
        for message in messages:
            self.messages_read += 1
            try:
                batch = ExampleBatch.model_validate_json(message.value() or b"")
            except ValidationError as exc:
                LOG.error("skipping malformed example batch @%s: %s", message.offset(), exc)
                self.skipped_messages += 1
            else:
                examples.extend(batch.examples)  # the miner counts and skips the rest
            advanced[message.partition()] = message.offset() + 1
        step = self.settings.robustness.batch_max
        for start in range(0, len(examples), step):
            mined = self.miner.mine(examples[start : start + step])
            if not mined:
                continue
            bodies, oversized = example_batch_messages(
                "relevance", mined, self.settings.max_message_bytes
            )
            self.oversized += len(oversized)
            for n, body in enumerate(bodies):
                producer.produce(
                    self.topic,
                    key=f"adversarial:{mined[0].example_id}:{n}".encode(),
                    value=body,
                    on_delivery=self._delivered,
                )
                producer.poll(0)
            self.sent_messages += len(bodies)
        remaining = producer.flush(30)
        if remaining or self._delivery_errors:
            raise RuntimeError(
                f"mined examples not delivered: {remaining} pending, "
                f"errors {self._delivery_errors[:3]}"
            )
        self.offsets = advanced
        self.committed_messages += len(messages)
        self._save_offsets()
