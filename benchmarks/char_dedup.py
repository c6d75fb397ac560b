"""The tagger's training step with the char CNN encoding each distinct word of a batch once
(``CharCNN.dedup``, the default) vs every token, interleaved batch by batch on the same batches.

    python benchmarks/char_dedup.py                                  # CoNLL recipe, 1 thread
    python benchmarks/char_dedup.py --set train.batch_tokens=1280 --threads 2

Prints the share of distinct words per batch and ms per step of each; writes
benchmarks/results/char_dedup[_NAME].json (``--name``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import save, table, time_interleaved, training_step
from seqtext.nn.chars import unique_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/conll2003_ner.toml")
    ap.add_argument("--data-dir", default="../shared/data/conll2003")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="1: how the recipe trains each member")
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--name", default="", help="results file suffix")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with training_step(args.recipe, args.data_dir, args.overrides, args.warmup + args.batches) as (step, batches):
        cnn = step.__self__.net.embedder.chars
        if cnn is None:
            raise SystemExit(f"{args.recipe}: the model has no char CNN")
        rows = [b.chars.flatten(0, 1) for b in batches]
        distinct = [len(unique_rows(r)[0]) / len(r) for r in rows]

        def toggled(on: bool):
            def run(b):
                cnn.dedup = on
                step(b)
            return run

        seconds, tokens = time_interleaved(batches, {"every_token": toggled(False), "distinct_words": toggled(True)},
                                           args.warmup)
    ms = {k: 1000 * v / args.batches for k, v in seconds.items()}
    result = {"recipe": args.recipe, "overrides": args.overrides, "batches": args.batches,
              "distinct_share": round(float(np.mean(distinct)), 3),
              "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
              "tokens_per_s": {k: round(tokens / v) for k, v in seconds.items()},
              "speedup": round(ms["every_token"] / ms["distinct_words"], 3)}
    print(table([("distinct words / token rows per batch", f"{result['distinct_share']:.2f}"),
                 ("ms per step: every token / distinct words", f"{ms['every_token']:.2f} / {ms['distinct_words']:.2f}"),
                 ("speed-up", f"{result['speedup']:.3f}x")],
                f"char CNN over distinct words ({args.threads} thread(s), {args.batches} batches)"))
    print(f"written {save('char_dedup' + (f'_{args.name}' if args.name else ''), result)}")


if __name__ == "__main__":
    main()
