"""The benchmark suite: one command, every task at its default recipe size, on this machine.

    python benchmarks/suite.py [--tasks classify,classify_1thread,tag,tag_1thread,lm] [--batches 150] [--repeats 5]
                               [--skip-memory] [--set KEY=VALUE ...] [--data-root DIR] [--name NAME]

For each task (in its own subprocess, so peak RSS is per task, with a fresh datasets cache):
- data preparation throughput (tokenize + numericalize), first run vs cached run;
- training tokens/s of the full pipeline and of a bare ``nn.LSTM`` forward+backward on the same
  batches, interleaved, and their ratio; also of the same model as a plain PyTorch loop
  (classifier and tagger: ``benchmarks/plain_loops.py``; LM: embedding → LSTM → seqtext's output
  layer); model FLOP/s as a fraction of the measured matmul peak;
- batched inference tokens/s, and LM generation tokens/s at batch 1;
- peak resident memory of the task's process, interleaved timing included (which can raise it:
  ``benchmarks/step_memory.py`` measures a training step's alone).
Then the LM memory check: peak RSS of preparing and streaming one epoch of a synthetic corpus
and of one 10× larger (it should stay flat). Weights are freshly initialised: speed does not
depend on training. The classifier and tagger recipes are ensembles; their figures are for one
member (members train as ordinary runs; the ensembles' own inference speed is in
benchmarks/imdb_sentiment.py and benchmarks/conll2003_ner.py). ``classify_1thread`` and
``tag_1thread`` measure that member on one thread, as the recipe trains it (two members at a time
on the two cores, ``[train] parallel_members = 2``); the other rows use every core.
Each task runs in ``--repeats`` separate processes and the one with the median full/bare ratio is
reported, with every process's ratio beside it: interleaving cancels load within a process, but the
ratio still moved by up to ±5 % from one process to the next here (0.80-0.93 for the classifier).
The data are read from ``--data-root`` (imdb/, conll2003/, wikitext2/; default ../shared/data beside
the repo). Prints a table and writes benchmarks/results/suite.json (``--name``: another name there,
or a path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import DATA_ROOT, RESULTS_HELP, child_failed, data_under, run_main, save, table  # noqa: E402

TASKS = {  # task → (recipe, its data's folder under --data-root)
    "classify": ("recipes/imdb_sentiment.toml", "imdb"),
    "tag": ("recipes/conll2003_ner.toml", "conll2003"),
    "lm": ("recipes/wikitext2_lm.toml", "wikitext2"),
}
# The classifier and tagger recipes train their ensemble members two at a time, one thread each
# ([train] parallel_members = 2): also measure one member the way it actually trains.
VARIANTS = {"classify_1thread": ("classify", 1), "tag_1thread": ("tag", 1)}  # name → (task, threads)


def split_tokens(split) -> int:
    return int(split.num_tokens) if hasattr(split, "num_tokens") else int(split.lengths.sum())


def measure_task(variant: str, batches: int, data_root: str, overrides: list[str] | None = None) -> dict:
    import torch

    from benchmarks.common import peak_rss_mb, prepare, throughput
    from seqtext.generate import SamplingOptions

    name, threads = VARIANTS.get(variant, (variant, None))
    if threads:
        torch.set_num_threads(threads)
    recipe, folder = TASKS[name]
    data_dir = data_under(data_root, folder)
    start = time.perf_counter()
    task, data = prepare(recipe, data_dir, overrides)
    first = time.perf_counter() - start
    tokens = sum(split_tokens(s) for s in data.values())
    start = time.perf_counter()
    task, data = prepare(recipe, data_dir, overrides)
    cached = time.perf_counter() - start
    out = {"task": name, "recipe": recipe, "overrides": overrides or [], "threads": torch.get_num_threads(),
           "prep_tokens": tokens, "prep_first_tokens_per_s": round(tokens / first),
           "prep_cached_tokens_per_s": round(tokens / cached)}
    also = {}
    if name == "lm":
        # The LM's output layer is most of its step, and a bare nn.LSTM has none: also time a bare
        # nn.Embedding → nn.LSTM → the same output layer loop with plain AdamW.
        from benchmarks.wikitext2_lm import output_layer_step

        also["bare_lstm_plus_output"] = output_layer_step(task)
    else:
        # The classifier and tagger written as plain PyTorch loops (benchmarks/plain_loops.py).
        from benchmarks.plain_loops import plain_step

        also["plain_loop"] = plain_step(task)
    out.update(throughput(task, data, n_batches=batches, also=also))
    if name == "lm":
        out["ratio_with_output_layer"] = round(out["full_tokens_per_s"] / out["bare_lstm_plus_output_tokens_per_s"], 3)
    else:
        out["ratio_vs_plain_loop"] = round(out["full_tokens_per_s"] / out["plain_loop_tokens_per_s"], 3)
    torch.manual_seed(0)
    net = task.build_net().eval()
    cpu = torch.device("cpu")
    test = data.get("test", data["dev"])
    start = time.perf_counter()
    with torch.no_grad():
        if name == "lm":
            task.evaluate(net, test, cpu)
        else:
            task.predict_split(net, test, cpu)
    out["inference_tokens_per_s"] = round(split_tokens(test) / (time.perf_counter() - start))
    if name == "lm":
        n = 200
        start = time.perf_counter()
        task.generate(net, "the", cpu, SamplingOptions(max_tokens=n, seed=0))
        out["generation_tokens_per_s"] = round(n / (time.perf_counter() - start))
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


def synthetic_corpus(directory: Path, lines: int, seed: int = 0) -> None:
    """Zipf-distributed words over a fixed 20k vocabulary, ~20 words a line."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(20000)])
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", lines), ("valid", 2000), ("test", 2000)):
        with open(directory / f"{split}.txt", "w") as f:
            for start in range(0, n, 10000):
                ids = np.minimum(rng.zipf(1.2, size=(min(10000, n - start), 20)), 20000) - 1
                f.write("".join(" ".join(row) + "\n" for row in words[ids]))


def measure_lm_memory(data_dir: str) -> dict:
    """Prepare a synthetic corpus and stream one epoch of LM training windows (no model)."""
    from benchmarks.common import peak_rss_mb, prepare

    task, data = prepare(TASKS["lm"][0], data_dir, ["vocab.max_size=0"])
    prep = peak_rss_mb()  # the data step alone (load, tokenize, vocab, encode, token stream)
    windows = sum(1 for _ in task.train_batches(data["train"], epoch=0))
    return {"train_tokens": split_tokens(data["train"]), "windows": windows, "prep_peak_rss_mb": round(prep),
            "peak_rss_mb": round(peak_rss_mb())}


def run_child(args: list[str], cache: str) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": cache}  # OpenMP defaults, as a user's run has them
    r = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        child_failed(r, " ".join(args))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="classify,classify_1thread,tag,tag_1thread,lm",
                    help=f"Comma-separated, from {', '.join([*TASKS, *VARIANTS])}.")
    ap.add_argument("--batches", type=int, default=150, help="Training batches timed per task.")
    ap.add_argument("--repeats", type=int, default=5,
                    help="Processes per task; the one with the median full/bare ratio is reported.")
    ap.add_argument("--skip-memory", action="store_true", help="Skip the LM 1x vs 10x corpus memory check.")
    ap.add_argument("--lines", type=int, default=100_000, help="Synthetic corpus lines for the 1x memory run.")
    ap.add_argument("--data-root", default=str(DATA_ROOT),
                    help="Folder holding imdb/, conll2003/ and wikitext2/ (default: ../shared/data beside the repo, "
                         "%(default)s).")
    ap.add_argument("--name", default="suite", help=f"{RESULTS_HELP} (default %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="Recipe override for every task timed (repeatable), e.g. --set train.batch_tokens=640; "
                         "the rows then no longer describe the recipes as shipped.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--memory-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_task(args.child, args.batches, args.data_root, args.overrides)))
        return
    if args.memory_dir:
        print(json.dumps(measure_lm_memory(args.memory_dir)))
        return

    results: dict = {"overrides": args.overrides, "tasks": {}}
    unknown = set(args.tasks.split(",")) - {*TASKS, *VARIANTS}
    if unknown:
        ap.error(f"--tasks: unknown {', '.join(sorted(unknown))}; expected names from {', '.join([*TASKS, *VARIANTS])}")
    for name in args.tasks.split(","):  # every task's data before the first is timed
        data_under(args.data_root, TASKS[VARIANTS.get(name, (name,))[0]][1])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            sets = [a for o in args.overrides for a in ("--set", o)]
            runs = [run_child(["--child", name, "--batches", str(args.batches), "--data-root", args.data_root, *sets],
                              f"{tmp}/{name}{i}")
                    for i in range(max(1, args.repeats))]
            median = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
            results["tasks"][name] = {**median, "ratio_per_process": [r["ratio"] for r in runs]}
        if not args.skip_memory:
            for scale in (1, 10):
                corpus = Path(tmp) / f"corpus{scale}"
                synthetic_corpus(corpus, args.lines * scale)
                results[f"lm_memory_{scale}x"] = run_child(["--memory-dir", str(corpus)], f"{tmp}/mem{scale}")
    rows = []
    for name, r in results["tasks"].items():
        rows += [
            (f"{name}: train tokens/s full / bare nn.LSTM",
             f"{r['full_tokens_per_s']} / {r['bare_lstm_tokens_per_s']} = {r['ratio']:.2f}"
             + (f" (median; per process {', '.join(f'{x:.2f}' for x in r['ratio_per_process'])})"
                if len(r["ratio_per_process"]) > 1 else "")),
            *([(f"{name}: train tokens/s full / bare LSTM + same output layer",
                f"{r['full_tokens_per_s']} / {r['bare_lstm_plus_output_tokens_per_s']} = "
                f"{r['ratio_with_output_layer']:.2f}")] if "ratio_with_output_layer" in r else []),
            *([(f"{name}: train tokens/s full / the same model as a plain PyTorch loop",
                f"{r['full_tokens_per_s']} / {r['plain_loop_tokens_per_s']} = {r['ratio_vs_plain_loop']:.2f}")]
              if "ratio_vs_plain_loop" in r else []),
            (f"{name}: model GFLOP/s / matmul peak (MFU)",
             f"{r['achieved_gflops']} / {r['matmul_peak_gflops']} ({100 * r['mfu']:.0f} %)"),
            (f"{name}: inference tokens/s (batched)", r["inference_tokens_per_s"]),
            (f"{name}: data prep tokens/s first / cached", f"{r['prep_first_tokens_per_s']} / "
                                                           f"{r['prep_cached_tokens_per_s']}"),
            (f"{name}: peak RSS MB (process, timing included)", r["peak_rss_mb"]),
        ]
        if "generation_tokens_per_s" in r:
            rows.append((f"{name}: generation tokens/s (batch 1)", r["generation_tokens_per_s"]))
    if "lm_memory_1x" in results:
        a, b = results["lm_memory_1x"], results["lm_memory_10x"]
        results["lm_memory_ratio"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
        rows.append(("lm: peak RSS 1x / 10x corpus (MB)",
                     f"{a['peak_rss_mb']} ({a['train_tokens']} tok) / {b['peak_rss_mb']} ({b['train_tokens']} tok) "
                     f"= {results['lm_memory_ratio']}x"))
    title = "seqtext benchmark suite" + (f" (recipes with {', '.join(args.overrides)})" if args.overrides else "")
    print(table(rows, title))
    print(f"written {save(args.name, results)}")


if __name__ == "__main__":
    run_main(main)
