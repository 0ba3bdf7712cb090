"""The lexical (BM25) side of an index replica: SQLite FTS5, in memory, changed in place.

Why SQLite FTS5: it is in Python's standard library, updates incrementally (an upsert is a
delete plus an insert, no rebuild), ranks by BM25 (``bm25()``, with per-column weights) and
serialises the whole database to bytes for a snapshot (``Connection.serialize``). BM25 is
not written here; only the tokenisation that product search needs is:

* sizes and model numbers stay one token ("3/4", "wd-40", "2.5") *and* their parts are
  indexed too ("wd 40"), so both spellings find the item;
* a dot that ends a word is dropped ("in." -> "in"); the Porter stemmer folds plurals.

Queries are OR-ed terms (BM25 rewards the items that match more of them); every term is
quoted, so no query text is ever read as FTS5 syntax.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ecrec_stream.index.faiss_index import SearchHit

# Word characters plus the joiners kept inside tokens: "3/4", "wd-40", "2.5", "o'neill".
_TOKEN = re.compile(r"[\w]+(?:[./\-'][\w]+)*", re.UNICODE)
_JOINERS = re.compile(r"[./\-']")
TOKENIZER = "porter unicode61 remove_diacritics 2 tokenchars './-'"
MAX_QUERY_TERMS = 32


@dataclass(frozen=True, slots=True)
class LexicalDoc:
    """The fields a lexical index holds for one item."""

    title: str
    brand: str = ""
    category: str = ""


def tokens(text: str) -> list[str]:
    """Lower-cased search tokens of ``text``; joined tokens also give their parts.

    >>> tokens("Husky 3/4 in. x 10 ft. Hose, WD-40")
    ['husky', '3/4', '3', '4', 'in', 'x', '10', 'ft', 'hose', 'wd-40', 'wd', '40']
    """
    out: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        token = match.group(0)
        out.append(token)
        if _JOINERS.search(token):
            out.extend(p for p in _JOINERS.split(token) if p)
    return out


def _indexed(text: str) -> str:
    return " ".join(tokens(text))


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression: the query's distinct tokens, quoted, OR-ed.

    >>> match_expression('3/4" "pipe')
    '"3/4" OR "3" OR "4" OR "pipe"'
    >>> match_expression("   ") is None
    True
    """
    terms = list(dict.fromkeys(tokens(query)))[:MAX_QUERY_TERMS]
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class LexicalIndex(Protocol):
    """What a replica needs from a lexical index (one writer; searches under its lock)."""

    def __len__(self) -> int: ...

    def upsert_many(self, item_ids: Sequence[str], docs: Sequence[LexicalDoc]) -> None: ...

    def delete_many(self, item_ids: Sequence[str]) -> int: ...

    def search(self, query: str, k: int) -> list[SearchHit]: ...

    def to_state(self) -> bytes: ...


class Fts5Index:
    """BM25 over title, brand and category with SQLite FTS5 (higher score = better).

    >>> idx = Fts5Index()
    >>> idx.upsert_many(["a", "b"], [LexicalDoc("WD-40 Spray 12 oz."), LexicalDoc("Garden hose")])
    >>> [h.item_id for h in idx.search("wd 40", 5)], [h.item_id for h in idx.search("hoses", 5)]
    (['a'], ['b'])
    >>> idx.delete_many(["a", "zzz"]), len(idx), idx.search("spray", 5)
    (1, 1, [])
    """

    def __init__(self, weights: tuple[float, float, float] = (1.0, 0.5, 0.3)) -> None:
        # check_same_thread=False: the replica's consumer thread writes, web threads search;
        # the replica's lock serialises them.
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS ids(rid INTEGER PRIMARY KEY, item_id TEXT UNIQUE NOT NULL);
            CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(
                title, brand, category, tokenize="{TOKENIZER}"
            );
            """
        )
        self._set_rank(weights)

    def _set_rank(self, weights: tuple[float, float, float]) -> None:
        """Store the rank function with the column weights in the table: "ORDER BY rank" then
        lets FTS5 rank and cut at k itself."""
        self.weights = weights
        w_title, w_brand, w_category = weights
        # committed at once: deserialize() over a connection left inside a transaction
        # crashed the interpreter later (on garbage collection)
        with self._db:
            self._db.execute(
                "INSERT INTO docs(docs, rank) VALUES ('rank', ?)",
                (f"bm25({float(w_title)}, {float(w_brand)}, {float(w_category)})",),
            )

    @classmethod
    def from_state(
        cls, blob: bytes, weights: tuple[float, float, float] = (1.0, 0.5, 0.3)
    ) -> Fts5Index:
        """An index from :meth:`to_state` bytes, ranking with ``weights`` (the snapshot's
        stored rank function is replaced: the settings in force win)."""
        index = cls(weights)
        index._db.deserialize(blob)
        index._set_rank(weights)
        return index

    def to_state(self) -> bytes:
        return self._db.serialize()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM ids").fetchone()[0])

    def upsert_many(self, item_ids: Sequence[str], docs: Sequence[LexicalDoc]) -> None:
        if len(item_ids) != len(docs):
            raise ValueError(f"{len(item_ids)} ids for {len(docs)} documents")
        with self._db:  # one transaction per micro-batch
            cur = self._db.cursor()
            for item_id, doc in zip(item_ids, docs, strict=True):
                row = cur.execute("SELECT rid FROM ids WHERE item_id = ?", (item_id,)).fetchone()
                if row is None:
                    cur.execute("INSERT INTO ids(item_id) VALUES (?)", (item_id,))
                    rid = cur.lastrowid
                else:
                    rid = row[0]
                    cur.execute("DELETE FROM docs WHERE rowid = ?", (rid,))
                cur.execute(
                    "INSERT INTO docs(rowid, title, brand, category) VALUES (?, ?, ?, ?)",
                    (rid, _indexed(doc.title), _indexed(doc.brand), _indexed(doc.category)),
                )

    def delete_many(self, item_ids: Sequence[str]) -> int:
        removed = 0
        with self._db:
            cur = self._db.cursor()
            for item_id in item_ids:
                row = cur.execute("SELECT rid FROM ids WHERE item_id = ?", (item_id,)).fetchone()
                if row is None:
                    continue
                cur.execute("DELETE FROM docs WHERE rowid = ?", (row[0],))
                cur.execute("DELETE FROM ids WHERE rid = ?", (row[0],))
                removed += 1
        return removed

    def search(self, query: str, k: int) -> list[SearchHit]:
        expression = match_expression(query)
        if expression is None or k <= 0:
            return []
        rows = self._db.execute(
            "SELECT ids.item_id, top.rank FROM "
            "(SELECT rowid, rank FROM docs WHERE docs MATCH ? ORDER BY rank LIMIT ?) AS top "
            "JOIN ids ON ids.rid = top.rowid ORDER BY top.rank",
            (expression, k),
        ).fetchall()
        # FTS5's rank (bm25) is negated so that ascending order is best first; flip it back.
        # Equal scores (titles of one length that match alike) are ordered by item id, not by
        # rowid: replicas insert in different orders, and fused ranks must not depend on it.
        hits = [SearchHit(item_id, -float(score)) for item_id, score in rows]
        return sorted(hits, key=lambda hit: (-hit.score, hit.item_id))


__all__ = ["Fts5Index", "LexicalDoc", "LexicalIndex", "match_expression", "tokens"]
