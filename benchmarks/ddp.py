"""Training throughput under torchrun (DDP, gloo) against one process on the same cores.

    python benchmarks/ddp.py --sync-probe                     # IMDB classifier and CoNLL tagger, 2 cores
    python benchmarks/ddp.py --tasks tag --set train.sparse_embeddings=false --name ddp_dense
    python benchmarks/ddp.py --data-root /elsewhere/data   # imdb/ and conll2003/ in another folder

For each task's recipe (one model, not an ensemble) it trains ``--steps`` steps twice with the
same global batch: one process with ``--procs`` threads, then ``torchrun --nproc_per_node
--procs`` with one thread per process and 1/procs of the batch each. It reads training tokens/s
from each run's metrics.json (the training loop's own clock, without data preparation or the
final evaluation) and prints their ratio. It also times gloo all-reduces between ``--procs``
processes (one float: the latency every collective pays; and gradient-sized tensors), and with
``--sync-probe`` each process's training steps under torchrun with and without DDP's gradient
synchronisation (``no_sync``; the best of two blocks of 100 steps each). The data are read from
``--data-root`` (imdb/, conll2003/; default ../shared/data beside the repo). Writes
benchmarks/results/<--name>.json (default ddp.json; a --name holding a / is a path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA_ROOT, RESULTS_HELP, child_failed, data_under, fail, run_main, save, table, torchrun
from seqtext.recipe import load_recipe

# task → (recipe, its data's folder under --data-root, the per-process batch setting to divide)
TASKS = {
    "classify": ("recipes/imdb_sentiment.toml", "imdb", "batch_size"),
    "tag": ("recipes/conll2003_ner.toml", "conll2003", "batch_tokens"),
}


def train(recipe: str, data_dir: str, overrides: list[str], output: Path, procs: int) -> dict:
    program = ["-m", "seqtext", "train", recipe, "--data-dir", data_dir, "-o", str(output), "--force", "-q"]
    for o in overrides:
        program += ["--set", o]
    cmd = torchrun(procs, program) if procs > 1 else [sys.executable, *program]
    env = {**os.environ, "OMP_NUM_THREADS": str(1 if procs > 1 else procs)}
    r = subprocess.run(cmd, env=env)
    if r.returncode:
        fail(f"seqtext train {recipe} ({procs} process(es)) failed with exit status {r.returncode} (output above)")
    return json.loads((output / "metrics.json").read_text())["train"]


ALLREDUCE_FLOATS = [1, 1_100_000, 2_400_000]  # latency; the tagger's dense gradients; 2.4M floats


def allreduce_probe() -> None:
    """Run by each torchrun worker: time gloo all-reduces, rank 0 prints one JSON line."""
    import time

    import torch
    import torch.distributed as tdist

    tdist.init_process_group("gloo")
    torch.set_num_threads(1)
    out = {}
    for n in ALLREDUCE_FLOATS:
        x = torch.randn(n)
        for _ in range(5):
            tdist.all_reduce(x)
        start = time.perf_counter()
        for _ in range(30):
            tdist.all_reduce(x)
        out[str(n)] = round(1000 * (time.perf_counter() - start) / 30, 2)
    if tdist.get_rank() == 0:
        print("ALLREDUCE_MS " + json.dumps(out), flush=True)
    tdist.destroy_process_group()


def sync_probe(task_name: str, batch_override: str, data_root: str, steps: int = 100) -> None:
    """Run by each torchrun worker: ms per training step of one recipe, with DDP's gradient
    all-reduce and without it (``no_sync``), alternating blocks; rank 0 prints one JSON line."""
    import contextlib
    import itertools
    import time

    import torch

    from benchmarks.common import prepare, step_trainer
    from seqtext import distributed as dist

    dist.init(torch.device("cpu"))  # a CPU (gloo) benchmark
    recipe, folder, _ = TASKS[task_name]
    task, data = prepare(recipe, data_under(data_root, folder), ["train.threads=1", batch_override])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = task.build_net()
    # as many epochs as 4 blocks need (a CoNLL epoch at 1,280 tokens per batch is ~85 steps per process)
    every_epoch = (task.train_batches(data["train"], epoch, dist.rank(), dist.world_size())
                   for epoch in itertools.count())
    batches = list(itertools.islice(itertools.chain.from_iterable(every_epoch), 4 * steps))
    ms = {"sync": [], "no_sync": []}
    with step_trainer(task, net, data) as trainer:
        rows = trainer.row_gradients  # sparse embedding gradients, averaged outside DDP (dist.wrap)
        for block in range(4):
            mode = "sync" if block % 2 == 0 else "no_sync"
            ctx = trainer.model.no_sync if mode == "no_sync" else contextlib.nullcontext
            trainer.row_gradients = rows if mode == "sync" else []
            start = time.perf_counter()
            for b in batches[block * steps: (block + 1) * steps]:
                with ctx():
                    trainer._step(b)
            ms[mode].append(1000 * (time.perf_counter() - start) / steps)
    if dist.is_main():
        print("STEP_MS " + json.dumps({k: round(min(v), 2) for k, v in ms.items()}), flush=True)


def worker_json(procs: int, args: list[str], marker: str) -> dict:
    """Run this script under torchrun with ``args``; the JSON rank 0 printed after ``marker``."""
    cmd = torchrun(procs, [__file__, *args])
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if r.returncode:
        child_failed(r, f"torchrun {' '.join(args)}")
    line = next(x for x in r.stdout.splitlines() if x.startswith(marker + " "))
    return json.loads(line.split(" ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="classify,tag")
    ap.add_argument("--steps", type=int, default=0,
                    help="Training steps per run (default: 300 classify, 600 tag: within one epoch, so no dev "
                         "evaluation is timed).")
    ap.add_argument("--procs", type=int, default=2, help="Processes under torchrun = threads of the single process.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Recipe override for both runs.")
    ap.add_argument("--data-root", default=str(DATA_ROOT),
                    help="Folder holding imdb/ and conll2003/ (default: ../shared/data beside the repo, %(default)s).")
    ap.add_argument("--name", default="ddp", help=f"{RESULTS_HELP} (default %(default)s)")
    ap.add_argument("--sync-probe", action="store_true",
                    help="Also time each process's steps with and without gradient synchronisation.")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # run as a torchrun worker: allreduce | sync:TASK:OVERRIDE
    args = ap.parse_args()
    if args.worker == "allreduce":
        return allreduce_probe()
    if args.worker:
        _, task_name, override = args.worker.split(":", 2)
        return sync_probe(task_name, override, args.data_root)

    for name in args.tasks.split(","):  # every task's data before anything is timed
        if name not in TASKS:
            ap.error(f"--tasks: unknown task {name!r} (known: {', '.join(TASKS)})")
        data_under(args.data_root, TASKS[name][1])
    latency = worker_json(args.procs, ["--worker", "allreduce"], "ALLREDUCE_MS")
    rows = [(f"gloo all-reduce, {args.procs} processes, ms", ", ".join(
        f"{int(n) * 4 / 1e6:.1f} MB: {ms}" if int(n) > 1 else f"one float: {ms}" for n, ms in latency.items()))]

    results = {}
    for name in args.tasks.split(","):
        recipe, folder, batch_key = TASKS[name]
        data_dir = data_under(args.data_root, folder)
        batch = getattr(load_recipe(recipe).train, batch_key)
        steps = args.steps or (300 if name == "classify" else 600)
        common = ["model.ensemble=1", f"train.max_steps={steps}", "train.eval_every=0", "train.max_minutes=0",
                  *args.overrides]
        one = train(recipe, data_dir, [*common, f"train.threads={args.procs}"], Path(f"runs/bench_ddp_{name}_1"), 1)
        many = train(recipe, data_dir, [*common, "train.threads=1", f"train.{batch_key}={batch // args.procs}"],
                     Path(f"runs/bench_ddp_{name}_{args.procs}"), args.procs)
        ratio = many["tokens_per_second"] / one["tokens_per_second"]
        results[name] = {"recipe": recipe, "steps": steps, "batch": {batch_key: batch},
                         "one_process_tokens_per_s": round(one["tokens_per_second"]),
                         "ddp_tokens_per_s": round(many["tokens_per_second"]), "ratio": round(ratio, 3)}
        rows.append((f"{name}: tokens/s 1 process × {args.procs} threads / torchrun {args.procs} × 1 thread",
                     f"{one['tokens_per_second']:.0f} / {many['tokens_per_second']:.0f} (DDP {ratio:.2f}×)"))
    for name in results if args.sync_probe else []:
        recipe, _, batch_key = TASKS[name]
        per_process = getattr(load_recipe(recipe).train, batch_key) // args.procs
        step = worker_json(args.procs, ["--worker", f"sync:{name}:train.{batch_key}={per_process}",
                                        "--data-root", args.data_root], "STEP_MS")
        results[name]["step_ms"] = step
        rows.append((f"{name}: ms per step of each process, with / without gradient sync",
                     f"{step['sync']} / {step['no_sync']}"))
    print(table(rows, f"DDP (gloo) vs one process, same global batch, {args.procs} cores"))
    path = save(args.name, {"procs": args.procs, "overrides": args.overrides, "allreduce_ms": latency,
                            "tasks": results})
    print(f"written {path}")


if __name__ == "__main__":
    run_main(main)
