"""Where a training step's time goes: torch.profiler over seqtext's full step for a recipe.

    python benchmarks/profile_step.py                                   # WikiText-2 LM recipe, 2 threads
    python benchmarks/profile_step.py --glibc-default                   # without keep_freed_memory
    python benchmarks/profile_step.py --recipe recipes/conll2003_ner.toml --data-dir ../shared/data/conll2003
    python benchmarks/profile_step.py --recipe recipes/conll2003_ner.toml --data-dir ../shared/data/conll2003 --plain
    python benchmarks/profile_step.py --recipe recipes/conll2003_ner.toml --data-dir ../shared/data/conll2003 \
        --threads 1 --steps 40 --minus-bare

``--plain`` profiles the same model written as a plain PyTorch loop instead
(``benchmarks/plain_loops.py``; classifier and tagger recipes). ``--minus-bare`` also profiles the
suite's bare ``nn.LSTM`` step on the same batches and ranks operators by what the full step
spends beyond it (full minus bare, per step, with calls per step): where the full/bare ratio goes.
Runs ``--warmup`` steps, then profiles ``--steps`` steps and prints the operators with the most
self CPU time (per operator, or per operator and input shape with ``--by-shape``), with their time
per step. Writes benchmarks/results/profile_<recipe name>[_plain][_glibc_default][_minus_bare].json,
or ``--name``.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import RESULTS_HELP, bare_lstm_step, run_main, save, training_step
from benchmarks.plain_loops import plain_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/wikitext2_lm.toml")
    ap.add_argument("--data-dir", default="../shared/data/wikitext2")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--by-shape", action="store_true", help="one row per operator and input shapes")
    ap.add_argument("--plain", action="store_true", help="profile the plain PyTorch loop of the same model")
    ap.add_argument("--minus-bare", action="store_true",
                    help="rank operators by full-step minus bare-nn.LSTM-step time on the same batches")
    ap.add_argument("--name", help=f"{RESULTS_HELP} (default profile_<recipe name>[_plain][_glibc_default])")
    ap.add_argument("--glibc-default", action="store_true",
                    help="keep glibc's allocator settings (the training loop applies keep_freed_memory otherwise)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    overrides = [*args.overrides, f"train.threads={args.threads}"]
    with training_step(args.recipe, args.data_dir, overrides, args.warmup + args.steps,
                       keep_freed_memory=not args.glibc_default) as (step, batches):
        if args.plain:
            step = plain_step(step.__self__.task)  # step is the Trainer's bound _step
            if step is None:
                ap.error("--plain: only classifier and tagger recipes have a plain loop")
        for b in batches[: args.warmup]:
            step(b)
        with torch.profiler.profile(record_shapes=args.by_shape) as prof:
            for b in batches[args.warmup:]:
                step(b)
        if args.minus_bare:
            trainer = step.__self__
            bare = bare_lstm_step(trainer.task, trainer.net, trainer.bf16)
            for b in batches[: args.warmup]:
                bare(b)
            with torch.profiler.profile() as bare_prof:
                for b in batches[args.warmup:]:
                    bare(b)
    if args.minus_bare:
        return minus_bare(args, prof, bare_prof)
    events = sorted(prof.key_averages(group_by_input_shape=args.by_shape),
                    key=lambda e: e.self_cpu_time_total, reverse=True)
    per_step = [e.self_cpu_time_total / 1000 / args.steps for e in events]  # ms
    total_ms = sum(per_step)
    rows = [{"op": e.key, "shapes": str(e.input_shapes)[:80] if args.by_shape else "", "ms_per_step": round(ms, 2),
             "share": round(ms / total_ms, 3)} for e, ms in zip(events[: args.rows], per_step)]
    print(f"{args.recipe}{' (plain loop)' if args.plain else ''}: {total_ms:.1f} ms self CPU time per step "
          f"({args.threads} threads, "
          f"{'glibc default' if args.glibc_default else 'keep_freed_memory'})")
    for r in rows:
        print(f"{r['ms_per_step']:8.2f} ms {100 * r['share']:5.1f} %  {r['op']:<40} {r['shapes']}")
    name = args.name or (f"profile_{Path(args.recipe).stem}" + ("_plain" if args.plain else "")
                         + ("_glibc_default" if args.glibc_default else ""))
    print(f"written {save(name, {'recipe': args.recipe, 'ms_per_step': round(total_ms, 1), 'top': rows})}")


def minus_bare(args, prof, bare_prof) -> None:
    """Print and save operators ranked by full-step minus bare-step self CPU time per step."""
    def per_step(p):
        return {e.key: (e.self_cpu_time_total / 1000 / args.steps, e.count / args.steps) for e in p.key_averages()}

    full, bare = per_step(prof), per_step(bare_prof)
    total_full, total_bare = sum(v[0] for v in full.values()), sum(v[0] for v in bare.values())
    none = (0.0, 0.0)
    keys = sorted(set(full) | set(bare), key=lambda k: bare.get(k, none)[0] - full.get(k, none)[0])
    rows = [{"op": k, "full_ms": round(full.get(k, none)[0], 3), "bare_ms": round(bare.get(k, none)[0], 3),
             "extra_ms": round(full.get(k, none)[0] - bare.get(k, none)[0], 3),
             "full_calls": round(full.get(k, none)[1], 1), "bare_calls": round(bare.get(k, none)[1], 1)}
            for k in keys[: args.rows]]
    print(f"{args.recipe}: self CPU time per step, full {total_full:.1f} ms vs bare nn.LSTM {total_bare:.1f} ms "
          f"({args.threads} threads; extra {total_full - total_bare:.1f} ms)")
    print(f"{'extra ms':>9} {'full ms':>8} {'calls':>6} {'bare ms':>8} {'calls':>6}  op")
    for r in rows:
        print(f"{r['extra_ms']:9.3f} {r['full_ms']:8.3f} {r['full_calls']:6.1f} {r['bare_ms']:8.3f} "
              f"{r['bare_calls']:6.1f}  {r['op']}")
    name = args.name or f"profile_{Path(args.recipe).stem}_minus_bare"
    result = {"recipe": args.recipe, "threads": args.threads, "full_ms_per_step": round(total_full, 1),
              "bare_ms_per_step": round(total_bare, 1), "top": rows}
    print(f"written {save(name, result)}")


if __name__ == "__main__":
    run_main(main)
