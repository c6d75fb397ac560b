"""Are neighbouring IMDB reviews related? And how much of a carved dev split shares them with train?

    python benchmarks/imdb_grouping.py --data-dir ../shared/data/imdb

aclImdb numbers each polarity's review files in the order they were crawled, movie by movie (at
most 30 reviews a movie), and the official test set's movies are not in train. A proxy for "same
movie" that needs no metadata: two reviews share a capitalised multi-word name (a title, an actor).
The script prints how often reviews at a given distance in the file share one, against random
pairs, and then, for dev carved from train as seqtext does it (scattered rows, or runs of
``--block-size`` rows: ``[data] dev_block_size``), the share of dev reviews that share a name with
a train review within 5 rows of them: how much of dev is about movies the model trained on.
Writes benchmarks/results/imdb_grouping.json (``--name``: another name there, or a path).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_HELP, run_main, save

NAME = re.compile(r"\b[A-Z][a-z]+(?:\s[A-Z][a-z]+)+\b")  # "Peter Sellers", "The Pink Panther"
NEAR = 5  # rows either side that count as "the same movie" for the dev check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data/imdb", help="folder holding train.jsonl.gz")
    ap.add_argument("--block-size", type=int, default=100)
    ap.add_argument("--dev-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1, help="the split seed (the recipe's [train] seed)")
    ap.add_argument("--name", default="imdb_grouping", help=f"{RESULTS_HELP} (default %(default)s)")
    args = ap.parse_args()

    import datasets

    from seqtext import SeqtextError
    from seqtext.data.sources import carve_dev

    path = Path(args.data_dir) / "train.jsonl.gz"
    if not path.is_file():
        raise SeqtextError(f"--data-dir {args.data_dir}: no IMDB train file ({path}: no such file)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    names = [set(NAME.findall(t)) for t in texts]
    n = len(texts)

    def share(pairs) -> float:
        pairs = list(pairs)
        return sum(bool(names[i] & names[j]) for i, j in pairs) / len(pairs)

    rng = random.Random(0)
    result = {"rows": n,
              "random_pairs": round(share((rng.randrange(n), rng.randrange(n)) for _ in range(n)), 4),
              "by_distance": {}}
    for gap in (1, 2, 5, 10, 20, 30, 100):
        result["by_distance"][gap] = round(share((i, i + gap) for i in range(n - gap)), 4)

    rows = datasets.Dataset.from_dict({"row": list(range(n))})
    result["dev_rows_sharing_a_name_with_train_within_5_rows"] = {}
    for label, block in (("scattered", 0), (f"blocks of {args.block_size}", args.block_size)):
        train, dev = carve_dev(rows, args.dev_fraction, args.seed, block)
        in_train = set(train["row"])
        near = [any(j in in_train and names[i] & names[j] for j in range(max(0, i - NEAR), min(n, i + NEAR + 1)))
                for i in dev["row"]]
        result["dev_rows_sharing_a_name_with_train_within_5_rows"][label] = round(sum(near) / len(near), 4)

    print(f"{n} train reviews; pairs sharing a capitalised multi-word name:")
    print(f"  random pairs          {result['random_pairs']:.1%}")
    for gap, s in result["by_distance"].items():
        print(f"  {gap:>3} rows apart        {s:.1%}")
    print(f"dev ({args.dev_fraction:.0%} of train, seed {args.seed}) rows sharing a name with a train row "
          f"within {NEAR} rows:")
    for label, s in result["dev_rows_sharing_a_name_with_train_within_5_rows"].items():
        print(f"  {label:<21} {s:.1%}")
    print(f"written {save(args.name, result)}")


if __name__ == "__main__":
    run_main(main)
