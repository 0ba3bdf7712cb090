"""Real search-relevance judgments (../shared/data/crowdflower_search_relevance) for the
benchmarks: the catalog (every distinct title), the judged (query, title) pairs, and shopping
sessions simulated from the judgments.

The session simulator never sees the label functions: impressions are the serving index's top
10 for the query (a share of sessions has two results swapped, as randomised swap interventions
do), and clicks follow the human gain through a position-biased cascade: a shopper examines
position k with probability ``1 / (k + 1) ** 0.8``, clicks an examined result with probability
``0.05 + 0.45 * gain`` (gain 0-2 from the 1-4 judgment), stays long on relevant results and
briefly on others, carts and buys the most relevant ones, and stops after a purchase.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SHARED_DATA
from ecrec_stream.contracts.events import ClickEvent, SearchEvent
from ecrec_stream.labels.base import RelevanceCandidate
from ecrec_stream.labels.sessions import add_event, new_session, relevance_candidates

DATA = SHARED_DATA / "crowdflower_search_relevance"
EXAMINATION_EXPONENT = 0.8


@dataclass(frozen=True)
class Judgments:
    """Distinct titles (the catalog), queries, and median relevance (1-4) per judged pair."""

    titles: list[str]
    queries: list[str]
    relevance: dict[tuple[str, int], int]  # (query, title index) -> median_relevance

    def gain(self, query: str, title: int) -> float:
        """0-2 gain from the 1-4 judgment; unjudged pairs count as not relevant (0)."""
        rel = self.relevance.get((query, title))
        return 0.0 if rel is None else (rel - 1) * 2.0 / 3.0


def load(path: Path = DATA) -> Judgments:
    with open(path / "train.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    titles: dict[str, int] = {}
    relevance: dict[tuple[str, int], int] = {}
    for row in rows:
        t = titles.setdefault(row["product_title"].strip(), len(titles))
        relevance[(row["query"].strip(), t)] = int(row["median_relevance"])
    queries = sorted({q for q, _ in relevance})
    return Judgments(list(titles), queries, relevance)


def query_half(query: str) -> int:
    """The fixed split by query used across the benchmarks: ``sha1(query) % 2``."""
    return int(hashlib.sha1(query.encode()).hexdigest(), 16) % 2


def relevant_pairs(judg: Judgments, half: int) -> list[tuple[str, str]]:
    """Every (query, title) judged relevant (median_relevance >= 3) for the queries of one
    half of the fixed split, in a stable order."""
    return [
        (q, judg.titles[t])
        for (q, t), rel in sorted(judg.relevance.items())
        if rel >= 3 and query_half(q) == half
    ]


def top_k(item_vectors: np.ndarray, query_vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact inner-product top ``k`` (rows of item indices, best first)."""
    scores = query_vectors @ item_vectors.T
    part = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


@dataclass
class SimulatedSessions:
    """Candidates built by the worker's own session code, with the human truth of each."""

    candidates: list[RelevanceCandidate]
    judged: np.ndarray  # the (query, title) pair has a human judgment
    relevant: np.ndarray  # median_relevance >= 3
    sessions: int


def session_events(
    judgments: Judgments,
    rankings: dict[str, list[int]],
    n_sessions: int,
    *,
    seed: int = 0,
    swap_rate: float = 0.3,
    start: datetime | None = None,
) -> Iterator[tuple[SearchEvent, list[ClickEvent]]]:
    """``n_sessions`` shopping sessions over the queries of ``rankings`` (query -> ranked title
    ids, item ids ``t<id>``), one a minute from ``start``: each session's search and its
    clicks (the cascade of the module docstring)."""
    rng = random.Random(seed)
    t0 = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
    queries = sorted(rankings)
    for s in range(n_sessions):
        query = rng.choice(queries)
        shown = list(rankings[query])
        if rng.random() < swap_rate and len(shown) > 1:
            i, j = rng.sample(range(len(shown)), 2)
            shown[i], shown[j] = shown[j], shown[i]
        ts = t0 + timedelta(minutes=s)
        sid = f"cf-{seed}-{s}"
        search = SearchEvent(
            event_id=f"{sid}-q",
            ts=ts,
            search_id=f"{sid}-q",
            session_id=sid,
            query=query,
            impressions=[f"t{t}" for t in shown],
        )
        clicks = []
        for pos, title in enumerate(shown):
            if rng.random() >= 1.0 / (pos + 1) ** EXAMINATION_EXPONENT:
                continue
            gain = judgments.gain(query, title)
            if rng.random() >= 0.05 + 0.45 * gain:
                continue
            relevant = gain >= 4.0 / 3.0
            dwell = rng.randint(20_000, 180_000) if relevant else rng.randint(500, 15_000)
            action = "click"
            if gain >= 2.0 and rng.random() < 0.35:
                action = "purchase" if rng.random() < 0.5 else "add_to_cart"
            clicks.append(
                ClickEvent(
                    event_id=f"{sid}-c{pos}",
                    ts=ts + timedelta(seconds=5 + pos),
                    session_id=sid,
                    search_id=f"{sid}-q",
                    item_id=f"t{title}",
                    position=pos,
                    action=action,  # type: ignore[arg-type]
                    dwell_ms=dwell,
                )
            )
            if action == "purchase":
                break
        yield search, clicks


def simulate(
    judgments: Judgments,
    rankings: dict[str, list[int]],
    n_sessions: int,
    *,
    seed: int = 0,
    swap_rate: float = 0.3,
    start: datetime | None = None,
) -> SimulatedSessions:
    """``n_sessions`` sessions (:func:`session_events`) folded by the worker's own session code
    into relevance candidates, each with its human judgment."""
    cands: list[RelevanceCandidate] = []
    sessions = session_events(
        judgments, rankings, n_sessions, seed=seed, swap_rate=swap_rate, start=start
    )
    for search, clicks in sessions:
        state = new_session(search.session_id, 0)
        events: list[SearchEvent | ClickEvent] = [search, *clicks]
        for event in events:
            add_event(state, event, max_clicks=500)
        for c in relevance_candidates(state):
            cands.append(replace(c, item_title=judgments.titles[int(c.item_id[1:])]))
    judged = np.array([(c.query, int(c.item_id[1:])) in judgments.relevance for c in cands])
    relevant = np.array(
        [judgments.relevance.get((c.query, int(c.item_id[1:])), 0) >= 3 for c in cands]
    )
    return SimulatedSessions(cands, judged, relevant, n_sessions)


def precision_recall(mask: np.ndarray, want: np.ndarray, judged: np.ndarray) -> dict[str, Any]:
    """Precision of ``mask`` and recall of ``want``, both over judged rows only."""
    m, w = mask & judged, want & judged
    return {
        "n": int(mask.sum()),
        "n_judged": int(m.sum()),
        "precision": float(w[m].mean()) if m.any() else float("nan"),
        "recall": float((m & w).sum() / max(int(w.sum()), 1)),
    }
