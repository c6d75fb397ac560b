"""Arrange a local IMDB copy as language-model splits for recipes/imdb_lm.toml (offline use).

The LM needs a held-out dev split, and should also read the 50k unlabeled reviews; a
``--data-dir`` pointing at the IMDB folder gives neither (it has train/test only, and
``unsup.jsonl.gz`` is not a split name). This writes, into OUT (default runs/data/imdb_lm,
outside version control):

    train.jsonl.gz   the 25k labeled training reviews + the unlabeled ones (text only)
    valid.jsonl.gz   --dev reviews held out for perplexity (taken from unsup when present,
                     else a seeded sample of train)

The IMDB test reviews are never used, so the LM cannot leak test text into the classifier.

    python scripts/make_imdb_lm_data.py ../shared/data/imdb
    seqtext train recipes/imdb_lm.toml --data-dir runs/data/imdb_lm
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path


def read_texts(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def write(path: Path, texts: list[str]) -> None:
    # mtime=0: the same input gives byte-identical output
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write("".join(json.dumps({"text": t}) + "\n" for t in texts).encode("utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("imdb_dir", type=Path, help="folder with train.jsonl.gz (and unsup.jsonl.gz if you have it)")
    ap.add_argument("out", type=Path, nargs="?", default=Path("runs/data/imdb_lm"))
    ap.add_argument("--dev", type=int, default=1000, help="reviews held out as the dev split")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    train = read_texts(args.imdb_dir / "train.jsonl.gz")
    unsup_path = args.imdb_dir / "unsup.jsonl.gz"
    unsup = read_texts(unsup_path) if unsup_path.is_file() else []
    rng = random.Random(args.seed)
    if unsup:
        dev, unsup = unsup[: args.dev], unsup[args.dev:]
    else:
        rng.shuffle(train)
        dev, train = train[: args.dev], train[args.dev:]
    # Interleave labeled and unlabeled reviews: the file order is sorted by label, and an LM
    # reading one contiguous stream should not see 12.5k negative reviews in a row.
    texts = train + unsup
    rng.shuffle(texts)
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "train.jsonl.gz", texts)
    write(args.out / "valid.jsonl.gz", dev)
    print(f"{args.out}: train {len(texts)} reviews ({len(unsup)} unlabeled), valid {len(dev)}")


if __name__ == "__main__":
    main()
