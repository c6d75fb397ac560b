"""The CUDA paths, end to end on the shipped demo recipes: run this where a GPU is.

    python benchmarks/cuda_check.py                  # needs CUDA: fp32 and bf16 training, NCCL under torchrun
    python benchmarks/cuda_check.py --device cpu     # the same checks on CPU (gloo), e.g. to test this script

For each demo recipe (classifier, tagger, LM), on ``--device``:

1. ``seqtext train`` for ``--steps`` steps in fp32, then with ``train.bf16 = true`` (autocast);
2. ``torchrun --nproc_per_node 1 -m seqtext train`` (DDP: NCCL on CUDA, gloo on CPU) under a
   ``--ddp-minutes`` time budget, stopped with Ctrl-C once it has written a checkpoint, then
   resumed with ``--resume`` under torchrun (checkpointing every rank's state, CUDA RNG included);
3. the trained models load on the device and predict or generate (the bf16 one with ``--bf16``).

Every step must finish with exit status 0; the script prints one line per check and writes
benchmarks/results/cuda_check_<device>.json. Nothing here is a timing: it checks that the paths
run. (A second GPU would be needed to check NCCL between two processes.)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import run_main, save, torchrun

RECIPES = {"classify": "recipes/demo_sentiment.toml", "tag": "recipes/demo_ner.toml", "lm": "recipes/demo_lm.toml"}
SAMPLE = {"classify": "a wonderful film", "tag": "Angela Merkel visited Paris .", "lm": "the"}


def record(name: str, ok: bool, start: float, stderr: str, results: list[dict]) -> None:
    results.append({"check": name, "ok": ok, "seconds": round(time.perf_counter() - start, 1),
                    **({} if ok else {"stderr_tail": stderr[-3000:]})})
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({results[-1]['seconds']} s)", flush=True)
    if not ok:
        print(stderr[-3000:], file=sys.stderr)


def check(name: str, cmd: list[str], results: list[dict]) -> None:
    start = time.perf_counter()
    r = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
    record(name, r.returncode == 0, start, r.stderr, results)


def interrupted_and_resumed(task: str, first: list[str], resume: list[str], run_dir: Path, results: list[dict]):
    """Start ``first`` (torchrun), stop it with Ctrl-C once it wrote a checkpoint, then ``resume``."""
    start = time.perf_counter()
    proc = subprocess.Popen(first, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE, text=True)
    checkpoint = run_dir / "checkpoint.safetensors"
    while not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    record(f"{task}: torchrun (DDP) stopped by Ctrl-C with a checkpoint", "checkpoint saved" in err, start, err,
           results)
    check(f"{task}: torchrun (DDP) resumed to the end of its time budget", resume, results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--steps", type=int, default=40, help="Training steps per run.")
    ap.add_argument("--out", default="runs/cuda_check", help="Folder for the runs.")
    ap.add_argument("--tasks", default=",".join(RECIPES), help="Comma-separated tasks to check (default: all).")
    ap.add_argument("--ddp-minutes", type=float, default=0.3, help="Training time budget of the torchrun runs.")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    if unknown := set(tasks) - set(RECIPES):
        ap.error(f"--tasks: unknown {sorted(unknown)}; expected some of {list(RECIPES)}")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("cuda_check: torch sees no CUDA device here (use --device cpu to check the script itself)")
    out = Path(args.out) / args.device
    py = sys.executable
    results: list[dict] = []
    for task in tasks:
        recipe = RECIPES[task]
        base = ["train", recipe, "--device", args.device, "-q", "--force", "--set", "train.eval_every=0"]
        steps = ["--set", f"train.max_steps={args.steps}"]
        check(f"{task}: train fp32", [py, "-m", "seqtext", *base, *steps, "-o", str(out / f"{task}_fp32")], results)
        check(f"{task}: train bf16 autocast",
              [py, "-m", "seqtext", *base, *steps, "--set", "train.bf16=true", "-o", str(out / f"{task}_bf16")],
              results)
        ddp = out / f"{task}_ddp"
        budget = [*base, "--set", "train.epochs=100000", "--set", "train.patience=0", "--set",
                  f"train.max_minutes={args.ddp_minutes}", "--set", "train.checkpoint_every=20", "-o", str(ddp)]
        interrupted_and_resumed(task, torchrun(1, ["-m", "seqtext", *budget]),
                                torchrun(1, ["-m", "seqtext", *[a for a in budget if a != "--force"], "--resume"]),
                                ddp, results)
        for run in ("fp32", "bf16", "ddp"):
            model_dir = out / f"{task}_{run}"
            if not (model_dir / "metrics.json").is_file():
                continue
            if task == "lm":
                cmd = [py, "-m", "seqtext", "generate", "--model", str(model_dir), "--prompt", SAMPLE[task],
                       "--max-tokens", "10", "--device", args.device]
            else:
                cmd = [py, "-m", "seqtext", "predict", str(model_dir), SAMPLE[task], "--device", args.device,
                       *(["--bf16"] if run == "bf16" else [])]
            check(f"{task}: {run} model predicts on {args.device}", cmd, results)
    passed = sum(r["ok"] for r in results)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{passed}/{len(results)} checks passed on {args.device} ({where})")
    name = f"cuda_check_{args.device}" + ("" if len(tasks) == len(RECIPES) else "_" + "_".join(tasks))
    print(f"written {save(name, {'device': args.device, 'gpu': where, 'results': results})}")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    run_main(main)
