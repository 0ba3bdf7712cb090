"""One retrain, start to finish: buffer split -> pairs with hard negatives -> fine-tune ->
evaluation on held-back data -> gate -> publication in the registry.

Pure domain code (torch, sentence-transformers, numpy): it runs, and is measured, on a GPU
machine without any Kafka client. The trainer worker feeds it the buffer and the catalog and
sends its outcome to the topics.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecrec_stream.config import EmbeddingSettings, TrainingSettings
from ecrec_stream.device import resolve_device
from ecrec_stream.embedding import (
    encode_pretokenised,
    resolve_model_path,
    weights_digest,
)
from ecrec_stream.training.buffer import BufferSplit
from ecrec_stream.training.evaluate import (
    EmbeddedCatalog,
    embed_catalog,
    judgments_from_examples,
    logged_rerank_metrics,
    retrieval_metrics,
)
from ecrec_stream.training.finetune import FineTuneConfig, FineTuneReport, TrainPair, fine_tune
from ecrec_stream.training.gate import GateDecision, evaluation_gate
from ecrec_stream.training.registry import ModelManifest, ModelRegistry

PHASES = ("buffer", "train", "evaluate", "publish")


@dataclass
class RetrainOutcome:
    """What a retrain did: the gate's decision, the versions, metrics and phase timings (s)."""

    trigger: str
    serving_version: str
    accepted: bool
    reasons: list[str]
    candidate_version: str | None = None
    manifest: ModelManifest | None = None
    decision: GateDecision | None = None
    fine_tune: FineTuneReport | None = None
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # nothing was trained: too few relevant pairs yet (the trainer may wait for more)
    insufficient_data: bool = False

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (for alerts, logs and the demo)."""
        return {
            "trigger": self.trigger,
            "accepted": self.accepted,
            "insufficient_data": self.insufficient_data,
            "reasons": self.reasons,
            "serving_version": self.serving_version,
            "candidate_version": self.candidate_version,
            "serving": self.decision.serving if self.decision else {},
            "candidate": self.decision.candidate if self.decision else {},
            # candidate minus serving per split, with its bootstrap interval
            "differences": {
                name: dataclasses.asdict(d) for name, d in self.decision.differences.items()
            }
            if self.decision
            else {},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "counts": self.counts,
            "fine_tune": self.fine_tune.as_dict() if self.fine_tune else None,
        }


def model_encoder(model: Any, batch_size: int = 256) -> Callable[[list[str]], np.ndarray]:
    """``texts -> unit vectors`` for a sentence-transformers model (pre-tokenised, bf16 autocast
    on CUDA: :func:`encode_pretokenised`)."""

    def encode(texts: list[str]) -> np.ndarray:
        return encode_pretokenised(model, texts, batch_size)

    return encode


def catalog_fingerprint(catalog: Mapping[str, str]) -> str:
    h = hashlib.sha1()
    for item_id in sorted(catalog):
        h.update(item_id.encode() + b"\0" + catalog[item_id].encode() + b"\0")
    return h.hexdigest()


class Retrainer:
    """Keeps the serving model (from the registry) and runs gated retrains against it."""

    def __init__(
        self,
        settings: TrainingSettings,
        registry: ModelRegistry,
        base_model: EmbeddingSettings | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.base_model = base_model or EmbeddingSettings()
        self.device = resolve_device(settings.device)
        self._serving: tuple[str, Any] | None = None
        self.last_candidate: Any = None  # the model the last retrain trained (kept or not)
        self.last_candidate_catalog: EmbeddedCatalog | None = None  # ... and its catalog vectors
        self._catalog_cache: dict[tuple[str, str], EmbeddedCatalog] = {}

    # -- the serving model -------------------------------------------------------------------
    def serving(self) -> tuple[str, Any]:
        """(version, model) of the registry's current version; the base model is published
        as the first version when the registry is empty."""
        current = self.registry.current()
        if self._serving is not None and self._serving[0] == current:
            return self._serving
        if current is None:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(
                resolve_model_path(self.base_model.model), device=self.device
            )
            manifest = self.registry.publish(model, name=self.base_model.model)
            current = manifest.version
        else:
            model = self.registry.load(current, device=self.device)
        model.max_seq_length = self.settings.max_seq_length
        self._serving = (current, model)
        return self._serving

    def _encoder(self, model: Any) -> Callable[[list[str]], np.ndarray]:
        return model_encoder(model, self.settings.encode_batch_size)

    def warm_up(self) -> float:
        """One throwaway training step on a copy of the serving model, on the trainer's device,
        so that the first retrain after an alert does not pay for CUDA's lazy start (context,
        cuBLAS handles, kernel loading: seconds on a GPU). Returns the seconds it took."""
        t0 = time.perf_counter()
        _, model = self.serving()
        scratch = copy.deepcopy(model)
        pairs = [TrainPair(f"warm up query {i}", f"warm up item {i}") for i in range(8)]
        config = FineTuneConfig(epochs=1, batch_size=8, max_seq_length=16, validation_fraction=0)
        fine_tune(scratch, pairs, config, device=self.device)
        self._encoder(model)(["warm up"])
        del scratch
        return time.perf_counter() - t0

    def embedded_catalog(
        self, version: str, model: Any, catalog: Mapping[str, str]
    ) -> EmbeddedCatalog:
        key = (version, catalog_fingerprint(catalog))
        if key not in self._catalog_cache:
            self._catalog_cache = {
                key: embed_catalog(self._encoder(model), version, catalog, device=self.device)
            }
        return self._catalog_cache[key]

    # -- pairs ---------------------------------------------------------------------------
    def training_pairs(
        self,
        split: BufferSplit,
        catalog: Mapping[str, str],
        serving_model: Any,
        serving_catalog: EmbeddedCatalog,
    ) -> tuple[list[TrainPair], dict[str, int]]:
        """Relevant examples become pairs (item text from the catalog, weight = example weight
        x grade); each gets a hard negative: an item the shopper skipped for that query, else
        one the serving index ranks high that is not known to be relevant."""
        positives: dict[str, set[str]] = defaultdict(set)
        negatives: dict[str, list[str]] = defaultdict(list)
        for ex in split.train:
            if ex.label == 1:
                positives[ex.text].add(ex.item_id)
            else:
                negatives[ex.text].append(ex.item_id)

        def text_of(item_id: str, fallback: str | None) -> str | None:
            return catalog.get(item_id) or fallback

        counts = {"labelled_negatives": 0, "mined_negatives": 0, "no_negative": 0}
        mined: dict[str, list[str]] = {}
        if self.settings.hard_negatives:
            need = sorted(q for q in positives if not negatives.get(q))
            if need and serving_catalog.item_ids:
                skip = self.settings.hard_negative_skip
                ranked = serving_catalog.top_k(self._encoder(serving_model)(need), skip + 10)
                mined = dict(zip(need, [r[skip:] for r in ranked], strict=True))

        def first_negative(query: str, candidates: list[str]) -> str | None:
            """The text of the first candidate not known to be relevant to ``query``."""
            return next(
                (
                    text
                    for item_id in candidates
                    if item_id not in positives[query] and (text := catalog.get(item_id))
                ),
                None,
            )

        pairs = []
        for ex in split.train:
            if ex.label != 1:
                continue
            positive = text_of(ex.item_id, ex.text_pair)
            if not positive:
                continue
            negative = None
            if self.settings.hard_negatives:
                negative = first_negative(ex.text, negatives.get(ex.text, []))
                source = "labelled_negatives"
                if negative is None:
                    negative = first_negative(ex.text, mined.get(ex.text, []))
                    source = "mined_negatives" if negative else "no_negative"
                counts[source] += 1
            grade = max(ex.grade or 1, 1)
            pairs.append(TrainPair(ex.text, positive, ex.weight * (1 + grade) / 2, negative))
        counts["pairs"] = len(pairs)
        return pairs, counts

    # -- one retrain ---------------------------------------------------------------------
    def retrain(
        self,
        split: BufferSplit,
        catalog: Mapping[str, str],
        *,
        trigger: str,
        training_window: dict[str, Any] | None = None,
        on_step: Callable[[int, int, float], None] | None = None,
        buffer_s: float = 0.0,
    ) -> RetrainOutcome:
        """Fine-tune the serving model on ``split.train``, gate it on the held-back splits and
        publish it if it passes. ``catalog`` maps item ids to the texts the index embeds."""
        cfg = self.settings
        self.last_candidate = None
        self.last_candidate_catalog = None
        timings = {"buffer": buffer_s}
        t0 = time.perf_counter()
        version, serving_model = self.serving()
        serving_catalog = self.embedded_catalog(version, serving_model, catalog)
        pairs, counts = self.training_pairs(split, catalog, serving_model, serving_catalog)
        counts.update(
            train_examples=len(split.train),
            recent_eval_examples=len(split.recent_eval),
            older_eval_examples=len(split.older_eval),
            catalog_items=len(catalog),
        )
        timings["buffer"] += time.perf_counter() - t0
        outcome = RetrainOutcome(trigger, version, False, [], timings=timings, counts=counts)
        if len(pairs) < cfg.min_examples:
            outcome.reasons = [
                f"only {len(pairs)} relevant pairs to train on (need {cfg.min_examples})"
            ]
            outcome.insufficient_data = True
            return outcome

        t1 = time.perf_counter()
        candidate = copy.deepcopy(serving_model)
        report = fine_tune(
            candidate,
            pairs,
            FineTuneConfig(
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                learning_rate=cfg.learning_rate,
                max_seq_length=cfg.max_seq_length,
                patience=cfg.patience,
                lora=cfg.lora,
                lora_rank=cfg.lora_rank,
                gradient_checkpointing=cfg.gradient_checkpointing == "on"
                or (cfg.gradient_checkpointing == "auto" and self.device == "cpu"),
                seed=cfg.seed,
            ),
            device=self.device,
            on_step=on_step,
        )
        outcome.fine_tune = report
        self.last_candidate = candidate
        timings["train"] = time.perf_counter() - t1
        candidate_version = weights_digest(candidate)
        outcome.candidate_version = candidate_version
        if candidate_version == version:
            outcome.reasons = ["fine-tuning did not lower the validation loss: nothing to publish"]
            return outcome

        t2 = time.perf_counter()
        candidate_catalog = embed_catalog(
            self._encoder(candidate), candidate_version, catalog, device=self.device
        )
        self.last_candidate_catalog = candidate_catalog
        k = cfg.eval_k
        splits = {
            "recent": judgments_from_examples(split.recent_eval),
            "older": judgments_from_examples(split.older_eval),
        }

        def scores(
            metrics: Callable[..., dict[str, float]], model: Any, embedded: EmbeddedCatalog
        ) -> dict[str, dict[str, float]]:
            return {
                name: metrics(self._encoder(model), embedded, j, k) for name, j in splits.items()
            }

        notes: list[str] = []
        metrics = logged_rerank_metrics if cfg.gate_eval == "logged_rerank" else retrieval_metrics
        serving_metrics = scores(metrics, serving_model, serving_catalog)
        if (
            metrics is logged_rerank_metrics
            and serving_metrics["recent"]["queries"] < cfg.min_eval_queries
        ):
            # too few held-back queries with both relevant and non-relevant logged items
            notes.append(
                f"gate on catalog retrieval: {int(serving_metrics['recent']['queries'])} "
                "recent queries have graded logged items to re-rank"
            )
            metrics = retrieval_metrics
            serving_metrics = scores(metrics, serving_model, serving_catalog)
        candidate_metrics = scores(metrics, candidate, candidate_catalog)
        decision = evaluation_gate(
            serving_metrics,
            candidate_metrics,
            metric=f"ndcg@{k}",
            tolerance=cfg.tolerance,
            margin=cfg.gate_margin,
            confidence=cfg.gate_confidence,
            min_queries=cfg.min_eval_queries,
        )
        outcome.decision = decision
        outcome.accepted = decision.accepted
        outcome.reasons = [*notes, *decision.reasons]
        timings["evaluate"] = time.perf_counter() - t2
        if not decision.accepted:
            return outcome

        t3 = time.perf_counter()
        flat = {
            f"{split_name}.{metric}": value
            for split_name, metrics in candidate_metrics.items()
            for metric, value in metrics.items()
        }
        outcome.manifest = self.registry.publish(
            candidate,
            name=self.base_model.model,
            parent_version=version,
            training_window={**split.window(), **(training_window or {})},
            metrics=flat,
        )
        self._serving = (outcome.manifest.version, candidate)
        self._catalog_cache = {
            (outcome.manifest.version, catalog_fingerprint(catalog)): candidate_catalog
        }
        timings["publish"] = time.perf_counter() - t3
        return outcome
