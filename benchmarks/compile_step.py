"""Would ``torch.compile`` (inductor, CPU) speed up a recipe's training step? One process, one run.

    python benchmarks/compile_step.py                                   # CoNLL tagger: embedder, head
    python benchmarks/compile_step.py --parts embedder head crf --threads 1

For each part in ``--parts`` (a fresh model each time, seed 0, the recipe's batches): time seqtext's
training step eagerly on batches A, compile the part (``dynamic=True``: batch shapes change every
step), run ``--warmup`` steps to trigger compilation (timed: what a user would wait), then time
the step on batches B and on batches A again. The tagger's non-LSTM work is a long tail of small
kernels (benchmarks/README.md), which is what inductor fuses. Writes
benchmarks/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import RESULTS_HELP, run_main, save, table, training_step

# what each part wraps: (owner of the attribute, attribute name)
PARTS = {
    "embedder": lambda net: (net, "embedder"),              # word + char CNN + casing embeddings, dropout
    "head": lambda net: (net.head, "emissions"),            # dropout + tag-score layer
    "crf": lambda net: (net.head.crf, "neg_log_likelihood"),  # the CRF's loss (its recursion is a Python loop)
}


def tokens_per_s(step, batches) -> float:
    tokens, start = 0, time.perf_counter()
    for b in batches:
        step(b)
        tokens += b.num_tokens
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/conll2003_ner.toml")
    ap.add_argument("--data-dir", default="../shared/data/conll2003")
    ap.add_argument("--parts", nargs="+", default=["embedder", "head"], choices=sorted(PARTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=70, help="timed batches in each of A and B")
    ap.add_argument("--warmup", type=int, default=30, help="steps after compiling, before timing")
    ap.add_argument("--name", default="compile_step", help=f"{RESULTS_HELP} (default %(default)s)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    n = args.batches
    results, rows = {"recipe": args.recipe, "parts": {}}, []
    for part in args.parts:
        torch._dynamo.reset()
        with training_step(args.recipe, args.data_dir, [f"train.threads={args.threads}"],
                           10 + 2 * n) as (step, batches):
            a, b = batches[10:10 + n], batches[10 + n:]
            for batch in batches[:10]:
                step(batch)
            eager = tokens_per_s(step, a)
            owner, attr = PARTS[part](step.__self__.net)
            setattr(owner, attr, torch.compile(getattr(owner, attr), dynamic=True))
            start = time.perf_counter()
            for batch in batches[: args.warmup]:
                step(batch)
            compile_s = time.perf_counter() - start
            new, again = tokens_per_s(step, b), tokens_per_s(step, a)
        results["parts"][part] = {"eager_tokens_per_s": round(eager), "compiled_tokens_per_s_new_batches": round(new),
                                  "compiled_tokens_per_s_same_batches": round(again),
                                  "compile_and_warmup_s": round(compile_s, 1)}
        rows += [(f"{part}: eager / compiled (new batches) / compiled (eager's batches) tokens/s",
                  f"{eager:,.0f} / {new:,.0f} / {again:,.0f} ({again / eager:.2f}x)"),
                 (f"{part}: compile + {args.warmup} warm-up steps", f"{compile_s:.1f} s")]
    print(table(rows, f"torch.compile on {args.recipe} ({args.threads} threads)"))
    print(f"written {save(args.name, results)}")


if __name__ == "__main__":
    run_main(main)
