"""The item store beside the vectors: id -> last applied item, plus delete tombstones.

It lets the replica answer searches with item fields, re-embed the whole catalog when the
model changes, and refuse events older than what it already applied (so a redelivered old
upsert cannot resurrect a deleted item).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from ecrec_stream.contracts.events import ItemEvent


@dataclass(frozen=True, slots=True)
class StoredItem:
    item: ItemEvent
    indexed_at: datetime


class ItemStore:
    """Live items by id and the event time of the last change of every id ever seen.

    >>> from datetime import datetime, timezone
    >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> t1 = datetime(2026, 1, 2, tzinfo=timezone.utc)
    >>> store = ItemStore()
    >>> store.put(ItemEvent(event_id="e1", ts=t0, op="upsert", item_id="a", title="A"), t0)
    >>> store.remove("a", t1)
    >>> store.is_stale("a", t0), "a" in store
    (True, False)
    """

    def __init__(self) -> None:
        self._items: dict[str, StoredItem] = {}
        self._tombstones: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[StoredItem]:
        return iter(self._items.values())

    def get(self, item_id: str) -> StoredItem | None:
        return self._items.get(item_id)

    def version(self, item_id: str) -> datetime | None:
        """Event time of the last applied change to ``item_id`` (upsert or delete)."""
        stored = self._items.get(item_id)
        if stored is not None:
            return stored.item.ts
        return self._tombstones.get(item_id)

    def is_stale(self, item_id: str, ts: datetime) -> bool:
        """True when a change at ``ts`` is older than the one already applied."""
        current = self.version(item_id)
        return current is not None and ts < current

    def put(self, item: ItemEvent, indexed_at: datetime) -> None:
        self._tombstones.pop(item.item_id, None)
        self._items[item.item_id] = StoredItem(item, indexed_at)

    def remove(self, item_id: str, ts: datetime) -> None:
        self._items.pop(item_id, None)
        self._tombstones[item_id] = ts

    @property
    def tombstones(self) -> dict[str, datetime]:
        return dict(self._tombstones)

    def restore_tombstones(self, tombstones: dict[str, datetime]) -> None:
        self._tombstones.update(tombstones)


def plan_batch(events: Sequence[ItemEvent], store: ItemStore) -> tuple[dict[str, ItemEvent], int]:
    """Collapse a batch to the last effective event per item, skipping stale ones.

    An event older (by event time) than what the store or an earlier event of the same batch
    already applied is stale: redelivered or reordered data never goes back in time.
    """
    latest: dict[str, ItemEvent] = {}
    stale = 0
    for event in events:
        seen = latest.get(event.item_id)
        if (seen is not None and event.ts < seen.ts) or (
            seen is None and store.is_stale(event.item_id, event.ts)
        ):
            stale += 1
            continue
        latest[event.item_id] = event
    return latest, stale
