"""HTTP API of an index replica (search, item lookup, stats, health and Prometheus metrics),
and the replica process that serves it."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter, Histogram, make_asgi_app

from ecrec_stream.config import SearchMode, Settings
from ecrec_stream.contracts.http import (
    Health,
    ItemResponse,
    ReplicaStats,
    SearchResponse,
    SearchResult,
)
from ecrec_stream.exceptions import IndexError_
from ecrec_stream.index import LiveItemIndex
from workers.indexer import IndexReplica, serving_encoder

if TYPE_CHECKING:
    from workers.miner import RobustnessMinerThread

SEARCHES = Counter("ecrec_search_requests_total", "Search requests served")
SEARCH_SECONDS = Histogram(
    "ecrec_search_seconds", "Search latency (embed + FAISS and/or BM25 + fusion)", ["mode"]
)


def create_api(
    settings: Settings, replica: IndexReplica, miner: RobustnessMinerThread | None = None
) -> FastAPI:
    """The FastAPI app serving ``replica``'s live index (and its robustness miner's stats)."""
    live = replica.live
    cfg = settings.index
    api = FastAPI(title="ecrec-stream index replica", version="0.1.0")
    api.mount("/metrics", make_asgi_app())

    # built here: the description names this replica's default, and an annotation could
    # not see ``cfg`` (annotations are strings in this module)
    mode_query = Query(None, description=f"retriever(s); default {cfg.search_mode}")

    @api.get("/search", response_model=SearchResponse)
    async def search(
        q: str = Query(
            ..., min_length=1, max_length=cfg.max_query_chars, description="free-text query"
        ),
        k: int = Query(10, ge=1, le=cfg.max_k, description="number of results"),
        mode: SearchMode | None = mode_query,
    ) -> SearchResponse:
        query = q.strip()
        if not query:
            raise HTTPException(status_code=422, detail="q must contain non-space characters")
        try:
            mode = live.resolve_mode(mode)
        except IndexError_ as exc:  # e.g. a lexical mode on a replica without the lexical index
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        SEARCHES.inc()
        with SEARCH_SECONDS.labels(mode).time():
            # Embedding is CPU work: run it off the event loop (../shared/MODELS.md).
            results = await run_in_threadpool(live.search, query, k, mode)
        return SearchResponse(
            query=query,
            k=k,
            mode=mode,
            index_size=len(live),
            model_version=results[0].model_version if results else live.serving.version,
            results=[
                SearchResult(
                    item_id=r.item.item_id,
                    score=r.score,
                    title=r.item.title,
                    brand=r.item.brand,
                    category_path=r.item.category_path,
                    price=r.item.price,
                    dense_rank=r.dense_rank,
                    dense_score=r.dense_score,
                    lexical_rank=r.lexical_rank,
                    lexical_score=r.lexical_score,
                )
                for r in results
            ],
        )

    @api.get("/items/{item_id}", response_model=ItemResponse)
    async def get_item(item_id: str) -> ItemResponse:
        stored = live.get(item_id)
        if stored is None:
            raise HTTPException(status_code=404, detail=f"item {item_id!r} is not in the index")
        return ItemResponse(item=stored.item, indexed_at=stored.indexed_at)

    @api.get("/stats", response_model=ReplicaStats)
    async def stats() -> ReplicaStats:
        return ReplicaStats(
            **{
                **live.stats(),
                "freshness": live.freshness(),
                "restored_from_snapshot": replica.restored_from_snapshot,
                "offsets": replica.offsets,
                "skipped_messages": replica.skipped_messages,
                "caught_up": replica.caught_up.is_set(),
                "models": replica.model_stats,  # swaps done, artifacts refused, last error
                "robustness": miner.stats() if miner is not None else {"enabled": False},
            }
        )

    @api.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        if not replica.is_alive():
            raise HTTPException(status_code=503, detail=f"consumer stopped: {replica.error}")
        return Health(ok=True)

    return api


def serve_indexer(settings: Settings, bootstrap: str, *, log_level: str = "warning") -> None:
    """Run one replica with its HTTP API until SIGINT/SIGTERM; snapshot on the way out."""
    import uvicorn

    encoder = serving_encoder(settings)
    live = LiveItemIndex(encoder, settings.index)
    replica = IndexReplica(settings, bootstrap, live)
    replica.start()
    miner = None
    if settings.robustness.enabled:
        from workers.miner import RobustnessMinerThread

        miner = RobustnessMinerThread(settings, bootstrap, live, replica.caught_up)
        miner.start()
    api = create_api(settings, replica, miner)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal into the
    # handler that was installed before it. Make that a no-op so the final snapshot below runs
    # and the process exits 0 instead of dying by the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    try:
        uvicorn.run(api, host=settings.index.host, port=settings.index.port, log_level=log_level)
    finally:
        if miner is not None:
            miner.stop()
        replica.stop(final_snapshot=True)
