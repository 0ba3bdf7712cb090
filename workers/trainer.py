"""The trainer process: examples into a replay buffer, retraining alerts into gated retrains,
accepted models into the registry and onto ``ecrec.models``.

It reads every partition of ``ecrec.examples``, ``ecrec.alerts`` and ``ecrec.valid.items``
with manual assignment (like an index replica): the buffer file stores the offsets it holds,
so a restart resumes exactly there and keeps its buffer. Training blocks this loop while it
runs; the topics wait in Kafka meanwhile, nothing is lost. The training itself is
:class:`ecrec_stream.training.Retrainer`, which imports no Kafka client.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Message
from pydantic import ValidationError

from ecrec_stream.config import Settings
from ecrec_stream.contracts import (
    ModelPublication,
    RetrainRejected,
    parse_alert,
)
from ecrec_stream.contracts.events import EventBatch, ItemEvent
from ecrec_stream.embedding import item_text
from ecrec_stream.index.faiss_index import SearchHit
from ecrec_stream.index.lexical import Fts5Index, LexicalDoc
from ecrec_stream.index.live import lexical_doc
from ecrec_stream.index.store import ItemStore, plan_batch
from ecrec_stream.labels.examples import ExampleBatch
from ecrec_stream.state import atomic_write
from ecrec_stream.training import ReplayBuffer, Retrainer, RetrainOutcome
from ecrec_stream.training.fusion import FusionLearner, FusionOutcome
from ecrec_stream.training.registry import ArtifactError, open_registry
from ecrec_stream.training.retrain import model_encoder
from ecrec_stream.training.schedule import RetrainSchedule, Trigger
from streams.kafka import (
    DeadLetterSink,
    ensure_topics,
    fetch,
    new_producer,
    partition_reader,
)

LOG = logging.getLogger(__name__)


class TrainerWorker:
    """Keeps the buffer and the catalog fresh from Kafka and retrains on alerts."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        on_step: Callable[[int, int, float], None] | None = None,
        on_outcome: Callable[[RetrainOutcome], None] | None = None,
    ) -> None:
        cfg = settings.training
        self.settings = settings
        self.bootstrap = bootstrap
        self.names = settings.topics
        self.state_path = settings.trainer_dir / "buffer.state"
        self.status_path = settings.trainer_dir / "status.json"
        self.buffer = ReplayBuffer(
            cfg.recent_size, cfg.reservoir_size, dedupe_capacity=cfg.dedupe_capacity, seed=cfg.seed
        )
        self.restored = self.buffer.load(self.state_path)
        self.catalog = ItemStore()
        self.registry = open_registry(settings)
        self.retrainer = Retrainer(cfg, self.registry, settings.embedding)
        self.schedule = RetrainSchedule(
            min_interval_s=cfg.min_interval_s, defer_max_s=cfg.defer_max_s
        )
        self.outcomes: deque[dict[str, Any]] = deque(maxlen=20)
        self.stats: Counter[str] = Counter()
        self.on_step = on_step
        self.on_outcome = on_outcome
        self.started_ms = int(time.time() * 1000)
        self._last_save = time.monotonic()
        self._dirty = False
        self.stop_event = threading.Event()
        self.dead_letters = DeadLetterSink(settings, bootstrap)
        self.fusion_learner = FusionLearner(cfg, settings.index)
        # buffer.counts["added"] at the last fusion fit (a restored buffer waits for new ones)
        self._fusion_mark = self.buffer.counts["added"] if self.restored else 0

    # -- reading the topics ------------------------------------------------------------
    def _handle(self, message: Message) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        value = message.value() or b""
        if topic == self.names.examples:
            try:
                batch = ExampleBatch.model_validate_json(value)
            except ValidationError as exc:
                self._dead_letter(message, "examples", exc)
            else:
                self.stats["examples_read"] += len(batch.examples)
                self.buffer.add(batch.examples)
        elif topic == self.names.alerts:
            self._handle_alert(message, value)
        elif topic == self.names.valid_items:
            try:
                events = EventBatch.model_validate_json(value).events
            except ValidationError as exc:
                self._dead_letter(message, "batch", exc)
                events = []
            plan, _ = plan_batch([e for e in events if isinstance(e, ItemEvent)], self.catalog)
            for event in plan.values():
                if event.is_delete:
                    self.catalog.remove(event.item_id, event.ts)
                else:
                    self.catalog.put(event, event.ts)
            return  # the catalog is rebuilt from the topic at start: no offsets kept
        if topic is not None and partition is not None and offset is not None:
            self.buffer.offsets.setdefault(topic, {})[partition] = offset + 1
            self._dirty = True

    def _handle_alert(self, message: Message, value: bytes) -> None:
        try:
            alert = parse_alert(value)
        except ValidationError as exc:
            # not an alert of any known shape: set aside with the reason, never retrained on
            self._dead_letter(message, "alert", exc)
            return
        if isinstance(alert, RetrainRejected):
            return  # the trainer's own answer
        _, sent_ms = message.timestamp()
        fresh_start = self.names.alerts not in self.buffer.offsets
        if fresh_start and 0 < sent_ms < self.started_ms:
            # A trainer without saved offsets reads the alerts topic from the beginning: alerts
            # from before it started were meant for an earlier model.
            self.stats["stale_triggers"] += 1
            return
        self.stats["triggers"] += 1
        self.schedule.add(alert)

    def _dead_letter(self, message: Message, kind: str, exc: ValidationError) -> None:
        """A message that fails its topic's contract: set aside with the reason."""
        self.stats["malformed_messages"] += 1
        self.dead_letters.send(message, kind, exc)

    # -- retraining ----------------------------------------------------------------------
    def catalog_texts(self) -> dict[str, str]:
        """What the index embeds per item; items seen only in examples by their title."""
        texts = {s.item.item_id: item_text(s.item) for s in self.catalog}
        deleted = self.catalog.tombstones  # a copy per access: read it once
        for ex in self.buffer.examples():
            if ex.item_id not in texts and ex.text_pair and ex.item_id not in deleted:
                texts[ex.item_id] = ex.text_pair
        return texts

    def retrain_now(self, triggers: list[Trigger]) -> RetrainOutcome:
        """One gated retrain for ``triggers``; publishes or sends a rejection alert."""
        cfg = self.settings.training
        trigger_ids = [t.alert_id for t in triggers]
        t0 = time.perf_counter()
        split = self.buffer.split(cfg.holdout_recent, cfg.holdout_older)
        catalog = self.catalog_texts()
        buffer_s = time.perf_counter() - t0
        LOG.warning(
            "retraining on %d examples (%d + %d held back) for %s",
            len(split.train),
            len(split.recent_eval),
            len(split.older_eval),
            ", ".join(trigger_ids),
        )
        window = self._examples_window()
        outcome = self.retrainer.retrain(
            split,
            catalog,
            trigger=",".join(trigger_ids),
            training_window=window,
            on_step=self.on_step,
            buffer_s=buffer_s,
        )
        if outcome.insufficient_data and self._defer(triggers, outcome):
            return outcome
        self.schedule.finished(triggers)
        producer = new_producer(self.bootstrap)
        if outcome.accepted and outcome.manifest is not None:
            self._announce(producer, outcome.manifest, outcome.trigger)
            self.stats["published"] += 1
            LOG.warning("published model %s (%s)", outcome.manifest.version, outcome.reasons)
            # the dense lists change with the encoder: refit the fusion on the next pass
            self._fusion_mark = self.buffer.counts["added"] - self.settings.training.fusion_every
        else:
            rejection = RetrainRejected(
                alert_id=f"rejected-{outcome.candidate_version or uuid.uuid4().hex[:16]}",
                reason="; ".join(outcome.reasons),
                trigger=outcome.trigger,
                serving_version=outcome.serving_version,
                summary=json.loads(json.dumps(outcome.summary(), default=str)),
            )
            producer.produce(
                self.names.alerts,
                key=rejection.alert_id.encode(),
                value=rejection.model_dump_json().encode(),
            )
            self.stats["rejected"] += 1
            LOG.warning("retrain rejected: %s", rejection.reason)
        producer.flush(10)
        self.outcomes.append(outcome.summary())
        self.save()
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    def _examples_window(self) -> dict[str, Any]:
        """The ``ecrec.examples`` offsets the buffer has read (a manifest's training window)."""
        offsets = dict(self.buffer.offsets.get(self.names.examples, {}))
        return {"offsets": {self.names.examples: offsets}}

    def _announce(self, producer: Any, manifest: Any, trigger: str) -> None:
        """Put the publication of ``manifest`` (a model or a fusion) on ``ecrec.models``."""
        publication = ModelPublication.of(manifest, trigger=trigger)
        producer.produce(
            self.names.models,
            key=manifest.name.encode(),
            value=publication.model_dump_json().encode(),
        )

    # -- the learned fusion of hybrid search -------------------------------------------------
    def fusion_due(self) -> bool:
        """Whether enough new examples arrived since the last fit (and hybrid search is on)."""
        every = self.settings.training.fusion_every
        index = self.settings.index
        return (
            every > 0
            and index.lexical
            and index.learned_fusion
            and self.buffer.counts["added"] - self._fusion_mark >= every
        )

    def title_of(self, item_id: str) -> str | None:
        stored = self.catalog.get(item_id)
        return None if stored is None else stored.item.title

    def search_lists(
        self, queries: list[str]
    ) -> dict[str, tuple[list[SearchHit], list[SearchHit]]]:
        """The serving encoder's and BM25's result lists for ``queries`` over the trainer's
        catalog: what a replica fuses (exact search here; the replica's flat index is exact)."""
        depth = self.settings.index.hybrid_depth
        texts = self.catalog_texts()
        version, model = self.retrainer.serving()
        embedded = self.retrainer.embedded_catalog(version, model, texts)
        vectors = model_encoder(model, self.settings.training.encode_batch_size)(queries)
        dense = [[SearchHit(i, s) for i, s in row] for row in embedded.search(vectors, depth)]
        lexical = Fts5Index(self.settings.index.lexical_weights)
        docs = {s.item.item_id: lexical_doc(s.item) for s in self.catalog}
        docs.update({i: LexicalDoc(t) for i, t in texts.items() if i not in docs})
        lexical.upsert_many(list(docs), list(docs.values()))
        return {q: (d, lexical.search(q, depth)) for q, d in zip(queries, dense, strict=True)}

    def fit_fusion_now(self) -> FusionOutcome:
        """Refit the learned fusion on the buffer; publish it if the gate passes it."""
        cfg = self.settings.training
        self._fusion_mark = self.buffer.counts["added"]
        split = self.buffer.split(cfg.holdout_recent, cfg.holdout_older)
        serving_version = self.registry.current_fusion()
        serving = None
        if serving_version is not None:
            try:
                serving = self.registry.load_fusion(serving_version)
            except ArtifactError as exc:
                LOG.error(
                    "serving fusion %s not loadable (%s): gating against the fixed fusion",
                    serving_version,
                    exc,
                )
        outcome = self.fusion_learner.fit_many(split, self.search_lists, self.title_of, serving)
        if outcome.accepted and outcome.candidate is not None:
            flat = {
                f"{split_name}.{metric}": value
                for split_name, metrics in (
                    outcome.decision.candidate if outcome.decision else {}
                ).items()
                for metric, value in metrics.items()
            }
            manifest = self.registry.publish_fusion(
                outcome.candidate,
                parent_version=serving_version,
                training_window={**split.window(), **self._examples_window()},
                metrics=flat,
            )
            producer = new_producer(self.bootstrap)
            trigger = f"fusion refit at {self.buffer.counts['added']} examples"
            self._announce(producer, manifest, trigger)
            producer.flush(10)
            self.stats["fusions_published"] += 1
            LOG.warning("published learned fusion %s (%s)", manifest.version, outcome.reasons)
        else:
            self.stats["fusions_rejected"] += 1
            LOG.warning("learned fusion not published: %s", "; ".join(outcome.reasons))
        self.outcomes.append(outcome.summary())
        self.save()
        return outcome

    def _defer(self, triggers: list[Trigger], outcome: RetrainOutcome) -> bool:
        """Keep ``triggers`` for a retry (:meth:`RetrainSchedule.defer`); ``False`` once their
        wait is over (the caller rejects them)."""
        reason = "; ".join(outcome.reasons)
        waited = self.schedule.waited_s(triggers)
        if not self.schedule.defer(triggers, reason, self.buffer.counts["added"]):
            outcome.reasons.append(f"waited {waited:.0f} s for more examples")
            return False
        self.stats["deferred"] += 1
        LOG.warning("retrain deferred (%s), retried once more examples arrive", reason)
        self.save()
        return True

    def _ready_to_retry(self) -> bool:
        """Whether deferred triggers have new examples to try again with."""
        return self.schedule.has_new_examples(self.buffer.counts["added"])

    @property
    def pending(self) -> list[Trigger]:
        return self.schedule.pending

    @pending.setter
    def pending(self, triggers: list[Trigger]) -> None:
        self.schedule.pending = triggers

    # -- state ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        split_sizes = {
            "recent": len(self.buffer.recent),
            "reservoir": {str(k): len(v) for k, v in self.buffer.reservoir.items()},
        }
        return {
            "serving_version": self.registry.current(),
            "serving_fusion": self.registry.current_fusion(),
            "buffer": split_sizes,
            "buffer_counts": dict(self.buffer.counts),
            "catalog_items": len(self.catalog),
            "pending_triggers": len(self.pending),
            "deferred": self.schedule.deferral,
            "stats": dict(self.stats),
            "outcomes": list(self.outcomes),
        }

    def save(self) -> None:
        self.buffer.save(self.state_path)
        atomic_write(self.status_path, json.dumps(self.status(), default=str, indent=2).encode())
        self._dirty = False
        self._last_save = time.monotonic()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        """Consume and retrain until :attr:`stop_event` is set."""
        names = self.names
        cfg = self.settings.training
        ensure_topics(
            self.bootstrap,
            [names.examples, names.alerts, names.valid_items, names.models],
            self.settings.partitions,
        )
        consumer = partition_reader(
            self.bootstrap,
            [names.examples, names.alerts, names.valid_items],
            name="ecrec-trainer",
            offsets=self.buffer.offsets,
        )
        caught_up = False
        if self.retrainer.device.startswith("cuda"):
            LOG.info(
                "trainer warmed up on %s in %.1f s", self.retrainer.device, self.retrainer.warm_up()
            )
        try:
            while not self.stop_event.is_set():
                messages = fetch(consumer, 500, 0.2)
                for message in messages:
                    self._handle(message)
                caught_up = caught_up or not messages
                triggers = self.schedule.take_due(
                    caught_up=caught_up, examples_added=self.buffer.counts["added"]
                )
                if triggers:
                    self.retrain_now(triggers)
                elif caught_up and self.fusion_due():
                    self.fit_fusion_now()
                if self._dirty and time.monotonic() - self._last_save >= cfg.save_interval_s:
                    self.save()
        finally:
            consumer.close()
            self.save()


# glibc's mallopt parameter for the size above which an allocation gets pages of its own
M_MMAP_THRESHOLD = -3


def return_large_allocations_to_the_os(threshold: int = 128 * 1024) -> bool:
    """Serve allocations of ``threshold`` bytes or more from pages of their own, given back to
    the OS when freed. glibc otherwise adapts the threshold upwards as torch frees large blocks,
    keeps them in its heaps, and a trainer's RSS after a fine-tune stayed ~1 GB above what it
    used (bench.memory). No library exposes mallopt, hence ctypes; a no-op off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def serve_trainer(
    settings: Settings,
    bootstrap: str,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    on_outcome: Callable[[RetrainOutcome], None] | None = None,
) -> None:
    """Run the trainer until SIGINT/SIGTERM; the buffer is saved on the way out."""
    import signal

    return_large_allocations_to_the_os()
    worker = TrainerWorker(settings, bootstrap, on_step=on_step, on_outcome=on_outcome)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: worker.stop_event.set())
    if worker.restored:
        LOG.warning("trainer restored %d buffered examples", len(worker.buffer))
    worker.run()


def read_status(settings: Settings) -> dict[str, Any] | None:
    """The trainer's last written status (buffer, stats, recent outcomes), if any."""
    path: Path = settings.trainer_dir / "status.json"
    return json.loads(path.read_text()) if path.exists() else None


def wait_for_answer(
    settings: Settings, bootstrap: str, request_id: str, timeout_s: float
) -> ModelPublication | RetrainRejected | None:
    """The publication or rejection that answers retrain request ``request_id``, or ``None``
    after ``timeout_s``. Reads both topics from the beginning: they are small, and Tansu's
    ListOffsets(latest) cannot be trusted (docs/broker.md)."""
    names = settings.topics
    ensure_topics(bootstrap, [names.models, names.alerts], settings.partitions)
    consumer = partition_reader(bootstrap, [names.models, names.alerts], name="ecrec-retrain")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is not None:
                    continue
                answer: Any
                try:
                    if message.topic() == names.models:
                        answer = ModelPublication.model_validate_json(message.value() or b"")
                    else:
                        answer = parse_alert(message.value() or b"")
                except ValidationError:
                    continue
                if not isinstance(answer, ModelPublication | RetrainRejected):
                    continue
                if request_id in (answer.trigger or ""):
                    return answer
        return None
    finally:
        consumer.close()
