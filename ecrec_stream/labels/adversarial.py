"""Adversarial relevance pairs: where the serving index finds an item for a shopper's query but
loses it once the query is perturbed one way (a typo, another word order, a plural, a unit
spelling, an abbreviation, a synonym), the perturbed query and the item become a training
example for the trainer, its augmenter named ``adversarial:<kind>``.

Only relevant (``label == 1``), original (not augmented) relevance examples are mined, and only
perturbations that change the query. An example whose item the index misses for the clean query
already is not mined: the perturbation is not what fails there, and the example itself trains
that case. Mined copies skip the meaning filter on purpose: its similarity is the serving
model's, and a pair the serving model scores as dissimilar is exactly the failure mined here;
the perturbations are meaning-preserving rules (``ecrec_stream.augment.perturb``).

Ids are deterministic (source example, perturbation kind, seed), so a redelivered batch mines
the same examples under the same ids and the trainer's buffer drops the duplicates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ecrec_stream.augment.perturb import PERTURBATIONS, perturb
from ecrec_stream.labels.examples import TrainingExample, example_id, in_sample

#: ``(queries, k) -> the item ids of each query's top k``: the serving index, batched.
SearchMany = Callable[[list[str], int], list[list[str]]]

ADVERSARIAL_PREFIX = "adversarial:"


@dataclass
class MiningStats:
    """What the miner saw: examples offered and eligible, clean misses, and per perturbation
    kind how often it changed a query, how often the item stayed in the top k, how often it
    fell out (mined)."""

    offered: int = 0
    eligible: int = 0
    clean_miss: int = 0
    sampled_out: int = 0
    per_kind: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, kind: str, outcome: str) -> None:
        self.per_kind.setdefault(kind, Counter())[outcome] += 1

    @property
    def mined(self) -> int:
        return sum(c["mined"] for c in self.per_kind.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "offered": self.offered,
            "eligible": self.eligible,
            "clean_miss": self.clean_miss,
            "sampled_out": self.sampled_out,
            "mined": self.mined,
            "per_kind": {k: dict(v) for k, v in sorted(self.per_kind.items())},
        }


def is_minable(example: TrainingExample) -> bool:
    """Relevant, original relevance examples with an item: what the miner perturbs."""
    return (
        example.task == "relevance"
        and example.label == 1
        and example.augmented_from is None
        and bool(example.text.strip())
    )


class AdversarialMiner:
    """Mines adversarial pairs from relevance examples with the serving index's ``search``.

    >>> top = {"kitchen cart": ["i1"], "cart kitchen": ["i2"], "kitchen carts": ["i1"]}
    >>> miner = AdversarialMiner(lambda qs, k: [top.get(q, []) for q in qs],
    ...                          kinds=("word_order", "plural"), k=10)
    >>> ex = TrainingExample(example_id="ex-1", task="relevance", text="kitchen cart",
    ...     text_pair="Rolling Kitchen Cart", item_id="i1", label=1, confidence=0.9, weight=0.9,
    ...     votes={"click": 1}, source_event_ids=["s1"])
    >>> [(m.text, m.augmenter, m.augmented_from) for m in miner.mine([ex])]
    [('cart kitchen', 'adversarial:word_order', 'ex-1')]
    >>> miner.stats.per_kind["plural"]["robust"], miner.stats.mined
    (1, 1)
    """

    def __init__(
        self,
        search_many: SearchMany,
        *,
        kinds: Sequence[str] = tuple(PERTURBATIONS),
        k: int = 10,
        seed: int = 0,
        sample_share: float = 1.0,
        max_per_example: int | None = None,
    ) -> None:
        unknown = [kind for kind in kinds if kind not in PERTURBATIONS]
        if unknown:
            raise ValueError(f"unknown perturbations {unknown} ({', '.join(PERTURBATIONS)})")
        self.search_many = search_many
        self.kinds = tuple(kinds)
        self.k = k
        self.seed = seed
        self.sample_share = sample_share
        self.max_per_example = max_per_example
        self.stats = MiningStats()

    def mine(self, examples: Sequence[TrainingExample]) -> list[TrainingExample]:
        """The adversarial examples of ``examples`` (in order); one batched search for the
        clean queries and one for all their perturbations."""
        self.stats.offered += len(examples)
        chosen = []
        for ex in examples:
            if not is_minable(ex):
                continue
            self.stats.eligible += 1
            if in_sample(ex.example_id, self.sample_share):
                chosen.append(ex)
            else:
                self.stats.sampled_out += 1
        if not chosen:
            return []
        clean_queries = sorted({ex.text for ex in chosen})
        clean_top = dict(zip(clean_queries, self.search_many(clean_queries, self.k), strict=True))
        # (example, kind, perturbed query) for each example the clean query finds
        trials: list[tuple[TrainingExample, str, str]] = []
        for ex in chosen:
            if ex.item_id not in clean_top[ex.text]:
                self.stats.clean_miss += 1
                continue
            for kind in self.kinds:
                changed = perturb(ex.text, kind, self.seed)
                if changed == ex.text.lower().strip():
                    self.stats.count(kind, "unchanged")
                else:
                    trials.append((ex, kind, changed))
        if not trials:
            return []
        perturbed_queries = sorted({q for _, _, q in trials})
        perturbed_top = dict(
            zip(perturbed_queries, self.search_many(perturbed_queries, self.k), strict=True)
        )
        mined: list[TrainingExample] = []
        per_example: Counter[str] = Counter()
        for ex, kind, query in trials:
            if ex.item_id in perturbed_top[query]:
                self.stats.count(kind, "robust")
                continue
            if self.max_per_example is not None and (
                per_example[ex.example_id] >= self.max_per_example
            ):
                self.stats.count(kind, "over_cap")
                continue
            per_example[ex.example_id] += 1
            self.stats.count(kind, "mined")
            mined.append(adversarial_copy(ex, kind, query, self.seed))
        return mined


def adversarial_copy(
    source: TrainingExample, kind: str, query: str, seed: int = 0
) -> TrainingExample:
    """``source`` with its query replaced by the perturbed ``query``: same item, label, grade
    and weight; ``augmented_from`` links it to ``source`` (a late revision of ``source``'s
    label reaches it in the trainer's buffer)."""
    augmenter = f"{ADVERSARIAL_PREFIX}{kind}"
    return source.model_copy(
        update={
            # from the source's id, which a revision keeps (its votes change)
            "example_id": example_id(
                source.task, [source.example_id], source.item_id, [], augmenter, seed
            ),
            "text": query,
            "augmented_from": source.example_id,
            "augmenter": augmenter,
        }
    )
