"""CoNLL-2003 NER inside spaCy: spaCy's default CPU NER vs the seqtext_ner component, side by side.

Goal (issue): seqtext_ner has the higher test F1 and at least the same words/s of ``nlp.pipe``.

    python benchmarks/spacy_ner.py                                   # train spaCy (≤ 60 min), score both
    python benchmarks/spacy_ner.py --skip-spacy-train                # re-score an existing spaCy run
    python benchmarks/spacy_ner.py --seqtext-model runs/tiny_ner --max-sentences 500 \\
        --spacy-max-steps 50 --spacy-eval-frequency 25 --repeats 1 --results /tmp/spacy_ner.json  # quick check

1. spaCy: ``spacy init config --pipeline ner --optimize efficiency --lang en`` (its default CPU
   NER), trained with ``spacy train`` on train/valid converted by ``spacy convert --converter ner
   -n 10``. Budget: ``--spacy-max-steps`` / ``--spacy-patience`` (spaCy's own defaults, 20000 /
   1600) and ``--spacy-max-minutes`` (wall clock; this file's timed batcher, loaded with
   ``--code``, ends the epoch loop cleanly once time is up; everything else is the default config).
2. seqtext: ``spacy.blank("en")`` + ``sentencizer`` + ``seqtext_ner`` with an already trained
   seqtext run (``--seqtext-model``, default runs/conll2003_ner from ``python
   benchmarks/conll2003_ner.py``). The rule-based sentencizer lets the tagger see sentences, as
   in training (``--no-sentencizer``: one sequence per doc).

Both are scored with ``nlp.evaluate`` (spaCy's Scorer: entity P/R/F) on the same test Examples
(the converted test docs; predicted docs re-tokenized from text as ``spacy evaluate`` does, or the
gold tokens with ``--gold-tokens``), and timed with ``nlp.pipe`` over the same test texts. The
data stay in ``--data-dir`` (converted copies live in a temporary folder, never in the repo).
Results: benchmarks/results/spacy_ner.json.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spacy.util import registry

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "spacy_ner.json"
TIMED_BATCHER = "seqtext_bench.timed_batch_by_words.v1"


# Registered at import, so `spacy train --code benchmarks/spacy_ner.py` finds it.
@registry.batchers(TIMED_BATCHER)
def timed_batch_by_words(size, tolerance: float = 0.2, discard_oversize: bool = False, get_length=None,
                         minutes: float = 0.0):
    """spaCy's ``batch_by_words.v1`` that yields nothing once ``minutes`` of training have passed.

    spaCy's loop has no wall-clock limit; with a finite ``max_epochs`` the remaining epochs are
    then empty and ``spacy train`` ends normally (model-best from the last evaluation).
    """
    from spacy.training.batchers import configure_minibatch_by_words

    inner = configure_minibatch_by_words(size=size, tolerance=tolerance, discard_oversize=discard_oversize,
                                         get_length=get_length)
    start: list[float] = []

    def batcher(items):
        if not start:
            start.append(time.monotonic())  # the clock starts at the first batch, after initialization
        for batch in inner(items):
            if minutes and time.monotonic() - start[0] > 60 * minutes:
                return
            yield batch

    return batcher


def spacy_cli(*args: str, log=None) -> str:
    cmd = [sys.executable, "-m", "spacy", *args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log is not None:
        log.write(r.stdout)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[1:])} failed (exit {r.returncode}):\n{r.stdout[-3000:]}")
    return r.stdout


def subset(src: Path, dst: Path, max_sentences: int) -> Path:
    """The first ``max_sentences`` sentences of a CoNLL file (quick checks only)."""
    out, n = [], 0
    for block in re.split(r"\n\s*\n", src.read_text(encoding="utf-8")):
        if not block.strip():
            continue
        out.append(block.strip("\n"))
        n += not block.startswith("-DOCSTART-")
        if n >= max_sentences:
            break
    dst.write_text("\n\n".join(out) + "\n", encoding="utf-8")
    return dst


def convert(data_dir: Path, work: Path, sents_per_doc: int, max_sentences: int) -> dict[str, Path]:
    corpus = work / "corpus"
    corpus.mkdir()
    paths = {}
    for split in ("train", "valid", "test"):
        src = data_dir / f"{split}.txt"
        if not src.is_file():
            from seqtext import SeqtextError

            raise SeqtextError(f"{src}: missing (expected train.txt, valid.txt and test.txt in --data-dir)")
        if max_sentences:
            src = subset(src, work / f"{split}.txt", max_sentences)
        spacy_cli("convert", str(src), str(corpus), "--converter", "ner", "-n", str(sents_per_doc),
                  "--file-type", "spacy")
        paths[split] = corpus / f"{src.stem}.spacy"
    return paths


def train_spacy(args, corpus: dict[str, Path], work: Path, log_path: Path) -> dict:
    from spacy.util import load_config

    cfg = work / "spacy_ner_efficiency.cfg"
    spacy_cli("init", "config", str(cfg), "--pipeline", "ner", "--optimize", "efficiency", "--lang", "en",
              "--force")
    config = load_config(cfg)
    t = config["training"]
    t["max_steps"], t["patience"] = args.spacy_max_steps, args.spacy_patience
    t["eval_frequency"] = args.spacy_eval_frequency
    code = []
    if args.spacy_max_minutes:
        t["batcher"]["@batchers"] = TIMED_BATCHER
        t["batcher"]["minutes"] = args.spacy_max_minutes
        t["max_epochs"] = 10_000  # finite, so the empty epochs after the deadline run out
        code = ["--code", str(Path(__file__).resolve())]
    config.to_disk(cfg)
    out = Path(args.spacy_output)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        text = spacy_cli("train", str(cfg), "--output", str(out), "--paths.train", str(corpus["train"]),
                         "--paths.dev", str(corpus["valid"]), *code, log=log)
    seconds = time.perf_counter() - start
    # spaCy logs one table row per evaluation: epoch, step, losses, ENTS_F, ...
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)", text, re.M)
    return {"seconds": round(seconds, 1), "last_eval_step": int(rows[-1][1]) if rows else None,
            "last_eval_epoch": int(rows[-1][0]) if rows else None,
            "best_dev_f1": max((float(r[2]) for r in rows), default=None), "log": str(log_path),
            "max_steps": args.spacy_max_steps, "patience": args.spacy_patience,
            "eval_frequency": args.spacy_eval_frequency,
            "max_minutes": args.spacy_max_minutes}


def measure(nlp, test: Path, gold_tokens: bool, batch_size: int, repeats: int) -> dict:
    """Test scores with spaCy's Scorer (nlp.evaluate) and words/s of nlp.pipe over the test texts."""
    from spacy.tokens import Doc, DocBin
    from spacy.training import Example

    reference_docs = list(DocBin().from_disk(test).get_docs(nlp.vocab))

    def predicted(ref):
        if gold_tokens:
            return Doc(nlp.vocab, words=[t.text for t in ref], spaces=[bool(t.whitespace_) for t in ref])
        return nlp.make_doc(ref.text)

    examples = [Example(predicted(ref), ref) for ref in reference_docs]
    scores = nlp.evaluate(examples, batch_size=batch_size)
    texts = [ref.text for ref in reference_docs]
    list(nlp.pipe(texts[:20], batch_size=batch_size))  # warm-up
    best, words = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        words = sum(len(doc) for doc in nlp.pipe(texts, batch_size=batch_size))
        best = min(best, time.perf_counter() - start)
    return {"f1": scores["ents_f"], "precision": scores["ents_p"], "recall": scores["ents_r"],
            "per_type": scores["ents_per_type"], "docs": len(texts), "words": words, "seconds": round(best, 3),
            "words_per_second": round(words / best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "conll2003"),
                        help="folder with train.txt, valid.txt, test.txt (token POS chunk NER, IOB2)")
    parser.add_argument("--seqtext-model", default=str(REPO / "runs" / "conll2003_ner"),
                        help="trained seqtext tag run (python benchmarks/conll2003_ner.py writes runs/conll2003_ner)")
    parser.add_argument("--spacy-output", default=str(REPO / "runs" / "spacy_ner_efficiency"),
                        help="spacy train output folder (model-best is scored)")
    parser.add_argument("--skip-spacy-train", action="store_true", help="score the spaCy model in --spacy-output")
    parser.add_argument("--spacy-max-steps", type=int, default=20000, help="spaCy [training] max_steps")
    parser.add_argument("--spacy-patience", type=int, default=1600, help="spaCy [training] patience")
    parser.add_argument("--spacy-max-minutes", type=float, default=60.0,
                        help="wall-clock training budget for spaCy (0 = none)")
    parser.add_argument("--spacy-eval-frequency", type=int, default=200, help="spaCy [training] eval_frequency")
    parser.add_argument("--no-sentencizer", action="store_true",
                        help="seqtext pipeline without spaCy's rule-based sentencizer (then each doc is one sequence)")
    parser.add_argument("--seqtext-batch-size", type=int, default=64, help="seqtext_ner batch_size (sequences)")
    parser.add_argument("--bf16", action="store_true", help="seqtext_ner with bf16 = true (bf16 autocast)")
    parser.add_argument("--sents-per-doc", type=int, default=10, help="spacy convert -n (sentences per doc)")
    parser.add_argument("--max-sentences", type=int, default=0,
                        help="use only the first N sentences of each split (quick checks; 0 = all)")
    parser.add_argument("--gold-tokens", action="store_true",
                        help="predict on the gold tokens instead of re-tokenizing the test texts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for seqtext_ner")
    parser.add_argument("--batch-size", type=int, default=256, help="nlp.pipe / nlp.evaluate batch size (docs)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is reported)")
    parser.add_argument("--results", default=str(RESULTS), help="results JSON (the spaCy training log goes beside it)")
    args = parser.parse_args()

    import spacy
    import torch

    sys.path.insert(0, str(REPO))
    import seqtext
    from benchmarks.common import fail, recorded
    from seqtext.io import write_json
    from seqtext.model import check_model_dir

    try:
        check_model_dir(args.seqtext_model, task="tag")
    except seqtext.SeqtextError as e:
        fail(f"{e} (train one with: python benchmarks/conll2003_ner.py)")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="spacy-ner-bench-") as tmp:
        work = Path(tmp)
        corpus = convert(Path(args.data_dir), work, args.sents_per_doc, args.max_sentences)
        spacy_train = None
        if not args.skip_spacy_train:
            log_path = Path(args.results).with_name(Path(args.results).stem + "_train.log")
            print(f"training spaCy's efficiency NER (log: {log_path}) ...", flush=True)
            spacy_train = train_spacy(args, corpus, work, log_path)
        best = Path(args.spacy_output) / "model-best"
        if not best.is_dir():
            fail(f"{best}: no trained spaCy pipeline (run without --skip-spacy-train)")

        baseline = spacy.load(best)
        ours = spacy.blank("en")
        if not args.no_sentencizer:
            # seqtext_ner then tags sentence by sentence, as the tagger was trained (and faster
            # than one long sequence per 10-sentence doc); its time is part of the measurement.
            ours.add_pipe("sentencizer")
        ours.add_pipe("seqtext_ner", config={"model": str(args.seqtext_model), "batch_size": args.seqtext_batch_size,
                                             "bf16": args.bf16})
        results = {}
        for name, nlp in (("spacy_efficiency", baseline), ("seqtext_ner", ours)):
            print(f"scoring {name} ...", flush=True)
            results[name] = measure(nlp, corpus["test"], args.gold_tokens, args.batch_size, args.repeats)

    seqtext_info = seqtext.load(args.seqtext_model, "cpu")
    s, q = results["spacy_efficiency"], results["seqtext_ner"]
    result = {
        "benchmark": "spacy_ner",
        "data": {"dir": args.data_dir, "sents_per_doc": args.sents_per_doc, "max_sentences": args.max_sentences,
                 "test_docs": q["docs"], "test_words": q["words"], "gold_tokens": args.gold_tokens},
        "spacy_efficiency": {**s, "train": spacy_train, "pipeline": str(best), "pipe_names": baseline.pipe_names,
                             "spacy": spacy.__version__},
        "seqtext_ner": {**q, "model": args.seqtext_model, "pipe_names": ours.pipe_names,
                        "batch_size": args.seqtext_batch_size, "bf16": args.bf16,
                        "parameters": seqtext_info.num_parameters(),
                        "train": seqtext_info.metrics().get("train", {})},
        "goal": {"higher_f1": q["f1"] > s["f1"], "at_least_same_words_per_second":
                 q["words_per_second"] >= s["words_per_second"]},
    }
    write_json(args.results, recorded(result))  # with the command and the machine's facts (torch threads)

    print(f"\nCoNLL-2003 test ({q['docs']} docs, {q['words']} words; spaCy Scorer, nlp.pipe "
          f"batch {args.batch_size}, {args.threads} torch threads{', seqtext_ner in bf16' if args.bf16 else ''})")
    print(f"{'pipeline':<36}{'F1':>8}{'P':>8}{'R':>8}{'words/s':>10}")
    for label, r in (("spaCy efficiency: " + " + ".join(baseline.pipe_names), s),
                     ("seqtext: " + " + ".join(ours.pipe_names), q)):
        print(f"{label:<36}{100 * r['f1']:8.2f}{100 * r['precision']:8.2f}{100 * r['recall']:8.2f}"
              f"{r['words_per_second']:10d}")
    if spacy_train:
        print(f"\nspaCy training: {spacy_train['seconds'] / 60:.1f} min, last evaluation at step "
              f"{spacy_train['last_eval_step']}")
    verdict = "MET" if all(result["goal"].values()) else "NOT met"
    print(f"goal (higher F1 and >= words/s): {verdict} {result['goal']}")
    print(f"results: {args.results}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from benchmarks.common import run_main

    run_main(main)
