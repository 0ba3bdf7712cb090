"""What the project's HTTP endpoints answer: the index replica's ``/search``, ``/items``,
``/stats`` and ``/healthz`` (FastAPI, so these make its OpenAPI schema complete) and the stream
worker's ``/ecrec/stats`` and ``/ecrec/drift`` (Faust web pages, validated before they are
sent). Stage-specific sub-documents whose shape belongs to a stage (the label agents'
counters, each detector's row, the miner's stats) are typed as JSON objects here."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ecrec_stream.contracts.alerts import RetrainingAlert
from ecrec_stream.contracts.events import ItemEvent


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SearchResult(_Answer):
    item_id: str
    score: float
    title: str | None
    brand: str
    category_path: list[str]
    price: float | None
    # which retriever found it: 1-based rank and score in each list (null: not found there)
    dense_rank: int | None
    dense_score: float | None
    lexical_rank: int | None
    lexical_score: float | None


class SearchResponse(_Answer):
    query: str
    k: int
    mode: str
    index_size: int
    model_version: str  # the encoder (content digest) whose vectors answered, one per search
    # hybrid only: how the two lists were fused ("rrf", "weighted" or "learned <version>")
    fusion: str | None = None
    results: list[SearchResult]


class ItemResponse(_Answer):
    item: ItemEvent
    indexed_at: datetime


class Freshness(_Answer):
    """Event time to searchable, in seconds, of the upserts applied in the last minutes."""

    n: int
    p50_s: float | None
    p99_s: float | None
    max_s: float | None


class ReplicaStats(_Answer):
    items: int
    tombstones: int
    applied_events: int
    items_embedded: int
    last_applied_at: datetime | None
    backend: str  # what serves now: "flat" or "ivf"
    configured_backend: str  # INDEX__BACKEND: "auto", "flat" or "ivf"
    ivf_lists: int | None
    ivf_retrains: int  # IVFs built in the background by the auto backend
    model: str
    model_version: str
    swaps: int
    lexical_items: int | None
    search_mode: str
    fusion: str  # hybrid's fusion now: "rrf", "weighted" or "learned <version>"
    rebuild: dict[str, Any] | None
    freshness: Freshness
    restored_from_snapshot: bool
    offsets: dict[str, dict[int, int]]
    skipped_messages: int
    caught_up: bool
    models: dict[str, Any]
    robustness: dict[str, Any]
    recommend: dict[str, Any]
    # records behind the end of each partition read (null, with the reason, where the broker's
    # end offsets are not high watermarks) and what the broker was measured to do
    lag: dict[str, Any]
    broker: dict[str, int | bool]


class Health(_Answer):
    ok: bool


class WorkerStats(_Answer):
    """``/ecrec/stats``: per event kind, records accepted and dead-lettered, batches and
    messages sent; partitions assigned to this worker; the label agents' counters; the
    consumer group's lag on the input topics (from committed offsets and high watermarks) and
    the broker's measured capabilities."""

    valid: dict[str, int]
    dead: dict[str, int]
    dead_reasons: dict[str, int] = {}  # ingest's dead letters by reason
    batches: dict[str, int]
    messages: dict[str, int]
    assigned: int
    # topic -> partitions this worker holds (input topics, and table changelogs it is active or
    # standby for)
    partitions: dict[str, list[int]]
    labels: dict[str, Any]
    lag: dict[str, Any]
    broker: dict[str, int | bool]
    # "topic:partition" -> times it was re-read after its processing stalled (streams/stalls.py)
    rereads: dict[str, int]
    # the event loop the worker runs on: "uvloop" or "asyncio" (ECREC_EVENT_LOOP)
    event_loop: str = "asyncio"
    # the cyclic garbage collector's pauses since the worker started, per generation
    # ("gen0".."gen2": collections, total_s, max_s, collected)
    gc: dict[str, dict[str, float]] = {}


class DriftStatus(_Answer):
    """``/ecrec/drift``: each detector's reference progress and latest statistic against its
    threshold, the recent alerts, and how far the monitor has got in event time."""

    enabled: bool
    model_version: str | None = None
    detectors: dict[str, dict[str, Any]] = {}
    alerts: list[RetrainingAlert] = []
    counts: dict[str, int] = {}
    waiting: int = 0
    observed_until: datetime | None = None
    stats: dict[str, int] = {}
    catalog_items: int = 0


class RecommendRequest(_Answer):
    """``POST /recommend``: next items for an explicit list of item ids (newest last)."""

    item_ids: list[str]
    k: int = 10
    kind: Literal["next", "similar", "bought_together"] = "next"
    exclude: list[str] = []
    category: str | None = None
    category_cap: int | None = None


class RecommendResult(_Answer):
    item_id: str
    score: float
    source: Literal["behaviour", "flow", "content", "popularity"]
    reason: str
    # each source's normalised score (null: that source did not find the item)
    behaviour: float | None
    flow: float | None
    content: float | None
    popularity: float | None
    title: str | None
    category_path: list[str]
    price: float | None


class RecommendResponse(_Answer):
    kind: str
    anchors: list[str]  # the items the recommendations start from (a session's, newest last)
    session_id: str | None = None
    session_found: bool | None = None  # an unknown or expired session gets popular items
    k: int
    index_size: int
    results: list[RecommendResult]


def bearer_token_ok(expected: str, authorization: str | None, query_token: str | None) -> bool:
    """Whether a request carries ``expected``: ``Authorization: Bearer <token>`` or, for a
    browser opening the console, ``?token=<token>`` (compared in constant time).

    >>> bearer_token_ok("s3cret", "Bearer s3cret", None), bearer_token_ok("s3cret", None, "x")
    (True, False)
    """
    given = query_token
    if authorization and authorization.startswith("Bearer "):
        given = authorization.removeprefix("Bearer ")
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())
