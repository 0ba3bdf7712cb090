"""Every message on every topic, as a pydantic v2 model: the project's topic contracts.

:data:`TOPIC_CONTRACTS` maps each topic (by its :class:`~ecrec_stream.config.TopicNames` field)
to the model its messages validate against; producers build these models and consumers
validate with them. Each topic's models live in a module of this package: ``events`` (input
events, batches, dead letters), ``examples``, ``drift``, ``alerts``, ``models``; ``http`` holds
the HTTP answers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from ecrec_stream.contracts.alerts import (
    ALERT_ADAPTER,
    Alert,
    MovedCategory,
    RetrainingAlert,
    RetrainRejected,
    RetrainRequest,
    parse_alert,
)
from ecrec_stream.contracts.drift import DriftReport
from ecrec_stream.contracts.events import (
    ClickEvent,
    DeadLetter,
    EventBatch,
    ItemEvent,
    ReviewEvent,
    SearchEvent,
)
from ecrec_stream.contracts.examples import ExampleBatch, TrainingExample
from ecrec_stream.contracts.models import ModelPublication

# topic field -> what one message's value is
TOPIC_CONTRACTS: dict[str, Any] = {
    "items": ItemEvent,
    "searches": SearchEvent,
    "clicks": ClickEvent,
    "reviews": ReviewEvent,
    "valid_items": EventBatch,
    "valid_searches": EventBatch,
    "valid_clicks": EventBatch,
    "valid_reviews": EventBatch,
    "dlq": DeadLetter,
    "examples": ExampleBatch,
    "drift": DriftReport,
    "alerts": Alert,
    "models": ModelPublication,
}


def _members(contract: Any) -> tuple[type[BaseModel], ...]:
    """A contract's models: itself, or the members of an annotated union."""
    if isinstance(contract, type):
        return (contract,)
    return tuple(contract.__origin__.__args__)


def contract_name(contract: Any) -> str:
    """How the topic table names a contract (a union by its members).

    >>> contract_name(Alert)
    'RetrainingAlert | RetrainRequest | RetrainRejected'
    >>> contract_name(EventBatch)
    'EventBatch'
    """
    return " | ".join(m.__name__ for m in _members(contract))


def topic_table() -> str:
    """The Markdown table of every topic's contract (``docs/topics.md`` holds it; a test
    keeps the two equal): topic, its setting, the model, and each model's fields
    (``?`` optional)."""
    from ecrec_stream.config import TopicNames

    names = TopicNames()
    rows = ["| topic | setting | model | fields (`?`: optional) |", "|---|---|---|---|"]
    for field_name, contract in TOPIC_CONTRACTS.items():
        fields = "; ".join(
            f"{model.__name__}: "
            + ", ".join(
                f"`{name}{'' if info.is_required() else '?'}`"
                for name, info in model.model_fields.items()
            )
            for model in _members(contract)
        )
        rows.append(
            f"| `{getattr(names, field_name)}` | `ECREC_TOPICS__{field_name.upper()}` "
            f"| `{contract_name(contract)}` | {fields} |"
        )
    return "\n".join(rows) + "\n"


def validate_message(topic_field: str, raw: bytes | str) -> Any:
    """Validate one message of the topic named by ``topic_field`` against its contract
    (raises ``pydantic.ValidationError``)."""
    return TypeAdapter(TOPIC_CONTRACTS[topic_field]).validate_json(raw)


__all__ = [
    "ALERT_ADAPTER",
    "TOPIC_CONTRACTS",
    "Alert",
    "ClickEvent",
    "DeadLetter",
    "DriftReport",
    "EventBatch",
    "ExampleBatch",
    "ItemEvent",
    "ModelPublication",
    "MovedCategory",
    "RetrainRejected",
    "RetrainRequest",
    "RetrainingAlert",
    "ReviewEvent",
    "SearchEvent",
    "TrainingExample",
    "contract_name",
    "parse_alert",
    "topic_table",
    "validate_message",
]
