"""Write the small synthetic NER corpus used by recipes/demo_ner.toml.

Sentences are filled in from hand-written templates with person, location and organisation
names (our own lists, no external data) and written as CoNLL columns ``token TAG`` in IOB2,
with ``-DOCSTART-`` lines between documents. Dev and test also use names never seen in
training, so the score says whether the char encoder, casing and context generalise.
Run: python scripts/make_demo_ner.py  (deterministic; rewrites recipes/data/demo_ner/)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo_ner"

FIRST = ["Angela", "John", "Maria", "Peter", "Barack", "Li", "Anna", "Carlos", "Fatima", "Hans", "Yuki", "Olga",
         "Pierre", "Amara", "Diego", "Ingrid", "Kwame", "Sofia", "Tomasz", "Leila"]
LAST = ["Merkel", "Smith", "Garcia", "Blackburn", "Obama", "Wei", "Karenina", "Mendes", "Haddad", "Muller",
        "Tanaka", "Petrova", "Dubois", "Okafor", "Ramirez", "Larsen", "Mensah", "Rossi", "Nowak", "Farah"]
LOC = ["Paris", "New York", "Berlin", "Tokyo", "Buenos Aires", "Kenya", "London", "Rio de Janeiro", "Madrid",
       "Cairo", "Oslo", "Lagos", "Warsaw", "Lima", "Seoul", "Bavaria", "Texas", "Sicily", "Nairobi", "Quebec"]
ORG = ["United Nations", "Google", "Reuters", "European Union", "Acme Corp", "FIFA", "Siemens", "Red Cross",
       "World Bank", "Nokia", "Interpol", "Boeing", "Greenpeace", "Toyota", "Bayern Munich", "NATO"]
# Held out of training: only dev/test sentences draw from these.
NEW_FIRST = ["Ewa", "Rashid", "Chen", "Mateo", "Aiko"]
NEW_LAST = ["Kowalczyk", "Nakamura", "Osei", "Lindqvist", "Barros"]
NEW_LOC = ["Helsinki", "Accra", "Montevideo", "Kyoto", "Tasmania"]
NEW_ORG = ["Unilever", "Oxfam", "Ericsson", "Airbus", "UNESCO"]

TEMPLATES = [
    "{PER} visited {LOC} on Monday .",
    "{PER} , who works for {ORG} , arrived in {LOC} .",
    "The {ORG} said on Tuesday that {PER} would travel to {LOC} .",
    "In {LOC} , {PER} met {PER} to discuss the deal .",
    "Shares of {ORG} rose 3.5 percent in {LOC} trading .",
    "{ORG} and {ORG} signed an agreement in {LOC} .",
    "{PER} scored twice as {ORG} beat {ORG} 2-1 .",
    "Police in {LOC} said {PER} had been arrested .",
    "{PER} told {ORG} the talks would resume in 1997 .",
    "It was the coldest day of the year .",
    "Prices fell sharply after the announcement .",
    "A spokesman for {ORG} declined to comment .",
]


def person(rng: random.Random, new: bool) -> list[str]:
    first = rng.choice(NEW_FIRST if new else FIRST)
    last = rng.choice(NEW_LAST if new else LAST)
    return rng.choice([[first, last], [last], [first, last]])


def sentence(rng: random.Random, new_share: float) -> tuple[list[str], list[str]]:
    tokens: list[str] = []
    tags: list[str] = []
    for part in rng.choice(TEMPLATES).split():
        if not part.startswith("{"):
            tokens.append(part)
            tags.append("O")
            continue
        typ = part[1:-1]
        new = rng.random() < new_share
        if typ == "PER":
            name = person(rng, new)
        else:
            pool = {"LOC": (LOC, NEW_LOC), "ORG": (ORG, NEW_ORG)}[typ]
            name = rng.choice(pool[1] if new else pool[0]).split()
        tokens += name
        tags += [f"B-{typ}"] + [f"I-{typ}"] * (len(name) - 1)
    return tokens, tags


def write(path: Path, n: int, seed: int, new_share: float) -> None:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 20 == 0:
            lines += ["-DOCSTART- O", ""]
        tokens, tags = sentence(rng, new_share)
        lines += [f"{t} {g}" for t, g in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help, and no stray arguments
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "train.txt", 800, 1, 0.0)
    write(OUT / "valid.txt", 200, 2, 0.3)
    write(OUT / "test.txt", 200, 3, 0.3)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
