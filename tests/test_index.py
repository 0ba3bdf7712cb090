"""The FAISS item index, the live index with its version guard, and snapshots."""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecrec_stream.config import IndexSettings
from ecrec_stream.embedding import item_text
from ecrec_stream.exceptions import IndexError_, SnapshotError
from ecrec_stream.index import FaissItemIndex, LiveItemIndex
from ecrec_stream.index.lexical import Fts5Index, LexicalDoc
from ecrec_stream.index.persist import CURRENT, LEXICAL_FILE, read_snapshot
from tests.helpers import HashEncoder, item


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", ["flat", "ivf"])
def test_upsert_replaces_delete_removes_and_state_round_trips(backend: str) -> None:
    rng = np.random.default_rng(0)
    idx = FaissItemIndex(16, backend=backend, nlist=4, nprobe=4)  # type: ignore[arg-type]
    ids = [f"i{i}" for i in range(400)]
    vecs = _unit(rng, 400, 16)
    idx.upsert_many(ids, vecs)
    assert len(idx) == 400
    assert idx.is_trained_ivf == (backend == "ivf")  # 400 >= 39 * 4 trains the IVF
    # each vector finds itself first
    top = idx.search(vecs[:20], 1)
    assert [hits[0].item_id for hits in top] == ids[:20]
    # upsert replaces in place: same count, new vector found
    new = _unit(rng, 1, 16)
    idx.upsert_many(["i5"], new)
    assert len(idx) == 400
    assert idx.search(new, 1)[0][0].item_id == "i5"
    np.testing.assert_allclose(idx.vector("i5"), new[0], atol=1e-6)
    assert idx.delete_many(["i5", "i6", "missing"]) == 2
    assert "i5" not in idx and len(idx) == 398
    assert all(h.item_id not in {"i5", "i6"} for h in idx.search(new, 50)[0])
    blob, meta = idx.to_state()
    back = FaissItemIndex.from_state(blob, json.loads(json.dumps(meta)))
    assert len(back) == 398 and back.is_trained_ivf == idx.is_trained_ivf
    assert [h.item_id for h in back.search(vecs[:5], 3)[0]] == [
        h.item_id for h in idx.search(vecs[:5], 3)[0]
    ]
    back.delete_many(["i7"])  # removal still works after a reload (hashtable direct map)
    assert "i7" not in back


def test_bad_shapes_and_duplicates_raise() -> None:
    idx = FaissItemIndex(4)
    with pytest.raises(IndexError_):
        idx.upsert_many(["a"], np.zeros((1, 3), np.float32))
    with pytest.raises(IndexError_):
        idx.upsert_many(["a", "a"], np.zeros((2, 4), np.float32))
    with pytest.raises(IndexError_):
        idx.search(np.zeros((1, 4), np.float32), 0)
    assert idx.search(np.zeros((2, 4), np.float32), 3) == [[], []]


def test_live_index_searches_by_text_and_guards_versions() -> None:
    live = LiveItemIndex(HashEncoder())
    live.apply_many([item("a", "red apple", 1), item("b", "green tea", 1)])
    assert live.search("tea", 1)[0].item.item_id == "b"
    # delete at t=5, then a redelivered older upsert (t=3) must not resurrect it
    stats = live.apply_many([item("b", op="delete", ts=5)])
    assert stats.deleted == 1 and len(live) == 1
    stats = live.apply_many([item("b", "green tea", 3)])
    assert stats.stale_skipped == 1 and live.get("b") is None
    # within one batch the last event per item wins; older ones are stale
    stats = live.apply_many(
        [
            item("a", "apple v3", 9),
            item("a", "apple v2", 8),
            item("c", "coffee", 2),
            item("c", op="delete", ts=4),
        ]
    )
    assert live.get("a").item.title == "apple v3"  # type: ignore[union-attr]
    assert live.get("c") is None and stats.stale_skipped == 1
    # a newer upsert after a delete brings the item back
    live.apply_many([item("b", "green tea", 6)])
    assert live.get("b") is not None


def test_redelivered_batch_is_idempotent() -> None:
    live = LiveItemIndex(HashEncoder())
    batch = [item(f"i{i}", f"thing {i}", 1) for i in range(10)] + [item("i3", op="delete", ts=2)]
    live.apply_many(batch)
    before = ({s.item.item_id for s in live.store}, len(live))
    live.apply_many(batch)
    assert (
        ({s.item.item_id for s in live.store}, len(live))
        == before
        == ({f"i{i}" for i in range(10)} - {"i3"}, 9)
    )


def test_snapshot_restores_without_reembedding(tmp_path: Path) -> None:
    encoder = HashEncoder()
    live = LiveItemIndex(encoder)
    live.apply_many(
        [item(f"i{i}", f"product {i}", 1) for i in range(50)] + [item("i7", op="delete", ts=2)]
    )
    live.save_snapshot(tmp_path, {"topic": {0: 10, 1: 4}})
    fresh_encoder = HashEncoder()
    restored = LiveItemIndex(fresh_encoder)
    offsets = restored.load_snapshot(tmp_path)
    assert offsets == {"topic": {0: 10, 1: 4}}
    assert fresh_encoder.texts_encoded == 0 and restored.items_embedded == 0
    assert len(restored) == 49 and restored.get("i7") is None
    assert restored.store.is_stale("i7", item("i7", ts=1).ts)  # tombstone survived
    assert [r.item.item_id for r in restored.search("product 12", 3)] == [
        r.item.item_id for r in live.search("product 12", 3)
    ]


def test_snapshot_with_another_model_reembeds(tmp_path: Path) -> None:
    live = LiveItemIndex(HashEncoder(name="old"))
    live.apply_many([item(f"i{i}", f"product {i}", 1) for i in range(20)])
    live.save_snapshot(tmp_path, {})
    new_encoder = HashEncoder(dim=16, name="new")
    restored = LiveItemIndex(new_encoder)
    restored.load_snapshot(tmp_path)
    assert new_encoder.texts_encoded == 20 and len(restored) == 20
    assert restored.index.dim == 16


def test_a_fine_tune_under_the_same_name_is_another_version(tmp_path: Path) -> None:
    live = LiveItemIndex(HashEncoder(name="shop-model"))
    live.apply_many([item(f"i{i}", f"product {i}", 1) for i in range(20)])
    live.save_snapshot(tmp_path, {})
    tuned = HashEncoder(name="shop-model", salt="tuned")  # same name and dim, new weights
    restored = LiveItemIndex(tuned)
    restored.load_snapshot(tmp_path)
    assert tuned.texts_encoded == 20  # stale vectors were not loaded under the old name
    assert restored.stats()["model_version"] == tuned.version != live.stats()["model_version"]


class SlowEncoder(HashEncoder):
    """A HashEncoder that takes its time, so a rebuild overlaps searches and updates."""

    def encode(self, texts: list[str]) -> np.ndarray:
        time.sleep(0.002 + 0.0002 * len(texts))
        return super().encode(texts)


def _churn(live: LiveItemIndex, n: int, stop: threading.Event, errors: list[BaseException]) -> None:
    """Until ``stop``: rename items i0..i<n>, add new ones and delete others, a batch at a time
    (errors go to ``errors``, for the main thread to report)."""
    try:
        ts = 2
        while not stop.is_set():
            k = ts % n
            live.apply_many(
                [
                    item(f"i{k}", f"renamed {k} product", ts),
                    item(f"new{ts}", f"fresh product {ts}", ts),
                    item(f"i{(k + n // 2) % n}", op="delete", ts=ts),
                ]
            )
            ts += 1
    except BaseException as exc:
        errors.append(exc)


def test_hot_swap_under_searches_and_updates_mixes_no_models_and_loses_nothing() -> None:
    old, new = HashEncoder(name="m"), SlowEncoder(name="m", salt="v2")
    encoders = {old.version: old, new.version: new}
    live = LiveItemIndex(old)
    live.apply_many([item(f"i{i}", f"product {i % 97} colour {i % 13}", 1) for i in range(3000)])
    errors: list[BaseException] = []
    stop = threading.Event()
    versions_seen: set[str] = set()

    def searcher() -> None:
        rng = np.random.default_rng(1)
        try:
            while not stop.is_set():
                query = f"product {rng.integers(97)} colour {rng.integers(13)}"
                results = live.search(query, 10, "dense")
                assert len({r.model_version for r in results}) <= 1
                for r in results:  # each score is that one model's query . item vectors
                    enc = encoders[r.model_version]
                    q, v = enc.encode([query])[0], enc.encode([item_text(r.item)])[0]
                    assert abs(float(q @ v) - r.score) < 1e-4, (query, r)
                    versions_seen.add(r.model_version)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    writer = partial(_churn, live, 3000, stop, errors)
    threads = [threading.Thread(target=searcher), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    swapped = live.swap_encoder(new, batch_size=64)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert swapped >= 3000 and live.serving.version == new.version
    assert versions_seen == {old.version, new.version}  # searches ran on both sides
    # every item the store holds is in the index with the new model's vector; nothing else
    stored = {s.item.item_id: s.item for s in live.store}
    assert len(live) == len(stored) and any(i.startswith("new") for i in stored)
    for item_id, it in stored.items():
        assert np.allclose(live.index.vector(item_id), new.encode([item_text(it)])[0], atol=1e-5)
    assert live.stats()["rebuild"] is None and live.stats()["swaps"] == 1
    # the lexical index (model-independent, kept across the swap) agrees with the store too
    assert live.lexical is not None and len(live.lexical) == len(stored)
    newest = max((i for i in stored if i.startswith("new")), key=lambda i: int(i[3:]))
    assert live.search(stored[newest].title or "", 1, "lexical")[0].item.item_id == newest


def test_snapshots_are_atomic_pruned_and_checked(tmp_path: Path) -> None:
    live = LiveItemIndex(HashEncoder(), IndexSettings(snapshot_keep=2))
    for n in range(4):
        live.apply_many([item(f"i{n}", "x", n)])
        live.save_snapshot(tmp_path, {"t": {0: n}})
    snaps = sorted(p.name for p in tmp_path.glob("snap-*"))
    assert len(snaps) == 2 and (tmp_path / CURRENT).read_text() == snaps[-1]
    # a crash mid-write leaves a .tmp directory behind: ignored, the last good one loads
    (tmp_path / "snap-999999999999.tmp").mkdir()
    snap = read_snapshot(tmp_path)
    assert snap is not None and snap.offsets == {"t": {0: 3}}
    # corruption is detected, not loaded
    (tmp_path / snaps[-1] / "items.jsonl").write_text("{}\n")
    with pytest.raises(SnapshotError, match="checksum"):
        read_snapshot(tmp_path)
    assert read_snapshot(tmp_path / "nothing-here") is None


class _Message:
    """Stands in for a confluent-kafka Message in a unit with no broker."""

    def __init__(self, value: bytes, partition: int, offset: int) -> None:
        self._value, self._partition, self._offset = value, partition, offset

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return "ecrec.valid.items"


def test_replica_embeds_a_bulk_load_in_bounded_steps() -> None:
    """One fetched message can hold a whole ingest batch (500 items): the replica applies at
    most ``batch_max`` items at a time, each step searchable before the next is embedded."""
    from ecrec_stream.config import Settings
    from ecrec_stream.contracts.events import EventBatch, SourcePosition
    from workers.indexer import IndexReplica

    settings = Settings(index={"batch_max": 100})
    live = LiveItemIndex(HashEncoder(), settings.index)
    replica = IndexReplica(settings, "unused:9092", live)
    steps: list[tuple[int, int]] = []  # (items in the call, items searchable before it)
    real = live.apply_many

    def recording(events: Any) -> Any:
        steps.append((len(events), len(live)))
        return real(events)

    live.apply_many = recording  # type: ignore[method-assign]
    messages = []
    for m in range(2):
        events = [item(f"b{m}-{i}", f"bulk item {i}") for i in range(500)]
        batch = EventBatch(
            kind="item",
            source=SourcePosition(topic="ecrec.items", partition=0, offset=m * 500),
            last_offset=m * 500 + 499,
            events=events,
        )
        messages.append(_Message(batch.model_dump_json().encode(), 0, m))
    replica._apply(messages)  # type: ignore[arg-type]
    assert [n for n, _ in steps] == [100] * 10
    assert [before for _, before in steps] == list(range(0, 1000, 100))
    assert len(live) == 1000 and replica.offsets[replica.topic] == {0: 2}


# -- lexical index and hybrid search ----------------------------------------------------------
def test_lexical_index_keeps_sizes_and_model_numbers_and_changes_in_place() -> None:
    lex = Fts5Index()
    lex.upsert_many(
        ["pipe", "spray", "hose"],
        [
            LexicalDoc("Copper pipe 3/4 in. x 10 ft.", "Everbilt", "plumbing pipes"),
            LexicalDoc("WD-40 multi-use spray 11 oz.", "WD-40", "lubricants"),
            LexicalDoc("Garden hose 50 ft", "Flexzilla", "garden"),
        ],
    )

    def ids(query: str) -> list[str]:
        return [h.item_id for h in lex.search(query, 5)]

    assert ids("3/4 pipe")[0] == "pipe" and ids("wd40 spray")[0] == "spray"
    assert ids("wd 40") == ["spray"] and ids("hoses") == ["hose"]  # parts; plural stemmed
    assert ids("flexzilla") == ["hose"]  # brand is indexed
    # query text is never read as FTS5 syntax
    for hostile in ['"', "NEAR(a b", "a AND", "*", "x:y", "-", "''", "(((", "é ü"]:
        lex.search(hostile, 5)
    # replace in place, then delete: no stale text left behind
    lex.upsert_many(["hose"], [LexicalDoc("Soaker hose 25 ft", "Melnor", "garden")])
    assert ids("flexzilla") == [] and ids("soaker") == ["hose"] and len(lex) == 3
    assert lex.delete_many(["hose", "unknown"]) == 1 and ids("soaker") == [] and len(lex) == 2
    restored = Fts5Index.from_state(lex.to_state())
    assert len(restored) == 2 and [h.item_id for h in restored.search("copper", 3)] == ["pipe"]
    # column weights come from the settings in force, not from the snapshot
    lex.upsert_many(["brand-hit"], [LexicalDoc("spray nozzle", "Copper King", "garden")])
    assert [h.item_id for h in lex.search("copper", 2)] == ["pipe", "brand-hit"]
    brand_first = Fts5Index.from_state(lex.to_state(), weights=(1.0, 20.0, 0.3))
    assert [h.item_id for h in brand_first.search("copper", 2)] == ["brand-hit", "pipe"]


def test_hybrid_search_finds_by_either_retriever_and_says_which() -> None:
    live = LiveItemIndex(HashEncoder())
    live.apply_many(
        [
            item("drill", "cordless drill driver GSR-12V", 1),
            item("bits", "drill bit set", 1),
            item("saw", "circular saw", 1, brand="Makita"),
        ]
    )
    lexical = live.search("gsr 12v", 3, "lexical")  # the hashed bag of words has no "gsr"
    assert [r.item.item_id for r in lexical] == ["drill"] and lexical[0].lexical_rank == 1
    assert lexical[0].dense_rank is None
    hybrid = live.search("drill gsr-12v", 3, "hybrid")
    assert hybrid[0].item.item_id == "drill"
    assert hybrid[0].dense_rank is not None and hybrid[0].lexical_rank == 1
    assert all(r.lexical_rank is None for r in live.search("drill", 3, "dense"))
    assert live.search("makita", 1, "lexical")[0].item.item_id == "saw"
    # deletes and the event-time guard apply to the lexical side too
    live.apply_many([item("drill", op="delete", ts=5)])
    live.apply_many([item("drill", "cordless drill driver GSR-12V", 3)])  # stale redelivery
    assert live.search("gsr 12v", 3, "lexical") == [] and live.get("drill") is None
    with pytest.raises(IndexError_, match="unknown search mode"):
        live.search("drill", 3, "fuzzy")  # type: ignore[arg-type]
    dense_only = LiveItemIndex(HashEncoder(), IndexSettings(lexical=False, search_mode="dense"))
    dense_only.apply_many([item("a", "tea", 1)])
    assert dense_only.search("tea", 1)[0].item.item_id == "a"
    with pytest.raises(IndexError_, match="needs the lexical index"):
        dense_only.search("tea", 1, "hybrid")


def test_snapshot_restores_the_lexical_index_or_rebuilds_it(tmp_path: Path) -> None:
    live = LiveItemIndex(HashEncoder())
    live.apply_many(
        [item(f"i{i}", f"widget model AB-{i}", 1) for i in range(30)]
        + [item("i4", op="delete", ts=2)]
    )
    live.save_snapshot(tmp_path, {})
    snap_dir = tmp_path / (tmp_path / CURRENT).read_text().strip()
    assert (snap_dir / LEXICAL_FILE).exists()
    restored = LiveItemIndex(HashEncoder())
    restored.load_snapshot(tmp_path)
    assert restored.lexical is not None and len(restored.lexical) == 29
    assert [r.item.item_id for r in restored.search("ab-7", 1, "lexical")] == ["i7"]
    assert restored.search("ab-4", 1, "lexical") == [] or (
        restored.search("ab-4", 1, "lexical")[0].item.item_id != "i4"
    )
    # a snapshot from before the lexical index (no lexical file): rebuilt from its items
    manifest = json.loads((snap_dir / "manifest.json").read_text())
    del manifest["sha256"][LEXICAL_FILE]
    (snap_dir / "manifest.json").write_text(json.dumps(manifest))
    (snap_dir / LEXICAL_FILE).unlink()
    older = LiveItemIndex(HashEncoder())
    older.load_snapshot(tmp_path)
    assert older.lexical is not None and len(older.lexical) == 29
    assert [r.item.item_id for r in older.search("ab-7", 1, "lexical")] == ["i7"]


def test_equal_scores_are_ordered_by_item_id_whatever_the_insertion_order() -> None:
    """Two replicas apply the same items in different orders (they read partitions as they
    come); their lists, and so the ranks a fusion adds up, must not depend on it."""
    titles = {f"it-{k}": f"wool scarf {k}" for k in range(12)}
    orders = [sorted(titles), sorted(titles, reverse=True)]
    lexical, dense = [], []
    for order in orders:
        lex = Fts5Index()
        lex.upsert_many(order, [LexicalDoc(titles[i]) for i in order])
        lexical.append([h.item_id for h in lex.search("wool scarf", 12)])
        vectors = FaissItemIndex(4)
        same = np.ones((len(order), 4), dtype=np.float32) / 2.0  # one vector for every item
        vectors.upsert_many(order, same)
        dense.append([h.item_id for h in vectors.search(same[:1], 12)[0]])
    assert lexical[0] == lexical[1] == sorted(titles)
    assert dense[0] == dense[1] == sorted(titles)


def test_ivf_with_every_list_probed_finds_what_exact_search_finds() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"it-{k}" for k in range(400)]
    flat, ivf = FaissItemIndex(8), FaissItemIndex(8, backend="ivf", nlist=4, nprobe=1)
    flat.upsert_many(ids, vectors)
    ivf.upsert_many(ids, vectors)
    assert ivf.is_trained_ivf
    queries = vectors[:20]
    ivf.set_nprobe(4)  # all four lists: exact
    exact = [[h.item_id for h in row] for row in flat.search(queries, 10)]
    assert [[h.item_id for h in row] for row in ivf.search(queries, 10)] == exact
    with pytest.raises(IndexError_):
        ivf.set_nprobe(0)


def test_auto_backend_asks_for_an_ivf_at_its_size_and_again_as_the_catalog_grows() -> None:
    rng = np.random.default_rng(3)
    idx = FaissItemIndex(16, backend="auto", ivf_min_items=1_000)
    vecs = _unit(rng, 4_000, 16)
    idx.upsert_many([f"i{i}" for i in range(999)], vecs[:999])
    assert idx.retrain_target() is None and not idx.is_trained_ivf  # below the size: exact
    idx.upsert_many(["i999"], vecs[999:1000])
    lists = idx.retrain_target()
    assert lists == 16  # ~sqrt(1,000), with 39 training points per list
    ivf = idx.retrained(lists)
    assert ivf.is_trained_ivf and ivf.nlist == 16 and len(ivf) == 1_000
    assert ivf.item_ids() == idx.item_ids()
    np.testing.assert_allclose(ivf.vectors(["i7", "i3"]), vecs[[7, 3]], atol=1e-6)
    assert ivf.retrain_target() is None  # 16 lists suit it until it is ~4x larger
    ivf.set_nprobe(16)  # every list: what exact search finds
    exact = [[h.item_id for h in hits] for hits in idx.search(vecs[:50], 5)]
    assert [[h.item_id for h in hits] for hits in ivf.search(vecs[:50], 5)] == exact
    ivf.upsert_many([f"i{i}" for i in range(1_000, 4_000)], vecs[1_000:])
    assert ivf.retrain_target() == 64  # ~sqrt(4,000): at least twice the lists
    blob, meta = ivf.to_state()
    back = FaissItemIndex.from_state(blob, json.loads(json.dumps(meta)))
    assert back.backend == "auto" and back.nlist == 16 and back.retrain_target() == 64


def test_background_ivf_build_under_updates_and_searches_loses_nothing() -> None:
    enc = HashEncoder()
    live = LiveItemIndex(enc, IndexSettings(ivf_min_items=2_000))
    live.apply_many([item(f"i{i}", f"product {i % 97} colour {i % 13}", 1) for i in range(2_000)])
    assert live.retrain_due() and not live.index.is_trained_ivf
    errors: list[BaseException] = []
    stop = threading.Event()
    searched = [0]

    def searcher() -> None:
        try:
            while not stop.is_set():
                assert len(live.search("product 5 colour 5", 10, "dense")) == 10
                searched[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    writer = partial(_churn, live, 2_000, stop, errors)
    threads = [threading.Thread(target=searcher), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert live.retrain_index(chunk=100)  # small chunks: the writer runs between them
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert searched[0] > 0 and live.index.is_trained_ivf and live.stats()["ivf_retrains"] == 1
    assert live.stats()["rebuild"] is None and not live.retrain_due()
    # every stored item is in the IVF with its latest vector; deleted ones are not
    stored = {s.item.item_id: s.item for s in live.store}
    assert len(live) == len(stored) and any(i.startswith("new") for i in stored)
    assert set(live.index.item_ids()) == set(stored)
    ids = sorted(stored)
    expected = enc.encode([item_text(stored[i]) for i in ids])
    np.testing.assert_allclose(live.index.vectors(ids), expected, atol=1e-5)


def test_a_snapshot_restored_under_another_backend_takes_the_configured_one(
    tmp_path: Path,
) -> None:
    enc = HashEncoder()
    saved = LiveItemIndex(enc, IndexSettings(backend="ivf", ivf_nlist=4))
    saved.apply_many([item(f"i{i}", f"product {i % 31}", 1) for i in range(300)])
    assert saved.index.is_trained_ivf
    saved.save_snapshot(tmp_path, {})
    exact = LiveItemIndex(enc, IndexSettings(backend="flat"))
    exact.load_snapshot(tmp_path)
    assert not exact.index.is_trained_ivf and exact.index.backend == "flat"
    assert len(exact) == 300 and exact.search("product 7", 1, "dense")[0].item.title == "product 7"
    auto = LiveItemIndex(enc, IndexSettings(backend="auto", ivf_min_items=200, ivf_nprobe=3))
    auto.load_snapshot(tmp_path)
    assert auto.index.backend == "auto" and auto.index.nprobe == 3
    assert auto.index.is_trained_ivf and not auto.retrain_due()  # 4 lists suit 300 items
