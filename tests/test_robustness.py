"""Adversarial pairs mined where the serving index loses an item under a query perturbation:
the miner's rules on a fixed search table, batched search against one-by-one search on the real
MiniLM, and an index replica with its miner on the real broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from ecrec_stream.augment.perturb import PERTURBATIONS, perturb
from ecrec_stream.config import IndexSettings, PerturbationName
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.labels.adversarial import AdversarialMiner
from ecrec_stream.labels.examples import TrainingExample
from ecrec_stream.state import load_state
from ecrec_stream.training.buffer import ReplayBuffer
from tests.helpers import T0, item, relevant_pair
from workers.miner import STATE_KIND, STATE_VERSION

TITLES = [
    "Rolling Kitchen Cart with Drawers",
    "Stainless Steel Water Bottle 32 oz",
    "Wool Hiking Socks, 3 Pack",
    "Cotton Bath Towels",
    "Bluetooth Headphones Wireless",
    "Leather Wallet for Men",
    "Garden Hose 50 ft",
    "Coffee Grinder Electric",
    "Yoga Mat Non Slip",
    "LED Desk Lamp",
    "Cast Iron Skillet 12 inch",
    "Dog Leash Reflective",
    "Kids Rain Boots",
    "Running Shoes Women",
    "Glass Food Storage Containers",
    "Wireless Computer Mouse",
]
QUERIES = [
    "kitchen cart",
    "water bottle 32 oz",
    "hiking socks",
    "bath towels",
    "wireless headphones",
    "mens wallet",
    "garden hose",
    "coffee grinder",
    "yoga mat",
    "desk lamp",
    "cast iron skillet",
    "dog leash",
    "rain boots kids",
    "running shoes",
    "food storage containers",
    "computer mouse",
]


def _pair(i: int, query: str, item_id: str, **update: Any) -> TrainingExample:
    ex = relevant_pair(f"ex-{i}", query, f"title {item_id}", item_id, [f"s{i}"], T0)
    return ex.model_copy(update=update) if update else ex


def _table_search(table: dict[str, list[str]]) -> Any:
    calls: list[list[str]] = []

    def search_many(queries: list[str], k: int) -> list[list[str]]:
        calls.append(list(queries))
        return [table.get(q, [])[:k] for q in queries]

    search_many.calls = calls  # type: ignore[attr-defined]
    return search_many


def test_perturbation_names_in_config_match_the_rules() -> None:
    assert set(get_args(PerturbationName)) == set(PERTURBATIONS)
    with pytest.raises(ValueError, match="unknown perturbations"):
        AdversarialMiner(_table_search({}), kinds=("typo", "leetspeak"))


def test_the_miner_keeps_only_pairs_the_index_loses_under_a_perturbation() -> None:
    reorder = perturb("kitchen cart", "word_order")  # 'cart kitchen'
    plural = perturb("kitchen cart", "plural")  # 'kitchen carts'
    search = _table_search(
        {
            "kitchen cart": ["i1", "i2"],
            reorder: ["i2"],  # i1 lost, i2 kept
            plural: ["i1", "i2"],  # both kept
            "garden hose": ["i9"],  # the clean query misses i3
        }
    )
    miner = AdversarialMiner(search, kinds=("word_order", "plural", "units"), k=10)
    examples = [
        _pair(1, "kitchen cart", "i1"),
        _pair(2, "kitchen cart", "i2"),
        _pair(3, "garden hose", "i3"),
        _pair(4, "kitchen cart", "i1", label=0),  # not relevant: not mined
        _pair(5, "kitchen cart", "i1", augmented_from="ex-1", augmenter="typo"),  # a copy
        _pair(6, "kitchen cart", "i1", task="sentiment"),
    ]
    mined = miner.mine(examples)
    assert [(m.text, m.item_id, m.augmenter, m.augmented_from) for m in mined] == [
        (reorder, "i1", "adversarial:word_order", "ex-1")
    ]
    m = mined[0]
    assert (m.label, m.grade, m.weight, m.source_event_ids) == (1, 1, 1.0, ["s1"])
    stats = miner.stats.as_dict()
    assert (stats["offered"], stats["eligible"], stats["clean_miss"], stats["mined"]) == (
        6,
        3,
        1,
        1,
    )
    assert stats["per_kind"] == {
        "plural": {"robust": 2},
        "units": {"unchanged": 2},
        "word_order": {"mined": 1, "robust": 1},
    }
    # two batched searches: the clean queries, then every perturbed query once
    assert search.calls == [["garden hose", "kitchen cart"], sorted({reorder, plural})]


def test_mined_ids_are_stable_across_redelivery_and_revision_and_capped_per_example() -> None:
    query = "kitchen cart"
    lost = {perturb(query, kind) for kind in PERTURBATIONS} - {query}
    search = _table_search({query: ["i1"], **{q: [] for q in lost}})
    first = AdversarialMiner(search).mine([_pair(1, query, "i1")])
    assert len(first) == len(lost) >= 3
    again = AdversarialMiner(search).mine([_pair(1, query, "i1")])
    revised = AdversarialMiner(search).mine([_pair(1, query, "i1", votes={"llm": 1}, revision=1)])
    assert [m.example_id for m in again] == [m.example_id for m in first]
    assert [m.example_id for m in revised] == [m.example_id for m in first]
    assert len({m.example_id for m in first}) == len(first)
    capped = AdversarialMiner(search, max_per_example=2)
    assert len(capped.mine([_pair(1, query, "i1")])) == 2
    assert sum(c["over_cap"] for c in capped.stats.per_kind.values()) == len(lost) - 2
    sampled = AdversarialMiner(search, sample_share=0.5)
    pairs = [_pair(i, query, "i1") for i in range(200)]
    chosen = {m.augmented_from for m in sampled.mine(pairs)}
    assert 60 < len(chosen) < 140 and sampled.stats.sampled_out == 200 - len(chosen)
    resampled = {m.augmented_from for m in AdversarialMiner(search, sample_share=0.5).mine(pairs)}
    assert resampled == chosen


def test_mined_copies_follow_their_source_in_the_trainers_buffer() -> None:
    search = _table_search({"kitchen cart": ["i1"], "cart kitchen": []})
    source = _pair(1, "kitchen cart", "i1")
    (mined,) = AdversarialMiner(search, kinds=("word_order",)).mine([source])
    buffer = ReplayBuffer(recent_size=10, reservoir_size=10)
    buffer.add([source, mined, mined])
    assert buffer.counts["duplicates"] == 1
    buffer.add([source.model_copy(update={"label": 0, "revision": 1})])
    held = {e.example_id: e for e in buffer.examples()}
    assert held[mined.example_id].label == 0  # the source turned out not relevant


@pytest.mark.parametrize("mode", ["dense", "hybrid", "lexical"])
def test_batched_search_equals_one_search_per_query(minilm: Any, mode: str) -> None:
    live = LiveItemIndex(minilm, IndexSettings())
    live.apply_many([item(f"i{n}", t) for n, t in enumerate(TITLES)])
    queries = [*QUERIES, "kitchen caart", "zzz unknown words"]
    batched = live.search_many(queries, 3, mode)  # type: ignore[arg-type]
    # bf16 inference (the default on CPUs with AMX) rounds a query's vector a little
    # differently with its batch's padded width: scores move by ~3e-4, the order does not
    tol = 1e-5 if getattr(minilm, "precision", "float32") == "float32" else 1e-3
    for query, results in zip(queries, batched, strict=True):
        single = live.search(query, 3, mode)  # type: ignore[arg-type]
        assert [r.item.item_id for r in results] == [r.item.item_id for r in single]
        assert [r.score for r in results] == pytest.approx([r.score for r in single], abs=tol)
    assert live.search_many([], 3) == []


def test_an_index_replica_mines_what_its_serving_model_loses(broker: Any, tmp_path: Path) -> None:
    """A replica with the miner on (dense search, top 1): relevant pairs on ``ecrec.examples``
    come back perturbed exactly where the replica's own search loses the item; a restart with
    the miner's saved offsets mines nothing twice."""
    import httpx

    from ecrec_stream.contracts.events import EventBatch, SourcePosition
    from ecrec_stream.labels.examples import ExampleBatch
    from streams.broker import free_port
    from streams.kafka import all_topics, ensure_topics, new_producer
    from tests.helpers import isolated_env, produce, read_topic, unique, wait_until
    from workers.processes import indexer_process

    names, env = isolated_env(unique("mine"))
    env |= {
        "ECREC_PARTITIONS": "2",
        "ECREC_INDEX__SEARCH_MODE": "dense",
        "ECREC_ROBUSTNESS__ENABLED": "true",
        "ECREC_ROBUSTNESS__K": "1",
    }
    ensure_topics(broker.bootstrap, all_topics(names), 2)
    items = EventBatch(
        kind="item",
        source=SourcePosition(topic=names.items, partition=0, offset=0),
        last_offset=len(TITLES) - 1,
        events=[item(f"i{n}", t) for n, t in enumerate(TITLES)],
    )
    pairs = [_pair(n, q, f"i{n}") for n, q in enumerate(QUERIES)]
    batch = ExampleBatch(task="relevance", examples=pairs)
    produce(
        broker.bootstrap,
        [
            (names.valid_items, "items", items.model_dump_json().encode()),
            (names.examples, "relevance", batch.model_dump_json().encode()),
        ],
    )

    def adversarial(msgs: list[Any]) -> list[dict[str, Any]]:
        return [
            e
            for m in msgs
            for e in json.loads(m.value())["examples"]
            if (e["augmenter"] or "").startswith("adversarial:")
        ]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = indexer_process(broker.url, tmp_path, port, extra_env=env).start()
    try:
        proc.wait_http(f"{base}/healthz", timeout_s=180)
        wait_until(  # the examples message was mined, delivered and committed
            lambda: httpx.get(f"{base}/stats").json()["robustness"]["committed_messages"] >= 1,
            timeout_s=90,
        )
        stats = httpx.get(f"{base}/stats").json()["robustness"]
        mined = adversarial(
            read_topic(
                broker.bootstrap,
                names.examples,
                done=lambda ms: len(adversarial(ms)) >= stats["mined"],
            )
        )

        def top1(query: str) -> str | None:
            results = httpx.get(f"{base}/search", params={"q": query, "k": 1}).json()["results"]
            return results[0]["item_id"] if results else None

        # every mined pair: the clean query finds the item, the perturbed one does not
        assert stats["mined"] >= 1 and len(mined) == stats["mined"]
        by_id = {p.example_id: p for p in pairs}
        for ex in mined:
            source = by_id[ex["augmented_from"]]
            kind = ex["augmenter"].removeprefix("adversarial:")
            assert ex["text"] == perturb(source.text, kind)
            assert top1(source.text) == source.item_id != top1(ex["text"])
        # every perturbation it judged robust kept the item on top
        robust = sum(c.get("robust", 0) for c in stats["per_kind"].values())
        assert robust > 0 and stats["error"] is None and stats["running"]
        tried = sum(sum(c.values()) for c in stats["per_kind"].values())
        found_clean = sum(top1(p.text) == p.item_id for p in pairs)
        assert tried == found_clean * len(PERTURBATIONS)
        assert stats["clean_miss"] == len(pairs) - found_clean
    finally:
        proc.stop()

    # a restart resumes after the mined messages: nothing is mined twice. A not-relevant
    # marker on each partition, committed after anything before it there, shows it read all.
    marker = ExampleBatch(task="relevance", examples=[_pair(99, "kitchen cart", "i0", label=0)])
    producer = new_producer(broker.bootstrap)
    marker_at: dict[int, int] = {}
    for partition in (0, 1):
        producer.produce(
            names.examples,
            value=marker.model_dump_json(),
            partition=partition,
            on_delivery=lambda err, msg: marker_at.update({msg.partition(): msg.offset()}),
        )
    assert producer.flush(30) == 0 and len(marker_at) == 2
    state = tmp_path / "indexer" / "miner.state"

    def committed_markers() -> bool:
        saved = load_state(state, kind=STATE_KIND, version=STATE_VERSION)
        offsets = saved["offsets"] if saved else {}
        return all(offsets.get(str(p), 0) > at for p, at in marker_at.items())

    proc = indexer_process(broker.url, tmp_path, port, extra_env=env).start()
    try:
        proc.wait_http(f"{base}/healthz", timeout_s=180)
        wait_until(committed_markers, timeout_s=60)
        after = httpx.get(f"{base}/stats").json()["robustness"]
    finally:
        proc.stop()
    assert after["offered"] >= 2 and after["eligible"] == 0 and after["mined"] == 0
