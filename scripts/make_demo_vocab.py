"""Rebuild vocab/demo_unigram_300.model from the shipped demo reviews (deterministic)."""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from seqtext.data.tokenizers import SentencePieceTokenizer

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help, and no stray arguments
    lines = (ROOT / "recipes/data/demo_sentiment/train.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        SentencePieceTokenizer.train(texts, Path(tmp), vocab_size=300, model_type="unigram", lowercase=True)
        shutil.copy(Path(tmp) / "tokenizer.model", ROOT / "vocab" / "demo_unigram_300.model")
