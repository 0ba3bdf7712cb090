"""Language-model augmentation, annotation and robustness, measured (issue 11).

Robustness: how much the serving index loses when a real query is perturbed one way at a time
(``ecrec_stream.augment.perturb``: a typo, another word order, the head noun's number, unit
spelling, an abbreviation, a synonym). Catalog = every distinct Crowdflower title indexed by a
real ``LiveItemIndex`` with the packaged encoder; queries = every Crowdflower query with a
relevant judgment; gain = median_relevance - 1. For each perturbation, only the queries it
changes count, clean and perturbed on the same queries, per search mode.

Mining (``--only mining``): the robustness miner's adversarial pairs from the Crowdflower
training half, and the packaged model fine-tuned on clean pairs, clean + mined, and clean + as
many random perturbed pairs (the control), evaluated on the test half clean and perturbed.

LLM (``--only llm``; the packaged SmolLM2-135M-Instruct on whatever device is there):
sentiment on real reviews with the rating masked, with and without the LLM annotator's votes on
the reviews routed to it; its relevance judgments of Crowdflower pairs against the content
functions; the augmentation experiment with back-translation and LLM paraphrase before and
after the meaning filter; the sentiment labeler's throughput with the annotator off and on.

    python -m bench.augment [--only all|robustness|mining|llm] [--test 1000] [--pairs 400]
                            [--augment-n 200] [--throughput 2000]
"""

from __future__ import annotations

import argparse
import csv
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from bench import crowdflower as cf
from bench.common import report
from bench.labels import (
    _majority,
    classifier_macro_f1,
    lexicon_labels,
    load_reviews,
    macro_f1,
    truth,
)
from bench.retrain import K, human_judgments
from bench.retrieval import MODES, apply_in_batches, fine_tuned_encoder, items_of, mode_quality
from ecrec_stream.augment import EdaAugmenter, MeaningFilter, TypoAugmenter
from ecrec_stream.augment.paraphrase import LLMParaphraseAugmenter
from ecrec_stream.augment.perturb import PERTURBATIONS, perturb
from ecrec_stream.augment.translate import BackTranslationAugmenter
from ecrec_stream.config import AnnotatorSettings, IndexSettings, LabelSettings
from ecrec_stream.embedding import CachedEncoder
from ecrec_stream.index import LiveItemIndex
from ecrec_stream.labels.adversarial import AdversarialMiner
from ecrec_stream.labels.annotate import build_annotator, route_reason
from ecrec_stream.labels.base import ABSTAIN, SentimentCandidate
from ecrec_stream.labels.examples import (
    RelevanceLabeler,
    SentimentLabeler,
    TrainingExample,
    vote_matrix,
)
from ecrec_stream.labels.llm import LLMRelevance, LLMSentiment
from ecrec_stream.labels.model import LabelModel
from ecrec_stream.labels.relevance import LexicalRelevance
from ecrec_stream.labels.sentiment import (
    LexiconSentiment,
    PrototypeSentiment,
    SeedClassifierSentiment,
)
from ecrec_stream.llm import CausalLM

PARAPHRASE = "paraphrase (back-translation)"


def perturbed_queries(queries: list[str], seed: int) -> dict[str, dict[str, str]]:
    """Per perturbation kind, the queries it changes -> their perturbed text; the rule-based
    kinds of ``ecrec_stream.augment.perturb`` and an EN -> PT -> EN round trip (paraphrase)."""
    out = {
        kind: {q: p for q in queries if (p := perturb(q, kind, seed)) != q.lower().strip()}
        for kind in PERTURBATIONS
    }
    made = BackTranslationAugmenter().augment_many([(q, q) for q in queries], seed=seed)
    out[PARAPHRASE] = {a.source_id: a.text for a in made}
    return out


def _change(clean: dict[str, Any], perturbed: dict[str, Any], mode: str, metric: str) -> str:
    return f"{clean[mode][metric]:.3f} -> {perturbed[mode][metric]:.3f}"


def robustness_rows(
    live: LiveItemIndex,
    judgments: dict[str, dict[str, float]],
    variants: dict[str, dict[str, str]],
) -> tuple[list[list[Any]], dict[str, Any]]:
    """nDCG@K and recall@K per search mode, clean vs perturbed, on the queries each kind
    changes (clean and perturbed on the same queries)."""
    rows: list[list[Any]] = []
    clean_all = mode_quality(live, judgments)
    rows.append(
        [
            "none (clean)",
            len(judgments),
            "",
            *[f"{clean_all[m][f'ndcg@{K}']:.3f}" for m in MODES],
            *[f"{clean_all[m][f'recall@{K}']:.3f}" for m in MODES],
        ]
    )
    data: dict[str, Any] = {"clean": clean_all}
    for kind, all_changed in variants.items():
        changed = {q: p for q, p in all_changed.items() if q in judgments}
        if not changed:
            rows.append([kind, 0, "", *["-"] * (2 * len(MODES))])
            continue
        tests = {q: judgments[q] for q in changed}
        clean = mode_quality(live, tests)
        perturbed = mode_quality(live, tests, searched=changed)
        example = next(iter(changed.items()))
        rows.append(
            [
                kind,
                len(changed),
                f"{example[0]} -> {example[1]}",
                *[_change(clean, perturbed, m, f"ndcg@{K}") for m in MODES],
                *[_change(clean, perturbed, m, f"recall@{K}") for m in MODES],
            ]
        )
        data[kind] = {
            "queries_changed": len(changed),
            "examples": list(changed.items())[:5],
            "clean": clean,
            "perturbed": perturbed,
        }
    return rows, data


def robustness(seed: int = 0) -> tuple[list[list[Any]], dict[str, Any]]:
    from ecrec_stream.embedding import SentenceTransformerEncoder

    judg = cf.load()
    judgments = human_judgments(judg, judg.queries)
    live = LiveItemIndex(SentenceTransformerEncoder(), IndexSettings())
    apply_in_batches(live, items_of(judg.titles))
    rows, data = robustness_rows(live, judgments, perturbed_queries(list(judgments), seed))
    return rows, {"queries": len(judgments), "catalog": len(judg.titles), **data}


def mining_experiment(
    workdir: Path, seed: int = 0
) -> tuple[list[list[Any]], list[list[Any]], dict[str, Any]]:
    """Adversarial pairs mined on the Crowdflower training half (the serving index = the
    packaged MiniLM over every title, hybrid search, top K) and what they do when fine-tuned
    on: the serving model, fine-tuned on the clean relevant pairs, clean + the mined pairs,
    and clean + as many perturbed pairs drawn at random (not mined; the control), each
    evaluated on the test half's queries, clean and under each perturbation."""
    from ecrec_stream.embedding import SentenceTransformerEncoder

    judg = cf.load()
    titles = {title: f"t{i}" for i, title in enumerate(judg.titles)}
    live = LiveItemIndex(SentenceTransformerEncoder(), IndexSettings())
    apply_in_batches(live, items_of(judg.titles))
    examples = [
        TrainingExample(
            example_id=f"cf-{n}",
            task="relevance",
            text=q,
            text_pair=title,
            item_id=titles[title],
            label=1,
            grade=1,
            confidence=1.0,
            weight=1.0,
            votes={"human": 1},
            source_event_ids=[f"cf-{n}"],
        )
        for n, (q, title) in enumerate(cf.relevant_pairs(judg, half=0))
    ]
    started = time.perf_counter()
    miner = AdversarialMiner(live.search_ids, k=K, seed=seed)
    mined = miner.mine(examples)
    mining_s = time.perf_counter() - started
    title_of = {e.example_id: e.text_pair or "" for e in examples}
    mined_pairs = [(m.text, title_of[m.augmented_from or ""]) for m in mined]
    # the control: every perturbation of every pair, sampled down to as many as were mined
    everything = [
        (p, e.text_pair or "")
        for e in examples
        for kind in PERTURBATIONS
        if (p := perturb(e.text, kind, seed)) != e.text.lower().strip()
    ]
    random_pairs = random.Random(seed).sample(everything, min(len(mined_pairs), len(everything)))
    tests = human_judgments(judg, [q for q in judg.queries if cf.query_half(q) == 1])
    variants = perturbed_queries(list(tests), seed)
    data: dict[str, Any] = {
        "train_pairs": len(examples),
        "test_queries": len(tests),
        "mining": {**miner.stats.as_dict(), "seconds": mining_s},
        "random_pool": len(everything),
        "examples_mined": mined_pairs[:10],
    }
    arms: list[tuple[str, Sequence[tuple[str, str]] | None]] = [
        ("serving model (no fine-tuning)", None),
        ("fine-tuned, clean pairs", ()),
        (f"fine-tuned, clean + {len(mined_pairs)} mined adversarial pairs", mined_pairs),
        (f"fine-tuned, clean + {len(random_pairs)} random perturbed pairs (control)", random_pairs),
    ]
    kinds = list(variants)
    rows: list[list[Any]] = []
    for name, extra in arms:
        if extra is not None:
            t0 = time.perf_counter()
            tuned, n_pairs = fine_tuned_encoder(judg, workdir, name=name, extra_pairs=extra)
            live.swap_encoder(tuned)
            data.setdefault("fine_tune", {})[name] = {
                "pairs": n_pairs,
                "seconds": time.perf_counter() - t0,
            }
        _, quality = robustness_rows(live, tests, variants)
        data[name] = quality
        for mode in ("dense", "hybrid"):
            perturbed = [quality[k]["perturbed"][mode][f"ndcg@{K}"] for k in kinds if k in quality]
            rows.append(
                [
                    name,
                    mode,
                    quality["clean"][mode][f"ndcg@{K}"],
                    *[
                        quality[k]["perturbed"][mode][f"ndcg@{K}"] if k in quality else "-"
                        for k in kinds
                    ],
                    float(np.mean(perturbed)),
                ]
            )
    mining_rows = [
        [kind, c.get("mined", 0), c.get("robust", 0), c.get("unchanged", 0)]
        for kind, c in sorted(miner.stats.per_kind.items())
    ]
    return rows, mining_rows, {**data, "kinds": kinds}


REVIEWS = cf.DATA.parent / "womens_clothing_reviews"


def llm_sentiment(
    lm: Any, encoder: Any, n_test: int, settings: AnnotatorSettings
) -> tuple[list[list[Any]], dict[str, Any]]:
    """Real reviews, rating masked: the label model and a majority vote of the fast text
    functions, with and without the LLM annotator's votes on the reviews routed to it."""
    pool = load_reviews(REVIEWS)
    train, test = pool[:2000], pool[2000 : 2000 + n_test]
    y = truth(test)
    seed = SeedClassifierSentiment(encoder).fit([c.text for c in train], truth(train).tolist())
    fast: list[Any] = [LexiconSentiment(), PrototypeSentiment(encoder), seed]
    names = [f.name for f in fast]
    votes = vote_matrix(fast, test)
    routed = []
    for i, row in enumerate(votes):
        ex = _as_example(test[i], dict(zip(names, row.tolist(), strict=True)))
        if route_reason(ex, names, min_voters=settings.min_voters, sample_share=0.0):
            routed.append(i)
    llm = LLMSentiment(lm, abstain_band=settings.abstain_band, max_chars=settings.max_text_chars)
    started = time.perf_counter()
    p_all = llm.probabilities([test[i].text for i in routed])
    cost = (time.perf_counter() - started) / max(len(routed), 1)
    llm_votes = np.full(len(test), ABSTAIN, dtype=np.int64)
    llm_votes[routed] = [v.label for v in llm.vote_many([test[i] for i in routed])]
    with_llm = np.hstack([votes, llm_votes[:, None]])
    rows: list[list[Any]] = []
    data: dict[str, Any] = {
        "test_reviews": len(test),
        "routed": len(routed),
        "routed_share": len(routed) / len(test),
        "seconds_per_review": cost,
        "model": lm.version,
    }
    for name, matrix in (("fast functions", votes), ("fast functions + LLM", with_llm)):
        lm_pred = LabelModel().fit(matrix).predict_proba(matrix).argmax(axis=1)
        mv_pred = _majority(matrix)
        rows.append([f"label model, {name}", len(test), macro_f1(y, lm_pred)])
        rows.append([f"majority vote, {name} (baseline)", len(test), macro_f1(y, mv_pred)])
        data[name] = {"label_model": macro_f1(y, lm_pred), "majority_vote": macro_f1(y, mv_pred)}
    r = np.array(routed)
    covered = llm_votes[r] != ABSTAIN
    y_r = y[r]
    rows.append(
        [
            f"LLM alone on the routed reviews ({covered.mean():.0%} voted)",
            int(covered.sum()),
            macro_f1(y_r[covered], llm_votes[r][covered]),
        ]
    )
    rows.append(
        [
            "majority vote of the fast functions on the same routed reviews (baseline)",
            len(r),
            macro_f1(y_r, _majority(votes[r])),
        ]
    )
    auc = float(roc_auc_score(y_r, p_all)) if len(set(y_r.tolist())) == 2 else None
    data["llm_alone_routed"] = {
        "voted": int(covered.sum()),
        "macro_f1_voted": macro_f1(y_r[covered], llm_votes[r][covered]),
        "auc": auc,
        "fast_majority_macro_f1_routed": macro_f1(y_r, _majority(votes[r])),
    }
    return rows, data


def _as_example(c: SentimentCandidate, votes: dict[str, int]) -> TrainingExample:
    return TrainingExample(
        example_id=f"ex-{c.event_id}",
        task="sentiment",
        text=c.text,
        item_id=c.item_id,
        label=1,
        confidence=1.0,
        weight=1.0,
        votes=votes,
        source_event_ids=[c.event_id],
    )


def llm_relevance(lm: Any, encoder: Any, n_pairs: int) -> tuple[list[list[Any]], dict[str, Any]]:
    """Crowdflower (query, title) pairs: the LLM annotator's P(yes) against the content
    functions (query-word coverage, MiniLM cosine) on the same pairs, scored against the human
    median: pairwise accuracy within a query, macro-F1 of relevant (median >= 3) vs not."""
    with open(cf.DATA / "train.csv", newline="", encoding="utf-8") as fh:
        rows_all = list(csv.DictReader(fh))
    by_query: dict[str, list[dict[str, str]]] = {}
    for row in rows_all:
        by_query.setdefault(row["query"].strip(), []).append(row)
    queries = sorted(by_query)
    random.Random(0).shuffle(queries)
    chosen: list[dict[str, str]] = []
    for q in queries:  # whole queries, so pairs within a query can be compared
        if len(chosen) >= n_pairs:
            break
        chosen += by_query[q][:12]
    pairs = [(r["query"].strip(), r["product_title"].strip()) for r in chosen]
    grade = np.array([int(r["median_relevance"]) for r in chosen])
    y = (grade >= 3).astype(int)
    llm = LLMRelevance(lm)
    started = time.perf_counter()
    scores = {"LLM P(yes)": llm.probabilities(pairs)}
    cost = (time.perf_counter() - started) / len(pairs)
    lexical = LexicalRelevance()
    scores["content: query-word coverage (lexical)"] = np.nan_to_num(
        np.array([lexical.coverage(q, t) for q, t in pairs])
    )
    qv, tv = encoder.encode([q for q, _ in pairs]), encoder.encode([t for _, t in pairs])
    scores["content: MiniLM cosine"] = np.einsum("ij,ij->i", qv, tv)
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"pairs": len(pairs), "seconds_per_pair": cost, "model": lm.version}
    for name, score in scores.items():
        acc, n_cmp = _pairwise_accuracy([p[0] for p in pairs], grade, score)
        # the decision threshold a label function would use: the median score (no tuning)
        f1 = macro_f1(y, (score > np.median(score)).astype(int))
        auc = float(roc_auc_score(y, score))
        rows.append([name, len(pairs), acc, n_cmp, auc, f1])
        data[name] = {"pairwise_accuracy": acc, "compared": n_cmp, "auc": auc, "macro_f1": f1}
    return rows, data


def _pairwise_accuracy(
    queries: list[str], grade: np.ndarray, score: np.ndarray
) -> tuple[float, int]:
    """Share of same-query pairs with different human grades that ``score`` orders alike
    (ties count half)."""
    right, total = 0.0, 0
    idx: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        idx.setdefault(q, []).append(i)
    for members in idx.values():
        for a in members:
            for b in members:
                if grade[a] > grade[b]:
                    total += 1
                    right += 1.0 if score[a] > score[b] else 0.5 if score[a] == score[b] else 0.0
    return (right / total if total else float("nan")), total


def augmentation_experiment(
    lm: Any, encoder: Any, n: int
) -> tuple[list[list[Any]], dict[str, Any]]:
    """A classifier on MiniLM embeddings trained on ``n`` rating-labelled reviews, plus the
    variants of each augmenter before and after the meaning filter, tested on 3,000 others."""
    pool = load_reviews(REVIEWS)
    small, test = pool[:n], pool[2000:5000]
    y_small, y_test = truth(small), truth(test)
    x_test = encoder.encode([c.text for c in test])
    items = [(c.event_id, c.text) for c in small]
    label_of = dict(zip([c.event_id for c in small], y_small.tolist(), strict=True))

    augmenters: list[Any] = [
        EdaAugmenter(variants=1),
        TypoAugmenter(variants=1),
        BackTranslationAugmenter(),
        LLMParaphraseAugmenter(lm, kind="review", variants=1),
    ]

    def fit_f1(texts: list[str], labels: list[int]) -> float:
        return classifier_macro_f1(encoder, texts, labels, x_test, y_test)

    base_texts, base_labels = [c.text for c in small], y_small.tolist()
    base = fit_f1(base_texts, base_labels)
    rows: list[list[Any]] = [["none", len(base_texts), "-", "-", base, "-"]]
    data: dict[str, Any] = {"n": n, "test": len(test), "none": base}
    sources = dict(items)
    for aug in augmenters:
        started = time.perf_counter()
        made = aug.augment_many(items, seed=13)
        seconds = (time.perf_counter() - started) / len(items)
        filt = MeaningFilter(encoder, min_similarity=LabelSettings().min_similarity)
        kept = filt.filter_many(made, sources, label_of=lexicon_labels)
        kept_ids = {(a.source_id, a.variant) for a, _ in kept}
        dropped = [a for a in made if (a.source_id, a.variant) not in kept_ids]
        all_f1 = fit_f1(
            base_texts + [a.text for a in made],
            base_labels + [label_of[a.source_id] for a in made],
        )
        kept_f1 = fit_f1(
            base_texts + [a.text for a, _ in kept],
            base_labels + [label_of[a.source_id] for a, _ in kept],
        )
        counts = filt.counts.as_dict().get(aug.name, {})
        rows.append(
            [
                aug.name,
                len(made),
                f"{len(kept)} kept / {counts.get('dropped_similarity', 0)} sim / "
                f"{counts.get('dropped_flip', 0)} flip",
                f"{seconds * 1000:.0f} ms",
                all_f1,
                kept_f1,
            ]
        )
        data[aug.name] = {
            "made": len(made),
            "filter": counts,
            "seconds_per_text": seconds,
            "macro_f1_all": all_f1,
            "macro_f1_filtered": kept_f1,
            "dropped_examples": [
                {"source": sources[a.source_id][:200], "augmented": a.text[:200]}
                for a in dropped[:5]
            ],
        }
    return rows, data


def throughput(
    lm: Any, encoder: Any, n: int, settings: AnnotatorSettings
) -> tuple[list[list[Any]], dict[str, Any]]:
    """The sentiment labeler's reviews/s over the same ``n`` real reviews (micro-batches of 50),
    with the annotator off and on (its thread draining the routed reviews at the budget while
    the labeler runs, as in the worker), in one run. Each mode starts with an empty embedding
    cache: a cache shared between them made the second mode embed nothing."""
    pool = load_reviews(REVIEWS)[5000 : 5000 + n]
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"reviews": n, "rate_per_s": settings.rate_per_s}
    for mode in ("annotator off", "annotator on"):
        labeler = SentimentLabeler(CachedEncoder(encoder.inner), LabelSettings(augment_variants=0))
        annotator = None
        if mode == "annotator on":
            only_reviews = settings.model_copy(update={"tasks": ("sentiment",)})
            unused = RelevanceLabeler(None, LabelSettings(augment_variants=0))
            annotator = build_annotator(LabelSettings(annotator=only_reviews), unused, labeler, lm)
        stop = threading.Event()

        def drain(a: Any = annotator, lab: Any = labeler, stop: Any = stop) -> None:
            while not stop.is_set():
                batch = a.take()
                if batch:
                    lab.revise(a.annotate(batch))
                else:
                    time.sleep(0.05)

        thread = threading.Thread(target=drain, daemon=True) if annotator else None
        if thread:
            thread.start()
        started = time.perf_counter()
        for b in range(0, n, 50):
            examples = labeler.label_many(pool[b : b + 50])
            if annotator:
                annotator.offer(examples, labeler.fast_names)
        elapsed = time.perf_counter() - started
        stop.set()
        if thread:
            thread.join()
        stats = annotator.stats.as_dict(annotator.backlog) if annotator else {}
        rows.append(
            [
                mode,
                n / elapsed,
                sum(stats.get("routed", {}).values()) if stats else "-",
                stats.get("annotated", "-"),
                stats.get("backlog", "-"),
                stats.get("dropped", "-"),
            ]
        )
        data[mode] = {"reviews_per_s": n / elapsed, "seconds": elapsed, "annotator": stats}
    return rows, data


def llm_report(n_test: int, n_pairs: int, n_augment: int, n_throughput: int) -> None:
    from ecrec_stream.embedding import SentenceTransformerEncoder

    settings = AnnotatorSettings()
    started = time.perf_counter()
    lm = CausalLM.from_settings(settings.llm)
    load_s = time.perf_counter() - started
    encoder = CachedEncoder(SentenceTransformerEncoder())
    rows, data = llm_sentiment(lm, encoder, n_test, settings)
    data["load_s"] = load_s
    report(
        "augment_llm_sentiment",
        f"Sentiment, real reviews, rating masked ({data['routed_share']:.0%} routed to the LLM, "
        f"{data['seconds_per_review']:.2f} s each): macro-F1",
        ["labels", "reviews", "macro-F1"],
        rows,
        data,
    )
    rows, data = llm_relevance(lm, encoder, n_pairs)
    report(
        "augment_llm_relevance",
        f"Relevance of Crowdflower pairs vs human judgments ({data['seconds_per_pair']:.2f} s "
        "per pair for the LLM)",
        ["scorer", "pairs", "pairwise acc.", "pairs compared", "AUC", "macro-F1 @ median"],
        rows,
        data,
    )
    rows, data = augmentation_experiment(lm, encoder, n_augment)
    report(
        "augment_experiment",
        f"N={n_augment} rating-labelled reviews + one variant each, macro-F1 on 3,000 others",
        ["augmenter", "variants", "meaning filter", "cost/text", "F1 all", "F1 filtered"],
        rows,
        data,
    )
    rows, data = throughput(lm, encoder, n_throughput, settings)
    report(
        "augment_llm_throughput",
        "Sentiment labeler throughput with the LLM annotator off vs on (same reviews, same run)",
        ["mode", "reviews/s", "routed", "annotated", "backlog", "dropped"],
        rows,
        data,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["all", "robustness", "mining", "llm"], default="all")
    parser.add_argument("--test", type=int, default=1000, help="reviews for the LLM sentiment")
    parser.add_argument("--pairs", type=int, default=400, help="Crowdflower pairs for the LLM")
    parser.add_argument("--augment-n", type=int, default=200, help="labelled reviews")
    parser.add_argument("--throughput", type=int, default=2000, help="reviews")
    args = parser.parse_args()
    if args.only in ("all", "robustness"):
        rows, data = robustness(args.seed)
        report(
            "augment_robustness",
            f"Serving index under query perturbations: nDCG@{K} and recall@{K} clean -> "
            f"perturbed on the {data['queries']} Crowdflower queries each perturbation changes",
            [
                "perturbation",
                "queries changed",
                "example",
                *[f"nDCG {m}" for m in MODES],
                *[f"recall {m}" for m in MODES],
            ],
            rows,
            data,
        )
    if args.only in ("all", "mining"):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ecrec-mining-") as workdir:
            rows, mining_rows, data = mining_experiment(Path(workdir), args.seed)
        report(
            "augment_mining_counts",
            f"Adversarial pairs mined on the Crowdflower training half "
            f"({data['train_pairs']} relevant pairs, hybrid top {K}, "
            f"{data['mining']['clean_miss']} missed clean, {data['mining']['seconds']:.0f} s)",
            ["perturbation", "mined (item lost)", "robust (item kept)", "not applicable"],
            mining_rows,
            data["mining"],
        )
        report(
            "augment_mining",
            f"Fine-tuning with mined adversarial pairs: nDCG@{K} on the "
            f"{data['test_queries']} test-half queries, clean and perturbed (queries each "
            "perturbation changes)",
            ["model", "mode", "clean", *data["kinds"], "mean perturbed"],
            rows,
            data,
        )
    if args.only in ("all", "llm"):
        llm_report(args.test, args.pairs, args.augment_n, args.throughput)


if __name__ == "__main__":
    main()
