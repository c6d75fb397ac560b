"""Shared measurement helpers for the benchmark scripts (run from the repo root).

Everything printed is measured in the same process on this machine; nothing is typed in.
"""

from __future__ import annotations

import itertools
import json
import platform
import resource
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"


def torchrun(nproc: int, program: list[str]) -> list[str]:
    """The command line that runs ``program`` (``-m seqtext ...`` or a script and its arguments)
    in ``nproc`` local processes under torchrun, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *program]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    """What ran the benchmark: results from different CPUs are not comparable (this project's
    machines have been both AVX-512 + native bf16 and AVX2-only CPUs), so the model and the vector
    extensions are recorded with every result."""
    from seqtext.hardware import native_bf16

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu_model() or platform.processor() or platform.machine(),
            # AVX2 / AVX512: the kernels torch dispatches to
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(torch.device("cpu"))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def prepare(recipe_path: str, data_dir: str | None, overrides: list[str] | None = None):
    """Recipe → (task, encoded data) exactly as `seqtext train` builds them.

    An ensemble recipe gives one member's task: members are ordinary runs trained one by one, so
    the figures timed here (training step, inference) are per member."""
    from seqtext.data.sources import load_splits
    from seqtext.model import task_class
    from seqtext.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides or [])
    recipe.model.ensemble = 1
    task = task_class(recipe.task)(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        data = task.setup(load_splits(recipe, data_dir), Path(tmp))
    return task, data


@contextmanager
def step_trainer(task, net, data, keep_freed_memory: bool = True):
    """A CPU Trainer whose ``_step`` a benchmark times outside ``fit()``, set up as ``fit()`` runs
    it: the net in training mode, the epoch's state reset, and fit()'s allocator settings held for
    the block (without them an LM's vocabulary-sized buffers page-fault back in every step; a
    benchmark that built its own Trainer once lost them this way). ``keep_freed_memory=False``
    keeps glibc's defaults instead."""
    from seqtext.hardware import freed_memory_kept
    from seqtext.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, net, data, Path(tmp), torch.device("cpu"), quiet=True)
        net.train()
        task.reset_epoch()
        with freed_memory_kept(keep_freed_memory):
            yield trainer


def add_step_options(ap, recipe: str | None, data_dir: str | None, warmup: int, recipe_help: str = "") -> None:
    """The options of a benchmark that times :func:`training_step` on a recipe's first batches:
    ``--recipe``, ``--data-dir``, ``--set``, ``--threads``, ``--batches``, ``--warmup``. A default of
    None for the recipe means the script picks one (``recipe_help`` says which)."""
    ap.add_argument("--recipe", default=recipe, help=recipe_help or "default: %(default)s")
    ap.add_argument("--data-dir", default=data_dir,
                    help="default: %(default)s" if data_dir else "default: the recipe's data in ../shared/data")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="1: how the tagger and classifier recipes train each member")
    ap.add_argument("--batches", type=int, default=150, help="batches timed")
    ap.add_argument("--warmup", type=int, default=warmup, help="batches run first, untimed")


@contextmanager
def training_step(recipe_path: str, data_dir: str | None, overrides: list[str], n_batches: int,
                  keep_freed_memory: bool = True):
    """Yield (seqtext's training step function, the first ``n_batches`` batches of epoch 0) for a
    recipe, exactly as ``seqtext train`` would run them (fresh weights, seed 0, CPU).

    ``keep_freed_memory=False`` keeps glibc's default allocator settings, which the Trainer's
    training loop otherwise changes while it runs (compare the two in separate processes)."""
    task, data = prepare(recipe_path, data_dir, overrides)
    torch.manual_seed(0)
    net = task.build_net()
    batches = list(itertools.islice(task.train_batches(data["train"], epoch=0), n_batches))
    with step_trainer(task, net, data, keep_freed_memory) as trainer:
        yield trainer._step, batches


def throughput(task, data, n_batches: int = 60, warmup: int = 5, also: dict | None = None) -> dict:
    """Training tokens/s of the full pipeline and of a bare nn.LSTM on the same batches.

    Full pipeline = seqtext's whole training step: embedding, encoder, head, loss, backward,
    clipping, AdamW and LR schedule (under bf16 autocast when the recipe asks for it and the CPU can
    run it; MFU is then against the bf16 matmul peak). Bare = ``nn.LSTM`` (same sizes/directions/layers) forward +
    backward of ``out.sum()`` on random inputs shaped like each batch's embeddings, at the same precision.
    ``also`` = more step functions (name → step(batch)) timed in the same interleaving; each
    adds ``<name>_tokens_per_s``.
    """
    from seqtext.hardware import matmul_peak_flops

    torch.manual_seed(0)
    net = task.build_net()
    device = torch.device("cpu")
    batches = []
    for b in task.train_batches(data["train"], epoch=0):
        batches.append(b)
        if len(batches) == warmup + n_batches:
            break

    with step_trainer(task, net, data) as trainer:
        bf16 = trainer.bf16  # the bare LSTM runs at the pipeline's precision (fp32 where bf16 cannot run)
        bare_step = bare_lstm_step(task, net, bf16)
        seconds, tokens = time_interleaved(batches, {"full": trainer._step, "bare": bare_step, **(also or {})},
                                           warmup)
    full, bare = tokens / seconds["full"], tokens / seconds["bare"]
    extra = {f"{name}_tokens_per_s": round(tokens / seconds[name]) for name in also or {}}
    peak = matmul_peak_flops(device, seconds=1.0, dtype=torch.bfloat16 if bf16 else torch.float32)
    flops = net.flops_per_token() * 3
    return {"full_tokens_per_s": round(full), "bare_lstm_tokens_per_s": round(bare), "ratio": round(full / bare, 3),
            "model_flops_per_token": flops, "matmul_peak_gflops": round(peak / 1e9, 1),
            "achieved_gflops": round(full * flops / 1e9, 1), "mfu": round(full * flops / peak, 3),
            "batches": n_batches, **extra}


def bare_lstm_step(task, net, bf16: bool):
    """The bare step that seqtext's is compared with: an ``nn.LSTM`` of the recipe's sizes,
    directions and layers, forward + backward of ``out.sum()`` on random inputs shaped like a
    batch's embeddings, at the given precision. The module is the step's ``lstm`` attribute."""
    m = task.recipe.model
    width = net.embedder.output_dim
    lstm = nn.LSTM(width, m.hidden_size, num_layers=m.layers, batch_first=True,
                   bidirectional=net.encoder.bidirectional)

    def step(b):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, _ = lstm(torch.randn(*b.ids.shape, width, requires_grad=True))
        out.float().sum().backward()

    step.lstm = lstm  # for benchmarks that watch its calls (step_anatomy.py)
    return step


def time_interleaved(batches, steps: dict, warmup: int) -> tuple[dict[str, float], int]:
    """Run every step function on each batch in turn, timing each: any load on the machine then
    hits all of them equally. Returns (seconds per step name, tokens) over batches after ``warmup``."""
    seconds = dict.fromkeys(steps, 0.0)
    tokens = 0
    for i, b in enumerate(batches):
        for name, step in steps.items():
            start = time.perf_counter()
            step(b)
            if i >= warmup:
                seconds[name] += time.perf_counter() - start
        if i >= warmup:
            tokens += b.num_tokens
    return seconds, tokens


def inference_tokens_per_s(task, net, split) -> float:
    net.eval()
    tokens, start = 0, time.perf_counter()
    with torch.no_grad():
        for b in task.eval_batches(split):
            task.logits(net, b) if hasattr(task, "logits") else task.loss(net, b)
            tokens += b.num_tokens
    return tokens / (time.perf_counter() - start)


def table(rows: list[tuple[str, object]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] + [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
