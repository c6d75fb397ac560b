"""Where the full/bare ratio goes, in wall-clock time: the LSTM kernels vs everything else.

    python benchmarks/step_anatomy.py                                      # CoNLL tagger, 1 thread
    python benchmarks/step_anatomy.py --recipe recipes/wikitext2_lm.toml --data-dir ../shared/data/wikitext2 --threads 2

Runs seqtext's training step and the suite's bare ``nn.LSTM`` step (``benchmarks/common.py:
bare_lstm_step``) on each batch in turn, as ``benchmarks/suite.py`` does, and times the LSTM
calls inside both: their forward through module hooks, their backward through hooks on the
autograd nodes of the oneDNN LSTM kernels. Each step then splits into LSTM forward, LSTM
backward and the rest. The rest of the bare step is making its random input, summing the output
and accumulating the weight gradients; the rest of the full step is the whole pipeline around
the encoder. A profiler cannot answer this cleanly: it adds a fixed cost to every operator, and
profiling the two steps in separate blocks lets the machine's load differ between them.
The data default to the recipe's data set in ../shared/data beside the repo.
Writes benchmarks/results/step_anatomy_<recipe name>.json (``--name``: another name there, or a path).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import (
    RESULTS_HELP,
    add_step_options,
    bare_lstm_step,
    recipe_data_dir,
    run_main,
    save,
    table,
    time_interleaved,
    training_step,
)


class LSTMClock:
    """Adds up the wall time of the forward and backward passes of watched ``nn.LSTM`` modules in
    ``seconds[prefix + "_lstm_forward" / "_lstm_backward"]``."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def watch(self, lstm: torch.nn.LSTM, prefix: str) -> None:
        started = {}
        lstm.register_forward_pre_hook(lambda m, args: started.__setitem__("t", time.perf_counter()))

        def done(module, args, output):
            self.seconds[f"{prefix}_lstm_forward"] += time.perf_counter() - started["t"]
            for node in _kernel_nodes(output[0], module.num_layers * (2 if module.bidirectional else 1)):
                self._time_backward(node, f"{prefix}_lstm_backward")

        lstm.register_forward_hook(done)

    def _time_backward(self, node, key: str) -> None:
        started = {}
        node.register_prehook(lambda grads: started.__setitem__("t", time.perf_counter()))
        node.register_hook(lambda inputs, outputs: self._add(key, started))

    def _add(self, key: str, started: dict) -> None:
        self.seconds[key] += time.perf_counter() - started["t"]


def _kernel_nodes(output: torch.Tensor, layers: int) -> list:
    """The autograd nodes of an LSTM call's oneDNN kernels (one per layer and direction), nearest
    the output first."""
    found, seen, queue = [], set(), [output.grad_fn]
    while queue and len(found) < layers:
        node = queue.pop(0)
        if node is None or node in seen or node.name() == "torch::autograd::AccumulateGrad":
            continue
        seen.add(node)
        if node.name().startswith("MkldnnRnnLayerBackward"):
            found.append(node)
        queue.extend(f for f, _ in node.next_functions)
    if len(found) < layers:
        raise SystemExit(f"found {len(found)} of {layers} LSTM kernel nodes: not oneDNN's LSTM "
                         "(a CPU build without it?)")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(ap, "recipes/conll2003_ner.toml", None, warmup=10)
    ap.add_argument("--name", help=f"{RESULTS_HELP} (default step_anatomy_<recipe name>)")
    args = ap.parse_args()
    args.data_dir = args.data_dir or recipe_data_dir(args.recipe)
    torch.set_num_threads(args.threads)
    overrides = [*args.overrides, f"train.threads={args.threads}"]
    clock = LSTMClock()
    with training_step(args.recipe, args.data_dir, overrides, args.warmup + args.batches) as (step, batches):
        trainer = step.__self__
        encoder = trainer.net.encoder
        for lstm in [*encoder.fwd, *(encoder.bwd or [])]:
            clock.watch(lstm, "full")
        bare = bare_lstm_step(trainer.task, trainer.net, trainer.bf16)
        clock.watch(bare.lstm, "bare")
        steps = {"full": step, "bare": bare}
        for b in batches[: args.warmup]:
            for run in steps.values():
                run(b)
        clock.seconds.clear()  # the LSTM times of the warm-up steps
        seconds, tokens = time_interleaved(batches[args.warmup:], steps, warmup=0)
    timed = len(batches) - args.warmup  # fewer than --batches where the epoch is shorter
    ms = {k: 1000 * v / timed for k, v in clock.seconds.items()}
    ms.update({f"{name}_step": 1000 * v / timed for name, v in seconds.items()})
    for name in ("full", "bare"):
        ms[f"{name}_rest"] = ms[f"{name}_step"] - ms[f"{name}_lstm_forward"] - ms[f"{name}_lstm_backward"]
    result = {"recipe": args.recipe, "overrides": args.overrides, "threads": args.threads, "batches": timed,
              "tokens_per_batch": round(tokens / timed), "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
              "ratio": round(ms["bare_step"] / ms["full_step"], 3)}
    rows = [(f"{name} step ms: LSTM forward + LSTM backward + rest = total",
             f"{ms[f'{name}_lstm_forward']:.2f} + {ms[f'{name}_lstm_backward']:.2f} + {ms[f'{name}_rest']:.2f} = "
             f"{ms[f'{name}_step']:.2f}") for name in ("full", "bare")]
    rows.append(("full / bare tokens/s", f"{result['ratio']:.3f}"))
    print(table(rows, f"{args.recipe}: step anatomy ({args.threads} thread(s), {timed} batches)"))
    recipe_name = Path(args.recipe).stem
    print(f"written {save(args.name or f'step_anatomy_{recipe_name}', result)}")


if __name__ == "__main__":
    run_main(main)
