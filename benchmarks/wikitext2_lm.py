"""WikiText-2 language-model benchmark: test perplexity, training time, tokens/s, generation speed.

    python benchmarks/wikitext2_lm.py --data-dir ../shared/data/wikitext2            # ~65 min on 2 cores
    python benchmarks/wikitext2_lm.py --skip-train                                   # re-measure a trained run
    python benchmarks/wikitext2_lm.py --ref-minutes 60                               # + the reference at equal budget

Trains recipes/wikitext2_lm.toml (target: test perplexity ≤ 100 within 60 minutes on 2 CPU
cores), then reports test/valid perplexity, training wall time, and, measured in this process
on the same machine:
- training tokens/s of seqtext's full step vs a bare ``nn.LSTM`` (same sizes) on the same batches,
- training tokens/s of seqtext configured at pytorch/examples' word_language_model sizes
  (200/200, 2 layers, tied, full softmax, bptt 35, batch 20) and of that reference's own loop
  (benchmarks/lm_reference.py) on the same windows, interleaved, and optionally the
  reference's perplexity after ``--ref-minutes`` of training,
- generation tokens/s at batch 1 (CPU), with a sample.
Writes benchmarks/results/wikitext2_lm.json (``--name``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import lm_reference
from benchmarks.common import (
    RESULTS_HELP,
    peak_rss_mb,
    prepare,
    run_main,
    save,
    step_trainer,
    table,
    throughput,
    time_interleaved,
)


def output_layer_step(task):
    """A bare nn.Embedding → nn.LSTM → (seqtext's output layer) training step with plain AdamW, at
    the recipe's precision: what the LM costs without the framework around it. Pass it to
    ``benchmarks.common.throughput(..., also={...})`` to time it interleaved with seqtext's step."""
    from seqtext.hardware import bf16_setting
    from seqtext.tasks.lm import LMTask

    bf16, _ = bf16_setting(task.recipe.train.bf16, torch.device("cpu"), "[train] bf16")
    torch.manual_seed(0)
    net = task.build_net()
    m = task.recipe.model
    emb = torch.nn.Embedding(len(task.vocab), m.embedding_dim)
    lstm = torch.nn.LSTM(m.embedding_dim, m.hidden_size, m.layers, batch_first=True)
    head = net.head  # same output layer class and size (adaptive or full), untied from emb here
    params = [*emb.parameters(), *lstm.parameters(), *[p for n, p in head.named_parameters()]]
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step(b) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # same precision as seqtext's step
            out, _ = lstm(emb(b.ids))
            loss = LMTask.token_nll(net, out, b.targets).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()

    return step


# seqtext configured like the reference: emsize = nhid = 200, 2 layers, tied, full softmax,
# dropout 0.2, bptt 35, batch 20 (AdamW stays: the comparison is at equal model sizes).
REFERENCE_SIZES = ["model.embedding_dim=200", "model.hidden_size=200", "model.layers=2", 'model.softmax="full"',
                   "model.tie_weights=true", "model.dropout=0.2", "model.output_dropout=0.2",
                   "model.embedding_dropout=0.0", "model.weight_dropout=0.0", "train.batch_size=20",
                   "train.bptt=35", "train.random_bptt=false"]


def reference_size_speed(recipe: str, data_dir: str, threads: int, n_batches: int,
                         overrides: list[str] | None = None) -> dict:
    """Training tokens/s of seqtext at the reference's sizes and of the reference loop's step
    (benchmarks/lm_reference.py: SGD, clip 0.25) on the very same windows, interleaved per
    window so that machine load hits both equally."""
    # the caller's overrides first (e.g. train.bf16), then the reference's sizes, which win
    task, data = prepare(recipe, data_dir, [*(overrides or []), *REFERENCE_SIZES, f"train.threads={threads}"])
    torch.manual_seed(0)
    net = task.build_net()
    ref = lm_reference.RNNModel(len(task.vocab))
    hidden = ref.init_hidden(20)

    def ref_step(b):
        nonlocal hidden
        hidden = lm_reference.train_step(ref, b.ids.t().contiguous(), b.targets.t().reshape(-1), hidden, lr=20.0)

    ref.train()
    with step_trainer(task, net, data) as trainer:  # both loops under fit()'s allocator settings
        batches = itertools.islice(task.train_batches(data["train"], epoch=0), n_batches + 3)
        seconds, tokens = time_interleaved(batches, {"seqtext": trainer._step, "reference": ref_step}, warmup=3)
    seq_s, ref_s = seconds["seqtext"], seconds["reference"]
    return {"seqtext_tokens_per_s": round(tokens / seq_s), "reference_tokens_per_s": round(tokens / ref_s),
            "ratio": round(ref_s / seq_s, 2), "batches": n_batches, "overrides": REFERENCE_SIZES}


def fit_epochs(minutes: float, tokens_per_s: float, data) -> int:
    """Epochs that fit in ``minutes``: each costs its training tokens plus a dev evaluation
    (forward only, about 3× the training speed per token)."""
    per_epoch = data["train"].num_tokens / tokens_per_s + data["dev"].num_tokens / (3 * tokens_per_s)
    return max(1, int(60 * minutes / per_epoch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/wikitext2_lm.toml")
    ap.add_argument("--data-dir", default="../shared/data/wikitext2")
    ap.add_argument("--output", default="runs/wikitext2_lm", help="model directory (generate's default location)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for everything measured")
    ap.add_argument("--skip-train", action="store_true", help="reuse the trained model in --output")
    ap.add_argument("--speed-batches", type=int, default=30, help="windows timed for the tokens/s comparisons")
    ap.add_argument("--ref-batches", type=int, default=100,
                    help="windows (bptt 35 × batch 20) timed for seqtext vs the reference at equal sizes")
    ap.add_argument("--ref-minutes", type=float, default=0.0,
                    help="also train the reference for this long and report its perplexity (0 = speed only)")
    ap.add_argument("--fit-minutes", type=float, default=0.0,
                    help="size train.epochs so that training (with its per-epoch dev evaluations) takes about "
                         "this long at the tokens/s measured here, so the LR schedule completes within the "
                         "budget (0 = keep the recipe's epochs)")
    ap.add_argument("--gen-tokens", type=int, default=300)
    ap.add_argument("--prompt", default="The game was released in")
    ap.add_argument("--name", default="wikitext2_lm", help=f"{RESULTS_HELP} (default %(default)s)")
    args = ap.parse_args()

    import seqtext

    torch.set_num_threads(args.threads)
    overrides = [*args.overrides, f"train.threads={args.threads}"]
    task, data = prepare(args.recipe, args.data_dir, overrides)
    speed = throughput(task, data, n_batches=args.speed_batches,
                       also={"bare_lstm_plus_output": output_layer_step(task)})
    same = reference_size_speed(args.recipe, args.data_dir, args.threads, args.ref_batches, args.overrides)
    result = {"recipe": args.recipe, "overrides": overrides, "throughput": speed,
              "train_tokens": int(data["train"].num_tokens),
              "reference": {"tokens_per_second": same["reference_tokens_per_s"], "batches": args.ref_batches,
                            "config": "pytorch/examples --tied: 200/200, 2 layers, bptt 35, batch 20, SGD lr 20, "
                                      "full softmax"},
              "seqtext_at_reference_sizes": same}
    if args.fit_minutes:
        epochs = fit_epochs(args.fit_minutes, speed["full_tokens_per_s"], data)
        overrides.append(f"train.epochs={epochs}")
        result["fitted_epochs"] = epochs
        print(f"--fit-minutes {args.fit_minutes:g}: {speed['full_tokens_per_s']} tokens/s measured → "
              f"train.epochs={epochs}", file=sys.stderr)
    if args.ref_minutes:
        ref = lm_reference.run(args.data_dir, epochs=100, max_minutes=args.ref_minutes, threads=args.threads)
        result["reference"].update({"minutes": args.ref_minutes, "valid_ppl": ref["valid_ppl"],
                                    "test_ppl": ref["test_ppl"], "epochs": len(ref["epochs"])})
    if not args.skip_train:
        start = time.perf_counter()
        seqtext.train(args.recipe, overrides, output=args.output, data_dir=args.data_dir, force=True)
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
    model = seqtext.load(args.output, "cpu")
    metrics = model.metrics()
    test = model.evaluate(split="test", data_dir=args.data_dir)
    torch.set_num_threads(args.threads)
    model.generate(args.prompt, max_tokens=20, seed=0)  # warm-up
    # default sampling (T = 1) samples the adaptive softmax level by level; temperature / top-k /
    # top-p / greedy need the whole 33k-word distribution at every step, which is memory-bound
    gen = model.generate(args.prompt, max_tokens=args.gen_tokens, seed=0)[0]
    gen_t = model.generate(args.prompt, max_tokens=args.gen_tokens, seed=0, temperature=0.8, top_p=0.95)[0]
    result.update({
        "train_seconds": round(metrics["train"]["seconds"], 1),
        "train_tokens_per_second": round(metrics["train"]["tokens_per_second"]),
        "steps": metrics["train"]["steps"],
        "epochs_seen": round(metrics["train"]["tokens"] / data["train"].num_tokens, 2),
        "valid_perplexity": metrics["dev"]["perplexity"],
        "test_perplexity": test["perplexity"],
        "test_tokens": test["tokens"],
        "generation_tokens_per_s": round(gen["tokens_per_second"]),
        "generation_tokens_per_s_full_softmax": round(gen_t["tokens_per_second"]),
        "generation_sample": args.prompt + gen_t["text"],
        "parameters": model.num_parameters(),
        "peak_rss_mb": round(peak_rss_mb()),
    })
    rows = [
        ("test perplexity", f"{result['test_perplexity']:.2f}  (target ≤ 100; pytorch/examples --tied 6 epochs: "
                            f"110.44)"),
        ("valid perplexity", f"{result['valid_perplexity']:.2f}"),
        ("training time", f"{result['train_seconds'] / 60:.1f} min, {result['epochs_seen']} epochs, "
                          f"{result['steps']} steps"),
        ("train tokens/s (whole run)", result["train_tokens_per_second"]),
        ("train tokens/s (seqtext step)", speed["full_tokens_per_s"]),
        ("train tokens/s (bare nn.LSTM only)", speed["bare_lstm_tokens_per_s"]),
        ("train tokens/s (bare LSTM + output)", speed["bare_lstm_plus_output_tokens_per_s"]),
        ("reference sizes: seqtext / pytorch/examples tokens/s",
         f"{same['seqtext_tokens_per_s']} / {same['reference_tokens_per_s']} = {same['ratio']:.2f}x (goal ≥ 1.5x)"),
        ("MFU (seqtext step)", f"{100 * speed['mfu']:.1f} % of {speed['matmul_peak_gflops']} GFLOP/s"),
        ("generation tokens/s (batch 1, T=1)", result["generation_tokens_per_s"]),
        ("generation tokens/s (T=0.8, top-p)", result["generation_tokens_per_s_full_softmax"]),
        ("parameters", f"{result['parameters'] / 1e6:.2f} M"),
        ("peak RSS (MB)", result["peak_rss_mb"]),
    ]
    if args.ref_minutes:
        rows.append((f"pytorch/examples after {args.ref_minutes:g} min",
                     f"test ppl {result['reference']['test_ppl']:.2f}"))
    print(table(rows, f"WikiText-2 language model — {args.recipe}, {args.threads} threads"))
    print(f"\nsample: {result['generation_sample'][:300]}")
    print(f"written {save(args.name, result)}")


if __name__ == "__main__":
    run_main(main)
