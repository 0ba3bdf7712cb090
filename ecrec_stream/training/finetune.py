"""Incremental fine-tuning of a sentence-transformers bi-encoder on (query, item) pairs.

A plain torch loop rather than ``SentenceTransformerTrainer``: the trainer pulls in
``datasets`` and ``accelerate`` and re-tokenises every batch through its data collator, while
this loop tokenises each distinct text once, pads batches to a multiple of 8 and runs under
bf16 autocast on a GPU; the loss is the one of sentence-transformers'
``MultipleNegativesRankingLoss`` (in-batch negatives, scaled cosine, cross-entropy), extended
with per-example weights, one hard negative per pair and a mask for in-batch false negatives
(the same item or the same query in two rows). The same code runs on a CPU. On an H100 it
trained 6-14x faster than ``SentenceTransformerTrainer`` at equal quality
(``bench/finetune_loops.py``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecrec_stream.embedding import gpu_attention, token_table
from ecrec_stream.training.buffer import query_bucket


@dataclass(frozen=True, slots=True)
class TrainPair:
    """A query, a relevant item text, the pair's weight and optionally a hard negative."""

    query: str
    positive: str
    weight: float = 1.0
    negative: str | None = None


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 2e-5
    max_seq_length: int = 64
    scale: float = 20.0  # MultipleNegativesRankingLoss' default
    patience: int = 1
    validation_fraction: float = 0.1
    warmup_ratio: float = 0.1
    lora: bool = False
    lora_rank: int = 8
    # Recompute each layer's activations in the backward pass instead of keeping them:
    # the same gradients for ~1/3 more compute; the activations of a batch of 64 were most
    # of a CPU trainer's peak RSS (bench.memory).
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass
class FineTuneReport:
    device: str
    pairs_train: int
    pairs_validation: int
    steps: int = 0
    epochs_run: int = 0
    best_epoch: int = 0
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    tokenize_s: float = 0.0
    train_s: float = 0.0
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


StepCallback = Callable[[int, int, float], None]  # step, total steps, loss
# The loss is read back from the device (a synchronisation) for the callback only every this
# many steps, so a GPU is not stalled once per step by a progress bar.
LOSS_READ_EVERY = 10


def _split(pairs: Sequence[TrainPair], fraction: float) -> tuple[list[TrainPair], list[TrainPair]]:
    """Validation = the pairs of a fixed share of queries (by hash), so it measures queries
    the model did not see."""
    train = [p for p in pairs if query_bucket(p.query, "validation:") >= fraction]
    val = [p for p in pairs if query_bucket(p.query, "validation:") < fraction]
    if len(val) < 2 or len(train) < 2:
        return list(pairs), []
    return train, val


def _transformer(model: Any) -> Any:
    """The Hugging Face model inside a ``SentenceTransformer`` (None if it has none)."""
    first = model[0] if len(model) else None
    modules = getattr(first, "_modules", {})
    inner = modules.get("model") or modules.get("auto_model")  # s-t >= 6 / older
    return inner if hasattr(inner, "gradient_checkpointing_enable") else None


def fine_tune(
    model: Any,
    pairs: Sequence[TrainPair],
    config: FineTuneConfig,
    *,
    device: str = "cpu",
    on_step: StepCallback | None = None,
) -> FineTuneReport:
    """Fine-tune ``model`` (a ``SentenceTransformer``) in place on ``pairs``; keeps the weights
    of the epoch with the lowest validation loss (early stopping after ``patience`` epochs
    without improvement)."""
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    train, val = _split(pairs, config.validation_fraction)
    report = FineTuneReport(device=device, pairs_train=len(train), pairs_validation=len(val))
    if len(train) < 2:
        return report
    model.to(device)
    inner_model = _transformer(model)
    if config.gradient_checkpointing and inner_model is not None:
        inner_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )

    # -- tokenise every distinct text once ---------------------------------------------------
    t0 = time.perf_counter()
    texts = sorted({t for p in pairs for t in (p.query, p.positive, p.negative) if t})
    table = token_table(model, texts, config.max_seq_length)
    text_id = {t: i for i, t in enumerate(texts)}
    report.tokenize_s = time.perf_counter() - t0

    def features(batch_texts: list[str]) -> dict[str, Any]:
        rows = np.fromiter((text_id[t] for t in batch_texts), dtype=np.int64)
        return {k: v.to(device, non_blocking=True) for k, v in table.batch(rows).items()}

    if config.lora:
        from peft import LoraConfig, get_peft_model

        transformer = model[0]
        # sentence-transformers >= 6 registers the HF model as ``model`` (``auto_model`` is a
        # read-only alias); older versions as ``auto_model``
        inner = "model" if "model" in transformer._modules else "auto_model"
        setattr(
            transformer,
            inner,
            get_peft_model(
                getattr(transformer, inner),
                LoraConfig(
                    r=config.lora_rank,
                    lora_alpha=2 * config.lora_rank,
                    lora_dropout=0.05,
                    target_modules=["query", "value"],
                ),
            ),
        )
    use_amp = device.startswith("cuda")

    def batch_loss(batch: list[TrainPair]) -> Any:
        docs = [p.positive for p in batch] + [p.negative for p in batch if p.negative]
        queries = [p.query for p in batch]
        # queries and items in one forward pass: a step is bound by per-call overhead (kernel
        # launches), not by the GPU's arithmetic, for texts this short
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp), gpu_attention(device):
            embedded = model(features(queries + docs))["sentence_embedding"]
        embedded = F.normalize(embedded.float(), dim=-1)
        q, d = embedded[: len(queries)], embedded[len(queries) :]
        scores = config.scale * q @ d.T
        # Another row's positive is a false negative when it is the same item, or when the
        # two rows share the query (both items are relevant to it). Compared as text ids in
        # one tensor operation: a Python loop here costs batch x docs steps per training step.
        n = len(batch)
        dev = scores.device
        pos = torch.tensor([text_id[p.positive] for p in batch], device=dev)
        qid = torch.tensor([text_id[p.query] for p in batch], device=dev)
        did = torch.tensor([text_id[doc] for doc in docs], device=dev)
        mask = did[None, :] == pos[:, None]
        mask[:, :n] |= qid[None, :] == qid[:, None]
        mask[torch.arange(n, device=dev), torch.arange(n, device=dev)] = False
        scores = scores.masked_fill(mask, float("-inf"))
        losses = F.cross_entropy(scores, torch.arange(n, device=scores.device), reduction="none")
        weights = torch.tensor([p.weight for p in batch], device=scores.device)
        return (losses * weights).sum() / weights.sum().clamp_min(1e-8)

    def batches(rows: list[TrainPair], shuffle: bool) -> list[list[TrainPair]]:
        rows = list(rows)
        if shuffle:
            rng.shuffle(rows)
        out = [rows[i : i + config.batch_size] for i in range(0, len(rows), config.batch_size)]
        return [b for b in out if len(b) >= 2]

    def validation_loss() -> float:
        if not val:
            return math.nan
        model.eval()
        with torch.no_grad():
            parts = [(float(batch_loss(b)), len(b)) for b in batches(val, shuffle=False)]
        model.train()
        return sum(v * n for v, n in parts) / max(sum(n for _, n in parts), 1)

    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel updates all parameters in one launch on CUDA
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, fused=use_amp)
    steps_per_epoch = len(batches(train, shuffle=False))
    total = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(total * config.warmup_ratio), max(total, 1)
    )

    def snapshot() -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    # The serving weights are the bar to beat: if no epoch lowers the validation loss, the
    # model is given back unchanged (best_epoch 0).
    best = validation_loss()
    best_state = snapshot() if val else None
    stale = 0
    t1 = time.perf_counter()
    model.train()
    for epoch in range(1, config.epochs + 1):
        epoch_losses = []
        epoch_batches = batches(train, shuffle=True)
        for i, batch in enumerate(epoch_batches):
            loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            report.steps += 1
            epoch_losses.append(loss.detach())  # stays on the device: no sync per step
            last = i == len(epoch_batches) - 1
            if on_step is not None and (report.steps % LOSS_READ_EVERY == 0 or last):
                on_step(report.steps, total, float(epoch_losses[-1]))
        report.epochs_run = epoch
        report.train_loss.append(float(torch.stack(epoch_losses).mean()) if epoch_losses else 0.0)
        current = validation_loss()
        report.validation_loss.append(current)
        if math.isnan(current):
            report.best_epoch = epoch  # nothing to validate on: the last epoch
        elif current < best:
            best, best_state, report.best_epoch, stale = current, snapshot(), epoch, 0
        else:
            stale += 1
            if stale > config.patience:
                report.stopped_early = epoch < config.epochs
                break
    if config.gradient_checkpointing and inner_model is not None:
        inner_model.gradient_checkpointing_disable()
    if best_state is not None and report.best_epoch != report.epochs_run:
        model.load_state_dict(best_state)
    report.train_s = time.perf_counter() - t1
    if config.lora:
        transformer = model[0]
        inner = "model" if "model" in transformer._modules else "auto_model"
        setattr(transformer, inner, getattr(transformer, inner).merge_and_unload())
    model.eval()
    return report
