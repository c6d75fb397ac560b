"""Two CPU facts behind the suite's measurements (benchmarks/README.md, "measurement pitfalls").

    python benchmarks/cpu_kernels.py [--threads 2] [--steps 100] [--data-root DIR] [--name NAME]

1. The fp32 matmul peak: ``torch.matmul`` (MKL) vs the same product through oneDNN, and what a
   bidirectional ``nn.LSTM`` forward (oneDNN) achieves, all in GFLOP/s.
2. The tagger recipe's training step (one member, ``recipes/conll2003_ner.toml``, same batches,
   on ``--data-root``/conll2003; 5 warm-up steps, then ``--steps`` timed) in a process with
   ``OMP_WAIT_POLICY=PASSIVE`` and in one with OpenMP's defaults.
Prints a table and writes benchmarks/results/cpu_kernels.json (``--name``: another name there, or a
path), with the command and the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import DATA_ROOT, RESULTS_HELP, child_failed, data_under, run_main, save, table  # noqa: E402

WARMUP = 5  # tagger steps run before the timed ones


def best_gflops(fn, flops: float, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def kernels() -> dict:
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
    B, T, D, H = 32, 270, 128, 192  # an IMDB-sized batch through the classifier's BiLSTM
    lstm = torch.nn.LSTM(D, H, batch_first=True, bidirectional=True)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        lstm_gflops = best_gflops(lambda: lstm(x), 2 * 2 * 4 * H * (D + H) * B * T)
    return {"matmul_mkl_gflops": round(best_gflops(lambda: torch.matmul(a, b), 2 * n**3)),
            "matmul_onednn_gflops": round(best_gflops(lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn), 2 * n**3)),
            "bilstm_forward_gflops": round(lstm_gflops)}


def tagger_step(steps: int, data_root: str) -> dict:
    import itertools

    import torch

    from benchmarks.common import prepare, step_trainer

    task, data = prepare("recipes/conll2003_ner.toml", data_under(data_root, "conll2003"))
    torch.manual_seed(0)
    net = task.build_net()
    batches = list(itertools.islice(task.train_batches(data["train"], epoch=0), WARMUP + steps))
    with step_trainer(task, net, data) as trainer:
        for batch in batches[:WARMUP]:  # untimed
            trainer._step(batch)
        start, tokens = time.perf_counter(), 0
        for batch in batches[WARMUP:]:
            trainer._step(batch)
            tokens += batch.num_tokens
    return {"tokens_per_s": round(tokens / (time.perf_counter() - start)), "steps": len(batches) - WARMUP}


def child(args, extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | extra_env
    r = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        child_failed(r, " ".join(args))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100, help="tagger training steps timed per setting")
    ap.add_argument("--data-root", default=str(DATA_ROOT),
                    help="folder holding conll2003/ (default: ../shared/data beside the repo, %(default)s)")
    ap.add_argument("--name", default="cpu_kernels", help=f"{RESULTS_HELP} (default %(default)s)")
    ap.add_argument("--child", choices=("kernels", "tagger"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "kernels":
        print(json.dumps(kernels()))
        return
    if args.child == "tagger":
        print(json.dumps(tagger_step(args.steps, args.data_root)))
        return
    data_under(args.data_root, "conll2003")  # before the kernels' child: a missing folder fails at once
    common = ["--threads", str(args.threads), "--steps", str(args.steps), "--data-root", args.data_root]
    result = {"threads": args.threads,
              **child(["--child", "kernels", *common], {}),
              "tagger_step_passive": child(["--child", "tagger", *common], {"OMP_WAIT_POLICY": "PASSIVE"}),
              "tagger_step_default": child(["--child", "tagger", *common], {})}
    rows = [("fp32 matmul 2048², torch.matmul (MKL)", f"{result['matmul_mkl_gflops']} GFLOP/s"),
            ("fp32 matmul 2048², oneDNN", f"{result['matmul_onednn_gflops']} GFLOP/s"),
            ("BiLSTM 128→192 forward, B=32 T=270 (oneDNN)", f"{result['bilstm_forward_gflops']} GFLOP/s"),
            ("tagger step, OMP_WAIT_POLICY=PASSIVE", f"{result['tagger_step_passive']['tokens_per_s']} tokens/s"),
            ("tagger step, OpenMP defaults", f"{result['tagger_step_default']['tokens_per_s']} tokens/s")]
    print(table(rows, f"CPU kernels ({args.threads} threads)"))
    print(f"written {save(args.name, result)}")


if __name__ == "__main__":
    run_main(main)
