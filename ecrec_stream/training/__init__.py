"""Training: the replay buffer, incremental fine-tuning, retrieval evaluation, the gate and
one gated retrain (:class:`Retrainer`). No Kafka here: the trainer worker wires it to topics."""

from ecrec_stream.training.buffer import BufferSplit, ReplayBuffer, query_bucket
from ecrec_stream.training.evaluate import (
    EmbeddedCatalog,
    Judgments,
    embed_catalog,
    judgments_from_examples,
    ndcg_at_k,
    recall_at_k,
    retrieval_metrics,
)
from ecrec_stream.training.finetune import FineTuneConfig, FineTuneReport, TrainPair, fine_tune
from ecrec_stream.training.gate import GateDecision, evaluation_gate
from ecrec_stream.training.retrain import Retrainer, RetrainOutcome, model_encoder

__all__ = [
    "BufferSplit",
    "EmbeddedCatalog",
    "FineTuneConfig",
    "FineTuneReport",
    "GateDecision",
    "Judgments",
    "ReplayBuffer",
    "RetrainOutcome",
    "Retrainer",
    "TrainPair",
    "embed_catalog",
    "evaluation_gate",
    "fine_tune",
    "judgments_from_examples",
    "model_encoder",
    "ndcg_at_k",
    "query_bucket",
    "recall_at_k",
    "retrieval_metrics",
]
