"""The seqtext_ner component on CoNLL-2003 test docs of several sentences: each sentence tagged as
its own sequence (``per_sentence = true``, the default: docs without sentence boundaries are split
as spaCy's rule-based sentencizer would) vs each doc tagged whole (``per_sentence = false``).

    python benchmarks/spacy_sentences.py runs/conll2003_ner --data-dir ../shared/data/conll2003

The test file is converted by ``spacy convert --converter ner -n 10`` (10 sentences per doc, as
spacy_ner.py scores), into a temporary folder. The docs to tag carry no sentence boundaries, as
text from a tokenizer would not. Reports entity F1 (``nlp.evaluate``) on the gold tokens and on
the text re-tokenized by spaCy, and ``nlp.pipe`` words/s, for both settings.
Writes benchmarks/results/spacy_sentences.json (``--name``: another name there, or a path).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_HELP, run_main, save, table
from benchmarks.spacy_ner import measure, spacy_cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a trained seqtext tag model directory")
    ap.add_argument("--data-dir", default="../shared/data/conll2003", help="folder with test.txt (CoNLL-2003)")
    ap.add_argument("--sents-per-doc", type=int, default=10, help="spacy convert -n (sentences per doc)")
    ap.add_argument("--batch-size", type=int, default=64, help="nlp.pipe / nlp.evaluate batch size")
    ap.add_argument("--repeats", type=int, default=2, help="timed nlp.pipe passes (the best counts)")
    ap.add_argument("--name", default="spacy_sentences", help=RESULTS_HELP)
    args = ap.parse_args()

    import spacy

    from seqtext import SeqtextError
    from seqtext.model import check_model_dir

    check_model_dir(args.model, "tag")
    source = Path(args.data_dir) / "test.txt"
    if not source.is_file():
        raise SeqtextError(f"{source}: no such file (expected the CoNLL-2003 test.txt in --data-dir)")
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="seqtext-sentences-") as work:
        spacy_cli("convert", str(source), work, "--converter", "ner", "-n", str(args.sents_per_doc),
                  "--file-type", "spacy")
        test = Path(work) / "test.spacy"
        for per_sentence in (True, False):
            nlp = spacy.blank("en")
            nlp.add_pipe("seqtext_ner", config={"model": args.model, "per_sentence": per_sentence})
            for gold_tokens in (True, False):
                r = measure(nlp, test, gold_tokens, args.batch_size, args.repeats)
                key = f"per_sentence={str(per_sentence).lower()}, {'gold' if gold_tokens else 'spaCy'} tokens"
                results[key] = r
                rows.append((key, f"F1 {100 * r['f1']:.2f}, {r['words_per_second']:,} words/s"))
    print(table(rows, f"seqtext_ner on {source} ({args.sents_per_doc} sentences per doc)"))
    path = save(args.name, {"model": str(args.model), "data": str(source), "sents_per_doc": args.sents_per_doc,
                            "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
