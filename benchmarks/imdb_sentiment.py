"""IMDB sentiment benchmark: accuracy, training time, throughput vs bare nn.LSTM, inference speed.

    python benchmarks/imdb_sentiment.py --data-dir ../shared/data/imdb [--set train.epochs=...]
    python benchmarks/imdb_sentiment.py --recipe recipes/imdb_sentiment_transfer.toml   # after runs/imdb_lm

Trains recipes/imdb_sentiment.toml on the official 25k/25k split (dev carved from train),
then reports test accuracy, wall-clock training time, full-pipeline vs bare-LSTM training
tokens/s on the same batches, MFU against the measured matmul peak, batched inference
tokens/s and peak RSS. Writes benchmarks/results/<recipe name>.json; for a recipe with
``init_from`` (LM transfer) it also prints the from-scratch result of imdb_sentiment.json beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS,
    inference_tokens_per_s,
    peak_rss_mb,
    prepare,
    run_main,
    save,
    table,
    throughput,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/imdb_sentiment.toml")
    ap.add_argument("--data-dir", default="../shared/data/imdb")
    ap.add_argument("--output", help="model directory (default runs/bench_<name>)")
    ap.add_argument("--name", help="results file benchmarks/results/<name>.json (default: the recipe's name)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--skip-train", action="store_true", help="Only measure throughput (and reuse --output).")
    args = ap.parse_args()

    import seqtext

    name = args.name or Path(args.recipe).stem
    args.output = args.output or f"runs/bench_{name}"
    task, data = prepare(args.recipe, args.data_dir, args.overrides)
    speed = throughput(task, data)
    result = {"recipe": args.recipe, "overrides": args.overrides, "throughput": speed}
    if not args.skip_train:
        start = time.perf_counter()
        seqtext.train(args.recipe, args.overrides, output=args.output, data_dir=args.data_dir, force=True)
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
    model = seqtext.load(args.output)
    metrics = model.metrics()
    test = encoded_test(model, args.data_dir)
    result.update({
        "train_seconds": round(metrics["train"]["seconds"], 1),
        "steps": metrics["train"]["steps"],
        "dev_accuracy": metrics["dev"]["accuracy"],
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["macro_f1"],
        "test_roc_auc": metrics["test"].get("roc_auc"),
        "inference_tokens_per_s": round(inference_tokens_per_s(model.task, model.net, test)),
        "peak_rss_mb": round(peak_rss_mb()),
    })
    rows = [
        ("test accuracy", f"{100 * result['test_accuracy']:.2f} %"),
        ("dev accuracy", f"{100 * result['dev_accuracy']:.2f} %"),
        ("training time", f"{result['train_seconds'] / 60:.1f} min ({result['steps']} steps)"),
        ("train tokens/s (full pipeline)", speed["full_tokens_per_s"]),
        ("train tokens/s (bare nn.LSTM)", speed["bare_lstm_tokens_per_s"]),
        ("ratio full / bare", speed["ratio"]),
        ("matmul peak (GFLOP/s)", speed["matmul_peak_gflops"]),
        ("MFU", f"{100 * speed['mfu']:.1f} %"),
        ("inference tokens/s (batched)", result["inference_tokens_per_s"]),
        ("peak RSS (MB)", result["peak_rss_mb"]),
    ]
    scratch = RESULTS / "imdb_sentiment.json"
    if model.recipe.init_from and name != "imdb_sentiment" and scratch.is_file():
        base = json.loads(scratch.read_text())
        result["from_scratch"] = {k: base.get(k) for k in ("recipe", "test_accuracy", "dev_accuracy", "train_seconds")}
        rows.append(("from scratch (imdb_sentiment.json)",
                     f"{100 * base['test_accuracy']:.2f} % test in {base['train_seconds'] / 60:.1f} min"))
    print(table(rows, f"IMDB sentiment — {args.recipe}"))
    print(f"written {save(name, result)}")


def encoded_test(model, data_dir):
    """The test split encoded with the trained model's own tokenizer and vocab."""
    from seqtext.data.sources import load_splits

    raw = load_splits(model.recipe, data_dir, only=("test",))["test"]
    return model.task.encode_split(model.task.tokenize_split(raw, "test"), "test")


if __name__ == "__main__":
    run_main(main)
