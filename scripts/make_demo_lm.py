"""Write the small synthetic corpus used by recipes/demo_lm.toml.

~2,000 lines of simple English made from a tiny hand-written grammar (our own text, no
external data), already tokenized with spaces like WikiText, one or two sentences per line.
The grammar has agreement and topic structure (a cat sleeps, cats sleep; cooks cook in the
kitchen) so a small LSTM learns it quickly and its samples are recognisably grammatical.
Run: python scripts/make_demo_lm.py  (deterministic; rewrites recipes/data/demo_lm/)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo_lm"

# (singular, plural, verbs that fit, places that fit)
ACTORS = [
    ("cat", "cats", ["sleeps", "eats", "plays", "waits"], ["garden", "kitchen", "house"]),
    ("dog", "dogs", ["runs", "barks", "sleeps", "plays"], ["park", "garden", "street"]),
    ("bird", "birds", ["sings", "flies", "eats", "waits"], ["tree", "garden", "sky"]),
    ("child", "children", ["reads", "plays", "laughs", "runs"], ["school", "park", "house"]),
    ("cook", "cooks", ["cooks", "bakes", "tastes", "waits"], ["kitchen", "restaurant", "market"]),
    ("teacher", "teachers", ["reads", "writes", "talks", "waits"], ["school", "library", "office"]),
    ("farmer", "farmers", ["works", "walks", "sings", "rests"], ["field", "barn", "market"]),
    ("sailor", "sailors", ["sails", "sings", "works", "rests"], ["harbour", "sea", "boat"]),
]
PLURAL_VERB = {"sleeps": "sleep", "eats": "eat", "plays": "play", "waits": "wait", "runs": "run", "barks": "bark",
               "sings": "sing", "flies": "fly", "reads": "read", "laughs": "laugh", "cooks": "cook",
               "bakes": "bake", "tastes": "taste", "writes": "write", "talks": "talk", "works": "work",
               "walks": "walk", "rests": "rest", "sails": "sail"}
ADJECTIVES = ["small", "old", "happy", "quiet", "busy", "young", "tired", "clever"]
TIMES = ["in the morning", "at night", "every day", "after lunch", "in the evening", "on sunday"]
WEATHER = ["the sun is warm", "the rain is cold", "the wind is strong", "the sky is grey", "the air is fresh"]
LINKS = ["and then", "but later", "because", "while"]


def clause(rng: random.Random) -> str:
    singular, plural, verbs, places = rng.choice(ACTORS)
    verb = rng.choice(verbs)
    if rng.random() < 0.5:
        subject = f"the {rng.choice(ADJECTIVES)} {singular}"
    else:
        subject, verb = f"the {plural}", PLURAL_VERB[verb]
    out = f"{subject} {verb} in the {rng.choice(places)}"
    if rng.random() < 0.5:
        out += f" {rng.choice(TIMES)}"
    return out


def sentence(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return f"{rng.choice(WEATHER)} , so {clause(rng)} ."
    if r < 0.45:
        return f"{clause(rng)} {rng.choice(LINKS)} {clause(rng)} ."
    return f"{clause(rng)} ."


def line(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return ""  # blank lines, as between WikiText paragraphs
    return " ".join(sentence(rng) for _ in range(rng.randint(1, 2)))


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help, and no stray arguments
    rng = random.Random(13)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 1800), ("valid", 200), ("test", 200)):
        lines = [line(rng) for _ in range(n)]
        (OUT / f"{split}.txt").write_text("".join(f" {x} \n" if x else " \n" for x in lines), encoding="utf-8")
        print(f"{OUT / f'{split}.txt'}: {n} lines, {sum(len(x.split()) for x in lines)} tokens")


if __name__ == "__main__":
    main()
