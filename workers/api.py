"""HTTP API of an index replica (search, item lookup, stats, health and Prometheus metrics),
and the replica process that serves it."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Histogram, make_asgi_app

from ecrec_stream.config import SearchMode, Settings
from ecrec_stream.contracts.http import (
    Health,
    ItemResponse,
    RecommendRequest,
    RecommendResponse,
    RecommendResult,
    ReplicaStats,
    SearchResponse,
    SearchResult,
    bearer_token_ok,
)
from ecrec_stream.exceptions import IndexError_
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.recommend import Recommendation
from ecrec_stream.recommend.recommender import Kind as RecommendKind
from workers.console import STATIC, ConsoleSampler, LatencyWindow
from workers.indexer import IndexReplica, serving_encoder

if TYPE_CHECKING:
    from workers.miner import RobustnessMinerThread

SEARCHES = Counter("ecrec_search_requests_total", "Search requests served")
RECOMMENDS = Counter("ecrec_recommend_requests_total", "Recommendation requests", ["kind"])
RECOMMEND_SECONDS = Histogram("ecrec_recommend_seconds", "Recommendation latency", ["kind"])
SEARCH_SECONDS = Histogram(
    "ecrec_search_seconds", "Search latency (embed + FAISS and/or BM25 + fusion)", ["mode"]
)


def replica_models(replica: IndexReplica) -> list[dict[str, Any]]:
    """The registry's versions, newest first, each with the command that makes it serve."""
    registry = replica.registry
    current = {registry.current(), registry.current_fusion()}
    return [
        {
            "version": m.version,
            "artifact": m.artifact,
            "name": m.name,
            "created_at": m.created_at.isoformat(),
            "parent_version": m.parent_version,
            "metrics": m.metrics,
            "serving": m.version in current,
            "rollback": f"ecrec-stream models --use {m.version}",
        }
        for m in reversed(registry.versions())
    ]


def create_api(
    settings: Settings,
    replica: IndexReplica,
    miner: RobustnessMinerThread | None = None,
    console: ConsoleSampler | None = None,
    latencies: dict[str, LatencyWindow] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``replica``'s live index (and its robustness miner's stats,
    and the operator console when ``console`` samples for it)."""
    live = replica.live
    cfg = settings.index
    latencies = latencies if latencies is not None else {}
    api = FastAPI(title="ecrec-stream index replica", version="0.1.0")
    api.mount("/metrics", make_asgi_app())
    token = settings.api.token

    if token is not None:
        expected = token.get_secret_value()

        @api.middleware("http")
        async def require_token(request: Request, call_next: Any) -> Response:
            """ECREC_API__TOKEN: every endpoint (metrics, health and the console too)."""
            if not bearer_token_ok(
                expected, request.headers.get("authorization"), request.query_params.get("token")
            ):
                return JSONResponse(
                    {"detail": "a bearer token is required (ECREC_API__TOKEN)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            response: Response = await call_next(request)
            return response

    def timed(name: str, started: float) -> None:
        if (window := latencies.get(name)) is not None:
            window.record(time.perf_counter() - started)

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
        started = time.perf_counter()
        with SEARCH_SECONDS.labels(mode).time():
            # Embedding is CPU work: run it off the event loop (../shared/MODELS.md).
            results = await run_in_threadpool(live.search, query, k, mode)
        timed("search", started)
        return SearchResponse(
            query=query,
            k=k,
            mode=mode,
            index_size=len(live),
            model_version=results[0].model_version if results else live.serving.version,
            fusion=live.fusion if mode == "hybrid" else None,
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

    rcfg = settings.recommend

    def recommended(
        kind: RecommendKind,
        anchors: list[str],
        k: int,
        results: list[Recommendation],
        **extra: Any,
    ) -> RecommendResponse:
        rows = []
        for r in results:
            stored = live.get(r.item_id)
            item = stored.item if stored else None
            rows.append(
                RecommendResult(
                    item_id=r.item_id,
                    score=r.score,
                    source=r.source,
                    reason=r.reason,
                    behaviour=r.behaviour,
                    flow=r.flow,
                    content=r.content,
                    popularity=r.popularity,
                    title=item.title if item else None,
                    category_path=item.category_path if item else [],
                    price=item.price if item else None,
                )
            )
        return RecommendResponse(
            kind=kind, anchors=anchors, k=k, index_size=len(live), results=rows, **extra
        )

    def run_recommend(
        kind: RecommendKind, anchors: list[str], k: int, **options: Any
    ) -> list[Recommendation]:
        with replica.recommend_lock:
            return replica.recommender.recommend(anchors, k, kind=kind, **options)

    def check_enabled() -> None:
        if replica.clicks_topic is None:
            raise HTTPException(status_code=404, detail="recommendations are off here")

    kind_query = Query(None, description="similar (default with item_id), bought_together, next")

    @api.get("/recommend", response_model=RecommendResponse)
    async def recommend(
        item_id: str | None = Query(None, max_length=256, description="similar to this item"),
        session_id: str | None = Query(None, max_length=256, description="next for a session"),
        k: int = Query(10, ge=1, le=rcfg.max_k, description="number of results"),
        kind: RecommendKind | None = kind_query,
        category: str | None = Query(None, max_length=256, description="only this category"),
        category_cap: int | None = Query(None, ge=1, description="at most this many per category"),
    ) -> RecommendResponse:
        """Items similar to or bought with ``item_id``, or the next items for a live
        ``session_id`` (its cart and purchases left out); exactly one of the two."""
        check_enabled()
        if (item_id is None) == (session_id is None):
            raise HTTPException(status_code=422, detail="give exactly one of item_id, session_id")
        options: dict[str, Any] = {"category": category, "category_cap": category_cap}
        if session_id is not None:
            sid = session_id

            def for_session() -> tuple[list[str], bool, list[Recommendation]]:
                with replica.recommend_lock:
                    session = replica.recommender.sessions.get(sid)
                    if session is None:  # unknown or expired: popular items
                        return [], False, replica.recommender.recommend([], k, **options)
                    results = replica.recommender.for_session(sid, k, **options) or []
                    return session.items(), True, results

            RECOMMENDS.labels("session").inc()
            started = time.perf_counter()
            with RECOMMEND_SECONDS.labels("session").time():
                # the content search is CPU work: off the event loop, as /search does
                anchors, found, results = await run_in_threadpool(for_session)
            timed("recommend", started)
            return recommended(
                "next", anchors, k, results or [], session_id=session_id, session_found=found
            )
        chosen: RecommendKind = kind or "similar"
        RECOMMENDS.labels(chosen).inc()
        started = time.perf_counter()
        with RECOMMEND_SECONDS.labels(chosen).time():
            results = await run_in_threadpool(run_recommend, chosen, [item_id or ""], k, **options)
        timed("recommend", started)
        return recommended(chosen, [item_id or ""], k, results)

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend_for_items(request: RecommendRequest) -> RecommendResponse:
        """Next items for these item ids (newest last), as for a cart or a session the shop
        tracks itself."""
        check_enabled()
        if not 1 <= request.k <= rcfg.max_k:
            raise HTTPException(status_code=422, detail=f"k must be 1-{rcfg.max_k}")
        if not 1 <= len(request.item_ids) <= rcfg.max_items:
            raise HTTPException(
                status_code=422, detail=f"item_ids must hold 1-{rcfg.max_items} ids"
            )
        if request.category_cap is not None and request.category_cap < 1:
            raise HTTPException(status_code=422, detail="category_cap must be at least 1")
        RECOMMENDS.labels(request.kind).inc()
        started = time.perf_counter()
        with RECOMMEND_SECONDS.labels(request.kind).time():
            results = await run_in_threadpool(
                run_recommend,
                request.kind,
                request.item_ids,
                request.k,
                exclude=request.exclude,
                category=request.category,
                category_cap=request.category_cap,
            )
        timed("recommend", started)
        return recommended(request.kind, request.item_ids, request.k, results)

    @api.get("/items/{item_id}", response_model=ItemResponse)
    async def get_item(item_id: str) -> ItemResponse:
        stored = live.get(item_id)
        if stored is None:
            raise HTTPException(status_code=404, detail=f"item {item_id!r} is not in the index")
        return ItemResponse(item=stored.item, indexed_at=stored.indexed_at)

    @api.get("/stats", response_model=ReplicaStats)
    async def stats() -> ReplicaStats:
        return ReplicaStats(**replica_stats(replica, miner))

    if console is not None:
        api.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

        @api.get("/console", include_in_schema=False)
        async def console_page() -> FileResponse:
            """The operator console (workers/console.py)."""
            return FileResponse(STATIC / "console.html", media_type="text/html")

        @api.get("/console/data")
        async def console_data() -> dict[str, Any]:
            """Every series the console plots, the alerts and the tables."""
            return {
                "interval_s": console.interval_s,
                "now": time.time(),
                **console.state.as_dict(),
            }

    @api.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        if not replica.is_alive():
            raise HTTPException(status_code=503, detail=f"consumer stopped: {replica.error}")
        return Health(ok=True)

    return api


def replica_stats(
    replica: IndexReplica, miner: RobustnessMinerThread | None = None
) -> dict[str, Any]:
    """What ``/stats`` answers (and the console samples)."""
    live = replica.live
    return {
        **live.stats(),
        "freshness": live.freshness(),
        "restored_from_snapshot": replica.restored_from_snapshot,
        "offsets": replica.offsets,
        "skipped_messages": replica.skipped_messages,
        "caught_up": replica.caught_up.is_set(),
        "models": replica.model_stats,  # swaps done, artifacts refused, last error
        "robustness": miner.stats() if miner is not None else {"enabled": False},
        "recommend": replica.recommend_stats(),
        "lag": replica.lag.as_dict() if replica.lag is not None else {},
        "broker": replica.capabilities.as_dict() if replica.capabilities else {},
    }


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
    console = latencies = None
    if settings.console.enabled:
        latencies = {"search": LatencyWindow(), "recommend": LatencyWindow()}
        console = ConsoleSampler(
            settings,
            lambda: replica_stats(replica, miner),
            latencies,
            lambda: replica_models(replica),
        ).start()
    api = create_api(settings, replica, miner, console, latencies)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal into the
    # handler that was installed before it. Make that a no-op so the final snapshot below runs
    # and the process exits 0 instead of dying by the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    try:
        uvicorn.run(api, host=settings.index.host, port=settings.index.port, log_level=log_level)
    finally:
        if console is not None:
            console.stop()
        if miner is not None:
            miner.stop()
        replica.stop(final_snapshot=True)
