"""The evaluation gate: a candidate model is published only if it does not make search worse."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateDecision:
    """Whether to publish, why, and the metrics compared (split -> metric -> value)."""

    accepted: bool
    reasons: list[str]
    serving: dict[str, dict[str, float]] = field(default_factory=dict)
    candidate: dict[str, dict[str, float]] = field(default_factory=dict)


def evaluation_gate(
    serving: dict[str, dict[str, float]],
    candidate: dict[str, dict[str, float]],
    *,
    metric: str = "ndcg@10",
    tolerance: float = 0.01,
    min_queries: int = 10,
) -> GateDecision:
    """Accept when the candidate is at least as good as the serving model on ``recent``
    held-back data and at most ``tolerance`` worse on ``older`` data (skipped, and said so,
    when fewer than ``min_queries`` older queries were held back).

    >>> s = {"recent": {"ndcg@10": 0.5, "queries": 40}, "older": {"ndcg@10": 0.6, "queries": 40}}
    >>> c = {"recent": {"ndcg@10": 0.55, "queries": 40}, "older": {"ndcg@10": 0.58, "queries": 40}}
    >>> evaluation_gate(s, c, tolerance=0.01).accepted
    False
    >>> evaluation_gate(s, c, tolerance=0.05).accepted
    True
    """
    reasons: list[str] = []
    accepted = True
    recent_n = int(serving.get("recent", {}).get("queries", 0))
    if recent_n < min_queries:
        return GateDecision(
            False,
            [f"only {recent_n} recent held-back queries (need {min_queries})"],
            serving,
            candidate,
        )
    s_recent, c_recent = serving["recent"][metric], candidate["recent"][metric]
    if c_recent < s_recent:
        accepted = False
        reasons.append(f"recent {metric} {c_recent:.4f} < serving {s_recent:.4f}")
    else:
        reasons.append(f"recent {metric} {c_recent:.4f} >= serving {s_recent:.4f}")
    older_n = int(serving.get("older", {}).get("queries", 0))
    if older_n < min_queries:
        reasons.append(f"older data not checked: {older_n} held-back queries")
    else:
        s_old, c_old = serving["older"][metric], candidate["older"][metric]
        if c_old < s_old - tolerance:
            accepted = False
            reasons.append(
                f"older {metric} {c_old:.4f} lost more than {tolerance} (serving {s_old:.4f})"
            )
        else:
            reasons.append(f"older {metric} {c_old:.4f} within {tolerance} of {s_old:.4f}")
    return GateDecision(accepted, reasons, serving, candidate)
