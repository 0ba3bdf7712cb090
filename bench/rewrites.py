"""How the head-noun rule changes ``query_rewrite``'s plural rewrites, on real queries.

The previous rule toggled the plural of a random alphabetic word of 4+ letters, so brands and
modifiers were pluralised ("kitchen cart" -> "kitchens cart"). The current rule toggles only the
head noun (``ecrec_stream.augment.rewrite.head_noun_index``). On the Crowdflower queries (real,
../shared/data) this reports the share of the previous rule's plural rewrites that hit a word
other than the head noun (each eligible word equally likely, as that rule drew them), the share
of queries the current rule leaves alone, and examples of both.

    python -m bench.rewrites
"""

from __future__ import annotations

from typing import Any

from bench.common import report
from bench.crowdflower import load
from ecrec_stream.augment.rewrite import head_noun_index, toggle_plural


def main() -> None:
    queries = [q.lower() for q in load().queries]
    wrong_share, eligible_queries, skipped = 0.0, 0, 0
    examples_wrong: list[str] = []
    examples_new: list[str] = []
    for q in queries:
        words = q.split()
        eligible = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 3]
        head = head_noun_index(words)
        if head is None:
            skipped += 1
        elif len(examples_new) < 8:
            new = words[:]
            new[head] = toggle_plural(new[head])
            examples_new.append(f"{q} -> {' '.join(new)}")
        if not eligible:
            continue
        eligible_queries += 1
        off_head = [i for i in eligible if i != head]
        wrong_share += len(off_head) / len(eligible)
        if off_head and len(examples_wrong) < 8:
            old = words[:]
            old[off_head[0]] = toggle_plural(old[off_head[0]])
            examples_wrong.append(f"{q} -> {' '.join(old)}")
    share = wrong_share / max(eligible_queries, 1)
    data: dict[str, Any] = {
        "queries": len(queries),
        "previous_rule_off_head_share": share,
        "current_rule_leaves_alone": skipped / len(queries),
        "previous_rule_examples": examples_wrong,
        "current_rule_examples": examples_new,
    }
    report(
        "rewrites",
        f"Plural rewrites on {len(queries)} real Crowdflower queries",
        ["rule", "share"],
        [
            ["previous rule: plural rewrites that hit a modifier or brand (expected)", share],
            ["current rule: queries left alone (no countable head noun)", skipped / len(queries)],
        ],
        data,
    )
    print("previous rule, e.g.:", *examples_wrong, sep="\n  ")
    print("current rule, e.g.:", *examples_new, sep="\n  ")


if __name__ == "__main__":
    main()
