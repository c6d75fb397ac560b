"""Tokenizers behind one small interface.

``regex``: fast word-level splitting (words, numbers, punctuation); ``whitespace``: split on
spaces (pre-tokenized corpora such as WikiText); ``spacy``: the rule-based tokenizer of
``spacy.blank(lang)`` (no model download); ``sentencepiece``: unigram/BPE subwords, trained
on the train split or loaded from a ``.model`` file.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import SeqtextError
from ..io import write_bytes
from ..recipe import TokenizerConfig

# a tag: "<" then a letter (or "/" and a letter), so "< than 30 minutes" or "<3" stay text
_HTML = re.compile(r"</?[A-Za-z][^<>]{0,100}>")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+(?:[.,]\d+)*|\S")
SPM_FILE = "tokenizer.model"


class Tokenizer:
    """Text → list of token strings (and back, for generation)."""

    lowercase = False
    strip_html = False
    splits_hyphens = False  # "e-mail" → e - mail: generated text glues a lone "-" to its neighbours

    def normalize(self, text: str) -> str:
        if self.strip_html:
            text = _HTML.sub(" ", text)
        return text.lower() if self.lowercase else text

    def tokenize(self, text: str) -> list[str]:
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: list[str]) -> list[list[str]]:
        raise NotImplementedError

    def detokenize(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def fingerprint(self) -> str:
        """Changes whenever tokenization output could change (keys the datasets cache)."""
        return f"{type(self).__name__}:{self.lowercase}:{self.strip_html}" + (":html2" if self.strip_html else "")

    def save(self, directory: Path) -> None:
        """Write whatever files the tokenizer needs into a model directory."""


class RegexTokenizer(Tokenizer):
    splits_hyphens = True

    def __init__(self, lowercase: bool = True, strip_html: bool = True):
        self.lowercase, self.strip_html = lowercase, strip_html

    def tokenize_batch(self, texts):
        return [_WORD.findall(self.normalize(t)) for t in texts]

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]


class WhitespaceTokenizer(Tokenizer):
    def __init__(self, lowercase: bool = False, strip_html: bool = False):
        self.lowercase, self.strip_html = lowercase, strip_html

    def tokenize_batch(self, texts):
        return [self.normalize(t).split() for t in texts]


class SpacyTokenizer(Tokenizer):
    splits_hyphens = True

    def __init__(self, lang: str = "en", lowercase: bool = False, strip_html: bool = False):
        import spacy

        try:
            self.nlp = spacy.blank(lang)
        except Exception as e:  # noqa: BLE001 — spaCy raises several types for unknown languages
            raise SeqtextError(f"[tokenizer] lang: spaCy has no language {lang!r} ({e})") from None
        self.lang, self.lowercase, self.strip_html = lang, lowercase, strip_html

    def tokenize_batch(self, texts):
        docs = self.nlp.tokenizer.pipe([self.normalize(t) for t in texts], batch_size=256)
        return [[t.text for t in doc if not t.is_space] for doc in docs]

    def detokenize(self, tokens):
        return " ".join(tokens)

    def fingerprint(self):
        return super().fingerprint() + f":{self.lang}"


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_file: str | Path, strip_html: bool = True, lowercase: bool = False):
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise SeqtextError(f"{model_file}: sentencepiece model file not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (RuntimeError, OSError) as e:
            raise SeqtextError(f"{model_file}: not a sentencepiece model ({str(e).strip().splitlines()[-1]})") from None
        self.strip_html, self.lowercase = strip_html, lowercase

    @classmethod
    def train(cls, texts: Iterable[str], directory: Path, vocab_size: int, model_type: str,
              strip_html: bool = True, lowercase: bool = False) -> SentencePieceTokenizer:
        import sentencepiece as spm

        helper = cls.__new__(cls)
        helper.strip_html, helper.lowercase = strip_html, lowercase
        directory.mkdir(parents=True, exist_ok=True)
        model = io.BytesIO()
        # sentences streamed in and the model written to memory: no corpus file on disk, and no
        # temporary paths recorded in the model, whose bytes then depend only on the text and the
        # settings (its hash keys the tokenization cache)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=(helper.normalize(t).replace("\n", " ") for t in texts), model_writer=model,
                vocab_size=vocab_size, model_type=model_type, input_sentence_size=200_000,
                shuffle_input_sentence=True, character_coverage=0.9995, hard_vocab_limit=False, minloglevel=2,
                num_threads=1,  # deterministic output
            )
        except RuntimeError as e:  # a failed check in its C++ trainer, e.g. "INTERNAL: ...cc(576) [count > 0] "
            raise SeqtextError(_spm_problem(e)) from None
        write_bytes(directory / SPM_FILE, model.getvalue())
        return cls(directory / SPM_FILE, strip_html=strip_html, lowercase=lowercase)

    def tokenize_batch(self, texts):
        return self.sp.encode([self.normalize(t) for t in texts], out_type=str)

    def detokenize(self, tokens):
        return self.sp.decode_pieces(tokens)

    def fingerprint(self):
        digest = hashlib.sha1(self.model_file.read_bytes()).hexdigest()[:16]
        return super().fingerprint() + f":{digest}"

    def save(self, directory):
        target = Path(directory) / SPM_FILE
        if self.model_file.resolve() != target.resolve():
            write_bytes(target, self.model_file.read_bytes())


def _spm_problem(error: RuntimeError) -> str:
    """What a failed sentencepiece training means for the recipe: the error message to show."""
    text = str(error)
    if chars := re.search(r"required_chars\. (\d+) vs (\d+)", text):
        return (f"[tokenizer] vocab_size = {chars[1]}: the train data's characters and the special pieces need "
                f"{chars[2]} sentencepiece pieces; raise it to at least {chars[2]}")
    if "all_chars_count" in text or "sentences_.empty()" in text:
        return "train data: no text to train the sentencepiece tokenizer on"
    return f"train data: sentencepiece training failed ({text.rpartition('] ')[2].strip() or text.strip()})"


def build_tokenizer(cfg: TokenizerConfig, directory: Path | None = None,
                    train_texts: Iterable[str] | None = None, model_dir: bool = False) -> Tokenizer:
    """Create the tokenizer a recipe asks for.

    ``directory``: a model directory holding a saved sentencepiece model (``model_dir=True``:
    only that file is used, never a path named in the recipe), or the staging directory
    where a new one is trained from ``train_texts``.
    """
    if cfg.kind == "regex":
        return RegexTokenizer(cfg.lowercase, cfg.strip_html)
    if cfg.kind == "whitespace":
        return WhitespaceTokenizer(cfg.lowercase, cfg.strip_html)
    if cfg.kind == "spacy":
        return SpacyTokenizer(cfg.lang, cfg.lowercase, cfg.strip_html)
    saved = directory / SPM_FILE if directory else None
    if saved is not None and saved.is_file():
        return SentencePieceTokenizer(saved, cfg.strip_html, cfg.lowercase)
    if model_dir:
        raise SeqtextError(f"{directory}: incomplete model directory, missing {SPM_FILE}")
    if cfg.model_file:
        return SentencePieceTokenizer(cfg.model_file, cfg.strip_html, cfg.lowercase)
    if train_texts is None or directory is None:
        raise SeqtextError("[tokenizer] sentencepiece: no model_file given and no saved tokenizer.model")
    return SentencePieceTokenizer.train(train_texts, directory, cfg.vocab_size, cfg.model_type,
                                        cfg.strip_html, cfg.lowercase)
