"""Shared measurement helpers for the benchmark scripts (run from the repo root).

Everything printed is measured in the same process on this machine; nothing is typed in.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
# Where the data sets live unless a script's --data-root / --data-dir says otherwise: beside the
# repository (never inside it), whatever the current directory.
DATA_ROOT = REPO.parent / "shared" / "data"
RESULTS_HELP = ("results file: benchmarks/results/NAME.json, or NAME itself where it is a path "
                "(it holds a /; .json is added if missing)")


def fail(message: str) -> NoReturn:
    """End the script as the seqtext CLI ends on a user-facing error: one ``error: ...`` line on
    stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_main(main: Callable[[], object]) -> None:
    """A script's entry point: ``main()``, with a :class:`seqtext.SeqtextError` (a missing data
    folder, a bad recipe) or a missing file turned into one ``error: ...`` line and exit status 2
    instead of a traceback. Other exceptions keep their traceback."""
    from seqtext.errors import Interrupted, SeqtextError

    try:
        main()
    except Interrupted as e:
        if str(e):
            print(str(e), file=sys.stderr)
        raise SystemExit(130) from None
    except SeqtextError as e:
        fail(str(e).splitlines()[0] if str(e) else "failed")
    except FileNotFoundError as e:
        fail(f"{e.filename}: no such file or directory" if e.filename else str(e))


def child_failed(r, what: str) -> NoReturn:
    """A child process of a benchmark (``subprocess.run`` result ``r``, stderr captured) failed:
    its own one-line error (exit 2, from :func:`run_main`) becomes this process's; anything else
    ends it with the end of the child's stderr."""
    lines = (r.stderr or "").strip().splitlines()
    if r.returncode == 2 and lines and lines[-1].startswith("error: "):
        fail(lines[-1][len("error: "):])
    raise SystemExit(f"{what} failed:\n{(r.stderr or '')[-3000:]}")


def data_under(root: str | Path, name: str) -> str:
    """The folder of one data set under a script's ``--data-root``; a missing one is a
    SeqtextError that names the option."""
    from seqtext.errors import SeqtextError

    path = Path(root) / name
    if not path.is_dir():
        raise SeqtextError(f"--data-root {root}: no {name} data ({path}: no such directory)")
    return str(path)


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
            "cpu_count": os.cpu_count(), "cpu": cpu_model() or platform.processor() or platform.machine(),
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


# A shipped recipe's file name → the folder of its data set under DATA_ROOT.
RECIPE_DATA = {"imdb_sentiment": "imdb", "imdb_sentiment_transfer": "imdb", "conll2003_ner": "conll2003",
               "wikitext2_lm": "wikitext2", "ptb_lm": "ptb"}
RECIPE_DATA_HELP = ("default: the recipe's data set in ../shared/data beside the repo (imdb, conll2003, wikitext2 "
                    "or ptb, by the recipe's file name); for other recipes their own [data]")


def recipe_data_dir(recipe: str) -> str | None:
    """The default ``--data-dir`` for ``recipe``: its data set's folder under :data:`DATA_ROOT`, or
    None (the recipe's own ``[data]``) for a recipe not in :data:`RECIPE_DATA`."""
    name = RECIPE_DATA.get(Path(recipe).stem)
    return str(DATA_ROOT / name) if name else None


def add_step_options(ap, recipe: str | None, data_dir: str | None, warmup: int, recipe_help: str = "") -> None:
    """The options of a benchmark that times :func:`training_step` on a recipe's first batches:
    ``--recipe``, ``--data-dir``, ``--set``, ``--threads``, ``--batches``, ``--warmup``. A default of
    None for the recipe means the script picks one (``recipe_help`` says which); for the data dir,
    the recipe's data set (:func:`recipe_data_dir`, which the script applies)."""
    ap.add_argument("--recipe", default=recipe, help=recipe_help or "default: %(default)s")
    ap.add_argument("--data-dir", default=data_dir, help="default: %(default)s" if data_dir else RECIPE_DATA_HELP)
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


def results_path(name: str | Path) -> Path:
    """Where a benchmark's ``--name`` writes: a bare name goes to benchmarks/results/<name>.json; a
    path (absolute, or holding a /) is used as it is, relative to the current directory. ``.json``
    is added to either where it is missing."""
    name = str(name)
    path = Path(name) if "/" in name else RESULTS / name
    return path if path.suffix == ".json" else path.with_name(path.name + ".json")


def recorded(result: dict) -> dict:
    """``result`` with the command that produced it and the machine it ran on in front."""
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **result}


def save(name: str | Path, result: dict) -> Path:
    """Write ``result`` (with the command and machine facts) to :func:`results_path` of ``name``."""
    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded(result), indent=2) + "\n")
    return path
