"""Peak resident memory of training steps: seqtext's step, the bare nn.LSTM step, and both interleaved.

    python benchmarks/step_memory.py                          # IMDB recipe (one member), 1 thread
    python benchmarks/step_memory.py --recipe recipes/conll2003_ner.toml --data-dir ../shared/data/conll2003

Each mode runs in its own process (peak RSS only grows), over the recipe's first ``--batches``
training batches, under the Trainer's allocator settings (``keep_freed_memory``), as in training:
- ``full``: seqtext's training step, what a training run does;
- ``bare``: the bare ``nn.LSTM`` forward + backward the suite compares it with;
- ``interleaved``: both on each batch in turn, as ``benchmarks/suite.py`` times them.
The suite's per-task peak RSS includes its interleaved timing; this says how much of it a training
run actually needs. Writes benchmarks/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("full", "bare", "interleaved")


def measure(mode: str, recipe: str, data_dir: str, threads: int, n_batches: int) -> dict:
    import torch

    from benchmarks.common import bare_lstm_step, peak_rss_mb, training_step

    torch.set_num_threads(threads)
    with training_step(recipe, data_dir, [f"train.threads={threads}"], n_batches) as (step, batches):
        before = peak_rss_mb()  # data, model, optimizer: everything but the steps
        trainer = step.__self__
        bare = bare_lstm_step(trainer.task, trainer.net, trainer.bf16)
        steps = {"full": [step], "bare": [bare], "interleaved": [step, bare]}[mode]
        for b in batches:
            for s in steps:
                s(b)
    return {"peak_rss_mb_before_steps": round(before), "peak_rss_mb": round(peak_rss_mb()),
            "largest_batch_tokens": max(int(b.ids.numel()) for b in batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/imdb_sentiment.toml")
    ap.add_argument("--data-dir", default="../shared/data/imdb")
    ap.add_argument("--threads", type=int, default=1, help="1: how the recipes train their ensemble members")
    ap.add_argument("--batches", type=int, default=155, help="the suite times 150 after 5 warm-up batches")
    ap.add_argument("--name", default="step_memory", help="results file: benchmarks/results/NAME.json, or NAME "
                    "itself where it is a path (it holds a /; .json is added if missing) (default %(default)s)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.recipe, args.data_dir, args.threads, args.batches)))
        return

    from benchmarks.common import child_failed, save, table

    results = {"recipe": args.recipe, "threads": args.threads, "batches": args.batches, "modes": {}}
    for mode in MODES:
        r = subprocess.run([sys.executable, __file__, "--child", mode, "--recipe", args.recipe, "--data-dir",
                            args.data_dir, "--threads", str(args.threads), "--batches", str(args.batches)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            child_failed(r, mode)
        results["modes"][mode] = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [(f"{mode}: peak RSS MB before steps / after", f"{r['peak_rss_mb_before_steps']} / {r['peak_rss_mb']}")
            for mode, r in results["modes"].items()]
    print(table(rows, f"step memory, {args.recipe} ({args.threads} thread(s), {args.batches} batches)"))
    print(f"written {save(args.name, results)}")


if __name__ == "__main__":
    from benchmarks.common import run_main

    run_main(main)
