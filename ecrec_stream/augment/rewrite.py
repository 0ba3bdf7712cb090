"""Query rewrites that keep the intent: plural/singular, unit spacing and spelling,
abbreviations, word order."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ecrec_stream.augment.base import AugmentedText, make_variants, rng_for

UNIT_WORDS = {
    "oz": "ounce",
    "lb": "pound",
    "lbs": "pounds",
    "ct": "count",
    "pk": "pack",
    "ml": "milliliter",
    "l": "liter",
    "gal": "gallon",
    "kg": "kilogram",
    "g": "gram",
}
ABBREVIATIONS = {
    "extra large": "xl",
    "large": "lg",
    "small": "sm",
    "medium": "med",
    "package": "pkg",
    "gluten free": "gf",
    "sugar free": "sf",
    "organic": "org",
    "chocolate": "choc",
    "vanilla": "van",
    "original": "orig",
    "count": "ct",
}
# Units a quantity may be written with or without a space before ("32 oz" / "32oz"). Only
# these: any 1-3 letters after a number also split "49ers" into "49 ers".
UNITS = sorted(
    {*UNIT_WORDS, "in", "ft", "mm", "cm", "m", "qt", "pt", "gb", "tb", "mb", "w", "v", "pc", "pcs"},
    key=len,
    reverse=True,
)
_UNIT = "|".join(UNITS)
_QTY_SPACED = re.compile(rf"\b(\d+(?:\.\d+)?) ({_UNIT})\b")
_QTY_TIGHT = re.compile(rf"\b(\d+(?:\.\d+)?)({_UNIT})\b")


# plurals of nouns ending in "-ie", which the "-ies" -> "-y" rule would mangle
IE_PLURALS = frozenset(
    [
        "cookies",
        "brownies",
        "smoothies",
        "veggies",
        "movies",
        "pies",
        "ties",
        "hoodies",
        "beanies",
        "calories",
        "goodies",
        "freebies",
        "rookies",
    ]
)


def toggle_plural(word: str) -> str:
    """Singular <-> plural for regular English nouns.

    >>> [toggle_plural(w) for w in ("apples", "berry", "berries", "box", "boxes", "cookies")]
    ['apple', 'berries', 'berry', 'boxes', 'box', 'cookie']
    """
    if len(word) < 3 or not word.isalpha():
        return word
    if word in IE_PLURALS:
        return word[:-1]
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"


def _rewrite_units(text: str, rng: random.Random) -> str:
    if _QTY_SPACED.search(text) and rng.random() < 0.5:
        return _QTY_SPACED.sub(lambda m: m.group(1) + m.group(2), text)  # "32 oz" -> "32oz"
    if _QTY_TIGHT.search(text):
        return _QTY_TIGHT.sub(lambda m: f"{m.group(1)} {m.group(2)}", text)  # "32oz" -> "32 oz"
    words = text.split()
    spots = [i for i, w in enumerate(words) if w in UNIT_WORDS]
    if spots:
        i = rng.choice(spots)
        words[i] = UNIT_WORDS[words[i]]
    return " ".join(words)


def _abbreviate(text: str, rng: random.Random) -> str:
    found = [(k, v) for k, v in ABBREVIATIONS.items() if re.search(rf"\b{k}\b", text)]
    if not found:
        return text
    long, short = rng.choice(found)
    return re.sub(rf"\b{long}\b", short, text, count=1)


# Words that start a post-modifier ("shoes for men"): the head noun comes before them.
_PREPOSITIONS = frozenset("for with without in of on from by to at under over".split())
# Mass nouns whose plural is wrong or means something else in a product query.
_UNCOUNTABLE = frozenset(
    "milk water rice flour sugar salt furniture jewelry jewellery clothing equipment luggage "
    "hardware software bedding shelving flooring seating lighting fencing tubing wiring "
    "storage decor cereal bread meat fish pasta cotton wool silk denim leather "
    # plural-only nouns: "pants" has no useful singular in a product query
    "pants jeans shorts leggings tights trousers pajamas scissors glasses sunglasses goggles "
    "binoculars pliers tongs clothes news".split()
)


def head_noun_index(words: Sequence[str]) -> int | None:
    """Index of the head noun of an English product query: the last word before the first
    preposition that is a countable noun candidate (alphabetic, 4+ letters, not a unit, not an
    ``-ing`` or mass noun). ``None`` when there is none: then nothing is pluralised, since
    brands and modifiers ("husky shelving", "kitchen cart") must keep their form.

    >>> [head_noun_index(q.split()) for q in ("kitchen cart", "husky shelving",
    ...     "running shoes for men", "organic whole milk 32 oz")]
    [1, None, 1, None]
    """
    end = next((i for i, w in enumerate(words) if w in _PREPOSITIONS and i > 0), len(words))
    for i in range(end - 1, -1, -1):
        word = words[i]
        if not word.isalpha() or word in UNIT_WORDS or word in ABBREVIATIONS.values():
            continue
        if len(word) <= 3 or word.endswith("ing") or word in _UNCOUNTABLE:
            return None  # the last content word is not a countable noun: leave the query
        return i
    return None


def _plural(text: str, rng: random.Random) -> str:
    """Toggle singular/plural of the head noun only ("kitchen cart" -> "kitchen carts")."""
    words = text.split()
    i = head_noun_index(words)
    if i is None:
        return text
    words[i] = toggle_plural(words[i])
    return " ".join(words)


def _reorder(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    k = rng.randrange(1, len(words))
    return " ".join(words[k:] + words[:k])  # rotate: "oat milk 32 oz" -> "32 oz oat milk"


REWRITES = (_rewrite_units, _abbreviate, _plural, _reorder)


class QueryRewriteAugmenter:
    """Rewrites a (lower-cased) query with one rule per variant, trying rules in a seeded order
    until one changes the text."""

    name = "query_rewrite"

    def __init__(self, *, variants: int = 1) -> None:
        self.variants = variants

    def augment_one(self, source_id: str, text: str, variant: int, seed: int) -> str:
        rng = rng_for(source_id, self.name, variant, seed)
        query = text.lower().strip()
        rules = list(REWRITES)
        rng.shuffle(rules)
        for rule in rules:
            new = rule(query, rng)
            if new != query:
                return new
        return query

    def augment_many(self, items: Sequence[tuple[str, str]], *, seed: int) -> list[AugmentedText]:
        return make_variants(self.name, self.variants, items, seed, self.augment_one)
