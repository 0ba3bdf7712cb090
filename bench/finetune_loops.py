"""The trainer's fine-tuning loop against sentence-transformers' own trainer, same data.

Why the trainer uses a plain torch loop (``ecrec_stream.training.finetune``) and not
``SentenceTransformerTrainer``: measured here, same model, same pairs, same loss
(MultipleNegativesRankingLoss, in-batch negatives), same batch size, learning rate, warm-up and
epochs, no validation and no hard negatives in either. Pairs: every (query, title) judged
relevant (median_relevance >= 3) for the Crowdflower queries of the training half
(``sha1(query) % 2 == 0``); quality: nDCG@10 / recall@10 over all 9,708 titles on the other
half (gain = median_relevance - 1, unjudged = 0), with the base model and BM25 beside them.

    pip install -e '.[bench]'        # sentence-transformers' trainer needs `datasets`
    python -m bench.finetune_loops [--epochs 1] [--device auto] [--batch-sizes 64,256]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
import time
from typing import Any

from bench import crowdflower as cf
from bench.common import report
from bench.retrain import K, bm25_metrics, human_judgments
from ecrec_stream.device import resolve_device
from ecrec_stream.embedding import resolve_model_path
from ecrec_stream.training import model_encoder, retrieval_metrics
from ecrec_stream.training.evaluate import embed_catalog
from ecrec_stream.training.finetune import FineTuneConfig, TrainPair, fine_tune

LR, WARMUP, MAX_SEQ = 2e-5, 0.1, 64


def plain_loop(
    model: Any, pairs: list[tuple[str, str]], epochs: int, batch: int, device: str
) -> float:
    t0 = time.perf_counter()
    fine_tune(
        model,
        [TrainPair(q, t) for q, t in pairs],
        FineTuneConfig(
            epochs=epochs,
            batch_size=batch,
            learning_rate=LR,
            max_seq_length=MAX_SEQ,
            warmup_ratio=WARMUP,
            validation_fraction=0.0,  # no validation: the same work as the other trainer
        ),
        device=device,
    )
    return time.perf_counter() - t0


def st_trainer(
    model: Any, pairs: list[tuple[str, str]], epochs: int, batch: int, device: str
) -> float:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    data = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [t for _, t in pairs]})
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch,
            learning_rate=LR,
            warmup_ratio=WARMUP,
            batch_sampler="no_duplicates",  # the plain loop masks duplicates instead
            bf16=device == "cuda",
            use_cpu=device == "cpu",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=data,
            loss=losses.MultipleNegativesRankingLoss(model),
        )
        t0 = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-sizes", default="64", help="comma-separated, e.g. 64,256")
    parser.add_argument("--model", default="default", help="sentence-transformers name or path")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    device = resolve_device(args.device)
    judg = cf.load()
    catalog = {f"t{i}": t for i, t in enumerate(judg.titles)}
    pairs = cf.relevant_pairs(judg, half=0)
    test = human_judgments(judg, [q for q in judg.queries if cf.query_half(q) == 1])
    base = SentenceTransformer(resolve_model_path(args.model), device=device)
    base.max_seq_length = MAX_SEQ

    def quality(model: Any) -> dict[str, float]:
        encode = model_encoder(model)
        return retrieval_metrics(encode, embed_catalog(encode, "x", catalog), test, K)

    rows: list[list[Any]] = []
    data: dict[str, Any] = {"device": device, "epochs": args.epochs, "pairs": len(pairs)}
    name: str
    for name, metrics in (
        ("BM25 (SQLite FTS5)", bm25_metrics(judg.titles, test)),
        ("base all-MiniLM-L6-v2", quality(base)),
    ):
        rows.append([name, metrics[f"ndcg@{K}"], metrics[f"recall@{K}"], "-", "-"])
        data[name] = metrics
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch, (loop, train) in itertools.product(
        batch_sizes,
        (
            ("plain torch loop (ecrec_stream.training)", plain_loop),
            ("SentenceTransformerTrainer", st_trainer),
        ),
    ):
        name = f"{loop}, batch {batch}"
        model = copy.deepcopy(base)
        seconds = train(model, pairs, args.epochs, batch, device)
        metrics = quality(model)
        rows.append(
            [
                name,
                metrics[f"ndcg@{K}"],
                metrics[f"recall@{K}"],
                round(seconds, 2),
                round(len(pairs) * args.epochs / seconds, 1),
            ]
        )
        data[name] = {**metrics, "train_s": seconds}
    report(
        "finetune_loops",
        f"Fine-tuning loops: {len(pairs):,} pairs, {args.epochs} epoch(s), "
        f"{device}; test = {len(test)} never-trained queries",
        ["model", f"nDCG@{K}", f"R@{K}", "train s", "pairs/s"],
        rows,
        data,
    )


if __name__ == "__main__":
    main()
