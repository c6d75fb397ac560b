"""Does averaging a sparse embedding gradient over gloo survive many steps? (It did not, in torch.)

    python benchmarks/sparse_allreduce.py                       # 3 runs of each mode, 20,000 steps
    python benchmarks/sparse_allreduce.py --modes ddp_sparse --runs 5 --steps 30000 --name sparse_allreduce_ddp

Each run is ``torchrun --nproc_per_node 2`` of this file in worker mode: a toy model (a
20,000 × 100 word embedding, an LSTM of 64 and a linear layer, plain torch, no seqtext model code)
trains ``--steps`` SGD steps on random batches of 1-19 rows of 1-39 tokens, each rank with its own
batches, one thread per process. The modes differ only in how the embedding's gradient is averaged:

- ``ddp_sparse``: ``nn.Embedding(sparse=True)`` under DDP, which all-reduces the sparse gradient
  with gloo's sparse all-reduce (what seqtext did before);
- ``ddp_dense``: a dense embedding under DDP (a plain dense all-reduce);
- ``seqtext``: a sparse embedding left out of DDP and averaged by
  ``seqtext.distributed.average_row_gradients`` (dense all-gathers of the rows), as seqtext does now.

It records each run's exit status, the signal that killed a worker, if any, and the last step a
worker reached, and writes benchmarks/results/<--name>.json (default sparse_allreduce.json).

    python benchmarks/sparse_allreduce.py --time --name sparse_allreduce_time

times one averaging instead, between 2 processes: ``average_row_gradients`` against gloo's sparse
all-reduce (of the same coalesced gradient, without DDP), alternating, then a dense all-reduce of
the whole matrix, for ``--rows`` random rows of a ``--vocab`` × 100 gradient on each process;
each figure is the median of ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("ddp_sparse", "ddp_dense", "seqtext")
REPORT_EVERY = 500


def worker(mode: str, steps: int) -> None:
    import torch
    import torch.distributed as tdist
    from torch import nn

    from seqtext import distributed as dist

    tdist.init_process_group("gloo")
    torch.manual_seed(tdist.get_rank())
    torch.set_num_threads(1)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(20000, 100, sparse=mode != "ddp_dense")
            self.lstm = nn.LSTM(100, 64, batch_first=True)
            self.out = nn.Linear(64, 5)

        def forward(self, x):
            return self.out(self.lstm(self.words(x))[0]).sum()

    toy = Toy()
    if mode == "seqtext":
        net = dist.wrap(toy, torch.device("cpu"), find_unused=False)
        rows = list(dist.row_gradient_params(toy).values())
    else:
        net = nn.parallel.DistributedDataParallel(toy)
    optimizer = torch.optim.SGD(toy.parameters(), lr=1e-3)
    for step in range(1, steps + 1):
        batch, length = int(torch.randint(1, 20, ())), int(torch.randint(1, 40, ()))
        # every 7th batch draws from 3 words only: few rows, and repeated ones
        x = torch.randint(0, 3 if step % 7 == 0 else 20000, (batch, length))
        optimizer.zero_grad(set_to_none=True)
        net(x).backward()
        if mode == "seqtext":
            dist.average_row_gradients(rows)
        optimizer.step()
        if step % REPORT_EVERY == 0:
            print(f"rank {tdist.get_rank()} step {step}", flush=True)
    tdist.barrier()
    tdist.destroy_process_group()


def time_worker(rows: int, vocab: int, repeats: int) -> None:
    import json
    import statistics

    import torch
    import torch.distributed as tdist

    from seqtext import distributed as dist

    tdist.init_process_group("gloo")
    torch.manual_seed(tdist.get_rank())
    torch.set_num_threads(1)
    weight = torch.nn.Parameter(torch.zeros(vocab, 100))

    def gradient():
        return torch.sparse_coo_tensor(torch.randint(0, vocab, (rows,))[None], torch.randn(rows, 100), weight.shape,
                                       check_invariants=True)

    ways = {"average_row_gradients": lambda g: (setattr(weight, "grad", g), dist.average_row_gradients([weight])),
            "gloo_sparse_all_reduce": lambda g: tdist.all_reduce(g.coalesce()),
            "dense_all_reduce": lambda g: tdist.all_reduce(g.to_dense())}
    ms = {name: [] for name in ways}
    # the dense one in a block of its own: whichever call followed an 8 MB all-reduce took ~1.3 ms longer
    for block in (["average_row_gradients", "gloo_sparse_all_reduce"], ["dense_all_reduce"]):
        for _ in range(repeats):
            for name in block:
                g = gradient()
                tdist.barrier()
                start = time.perf_counter()
                ways[name](g)
                ms[name].append(1000 * (time.perf_counter() - start))
    if tdist.get_rank() == 0:
        print("MS " + json.dumps({k: round(statistics.median(v), 3) for k, v in ms.items()}), flush=True)
    tdist.destroy_process_group()


def launch(mode: str, steps: int) -> dict:
    from benchmarks.common import torchrun

    started = time.perf_counter()
    r = subprocess.run(torchrun(2, [__file__, "--worker", mode, "--steps", str(steps)]),
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    reached = [int(s) for s in re.findall(r"^rank \d step (\d+)$", r.stdout, re.M)]
    killed = sorted(set(re.findall(r"exitcode\s*:\s*(-\d+) .*\((SIG\w+)\)", r.stderr)))
    glibc = sorted(set(re.findall(r"^(malloc\(\).*|free\(\).*|double free.*|corrupted.*)$", r.stderr, re.M)))
    return {"mode": mode, "returncode": r.returncode, "seconds": round(time.perf_counter() - started, 1),
            "last_step_reported": max(reached, default=0), "worker_signals": [s for _, s in killed],
            "glibc_messages": glibc}


def main() -> None:
    from benchmarks.common import save, table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--runs", type=int, default=3, help="runs of each mode (default 3)")
    ap.add_argument("--steps", type=int, default=20000, help="training steps per run (default 20000)")
    ap.add_argument("--name", default="sparse_allreduce",
                    help="results file: benchmarks/results/NAME.json, or NAME itself where it is a path (it holds a /; "
                         ".json is added if missing) (default %(default)s)")
    ap.add_argument("--time", action="store_true", help="time one averaging of each kind instead")
    ap.add_argument("--rows", type=int, default=500, help="--time: gradient rows per process (default 500)")
    ap.add_argument("--vocab", type=int, default=20000, help="--time: embedding rows (default 20000)")
    ap.add_argument("--repeats", type=int, default=200, help="--time: calls of each kind (default 200)")
    ap.add_argument("--worker", choices=[*MODES, "time"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "time":
        time_worker(args.rows, args.vocab, args.repeats)
        return
    if args.worker:
        worker(args.worker, args.steps)
        return
    if args.time:
        from benchmarks.common import torchrun

        cmd = torchrun(2, [__file__, "--worker", "time", "--rows", str(args.rows), "--vocab", str(args.vocab),
                           "--repeats", str(args.repeats)])
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           check=True)
        ms = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("MS ")).split(" ", 1)[1])
        print(table([(k, f"{v} ms") for k, v in ms.items()],
                    f"averaging {args.rows} rows of a {args.vocab} × 100 gradient, 2 gloo processes (median)"))
        print(f"written {save(args.name, {'rows': args.rows, 'vocab': args.vocab, 'repeats': args.repeats, 'ms': ms})}")
        return
    runs = []
    for _ in range(args.runs):
        for mode in args.modes:  # modes alternate, so a busy spell of the machine hits them alike
            runs.append(launch(mode, args.steps))
            print(runs[-1], flush=True)
    rows = []
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        crashed = [r for r in mine if r["returncode"] != 0]
        rows.append((mode, f"{len(crashed)} of {len(mine)} runs failed; steps reached: "
                           + ", ".join(str(r["last_step_reported"]) for r in mine)))
    print(table(rows, f"2 gloo processes, {args.steps} steps per run"))
    print(f"written {save(args.name, {'steps': args.steps, 'runs': runs})}")


if __name__ == "__main__":
    from benchmarks.common import run_main

    run_main(main)
