"""The trainer's replay buffer: recent relevance examples plus a reservoir of older ones.

A fine-tune on the newest traffic alone forgets what the model knew (catastrophic
forgetting); the reservoir keeps a uniform, label-balanced sample of everything that left the
recent window (Vitter's algorithm R, one reservoir per label). Duplicate example ids (an
at-least-once redelivery) are dropped; a copy with a higher ``revision`` (an example the LLM
annotator's late vote revised) replaces the one held. The buffer is saved with
:mod:`ecrec_stream.state` (never pickle) together with the topic offsets it has read, so a
restarted trainer resumes exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecrec_stream.labels.examples import TrainingExample
from ecrec_stream.labels.reservoir import Reservoir
from ecrec_stream.state import load_state, rng_state, save_state, set_rng_state

STATE_KIND = "replay_buffer"
STATE_VERSION = 2  # 1 was a JSON file of its own
Offsets = dict[str, dict[int, int]]


@dataclass(frozen=True)
class BufferSplit:
    """What a retrain uses: ``train`` (never the held-back examples), ``recent_eval`` (the
    newest examples by event time) and ``older_eval`` (older examples of held-back queries)."""

    train: list[TrainingExample]
    recent_eval: list[TrainingExample]
    older_eval: list[TrainingExample]

    def window(self) -> dict[str, Any]:
        """Event-time bounds of the training data (for the model manifest)."""
        times = [e.ts for e in self.train]
        return {
            "examples": len(self.train),
            "first_ts": min(times).isoformat() if times else None,
            "last_ts": max(times).isoformat() if times else None,
        }


def query_bucket(query: str, salt: str = "") -> float:
    """A stable number in [0, 1) per query (normalised case and spaces); another ``salt``
    gives an independent split.

    >>> query_bucket("Red Shoes") == query_bucket(" red  shoes ")
    True
    """
    key = salt + " ".join(query.lower().split())
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 16**8


class ReplayBuffer:
    """Bounded recent window + per-label reservoirs of relevance examples."""

    def __init__(
        self,
        recent_size: int = 8_000,
        reservoir_size: int = 8_000,
        *,
        dedupe_capacity: int = 200_000,
        seed: int = 0,
    ) -> None:
        self.recent_size = recent_size
        self.reservoir_size = reservoir_size
        self.dedupe_capacity = dedupe_capacity
        self.seed = seed
        self.recent: deque[TrainingExample] = deque()
        # balanced: half the reservoir per label, both drawing from one seeded generator
        self._rng = random.Random(seed)
        self.reservoir: dict[int, Reservoir[TrainingExample]] = {
            label: Reservoir(reservoir_size // 2, rng=self._rng) for label in (0, 1)
        }
        self._seen: OrderedDict[str, int] = OrderedDict()  # example id -> revision held
        self.counts: dict[str, int] = {
            "added": 0,
            "duplicates": 0,
            "ignored": 0,
            "revised": 0,
            "revision_gone": 0,
        }
        self.offsets: Offsets = {}

    def __len__(self) -> int:
        return len(self.recent) + sum(len(r) for r in self.reservoir.values())

    def add(self, examples: Iterable[TrainingExample]) -> int:
        """Add relevance examples (sentiment ones are not for the retrieval encoder and are
        counted as ignored); returns how many were new."""
        added = 0
        for ex in examples:
            if ex.task != "relevance" or not ex.text_pair or ex.label not in (0, 1):
                self.counts["ignored"] += 1
                continue
            held = self._seen.get(ex.example_id)
            if held is not None:
                if ex.revision > held:
                    self._seen[ex.example_id] = ex.revision
                    self.counts["revised" if self._replace(ex) else "revision_gone"] += 1
                else:
                    self.counts["duplicates"] += 1
                continue
            self._seen[ex.example_id] = ex.revision
            while len(self._seen) > self.dedupe_capacity:
                self._seen.popitem(last=False)
            self.recent.append(ex)
            added += 1
            while len(self.recent) > self.recent_size:
                evicted = self.recent.popleft()
                self.reservoir[evicted.label].add(evicted)
        self.counts["added"] += added
        return added

    def _replace(self, revised: TrainingExample) -> bool:
        """Put ``revised`` where its older copy is held, and give its augmented copies its new
        label; False when neither is held any more. (Linear: revisions come at the annotator's
        budget, a few a second.)"""

        def updated(ex: TrainingExample) -> TrainingExample | None:
            if ex.example_id == revised.example_id:
                return revised
            if ex.augmented_from != revised.example_id:
                return None
            scale = revised.confidence / ex.confidence if ex.confidence > 0 else 1.0
            return ex.model_copy(
                update={
                    "label": revised.label,
                    "confidence": revised.confidence,
                    "weight": ex.weight * scale,
                    "votes": revised.votes,
                    "revision": revised.revision,
                }
            )

        found = False
        for i, ex in enumerate(self.recent):
            if (new := updated(ex)) is not None:
                self.recent[i], found = new, True
        moved = []
        for label, reservoir in self.reservoir.items():
            kept = []
            for ex in reservoir.items:
                new = updated(ex)
                found |= new is not None
                if new is None or new.label == label:
                    kept.append(new or ex)
                else:  # its label changed: it moves to the other label's reservoir
                    moved.append(new)
            reservoir.items = kept
        for ex in moved:
            self.reservoir[ex.label].add(ex)
        return found

    def examples(self) -> list[TrainingExample]:
        """Everything held, oldest event time first."""
        return sorted([*self._older(), *self.recent], key=lambda e: e.ts)

    def _older(self) -> list[TrainingExample]:
        """Both label reservoirs' examples."""
        return [*self.reservoir[0].items, *self.reservoir[1].items]

    def split(self, holdout_recent: float, holdout_older: float) -> BufferSplit:
        """Hold back the newest ``holdout_recent`` of the recent window (by event time) and
        every older example of a fixed ``holdout_older`` share of queries; augmented copies
        are training-only and never of a held-back original."""
        recent = sorted(self.recent, key=lambda e: e.ts)
        n_recent_eval = round(len(recent) * holdout_recent)
        cut = len(recent) - n_recent_eval
        recent_eval = [e for e in recent[cut:] if e.augmented_from is None]
        older = [*self._older(), *recent[:cut]]
        older_eval = [
            e for e in older if e.augmented_from is None and query_bucket(e.text) < holdout_older
        ]
        held = {e.example_id for e in recent_eval} | {e.example_id for e in older_eval}
        held_queries = {e.text for e in recent_eval} | {e.text for e in older_eval}
        train = [
            e
            for e in older
            if e.example_id not in held
            and e.augmented_from not in held
            and (e.augmented_from is not None or query_bucket(e.text) >= holdout_older)
        ]
        # an augmented copy of a held-back query would leak its answer into training
        train = [e for e in train if e.augmented_from is None or e.text not in held_queries]
        return BufferSplit(train, recent_eval, older_eval)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state protocol (:mod:`ecrec_stream.state`): examples, offsets read, the dedupe
        window with the revision held per id, counts and the reservoirs' generator."""

        def dump(rows: Sequence[TrainingExample]) -> list[Any]:
            return [e.model_dump(mode="json") for e in rows]

        return {
            "offsets": {
                t: {str(p): o for p, o in parts.items()} for t, parts in self.offsets.items()
            },
            "recent": dump(self.recent),
            "reservoir": {str(k): dump(r.items) for k, r in self.reservoir.items()},
            "evicted_seen": {str(k): r.seen for k, r in self.reservoir.items()},
            "rng": rng_state(self._rng),
            "seen": list(self._seen),
            "revisions": {k: r for k, r in self._seen.items() if r},
            "counts": dict(self.counts),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        def parse(rows: list[Any]) -> list[TrainingExample]:
            return [TrainingExample.model_validate(r) for r in rows]

        self.offsets = {
            t: {int(p): int(o) for p, o in parts.items()} for t, parts in state["offsets"].items()
        }
        self.recent = deque(parse(state["recent"]))
        for k, rows in state["reservoir"].items():
            self.reservoir[int(k)].items = parse(rows)
            self.reservoir[int(k)].seen = int(state["evicted_seen"][k])
        set_rng_state(self._rng, state["rng"])
        revisions = state.get("revisions", {})
        self._seen = OrderedDict((k, int(revisions.get(k, 0))) for k in state["seen"])
        self.counts.update(state["counts"])

    def reset_state(self) -> None:
        self.__init__(  # type: ignore[misc]
            self.recent_size,
            self.reservoir_size,
            dedupe_capacity=self.dedupe_capacity,
            seed=self.seed,
        )

    def save(self, path: Path) -> None:
        """Write the buffer and its offsets atomically (:func:`ecrec_stream.state.save_state`)."""
        save_state(path, self.state_dict(), kind=STATE_KIND, version=STATE_VERSION)

    def load(self, path: Path) -> bool:
        """Restore from ``path``; False when there is no saved buffer."""
        state = load_state(path, kind=STATE_KIND, version=STATE_VERSION)
        if state is None:
            return False
        self.load_state(state)
        return True
