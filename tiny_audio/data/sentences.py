"""The English sentences of the synthetic speech set, and which of them are held out of training.

A small template grammar writes sentences from a seeded `random.Random`. A fixed, seed-independent
slice of that sentence space (HELD_OUT_FRACTION, chosen by a hash of the normalised words) never
appears in training: validation speech is drawn from it, and any other corpus built from this
grammar (text pretraining, for example) can exclude it with `is_held_out`.
"""

from __future__ import annotations

import hashlib
import random
import re

NAMES = ("Alice", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "James", "Laura", "Martin")
ADJECTIVES = ("small", "bright", "quiet", "heavy", "old", "green", "careful", "busy", "warm", "narrow", "happy")
NOUNS = ("cat", "teacher", "train", "garden", "letter", "river", "window", "doctor", "bicycle", "kitchen", "farmer")
PLURALS = ("birds", "children", "boxes", "lamps", "students", "boats", "apples", "clocks", "engineers", "songs")
VERBS = ("opened", "painted", "carried", "watched", "found", "cleaned", "visited", "followed", "repaired", "moved")
PRESENT = ("open", "paint", "carry", "watch", "find", "clean", "visit", "follow", "repair", "move")
PLACES = ("station", "market", "library", "harbour", "school", "museum", "bridge", "village", "office", "park")
PREPOSITIONS = ("near", "behind", "inside", "beside", "across", "under", "past", "towards")
TIMES = ("this morning", "last night", "on Monday", "after lunch", "in the spring", "every day", "at noon")
NUMBERS = ("Two", "Three", "Four", "Five", "Seven", "Nine", "Twelve", "Twenty")
TEMPLATES = (
    "The {adjective} {noun} {verb} the {noun2} {preposition} the {place}.",
    "{name} {verb} a {adjective} {noun} {time}.",
    "{number} {plurals} waited {preposition} the {place} {time}.",
    "Did {name} {present} the {noun} {preposition} the {place}?",
    "Please {present} the {adjective} {noun} before {name} arrives.",
    "{name} said that the {noun} was too {adjective} for the {place}.",
    "We {verb} the {plurals} {time}, and {name} {verb2} the {noun}.",
    "Why is the {noun} so {adjective} {time}?",
)

# About one sentence in eight is held out; the hash makes the split the same on every machine
# and for every seed (Python's hash() is salted per process, so it cannot be used).
HELD_OUT_FRACTION = 0.125
_HASH_BUCKETS = 1 << 16


def make_sentence(rng: random.Random) -> str:
    """One sentence from the grammar (held out or not)."""
    slots = {
        "name": rng.choice(NAMES),
        "adjective": rng.choice(ADJECTIVES),
        "noun": rng.choice(NOUNS),
        "noun2": rng.choice(NOUNS),
        "plurals": rng.choice(PLURALS),
        "verb": rng.choice(VERBS),
        "verb2": rng.choice(VERBS),
        "present": rng.choice(PRESENT),
        "place": rng.choice(PLACES),
        "preposition": rng.choice(PREPOSITIONS),
        "time": rng.choice(TIMES),
        "number": rng.choice(NUMBERS),
    }
    return rng.choice(TEMPLATES).format(**slots)


def normalize(sentence: str) -> str:
    """Lower-case words without punctuation: a transcript and its normalised form hash alike."""
    return " ".join(re.findall(r"[a-z0-9']+", sentence.lower()))


def is_held_out(sentence: str) -> bool:
    """True for the sentences that training never sees (case and punctuation do not matter)."""
    digest = hashlib.sha256(normalize(sentence).encode()).digest()
    return int.from_bytes(digest[:8], "big") % _HASH_BUCKETS < HELD_OUT_FRACTION * _HASH_BUCKETS


def training_sentence(rng: random.Random) -> str:
    """A sentence that is not held out (rejection sampling: about 1.14 draws on average)."""
    while True:
        sentence = make_sentence(rng)
        if not is_held_out(sentence):
            return sentence


def held_out_sentences(count: int, rng: random.Random) -> list[str]:
    """`count` held-out sentences, all different while the grammar has enough of them."""
    chosen: list[str] = []
    seen: set[str] = set()
    # The grammar holds about a million sentences, so repeats only happen for absurd counts;
    # the cap keeps the loop finite if the grammar is ever made small.
    attempts = 0
    while len(chosen) < count:
        sentence = make_sentence(rng)
        attempts += 1
        if not is_held_out(sentence):
            continue
        if sentence in seen and attempts < 1000 * (count + 1):
            continue
        seen.add(sentence)
        chosen.append(sentence)
    return chosen
