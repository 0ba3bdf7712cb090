"""LLM paraphrase: the annotator's causal LM rewrites a text in other words (sampled)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ecrec_stream.augment.base import AugmentedText
from ecrec_stream.llm import CausalLM

PARAPHRASE_PROMPT = (
    "Rewrite the following {kind} in different words. Keep its meaning. "
    "Reply with the rewritten {kind} only.\n{kind_title}: {text}"
)


def clean_completion(text: str) -> str:
    """The first non-empty line, without quotes or a leading label.

    >>> clean_completion('Rewritten query: "red running shoes"\\nMore text')
    'red running shoes'
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if ":" in line[:30]:
        head, _, rest = line.partition(":")
        if len(head.split()) <= 3 and rest.strip():
            line = rest.strip()
    return line.strip().strip("\"'").strip()


class LLMParaphraseAugmenter:
    """``variants`` sampled paraphrases per text. Sampling is seeded by the batch's ids, the
    variant and ``seed``: a redelivered micro-batch gets the same texts."""

    name = "llm_paraphrase"

    def __init__(
        self,
        lm: CausalLM,
        *,
        kind: str = "text",
        variants: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 0.7,
        max_chars: int = 600,
    ) -> None:
        self.lm = lm
        self.kind = kind
        self.variants = variants
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_chars = max_chars

    def augment_many(self, items: Sequence[tuple[str, str]], *, seed: int) -> list[AugmentedText]:
        items = [(i, t) for i, t in items if t.strip()]
        if not items:
            return []
        prompts = [
            PARAPHRASE_PROMPT.format(
                kind=self.kind, kind_title=self.kind.capitalize(), text=t[: self.max_chars]
            )
            for _, t in items
        ]
        batch_key = "\x1f".join(i for i, _ in items)
        out = []
        for v in range(self.variants):
            digest = hashlib.blake2b(f"{batch_key}\x1f{v}\x1f{seed}".encode(), digest_size=4)
            texts = self.lm.generate(
                prompts,
                seed=int.from_bytes(digest.digest(), "little"),
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
            )
            for (source_id, source), raw in zip(items, texts, strict=True):
                new = clean_completion(raw)
                if new and new.lower() != source.strip().lower():
                    out.append(AugmentedText(source_id, self.name, v, new))
        return out
