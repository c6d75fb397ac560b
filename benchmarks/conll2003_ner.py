"""CoNLL-2003 English NER benchmark: train recipes/conll2003_ner.toml, score dev/test, time inference.

Target (issue): test F1 ≥ 87.0 without pretrained vectors, ≤ 60 min of training on 2 CPU cores.

    python benchmarks/conll2003_ner.py                        # train + evaluate (2 threads)
    python benchmarks/conll2003_ner.py --skip-train           # re-score an existing run
    python benchmarks/conll2003_ner.py --set train.epochs=2   # quick check
    python benchmarks/conll2003_ner.py --skip-train --bf16 --results benchmarks/results/conll2003_ner_bf16.json

Writes the model to runs/conll2003_ner (``--output``) and the results to
benchmarks/results/conll2003_ner.json (``--results``). ``--bf16`` scores and times inference
under bf16 autocast (``seqtext.load(..., bf16=True)``). The data are local copies (``--data-dir``, default
../shared/data/conll2003: train.txt / valid.txt / test.txt); they are never copied into the repo.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import seqtext  # noqa: E402
from benchmarks.common import recorded, run_main  # noqa: E402
from seqtext.data.conll import read_conll  # noqa: E402
from seqtext.io import write_json  # noqa: E402

RECIPE = REPO / "recipes" / "conll2003_ner.toml"
RESULTS = REPO / "benchmarks" / "results" / "conll2003_ner.json"
TARGET_F1, TARGET_MINUTES = 0.87, 60.0


def inference_speed(model, sentences: list[list[str]], batch_size: int, repeats: int = 3) -> dict:
    """Batched tagging throughput on pre-split sentences, and on raw text (spaCy tokenization included)."""
    task, net, device = model.task, model.net, model.device
    tokens = sum(map(len, sentences))
    best = float("inf")
    with model.precision():  # bf16 autocast when loaded with bf16=True
        task.tag_tokens(net, sentences[:256], device, batch_size)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            task.tag_tokens(net, sentences, device, batch_size)
            best = min(best, time.perf_counter() - start)
    texts = [" ".join(s) for s in sentences]
    start = time.perf_counter()
    model.predict(texts, batch_size=batch_size)
    raw = time.perf_counter() - start
    return {"sentences": len(sentences), "tokens": tokens, "batch_size": batch_size,
            "tokens_per_second": tokens / best, "sentences_per_second": len(sentences) / best,
            "raw_text_tokens_per_second": tokens / raw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "conll2003"),
                        help="folder with train.txt, valid.txt and test.txt")
    parser.add_argument("--output", default=str(REPO / "runs" / "conll2003_ner"), help="model directory")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and inference")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override (repeatable)")
    parser.add_argument("--skip-train", action="store_true", help="score the model already in --output")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch for inference")
    parser.add_argument("--bf16", action="store_true", help="score and time inference under bf16 autocast")
    parser.add_argument("--results", default=str(RESULTS), help="results JSON")
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    overrides = [f"train.threads={args.threads}", "train.device=\"cpu\"", *args.overrides]
    torch.set_num_threads(args.threads)
    if not args.skip_train:
        seqtext.train(RECIPE, overrides, output=args.output, data_dir=str(data_dir), resume=args.resume,
                      force=not args.resume)
    model = seqtext.load(args.output, "cpu", bf16=args.bf16)
    torch.set_num_threads(args.threads)
    train_summary = model.metrics().get("train", {})
    scores = {}
    for split in ("dev", "test"):
        scores[split] = model.evaluate(split=split, data_dir=str(data_dir))
        scores[f"{split}_strict"] = model.evaluate(split=split, data_dir=str(data_dir), mode="strict")
    test_sentences = [s.tokens for s in read_conll(data_dir / "test.txt", model.recipe.data.token_index, None)]
    speed = inference_speed(model, test_sentences, args.batch_size)

    minutes = train_summary.get("seconds", 0.0) / 60
    result = {
        "benchmark": "conll2003_ner",
        "recipe": model.recipe.to_dict(),
        "overrides": args.overrides,
        "parameters": model.num_parameters(),
        "vocab_size": len(model.task.vocab),
        "train": train_summary,
        "train_minutes": minutes,
        "epochs_completed": _epochs(Path(args.output)),
        "members": _members(Path(args.output)),
        **{f"{k}_{m}": scores[k][m] for k in scores for m in ("f1", "precision", "recall")},
        "test_token_accuracy": scores["test"]["token_accuracy"],
        "test_per_type": scores["test"]["per_type"],
        "inference": {**speed, "bf16": args.bf16},
        "target": {"test_f1": TARGET_F1, "train_minutes": TARGET_MINUTES,
                   "met": scores["test"]["f1"] >= TARGET_F1 and minutes <= TARGET_MINUTES},
    }
    write_json(args.results, recorded(result))  # with the command and the machine's facts

    print(f"\nCoNLL-2003 English NER ({model.recipe.name}, {result['parameters'] / 1e6:.2f}M parameters, "
          f"{args.threads} threads)")
    print(f"{'split':<12}{'F1':>8}{'P':>8}{'R':>8}")
    for k in ("dev", "test", "dev_strict", "test_strict"):
        print(f"{k:<12}{100 * scores[k]['f1']:8.2f}{100 * scores[k]['precision']:8.2f}{100 * scores[k]['recall']:8.2f}")
    print(f"\n{'type':<12}{'F1':>8}{'support':>9}")
    for t, m in scores["test"]["per_type"].items():
        print(f"{t:<12}{100 * m['f1']:8.2f}{m['support']:9d}")
    print(f"\ntraining: {minutes:.1f} min, {train_summary.get('steps', 0)} steps, "
          f"{result['epochs_completed']} epochs, {train_summary.get('tokens_per_second', 0):.0f} tokens/s")
    print(f"inference (test, batch {speed['batch_size']}): {speed['tokens_per_second']:.0f} tokens/s pre-split, "
          f"{speed['raw_text_tokens_per_second']:.0f} tokens/s from raw text")
    for i, m in enumerate(result["members"], 1):
        print(f"member {i}: dev {100 * m['dev_f1']:.2f}, test {100 * m['test_f1']:.2f}, "
              f"{m['minutes']:.1f} min, {m['epochs']} epochs")
    verdict = "MET" if result["target"]["met"] else "NOT met"
    print(f"target test F1 >= {100 * TARGET_F1:.1f} in <= {TARGET_MINUTES:.0f} min: {verdict}")
    print(f"results: {args.results}")


def _members(run_dir: Path) -> list[dict]:
    """Each ensemble member's own scores (as it was scored alone at the end of its training)."""
    out = []
    for d in sorted((run_dir / "members").glob("*"), key=lambda d: int(d.name) if d.name.isdigit() else 0):
        if (d / "metrics.json").is_file():
            m = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
            out.append({"dev_f1": m["dev"]["f1"], "test_f1": m["test"]["f1"], "minutes": m["train"]["seconds"] / 60,
                        "epochs": _epochs(d)})
    return out


def _epochs(run_dir: Path) -> int:
    history = run_dir / "metrics.jsonl"
    if not history.is_file() and (run_dir / "members" / "1").is_dir():
        history = run_dir / "members" / "1" / "metrics.jsonl"
    if not history.is_file():
        return 0
    lines = [json.loads(x) for x in history.read_text(encoding="utf-8").splitlines() if x.strip()]
    return max((h.get("epoch", 0) for h in lines), default=0)


if __name__ == "__main__":
    run_main(main)
