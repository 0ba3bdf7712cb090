"""A small shipped e-commerce synonym table (grocery, household and clothing words).

Hand-written because WordNet synonyms are often wrong for shopping ("milk" -> "exploit",
"top" -> "crown") and the WordNet files are not on PyPI; groups here are interchangeable in a
product query or review without changing what is meant.
"""

from __future__ import annotations

_GROUPS = [
    "soda pop soft-drink",
    "sneakers trainers",
    "pants trousers",
    "sweater jumper pullover",
    "jacket coat",
    "dress gown",
    "t-shirt tee",
    "purse handbag bag",
    "couch sofa",
    "cookies biscuits",
    "chips crisps",
    "candy sweets",
    "fries chips",
    "diaper nappy",
    "flashlight torch",
    "cell mobile",
    "faucet tap",
    "garbage trash rubbish",
    "stroller pram",
    "big large",
    "small little",
    "cheap inexpensive affordable",
    "fast quick",
    "buy purchase",
    "love adore",
    "great excellent wonderful",
    "good nice",
    "pretty lovely beautiful",
    "comfortable comfy cozy",
    "bad poor",
    "awful terrible horrible",
    "tiny small",
    "huge enormous",
    "soft smooth",
    "shirt top",
    "blouse top",
    "skirt",
    "fit sizing",
    "fabric material",
    "color colour",
    "gray grey",
    "flavor flavour",
    "organic natural",
    "fresh new",
    "bottle jar",
    "pack package",
    "ounce oz",
    "pound lb",
    "liter litre",
    "gallon gal",
    "veggies vegetables",
    "yoghurt yogurt",
    "cereal flakes",
    "detergent soap",
    "happy pleased glad",
    "disappointed unhappy",
    "return send-back",
    "ordered bought",
    "item product",
    "quality craftsmanship",
    "runs fits",
]

SYNONYMS: dict[str, list[str]] = {}
for _group in _GROUPS:
    _words = [w.replace("-", " ") for w in _group.split()]
    for _w in _words:
        SYNONYMS.setdefault(_w, []).extend(x for x in _words if x != _w)


def synonyms_of(word: str) -> list[str]:
    """Synonyms of ``word`` (lower-cased lookup).

    >>> synonyms_of("Sneakers")
    ['trainers']
    """
    return SYNONYMS.get(word.lower(), [])
