"""Data quality before labelling: duplicate events, near-duplicate texts, bot-like sessions,
and pseudonymised user ids."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

_NON_WORD = re.compile(r"[^a-z0-9]+")


class BoundedSeen:
    """Remembers the last ``capacity`` keys (LRU): ``add`` returns False for a repeat.

    Duplicates older than the window pass; outputs carry deterministic ids, so downstream
    consumers still drop them.

    >>> seen = BoundedSeen(2)
    >>> [seen.add(k) for k in ("a", "b", "a", "c", "a", "b")]  # "c" evicts "b", not "a"
    [True, True, False, True, False, True]
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._keys)

    def state_dict(self) -> dict[str, Any]:
        """The remembered keys, oldest first (the project's keys are ids and hashes)."""
        keys = list(self._keys)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError("only a window of string keys can be saved")
        return {"keys": keys}

    def load_state(self, state: dict[str, Any]) -> None:
        self._keys = OrderedDict.fromkeys(state["keys"][-self.capacity :])

    def reset_state(self) -> None:
        self._keys.clear()


def near_duplicate_key(text: str) -> str:
    """A key equal for texts that differ only in case, punctuation and spacing.

    >>> near_duplicate_key("Love it!!  Great fit.") == near_duplicate_key("love it, great fit")
    True
    """
    normalised = _NON_WORD.sub(" ", text.lower()).strip()
    return hashlib.blake2b(normalised.encode(), digest_size=12).hexdigest()


class Pseudonymiser:
    """Keyed hash (HMAC-SHA256) of user ids: stable for one key, not reversible without it.

    >>> p = Pseudonymiser("secret")
    >>> p("user-1") == p("user-1") != Pseudonymiser("other")("user-1")
    True
    >>> len(p("user-1"))
    24
    """

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the pseudonymisation key must not be empty")
        self._key = key.encode()

    def __call__(self, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        return hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:24]
