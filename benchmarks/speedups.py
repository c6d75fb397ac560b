"""The tagger's training step with one of its speed-ups switched off vs on, interleaved batch by
batch on the same batches (all are on by default; each is exact up to rounding, and tested):

- ``--compare dedup``: the char CNN over every token vs over each distinct word of a batch once
  (``CharCNN.dedup``);
- ``--compare table``: the char CNN's convolution as a matrix product over each character's
  window vs as a sum of per-character table rows (``CharCNN.window_table``);
- ``--compare split``: tag scores of the concatenated BiLSTM states vs of each direction, with
  the backward direction's scores reversed instead of its states (``TaggerHead.split_directions``).

    python benchmarks/speedups.py --compare table                    # CoNLL recipe, 1 thread
    python benchmarks/speedups.py --compare dedup --set train.batch_tokens=320 --threads 2

Prints the share of distinct words per batch and ms per step of each; writes
benchmarks/results/<char_dedup|char_table|tag_split>[_NAME].json (``--name``). (This script was
``benchmarks/char_dedup.py`` when it wrote the ``char_dedup*.json`` results.)
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

# --compare → (results name, module of the net, its switch, label when off, label when on)
COMPARISONS = {"dedup": ("char_dedup", "embedder.chars", "dedup", "every_token", "distinct_words"),
               "table": ("char_table", "embedder.chars", "window_table", "window_matmul", "window_table"),
               "split": ("tag_split", "head", "split_directions", "concatenated", "split_directions")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="dedup")
    ap.add_argument("--recipe", default="recipes/conll2003_ner.toml")
    ap.add_argument("--data-dir", default="../shared/data/conll2003")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="1: how the recipe trains each member")
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--name", default="", help="results file suffix")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name, module, attribute, off, on = COMPARISONS[args.compare]

    with training_step(args.recipe, args.data_dir, args.overrides, args.warmup + args.batches) as (step, batches):
        net = step.__self__.net
        if getattr(net.embedder, "chars", None) is None:
            raise SystemExit(f"{args.recipe}: the model is not a tagger with a char CNN")
        switched = net.get_submodule(module)
        rows = [b.chars.flatten(0, 1) for b in batches]
        distinct = [len(unique_rows(r)[0]) / len(r) for r in rows]

        def toggled(value: bool):
            def run(b):
                setattr(switched, attribute, value)
                step(b)
            return run

        seconds, tokens = time_interleaved(batches, {off: toggled(False), on: toggled(True)}, args.warmup)
    ms = {k: 1000 * v / args.batches for k, v in seconds.items()}
    result = {"recipe": args.recipe, "overrides": args.overrides, "compare": args.compare, "batches": args.batches,
              "threads": args.threads, "distinct_share": round(float(np.mean(distinct)), 3),
              "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
              "tokens_per_s": {k: round(tokens / v) for k, v in seconds.items()},
              "speedup": round(ms[off] / ms[on], 3)}
    print(table([("distinct words / token rows per batch", f"{result['distinct_share']:.2f}"),
                 (f"ms per step: {off} / {on}", f"{ms[off]:.2f} / {ms[on]:.2f}"),
                 ("speed-up", f"{result['speedup']:.3f}x")],
                f"{module}.{attribute} off vs on ({args.threads} thread(s), {args.batches} batches)"))
    print(f"written {save(name + (f'_{args.name}' if args.name else ''), result)}")


if __name__ == "__main__":
    main()
