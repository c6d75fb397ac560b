"""Training-step speed with glibc's default allocator settings vs seqtext's ``keep_freed_memory``.

    python benchmarks/malloc_step.py                       # WikiText-2 LM recipe, 2 threads
    python benchmarks/malloc_step.py --recipe recipes/conll2003_ner.toml --data-dir ../shared/data/conll2003

glibc serves allocations above 32 MB with a fresh mmap and unmaps them on free, so large
per-step buffers (the LM's 33k × 400 embedding gradient) are page-faulted in again every step.
``seqtext.hardware.keep_freed_memory`` (applied by the Trainer's training loop on CPU) keeps them on the heap.
The setting is process-wide and one-way, so each variant runs in its own process, alternating
A B A B; the table shows the best of each. Writes benchmarks/results/malloc_step_<recipe name>.json
(``--name``: another name there, or a path).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_HELP, child_failed, run_main, save, table

CHILD = r"""
import json, sys
import torch
from benchmarks.common import peak_rss_mb, run_main, time_interleaved, training_step
recipe, data_dir, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
warmup = 5

def main():
    with training_step(recipe, data_dir or None, [f"train.threads={threads}"], warmup + steps,
                       keep_freed_memory=sys.argv[5] == "1") as (step, batches):
        seconds, tokens = time_interleaved(batches, {"step": step}, warmup)
    print(json.dumps({"tokens_per_s": tokens / seconds["step"], "peak_rss_mb": peak_rss_mb()}))

run_main(main)
"""


def run(args, keep: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, args.recipe, args.data_dir, str(args.threads), str(args.steps),
                          "1" if keep else "0"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        child_failed(out, "benchmark process")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/wikitext2_lm.toml")
    ap.add_argument("--data-dir", default="../shared/data/wikitext2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", help=f"{RESULTS_HELP} (default malloc_step_<recipe name>)")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"glibc default": [], "keep_freed_memory": []}
    for _ in range(args.repeats):
        runs["glibc default"].append(run(args, keep=False))
        runs["keep_freed_memory"].append(run(args, keep=True))
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in runs.items()}
    speedup = best["keep_freed_memory"]["tokens_per_s"] / best["glibc default"]["tokens_per_s"]
    rows = [(k, f"{r['tokens_per_s']:,.0f} tokens/s, peak RSS {r['peak_rss_mb']:,.0f} MB") for k, r in best.items()]
    rows.append(("speed-up", f"{speedup:.2f}x"))
    print(table(rows, f"Training step, {args.recipe}, {args.threads} threads, {args.steps} steps"))
    path = save(args.name or f"malloc_step_{Path(args.recipe).stem}", {"recipe": args.recipe, "runs": runs,
                                                                       "speedup": round(speedup, 3)})
    print(f"written {path}")


if __name__ == "__main__":
    run_main(main)
