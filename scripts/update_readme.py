"""Regenerate README's recipe reference from the declarations in seqtext/recipe.py.

Run: python scripts/update_readme.py   (tests/test_docs.py fails when README is stale)
"""

import argparse
from pathlib import Path

from seqtext.recipe import reference_markdown

START, END = "<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference_markdown()}\n{END}{tail}"


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help, and no stray arguments
    path = Path(__file__).resolve().parent.parent / "README.md"
    path.write_text(render(path.read_text()))
