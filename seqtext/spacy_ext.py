"""spaCy integration: seqtext models as pipeline components, seqtext's BiLSTM as a spaCy tok2vec layer.

Registered through entry points (``pyproject.toml``), so after ``pip install`` spaCy finds them
without importing seqtext first (no ``--code`` needed for ``spacy train``):

- factory ``seqtext_ner``: a trained ``tag`` model sets ``doc.ents``::

      nlp = spacy.blank("en")
      nlp.add_pipe("seqtext_ner", config={"model": "runs/conll2003_ner"})

- factory ``seqtext_textcat``: a trained ``classify`` model sets ``doc.cats`` (label probabilities).
- architecture ``seqtext.BiLSTMEncoder.v1``: a ``Model[List[Doc], List[Floats2d]]`` token-to-vector
  layer (seqtext's Embedder + padding-invariant BiLSTM in thinc's PyTorch wrapper) for the
  ``tok2vec`` of spaCy's ``ner``, ``textcat``, ... components; optionally initialised from a
  seqtext run (``init_from``), e.g. a language model.

Nothing here pickles: a component stores the seqtext model directory's own files (text files
plus ``weights.safetensors``) inside the pipeline directory, and the encoder architecture
serializes its weights with safetensors instead of thinc's default ``torch.save``.
"""

import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import srsly
import torch
from spacy.attrs import LOWER
from spacy.language import Language
from spacy.scorer import Scorer, get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import filter_spans, minibatch, registry
from thinc.api import ArgsKwargs, CupyOps, Model, PyTorchWrapper_v3, get_current_ops, torch2xp, xp2torch
from thinc.types import Floats2d
from torch import nn

from .data.tagging import entities
from .data.vocab import Vocab
from .errors import SeqtextError
from .io import atomic_write, inside, read_json
from .model import (
    META_FILE,
    MODEL_FILES,
    RECIPE_FILE,
    check_model_dir,
    is_device_name,
    is_positive_int,
    load,
    refuse_ensemble,
)
from .model import Model as SeqtextModel
from .nn.chars import clip_word
from .nn.embeddings import Embedder, casing_id
from .nn.encoder import Encoder
from .recipe import load_recipe
from .tasks.tag import TRAIN_SCHEME, UNK_CHAR, char_index, sentence_units, word_key

__all__ = ["BiLSTMEncoder", "SeqtextNER", "SeqtextTextCat", "export_pipeline", "make_seqtext_ner",
           "make_seqtext_textcat"]

COMPONENTS = {"tag": "seqtext_ner", "classify": "seqtext_textcat"}


# ====================================================================== pipeline components

def _torch_device(name: str) -> str:
    """``auto`` follows spaCy: CUDA only when the user asked thinc for the GPU (spacy.require_gpu)."""
    if name.lower() == "auto":
        return "cuda" if isinstance(get_current_ops(), CupyOps) else "cpu"
    return name


class _SeqtextPipe:
    """Shared part of the two components: lazy model loading, batching and (de)serialization.

    The model is loaded on first use (or by :meth:`from_disk` / :meth:`load_model`), not when
    the factory runs: ``spacy.load`` calls the factory with the config it saved, whose ``model``
    path may no longer exist, and then restores the component from the pipeline directory.
    """

    task_name = ""
    factory = ""
    labels_key = ""

    def __init__(self, nlp: Language, name: str, model: str = "", batch_size: int = 64, device: str = "auto",
                 bf16: bool = False):
        self._check_batch_size(batch_size, "batch_size")
        if not is_device_name(device):
            raise SeqtextError(f"{self.factory}: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        self.name = name
        self.vocab = nlp.vocab
        self.model_path = model
        self.batch_size = batch_size
        self.device = device
        self.bf16 = bf16
        self._model: SeqtextModel | None = None
        self._files: dict[str, bytes] = {}
        self._pid = os.getpid()

    def _check_batch_size(self, value, what: str) -> None:
        if not is_positive_int(value):
            raise SeqtextError(f"{self.factory}: {what} must be an integer ≥ 1, got {value!r}")

    # ------------------------------------------------------------------ model
    @property
    def seqtext_model(self) -> SeqtextModel:
        """The loaded seqtext :class:`~seqtext.model.Model` (loaded from ``model`` on first access)."""
        if self._model is None:
            if not self.model_path:
                raise SeqtextError(f"{self.factory} component {self.name!r}: no model; pass "
                                   f"config={{\"model\": \"runs/...\"}} to nlp.add_pipe or load a saved pipeline")
            self.load_model(self.model_path)
        assert self._model is not None
        return self._model

    def load_model(self, directory: str | os.PathLike, run: bool = True) -> "_SeqtextPipe":
        """Load a seqtext model directory into this component (its files are kept in memory);
        ``run=False``: the directory is a saved pipeline's, not a training run's."""
        if run and Path(directory, "config.cfg").is_file() and not Path(directory, RECIPE_FILE).is_file():
            raise SeqtextError(f"{directory}: is a spaCy pipeline directory, not a seqtext model; open it with "
                               f"spacy.load({str(directory)!r})")
        path = check_model_dir(directory, run=run)
        task = read_json(inside(path, META_FILE)).get("task")
        if task != self.task_name:
            other = COMPONENTS.get(task)
            hint = f"; use the {other} component" if other else ""
            raise SeqtextError(f"{directory}: is a {task!r} model, the {self.factory} component needs a "
                               f"{self.task_name!r} model{hint}")
        files = {n: inside(path, n).read_bytes() for n in MODEL_FILES if inside(path, n).is_file()}
        self._set_files(files, str(directory))
        return self

    def _set_files(self, files: dict[str, bytes], where: str) -> None:
        # Load from a private copy of exactly the bytes we keep: what to_disk later writes is
        # then what was loaded, even if the source directory changes (a run still training)
        # or disappears afterwards.
        unknown = set(files) - set(MODEL_FILES)
        if unknown:
            raise SeqtextError(f"{where}: unexpected files in a seqtext component: {', '.join(sorted(unknown))}")
        with tempfile.TemporaryDirectory(prefix="seqtext-spacy-") as tmp:
            for name, data in files.items():
                Path(tmp, name).write_bytes(data)
            try:
                model = load(tmp, _torch_device(self.device), task=self.task_name, bf16=self.bf16)
            except SeqtextError as e:
                raise SeqtextError(str(e).replace(tmp, where)) from None
        self._model, self._files = model, dict(files)
        self._loaded()

    def _loaded(self) -> None:
        """Hook for subclasses: the model changed."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels, read without loading it: spaCy reads labels for a pipeline's
        meta.json before restoring the component, and the configured path may be gone then."""
        if self._model is not None:
            meta = self._model.task.meta
        else:
            try:
                meta = read_json(Path(self.model_path) / META_FILE) if self.model_path else {}
            except (OSError, ValueError, SeqtextError):
                meta = {}
        return tuple(meta.get(self.labels_key) or ())

    # ------------------------------------------------------------------ processing
    def _in_worker_process(self) -> None:
        """In a process that inherited this component (``nlp.pipe(n_process=N)`` workers, forked
        or spawned), run torch on one thread: a forked child that reuses the OpenMP thread pool
        its parent already ran hangs, and N workers with a thread per core each oversubscribe."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            torch.set_num_threads(1)

    def __call__(self, doc: Doc) -> Doc:
        """Annotate one doc."""
        self._in_worker_process()
        self._process([doc])
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Annotate docs in batches of ``batch_size`` (one batched model run per batch).

        Inside a batch the model itself runs ``batch_size`` (component config) sequences at a
        time, sorted by length so little compute goes to padding.
        """
        self._check_batch_size(batch_size, "pipe batch_size")
        self._in_worker_process()
        for docs in minibatch(stream, size=batch_size):
            self._process(docs)
            yield from docs

    def _process(self, docs: list[Doc]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ serialization
    def to_disk(self, path: str | os.PathLike, *, exclude: Iterable[str] = ()) -> None:
        """Write the seqtext model files (text + safetensors, atomically) into ``path``."""
        self.seqtext_model  # noqa: B018 — make sure the files are loaded
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, data in self._files.items():
            with atomic_write(path / name, "wb") as f:
                f.write(data)
        for name in MODEL_FILES:  # a stale tokenizer.model from an earlier save must not linger
            if name not in self._files and (path / name).is_file():
                (path / name).unlink()

    def from_disk(self, path: str | os.PathLike, *, exclude: Iterable[str] = ()) -> "_SeqtextPipe":
        """Load the model files that :meth:`to_disk` wrote."""
        return self.load_model(path, run=False)

    def to_bytes(self, *, exclude: Iterable[str] = ()) -> bytes:
        self.seqtext_model  # noqa: B018
        return srsly.msgpack_dumps({"seqtext_files": self._files})

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = ()) -> "_SeqtextPipe":
        msg = srsly.msgpack_loads(bytes_data)
        if not isinstance(msg, dict) or not isinstance(msg.get("seqtext_files"), dict):
            raise SeqtextError(f"{self.factory}: not the bytes of a seqtext component")
        self._set_files(msg["seqtext_files"], f"{self.factory} bytes")
        return self


class SeqtextNER(_SeqtextPipe):
    """Sets ``doc.ents`` with a trained seqtext tagger (``task = "tag"``).

    Entities already on the doc (e.g. from an ``entity_ruler``) are kept; predicted entities
    that overlap them or a blocked token are dropped, as spaCy's own ``ner`` does with preset
    entities.
    """

    task_name = "tag"
    factory = "seqtext_ner"
    labels_key = "types"  # entity types (LOC, MISC, ORG, PER), the model's meta.json key

    def __init__(self, nlp: Language, name: str, model: str = "", batch_size: int = 64, device: str = "auto",
                 tokenization: str = "doc", per_sentence: bool = True, bf16: bool = False):
        super().__init__(nlp, name, model, batch_size, device, bf16)
        if tokenization not in ("doc", "model"):
            raise SeqtextError(f"seqtext_ner: tokenization must be 'doc' or 'model', got {tokenization!r}")
        self.tokenization = tokenization
        self.per_sentence = per_sentence
        self._tokenizer = None

    def _loaded(self) -> None:
        self._tokenizer = None

    def _model_tokenizer(self):
        """The tokenizer ``seqtext predict`` uses for raw text: spacy.blank([tokenizer] lang)."""
        if self._tokenizer is None:
            import spacy

            lang = self.seqtext_model.recipe.tokenizer.lang
            try:
                self._tokenizer = spacy.blank(lang).tokenizer
            except (ImportError, OSError, ValueError) as e:  # spaCy raises ImportError for unknown codes
                raise SeqtextError(f"seqtext_ner: spaCy has no language {lang!r} ({e})") from None
        return self._tokenizer

    def _process(self, docs: list[Doc]) -> None:
        m = self.seqtext_model
        units, owners = sentence_units(docs, self.per_sentence)  # as `seqtext predict` splits text
        spans: list[list[Span]] = [[] for _ in docs]
        if self.tokenization == "doc":
            # The doc's own tokens are the model's words (whitespace tokens are not words); tags
            # map back by token index, so no token is ever dropped or split.
            index = [[t.i for t in unit if not t.is_space] for unit in units]
            words = [[docs[o][i].text for i in idx] for o, idx in zip(owners, index)]
            # documents: a model trained with [data] context_tokens sees a doc's sentences together
            with m.precision():
                tagged = m.task.tag_tokens(m.net, words, m.device, self.batch_size, documents=owners)
            for owner, idx, tags in zip(owners, index, tagged):
                spans[owner] += [Span(docs[owner], idx[s], idx[e - 1] + 1, label=typ)
                                 for typ, s, e in entities(tags, TRAIN_SCHEME)]
        else:
            # tokenization = "model": tag the model's own tokenization of the text (as `seqtext
            # predict` does), then align entities to the doc's tokens by character offsets,
            # widening to whole doc tokens.
            toks = [[t for t in d if not t.is_space] for d in self._model_tokenizer().pipe([u.text for u in units])]
            with m.precision():
                tagged = m.task.tag_tokens(m.net, [[t.text for t in ts] for ts in toks], m.device,
                                           self.batch_size, documents=owners)
            for owner, unit, ts, tags in zip(owners, units, toks, tagged):
                for typ, s, e in entities(tags, TRAIN_SCHEME):
                    start = unit.start_char + ts[s].idx
                    end = unit.start_char + ts[e - 1].idx + len(ts[e - 1].text)
                    span = docs[owner].char_span(start, end, label=typ, alignment_mode="expand")
                    if span is not None:
                        spans[owner].append(span)
        for doc, found in zip(docs, spans):
            # filter_spans: with "model" tokenization two entities can widen into one doc token
            _set_ents(doc, filter_spans(found))

    def score(self, examples: Iterable[Example], **kwargs: Any) -> dict[str, Any]:
        """Entity P/R/F (``ents_p``, ``ents_r``, ``ents_f``, ``ents_per_type``), as spaCy's ``ner``."""
        return get_ner_prf(examples, **kwargs)


class SeqtextTextCat(_SeqtextPipe):
    """Sets ``doc.cats`` (label → probability) with a trained seqtext classifier (``task = "classify"``).

    The classifier reads ``doc.text`` with its own tokenizer, exactly as ``seqtext predict`` does.
    """

    task_name = "classify"
    factory = "seqtext_textcat"
    labels_key = "labels"

    def _process(self, docs: list[Doc]) -> None:
        m = self.seqtext_model
        with m.precision():
            results = m.task.predict(m.net, [doc.text for doc in docs], m.device, batch_size=self.batch_size)
        for doc, result in zip(docs, results):
            for label, p in result["probs"].items():
                doc.cats[label] = float(p)

    def score(self, examples: Iterable[Example], **kwargs: Any) -> dict[str, Any]:
        """``cats_score`` and friends, as spaCy's single-label ``textcat``."""
        return Scorer.score_cats(examples, "cats", labels=self.labels, multi_label=False, **kwargs)


def _set_ents(doc: Doc, spans: list[Span]) -> None:
    """Add predicted entities to the doc's own: those that overlap a preset entity or a blocked
    token (``doc.set_ents(..., blocked=...)``: never an entity) are dropped, as spaCy's ner does."""
    existing = list(doc.ents)
    blocked = [t.i for t in doc if t.ent_iob == 3 and t.ent_type == 0]
    if existing or blocked:
        taken = np.zeros(len(doc), dtype=bool)
        taken[blocked] = True
        for e in existing:
            taken[e.start:e.end] = True
        spans = [s for s in spans if not taken[s.start:s.end].any()]
    doc.set_ents(sorted([*existing, *spans], key=lambda s: s.start), blocked=[doc[i:i + 1] for i in blocked],
                 default="outside")


@Language.factory(
    "seqtext_ner",
    default_config={"model": "", "batch_size": 64, "device": "auto", "tokenization": "doc", "per_sentence": True,
                    "bf16": False},
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_seqtext_ner(nlp: Language, name: str, model: str, batch_size: int, device: str,
                     tokenization: str, per_sentence: bool, bf16: bool) -> SeqtextNER:
    """A seqtext NER tagger as a spaCy component.

    Args:
        model: seqtext ``tag`` model directory (e.g. ``runs/conll2003_ner``). Only read when the
            component first runs; a saved pipeline restores the model from its own directory,
            so ``""`` is fine there.
        batch_size: sentences per forward pass inside the model (32–256 on CPU; 64 default).
        device: ``auto`` (CUDA when spaCy was told to use the GPU), ``cpu``, ``cuda`` or ``cuda:N``.
        tokenization: ``doc`` (default): the doc's tokens are the model's words; exact and
            what the model was trained on when docs come from CoNLL-style pre-split tokens.
            ``model``: re-tokenize ``doc.text`` with the model's own tokenizer
            (``spacy.blank([tokenizer] lang)``) and align entities to the doc's tokens by
            character offsets; use it when the pipeline's tokenizer splits differently.
        per_sentence: tag each sentence as its own sequence, as the tagger was trained on
            sentences, and as ``seqtext predict`` does: the doc's boundaries where a
            ``sentencizer``, ``senter`` or parser set them, else spaCy's rule-based
            sentencizer's and blank lines (not written to the doc). Recommended (True): more accurate than
            whole docs, and much faster on long ones. A model trained with ``[data]
            context_tokens`` still sees a doc's neighbouring sentences together, as in its
            training. False: each doc is one sequence.
        bf16: run the model under bf16 autocast. Where bf16 is native (CUDA, CPUs with
            AVX512-BF16 or AMX) the CoNLL ensemble ran at 1.7x the words/s with the same F1 to
            0.02 (README). Slower on other AVX-512 CPUs (seqtext warns); on CPUs that cannot run
            bf16 (AVX2 only) it warns and runs in fp32. Default False (fp32).
    """
    return SeqtextNER(nlp, name, model, batch_size, device, tokenization, per_sentence, bf16)


@Language.factory(
    "seqtext_textcat",
    default_config={"model": "", "batch_size": 64, "device": "auto", "bf16": False},
    assigns=["doc.cats"],
    default_score_weights={"cats_score": 1.0},
)
def make_seqtext_textcat(nlp: Language, name: str, model: str, batch_size: int, device: str,
                         bf16: bool) -> SeqtextTextCat:
    """A seqtext text classifier as a spaCy component (``doc.cats`` = label probabilities).

    Args:
        model: seqtext ``classify`` model directory (e.g. ``runs/imdb_sentiment``); see
            :func:`make_seqtext_ner` for when it is read.
        batch_size: texts per forward pass inside the model (32–128 on CPU).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (as for ``seqtext_ner``).
        bf16: bf16 autocast, as for ``seqtext_ner`` (probabilities still come out in fp32).
    """
    return SeqtextTextCat(nlp, name, model, batch_size, device, bf16)


# ====================================================================== export

def _new_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """A new empty directory in ``parent`` with the umask's permissions (mkdtemp's are 0700, and
    this one is renamed into place as the pipeline)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def export_pipeline(model_dir: str | os.PathLike, out_dir: str | os.PathLike, lang: str | None = None,
                    force: bool = False) -> Path:
    """Write a spaCy pipeline directory holding a seqtext model; ``spacy.load(out_dir)`` opens it.

    Args:
        model_dir: a seqtext ``tag`` (→ ``seqtext_ner``) or ``classify`` (→ ``seqtext_textcat``) model.
        out_dir: the pipeline directory to write; written beside it first, then renamed into place.
        lang: spaCy language of the pipeline's tokenizer (default: the model's ``[tokenizer] lang``).
        force: replace an existing non-empty ``out_dir``.
    """
    import spacy

    path = check_model_dir(model_dir)
    task = read_json(inside(path, META_FILE)).get("task")
    if task not in COMPONENTS:
        raise SeqtextError(f"{model_dir}: is a {task!r} model; export-spacy needs a 'tag' or 'classify' model "
                           f"(a language model's encoder goes into spaCy configs as seqtext.BiLSTMEncoder.v1 "
                           f"with init_from)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SeqtextError(f"{out}: exists and is not a directory")
    if out.resolve() == path.resolve() or out.resolve() in path.resolve().parents:
        raise SeqtextError(f"{out}: holds the model {model_dir} being exported; choose another OUT_DIR")
    if path.resolve() in out.resolve().parents:
        raise SeqtextError(f"{out}: is inside the model {model_dir} being exported; choose another OUT_DIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SeqtextError(f"{out}: exists and is not empty; use --force to replace it")
    recipe = load_recipe(inside(path, RECIPE_FILE))
    lang = lang or recipe.tokenizer.lang
    try:
        nlp = spacy.blank(lang)
    except (ImportError, OSError, ValueError) as e:
        raise SeqtextError(f"--lang: spaCy has no language {lang!r} ({str(e).splitlines()[0]})") from None
    # Added with an empty "model" and loaded afterwards, so the saved config.cfg does not point
    # back at model_dir: the pipeline directory is self-contained.
    component = nlp.add_pipe(COMPONENTS[task])
    component.load_model(path)
    nlp.meta["name"] = re.sub(r"[^a-z0-9_]+", "_", f"seqtext_{recipe.name}".lower())
    nlp.meta["description"] = f"seqtext {task} model '{recipe.name}' as a spaCy {COMPONENTS[task]} component"
    out = out.resolve()  # "." has no name and is its own parent: the temporary folders go beside it
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_dir(out.parent, f".{out.name}.", ".tmp")
    old = None
    try:
        nlp.to_disk(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old)  # onto an empty directory: allowed by rename(2)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return Path(out_dir)


# ====================================================================== tok2vec architecture

class _TokenEncoder(nn.Module):
    """seqtext Embedder + Encoder, plus the ``spec`` that says how spaCy tokens become ids.

    ``spec`` is plain JSON (sizes, id scheme, and the source run's vocabulary and characters
    when initialised from one); it travels inside the safetensors metadata, so a saved spaCy
    pipeline rebuilds this module without the source run.
    """

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.embedder = Embedder(spec["rows"], spec["dim"], spec["dropout"], num_chars=spec["num_chars"],
                                 char_dim=spec["char_dim"] or 30, char_filters=spec["char_filters"] or 50,
                                 casing=spec["casing"])
        self.encoder = Encoder(self.embedder.output_dim, spec["width"], spec["depth"], bidirectional=True,
                               joint=spec["joint"], dropout=spec["dropout"])
        self._stoi = {t: i for i, t in enumerate(spec["vocab"])} if spec.get("vocab") else None
        self._chars = char_index(spec.get("chars") or "")

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, chars: torch.Tensor | None,
                casing: torch.Tensor | None) -> torch.Tensor:
        out, _ = self.encoder(self.embedder(ids, chars, casing), lengths)
        return out

    def featurize(self, docs: list[Doc]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Padded ``ids [B, T]``, ``lengths [B]``, ``chars [B, T, L]`` and ``casing [B, T]`` for docs."""

        spec = self.spec
        lengths = np.asarray([len(doc) for doc in docs], dtype=np.int64)
        B, T = len(docs), max(1, int(lengths.max(initial=0)))  # T ≥ 1: an all-empty batch still runs
        ids = np.zeros((B, T), dtype=np.int64)
        casing = np.zeros((B, T), dtype=np.int64) if spec["casing"] else None
        words = [[t.text for t in doc] for doc in docs]
        if self._stoi is None:
            # Hashed ids: spaCy's 64-bit LOWER hash into rows 1..rows-1 (row 0 is padding).
            buckets = np.uint64(spec["rows"] - 1)
            for b, doc in enumerate(docs):
                if len(doc):
                    ids[b, : len(doc)] = (doc.to_array(LOWER) % buckets).astype(np.int64) + 1
        else:
            get, unk = self._stoi.get, Vocab.unk_id
            lower, zero = spec["lowercase"], spec["zero_digits"]
            for b, ws in enumerate(words):
                ids[b, : len(ws)] = [get(word_key(w, lower, zero), unk) for w in ws]
        if casing is not None:
            for b, ws in enumerate(words):
                casing[b, : len(ws)] = [casing_id(w) for w in ws]
        chars = None
        if spec["num_chars"]:
            clipped = [[clip_word(w) for w in ws] for ws in words]
            width = max([1, *(len(w) for ws in clipped for w in ws)])
            chars = np.zeros((B, T, width), dtype=np.int64)
            get = self._chars.get
            for b, ws in enumerate(clipped):
                for t, w in enumerate(ws):
                    chars[b, t, : len(w)] = [get(c, UNK_CHAR) for c in w]
        return ids, lengths, chars, casing


def _spec(width: int, depth: int, rows: int, dim: int, dropout: float, casing: bool) -> dict[str, Any]:
    return {"version": 1, "rows": rows, "dim": dim, "num_chars": 0, "char_dim": 0, "char_filters": 0,
            "casing": casing, "width": width, "depth": depth, "joint": True, "dropout": dropout,
            "vocab": None, "chars": "", "lowercase": True, "zero_digits": False, "source": ""}


def _spec_from_run(directory: str, width: int, depth: int, dropout: float) -> tuple[dict[str, Any], dict]:
    """Spec and initial weights (embedder + encoder) from a seqtext model directory."""
    where = f"seqtext.BiLSTMEncoder.v1: init_from {directory}"
    try:
        src = load(directory, "cpu")
    except SeqtextError as e:
        raise SeqtextError(f"seqtext.BiLSTMEncoder.v1: init_from: {e}") from None
    if src.recipe.tokenizer.kind == "sentencepiece":
        raise SeqtextError(f"{where}: its tokenizer is sentencepiece (subwords); spaCy tokens need a word-level "
                           "vocabulary (tokenizer kind regex, whitespace or spacy)")
    refuse_ensemble(where, src.recipe, directory)
    emb, enc = src.net.embedder, src.net.encoder
    if not enc.bidirectional:
        raise SeqtextError(f"{where}: its encoder is unidirectional; a BiLSTM encoder needs bidirectional = true")
    if (enc.hidden_size, enc.layers) != (width, depth):
        raise SeqtextError(f"{where}: the run has hidden_size {enc.hidden_size} and {enc.layers} layer(s); "
                           f"set width = {enc.hidden_size} and depth = {enc.layers} (got {width}, {depth})")
    chars = emb.chars
    spec = {
        **_spec(width, depth, emb.words.num_embeddings, emb.words.embedding_dim, dropout, emb.casing is not None),
        "num_chars": chars.embedding.num_embeddings if chars is not None else 0,
        "char_dim": chars.embedding.embedding_dim if chars is not None else 0,
        "char_filters": chars.output_dim if chars is not None else 0,
        "joint": enc.joint,
        "vocab": list(src.task.vocab.itos),
        "chars": src.task.meta.get("chars", "") if chars is not None else "",
        "lowercase": src.recipe.tokenizer.lowercase,
        # the tagger looks words up with digits as 0 (TagTask.word_key)
        "zero_digits": src.task.name == "tag" and src.task.meta.get("zero_digits", True),
        "source": str(directory),
    }
    state = {f"embedder.{k}": v for k, v in emb.state_dict().items()}
    state.update({f"encoder.{k}": v for k, v in enc.state_dict().items()})
    return spec, state


def _serialize(module: _TokenEncoder) -> bytes:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save(tensors, metadata={"seqtext_spec": json.dumps(module.spec)})


def _deserialize(module: _TokenEncoder, data: bytes, device: torch.device) -> _TokenEncoder:
    from safetensors.torch import load as load_bytes

    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    size = int.from_bytes(data[:8], "little")
    try:
        meta = json.loads(data[8: 8 + size]).get("__metadata__") or {}
        spec = json.loads(meta["seqtext_spec"])
    except (ValueError, KeyError) as e:
        raise SeqtextError(f"seqtext.BiLSTMEncoder.v1: not a saved seqtext encoder ({e})") from None
    new = _TokenEncoder(spec)
    new.load_state_dict(load_bytes(bytes(data)))
    return new.to(device)


def _docs_to_torch(model: Model, docs: list[Doc], is_train: bool):
    shim = model.shims[0]
    device = shim.device
    ids, lengths, chars, casing = shim._model.featurize(docs)

    def to(a):
        return None if a is None else torch.from_numpy(a).to(device)

    # lengths stay on the CPU, like seqtext's Batch; docs get no gradient.
    return ArgsKwargs(args=(to(ids), torch.from_numpy(lengths), to(chars), to(casing)), kwargs={}), lambda d: []


def _torch_to_docs(model: Model, docs_and_output, is_train: bool):
    docs, Ytorch = docs_and_output
    lengths = [len(doc) for doc in docs]
    Y = torch2xp(Ytorch)
    out = [Y[i, :n] for i, n in enumerate(lengths)]

    def backprop(dY: list[Floats2d]) -> ArgsKwargs:
        dYtorch = torch.zeros_like(Ytorch)
        for i, (d, n) in enumerate(zip(dY, lengths)):
            if n:
                dYtorch[i, :n] = xp2torch(d, device=Ytorch.device)
        return ArgsKwargs(args=(Ytorch,), kwargs={"grad_tensors": dYtorch})

    return out, backprop


def _forward(model: Model, docs: list[Doc], is_train: bool):
    if not docs:
        return [], lambda dY: []
    return model.layers[0](docs, is_train)


def _init(model: Model, X: Any = None, Y: Any = None) -> Model:
    """Load ``init_from`` at initialization (``nlp.initialize`` / ``spacy train``), never at load.

    ``spacy.load`` does not initialize models, it deserializes them; so a trained pipeline
    loads without the init_from run.
    """
    source = model.attrs["init_from"]
    if source:
        spec, state = _spec_from_run(source, model.attrs["width"], model.attrs["depth"], model.attrs["dropout"])
        module = _TokenEncoder(spec)
        module.load_state_dict(state)
        shim = model.layers[0].shims[0]
        shim._model = module.to(shim.device)
    return model


@registry.architectures("seqtext.BiLSTMEncoder.v1")
def BiLSTMEncoder(width: int = 128, depth: int = 1, embed_size: int = 10000, embed_dim: int = 0,
                  dropout: float = 0.1, casing: bool = True,
                  init_from: str | None = None) -> Model[list[Doc], list[Floats2d]]:
    """seqtext's embedding + padding-invariant BiLSTM as a spaCy token-to-vector layer.

    Output: one ``(len(doc), 2 * width)`` float32 array per doc (``nO = 2 * width``). Use it as
    ``[components.ner.model.tok2vec]``, ``[components.textcat.model.tok2vec]`` or the model of a
    shared ``tok2vec`` component. Weights are saved with safetensors.

    Args:
        width: LSTM units per direction; output width is ``2 * width``. 64–256 on CPU (128
            default); must equal the source's ``hidden_size`` with ``init_from``.
        depth: stacked BiLSTM layers (1–2); must equal the source's ``layers`` with ``init_from``.
        embed_size: rows of the hashed word table: each token's lowercase form is hashed
            (spaCy's LOWER hash) into ``embed_size - 1`` buckets. 5000–50000 (10000 default;
            more rows = fewer collisions). Ignored with ``init_from`` (the source's vocabulary
            sets the rows).
        embed_dim: word vector size; 0 (default) = ``width``. Ignored with ``init_from``.
        dropout: locked dropout on the token features and between LSTM layers (0.1–0.3); with
            ``init_from`` it replaces the source run's dropout rates.
        casing: add seqtext's 8-dim casing feature (lower/upper/title/digit/...), which gives
            case back to lowercase hashing; recommended for NER. Ignored with ``init_from``
            (the source run's own features are used).
        init_from: optional seqtext model directory (an ``lm``, ``tag`` or ``classify`` run with
            a bidirectional encoder and a word-level tokenizer) whose embedding (words, plus
            char CNN and casing for a tagger) and encoder weights initialise this layer when
            the pipeline is initialized (``spacy train``); tokens are then looked up in that
            run's ``vocab.txt`` (its lowercasing / digit rules) instead of hashed. A trained
            pipeline stores everything it needs; the directory is not read by ``spacy.load``.
    """
    sizes = {"width": width, "depth": depth, "embed_size": embed_size, "embed_dim": embed_dim}
    if bad := [k for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool)]:
        raise SeqtextError(f"seqtext.BiLSTMEncoder.v1: {bad[0]} must be an integer, got {sizes[bad[0]]!r}")
    if width < 1 or depth < 1:
        raise SeqtextError(f"seqtext.BiLSTMEncoder.v1: width and depth must be ≥ 1, got {width}, {depth}")
    if embed_size < 2 or embed_dim < 0:
        raise SeqtextError(f"seqtext.BiLSTMEncoder.v1: embed_size must be ≥ 2 and embed_dim ≥ 0, got "
                           f"{embed_size}, {embed_dim}")
    if not 0 <= dropout < 1:
        raise SeqtextError(f"seqtext.BiLSTMEncoder.v1: dropout must be in [0, 1), got {dropout}")
    module = _TokenEncoder(_spec(width, depth, embed_size, embed_dim or width, dropout, casing))
    wrapped = PyTorchWrapper_v3(module, convert_inputs=_docs_to_torch, convert_outputs=_torch_to_docs,
                                serialize_model=_serialize, deserialize_model=_deserialize)
    return Model("seqtext_bilstm", _forward, init=_init, layers=[wrapped], dims={"nO": 2 * width},
                 attrs={"init_from": init_from or "", "width": width, "depth": depth, "dropout": dropout})
