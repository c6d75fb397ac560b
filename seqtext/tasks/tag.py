"""Named-entity tagging: word + char-CNN + casing features → BiLSTM → per-token scores → CRF.

Data are pre-split sentences: a token-list column and a tag-list column (``[data] tokens_column``
/ ``tags_column``), from CoNLL column files or hub datasets whose tags may be integers with
``ClassLabel`` names. Tags are read in the data's own scheme (``[data] scheme``, or detected on
train), trained in BIOES (its S-/E- tags tell the CRF where single-token and multi-token
entities end), and converted back to the data's scheme for scoring and output, so predictions
are always scored against the dataset's original gold tags.

Word lookup uses a normalized form (lowercased when ``[tokenizer] lowercase``, digits → 0), while
the char CNN and the casing feature see the original token, so case and shape information is
not lost by sharing one embedding row between "Paris", "PARIS" and "paris".

With ``[data] context_tokens`` the examples are runs of consecutive sentences of one document
(documents end at ``-DOCSTART-`` rows; :class:`PackedSplit`), so the encoder reads a headline or
a table row together with its neighbours; predictions are cut back into sentences before they
are scored or written.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.batching import Batch
from ..data.conll import DOCSTART
from ..data.tagging import case_problem, convert, detect_scheme, entities, normalize_scheme, split_tag, validate
from ..errors import SeqtextError, warn
from ..nn.chars import clip_word
from ..nn.crf import CRF
from ..nn.embeddings import casing_id
from ..nn.heads import TaggerHead
from .base import Ensemble, Net, Split, Task, eval_order, fingerprint, require_column, row_locator

TRAIN_SCHEME = "BIOES"
PAD_CHAR, UNK_CHAR = 0, 1
MIN_CHAR_COUNT = 2  # rarer train characters share the unknown-char id
_DIGIT = re.compile(r"\d")
CHUNK_SENTENCES = 1000  # predict_conll: sentences held in memory at once


def word_key(token: str, lowercase: bool, zero_digits: bool) -> str:
    """The vocabulary form of a token: lowercased and/or its digits replaced by 0 (shared by the
    tagger and the spaCy tok2vec layer started from a tagger's run)."""
    if lowercase:
        token = token.lower()
    return _DIGIT.sub("0", token) if zero_digits else token


def char_index(chars: str) -> dict[str, int]:
    """Character → id for a run's character list (ids after PAD_CHAR and UNK_CHAR)."""
    return {c: i + 2 for i, c in enumerate(chars)}


def scoring_tag(tag: str) -> str:
    """A tag as seqeval should read it: L-/U- as E-/S-, and a prefix-less tag ``X`` as ``I-X``.

    seqeval splits the prefix off at the first character, so without this BILOU and IO tags
    would be misread; the mapping matches :func:`seqtext.data.tagging.entities`.
    """
    prefix, typ = split_tag(tag)
    if prefix == "O":
        return "O"
    if prefix is None:
        return f"I-{typ}"
    return tag if tag[0] == prefix else f"{prefix}-{typ}"


class TagTask(Task):
    name = "tag"
    metric = "f1"

    # ------------------------------------------------------------------ meta
    @property
    def labels(self) -> list[str]:
        """BIOES training labels in id order (``O`` first)."""
        return self.meta["labels"]

    @property
    def source_scheme(self) -> str:
        """Scheme of the data's own tags: IOB1, IOB2, BIOES or BILOU; predictions are written in it."""
        return self.meta.get("source_scheme", "IOB2")

    @property
    def char_index(self) -> dict[str, int]:
        if getattr(self, "_char_index", None) is None:
            self._char_index = char_index(self.meta.get("chars", ""))
        return self._char_index

    def word_key(self, token: str) -> str:
        """The vocabulary form of a token: lowercased (per the recipe) and digits replaced by 0."""
        return word_key(token, self.recipe.tokenizer.lowercase, self.meta.get("zero_digits", True))

    # ------------------------------------------------------------------ data preparation
    def setup(self, splits: dict, run_dir: Path):
        if self.recipe.tokenizer.kind == "sentencepiece":
            raise SeqtextError(f"{self.recipe.source}: [tokenizer] kind: the tag task reads pre-split tokens and "
                               "tokenizes raw text with spaCy; use kind = \"spacy\"")
        return super().setup(splits, run_dir)

    def tokenize_split(self, ds, split: str):
        """Columns ``tokens`` (vocabulary forms), ``words`` (original tokens) and ``gold`` (tag strings).

        Integer tags with ``ClassLabel`` names (hub datasets) become their names; all other
        columns are dropped.
        """
        d = self.recipe.data
        tok_col, tag_col = d.tokens_column, d.tags_column
        require_column(ds, tok_col, f"{split} data", "a tagger reads token lists from the recipe's [data] "
                       "tokens_column")
        has_tags = tag_col in ds.column_names
        names = _class_names(ds.features.get(tag_col)) if has_tags else None
        word_key = self.word_key
        key = (self.recipe.tokenizer.lowercase, self.meta.get("zero_digits", True), tok_col,
               tag_col if has_tags else None, names)
        where = row_locator(ds, split)

        def fn(batch, indices):
            out: dict[str, list] = {"tokens": [], "words": [], "docstart": []}
            if has_tags:
                out["gold"] = []
            for row, i in enumerate(indices):
                words = batch[tok_col][row]
                if not isinstance(words, list):
                    raise SeqtextError(f"{where(i)}: column {tok_col!r} must hold a list of tokens, "
                                       f"got {type(words).__name__}")
                words = ["" if w is None else str(w) for w in words]
                # Hub copies of CoNLL files keep document breaks as one-token rows; like the CoNLL
                # reader, drop them (they become empty rows, skipped at encoding).
                docstart = words == [DOCSTART]
                if docstart:
                    words = []
                out["docstart"].append(docstart)
                out["words"].append(words)
                out["tokens"].append([word_key(w) for w in words])
                if has_tags:
                    tags = [] if docstart else batch[tag_col][row] or []
                    if not isinstance(tags, list):  # a string's characters are no tags: "O O B-PER" has 9
                        raise SeqtextError(f"{where(i)}: column {tag_col!r} must hold a list of tags, "
                                           f"got {type(tags).__name__}")
                    if len(tags) != len(words):
                        raise SeqtextError(f"{where(i)}: {len(words)} tokens but {len(tags)} tags "
                                           f"(columns {tok_col!r}, {tag_col!r})")
                    out["gold"].append([_tag_name(t, names, where, i) for t in tags])
            return out

        new_fp = fingerprint(getattr(ds, "_fingerprint", ""), "tokenize-tag-docs-2", *key)
        return ds.map(fn, batched=True, batch_size=1000, with_indices=True, num_proc=self._num_proc(ds),
                      desc=f"tokenize {split}", new_fingerprint=new_fp, remove_columns=ds.column_names)

    def missing_targets(self, ds) -> str | None:
        col = self.recipe.data.tags_column
        return None if "gold" in ds.column_names else f"tag column {col!r} ([data] tags_column)"

    def fit_labels(self, train) -> None:
        """Source scheme, BIOES label set and character vocabulary from train (unless loaded)."""
        if "labels" in self.meta:
            return
        if "gold" not in train.column_names:
            raise SeqtextError(f"train data has no tag column {self.recipe.data.tags_column!r}; set [data] "
                               f"tags_column")
        gold = set(map(tuple, train["gold"]))  # the distinct sequences say all that is needed here
        scheme = self.recipe.data.scheme
        if scheme == "auto":
            scheme = detect_scheme(gold)
            # BILOU is read as BIOES; remember it so output files keep the data's L-/U- prefixes.
            if scheme == "BIOES" and any(t[:2] in ("L-", "U-") for tags in gold for t in tags):
                scheme = "BILOU"
        types = sorted({typ for tags in gold for typ, _, _ in entities(tags, scheme)})
        if not types:
            raise SeqtextError("train data: no entities found in the tag column "
                               f"{self.recipe.data.tags_column!r}; is [data] tags_column / tag_index right?")
        chars: Counter = Counter()
        for words in train["words"]:
            chars.update("".join(map(clip_word, words)))
        self.meta.update({
            "labels": ["O"] + [f"{p}-{t}" for t in types for p in "BIES"],
            "types": types,
            "source_scheme": scheme,
            "train_scheme": TRAIN_SCHEME,
            "zero_digits": self.meta.get("zero_digits", True),
            # Most frequent first, ties by code point (deterministic). Characters seen once are
            # left to the unknown-char id, so that id is trained for the unseen ones at test time.
            "chars": "".join(c for c, n in sorted(chars.items(), key=lambda x: (-x[1], x[0]))
                             if n >= MIN_CHAR_COUNT),
        })
        self._char_index = None

    def encode_tokens(self, words: list[str], keys: list[str] | None = None) -> dict[str, list[int]]:
        """Ids for one sentence: word ids, casing ids, concatenated char ids and chars per word.

        Args:
            words: the original tokens.
            keys: their vocabulary forms (computed from ``words`` when not given).
        """
        keys = [self.word_key(w) for w in words] if keys is None else keys
        get, index = self.char_index.get, self.vocab.stoi
        unk = self.vocab.unk_id
        clipped = [clip_word(w) for w in words]
        return {
            "ids": [index.get(k, unk) for k in keys],
            "casing": [casing_id(w) for w in words],
            "char_ids": [get(c, UNK_CHAR) for w in clipped for c in w],
            "char_lens": [len(w) for w in clipped],
        }

    def encode_split(self, ds, split: str) -> Split:
        has_tags = "gold" in ds.column_names
        source = self.source_scheme
        index = {name: i for i, name in enumerate(self.labels)}
        encode = self.encode_tokens
        if has_tags:
            first: dict[str, int] = {}
            gold = ds["gold"]
            issues = validate(gold, source, first)
            if issues:
                shown = ", ".join(f"{k} ×{n} (first in sentence {first[k] + 1})" for k, n in issues.most_common(5))
                more = f" and {len(issues) - 5} more kinds" if len(issues) > 5 else ""
                warn(f"{split} data: {sum(issues.values())} malformed tags for {source}: {shown}{more} "
                     "(read like conlleval does)")
            types = {typ for tags in set(map(tuple, gold)) for typ, _, _ in entities(tags, source)}
            if unseen := sorted(types - set(self.meta["types"])):
                warn(f"{split} data: entity type{'s' if len(unseen) > 1 else ''} {', '.join(unseen)} not in the "
                     "training data: the model never predicts them, so they are scored as missed")

        def fn(batch):
            out: dict[str, list] = {k: [] for k in ("ids", "casing", "char_ids", "char_lens")}
            if has_tags:
                out["target"] = []
            for i, words in enumerate(batch["words"]):
                for k, v in encode(words, batch["tokens"][i]).items():
                    out[k].append(v)
                if has_tags:
                    # Types unseen in training become O: they can never be predicted anyway.
                    out["target"].append([index.get(t, 0) for t in convert(batch["gold"][i], source, TRAIN_SCHEME)])
            return out

        key = (fingerprint(*self.vocab.itos), self.labels, self.meta.get("chars", ""), source, has_tags)
        ds = self._map(ds, fn, f"encode {split}", *key, remove=["tokens"])
        cols = ("ids", "casing", "char_ids", "char_lens") + (("target",) if has_tags else ())
        data = Split(ds, cols)
        empty = data.lengths == 0
        # Documents: a -DOCSTART- row (or an empty row) starts a new one.
        documents = np.cumsum(empty)
        if empty.any():
            # A CRF needs at least one position; empty sentences hold no entities either.
            blank = empty & ~np.asarray(ds["docstart"], dtype=bool)
            if blank.any():
                warn(f"{split} data: skipped {int(blank.sum())} empty sentences")
            keep = np.flatnonzero(~empty)
            data, documents = Split(ds.select(keep), cols), documents[keep]
        if len(data) == 0:
            raise SeqtextError(f"{split} data: no non-empty sentences")
        # context_tokens = 0: every sentence is a run of its own
        return PackedSplit(data, pack_sentences(data.lengths, documents, self.recipe.data.context_tokens))

    # ------------------------------------------------------------------ model
    def build_member(self) -> Net:
        m = self.recipe.model
        extra = {"casing": m.casing}
        if m.char_encoder == "cnn":
            extra.update(num_chars=len(self.meta.get("chars", "")) + 2, char_dim=m.char_dim,
                         char_filters=m.char_filters)
        embedder = self.make_embedder(**extra)
        encoder = self.make_encoder(embedder.output_dim)
        crf = CRF.for_labels(self.labels, TRAIN_SCHEME) if m.crf else None
        head = TaggerHead(encoder.output_size, len(self.labels), self.output_dropout, crf)
        return Net(embedder, encoder, head)

    # ------------------------------------------------------------------ batches
    def collate(self, data: PackedSplit, idx: np.ndarray) -> Batch:
        batch = self.collate_rows([_concat_rows([data.sentence(i) for i in data.groups[g]]) for g in idx])
        batch.index = idx
        return batch

    def collate_rows(self, rows: list[dict]) -> Batch:
        """Pad encoded sentences (dicts of id sequences, see :meth:`encode_tokens`) into a Batch."""
        ids, lengths, mask = self.pad_rows([r["ids"] for r in rows])
        B, T = ids.shape
        casing = np.zeros((B, T), dtype=np.int64)
        width = max([1, *(int(np.max(r["char_lens"])) for r in rows if len(r["char_lens"]))])
        chars = np.zeros((B, T, width), dtype=np.int64)
        targets = np.zeros((B, T), dtype=np.int64) if all("target" in r for r in rows) else None
        for b, r in enumerate(rows):
            n = len(r["ids"])
            casing[b, :n] = r["casing"]
            if targets is not None:
                targets[b, :n] = r["target"]
            c, lens = np.asarray(r["char_ids"]), np.asarray(r["char_lens"])
            if len(c):
                # Scatter the sentence's concatenated chars to (word, position-in-word) cells.
                word = np.repeat(np.arange(n), lens)
                pos = np.arange(len(c)) - np.repeat(np.cumsum(lens) - lens, lens)
                chars[b, word, pos] = c
        return Batch(ids, lengths, mask, None if targets is None else torch.from_numpy(targets),
                     torch.from_numpy(chars), torch.from_numpy(casing))

    # ------------------------------------------------------------------ training / scoring
    def loss(self, net: Net, batch: Batch) -> torch.Tensor:
        batch.ids = self.word_dropout(batch.ids, batch.mask)
        return net.head.loss(self._states(net, batch), batch.mask, batch.targets)

    @staticmethod
    def _states(net: Net, batch: Batch):
        """The encoder's outputs in the form the head takes (:meth:`TaggerHead.emissions`)."""
        outputs = "directions_reversed" if net.head.split_directions else "concat"
        return net.encode(batch, outputs=outputs)[0]

    def emissions(self, net: Net | Ensemble, batch: Batch) -> torch.Tensor:
        """Per-token tag scores ``[B, T, K]`` (before the CRF), in fp32 also under bf16 autocast
        (Viterbi adds them up); an ensemble's mean."""
        members = net.members if isinstance(net, Ensemble) else [net]
        scores = [m.head.emissions(self._states(m, batch), batch.lengths).float() for m in members]
        return scores[0] if len(scores) == 1 else torch.stack(scores).mean(0)

    @torch.inference_mode()
    def decode(self, net: Net | Ensemble, batch: Batch) -> list[list[str]]:
        """Best BIOES tag sequence of each sentence in ``batch``."""
        members = net.members if isinstance(net, Ensemble) else [net]
        head = members[0].head
        mean = CRF.mean_scores([m.head.crf for m in members]) if head.crf is not None and len(members) > 1 else None
        paths = head.decode(self.emissions(net, batch), batch.mask, mean)
        labels = self.labels
        return [[labels[i] for i in path] for path in paths]

    @torch.inference_mode()
    def predict_split(self, net: Net, data: PackedSplit, device, batch_size: int = 64) -> list[list[str]]:
        """Predicted tags in the data's own scheme, one list per sentence in the split's row order."""
        net.eval()
        out: list[list[str]] = [[] for _ in range(len(data.sentences))]
        for i, tags in self._tag_runs(net, data.groups, data.sentences.lengths, data.sentence, device, batch_size):
            out[i] = convert(tags, TRAIN_SCHEME, self.source_scheme)
        return out

    def _tag_runs(self, net: Net, groups: list[np.ndarray], lengths: np.ndarray, sentence, device,
                  batch_size: int) -> Iterator[tuple[int, list[str]]]:
        """Decode runs of sentences (``groups[g]``: sentence indices; ``sentence(i)``: sentence i
        encoded as by :meth:`encode_tokens`; ``lengths``: tokens per sentence), batched by run
        length; yields ``(sentence index, BIOES tags)`` for every sentence of every run."""
        run_lengths = np.asarray([lengths[g].sum() for g in groups], dtype=np.int64)
        for idx in eval_order(run_lengths, batch_size):
            batch = self.collate_rows([_concat_rows([sentence(i) for i in groups[g]]) for g in idx]).to(device)
            for g, tags in zip(idx, self.decode(net, batch)):
                yield from zip(groups[g], _split_tags(tags, lengths[groups[g]]))

    def evaluate(self, net: Net, data: PackedSplit, device, mode: str = "default") -> dict:
        """Entity-level micro P/R/F1 (seqeval), per-type scores and token accuracy.

        Args:
            net, data, device: the model, an encoded split with gold tags, and where to run.
            mode: ``"default"`` (conlleval-compatible: ill-formed chunks are read, not dropped)
                or ``"strict"`` (seqeval strict mode: only well-formed chunks of the scheme count).
        """
        from seqeval.metrics import classification_report

        if "target" not in data.cols:
            raise SeqtextError("evaluation data has no tags "
                               f"(column {self.recipe.data.tags_column!r}; set [data] tags_column)")
        if mode not in ("default", "strict"):
            raise SeqtextError(f"evaluate: mode must be 'default' or 'strict', got {mode!r}")
        gold = getattr(data, "gold", None)
        if gold is None:
            gold = data.gold = data.ds["gold"]
        pred = self.predict_split(net, data, device)
        tokens = sum(len(g) for g in gold)
        correct = sum(p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs))
        y_true, y_pred, kwargs = self._scoring_tags(gold, pred, mode)
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kwargs)
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        types = [k for k in report if not k.endswith(" avg")]
        return {
            "f1": float(micro["f1-score"]),
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "token_accuracy": correct / max(1, tokens),
            "per_type": {t: {"precision": float(report[t]["precision"]), "recall": float(report[t]["recall"]),
                             "f1": float(report[t]["f1-score"]), "support": int(report[t]["support"])}
                         for t in sorted(types)},
            "entities": int(micro["support"]),
            "predicted_entities": sum(len(entities(p, "IOB2")) for p in y_pred),
            "sentences": len(gold),
            "tokens": tokens,
            "mode": mode,
            "scheme": self.source_scheme,
        }

    def _scoring_tags(self, gold: list[list[str]], pred: list[list[str]], mode: str):
        """Gold and predicted tags in the form seqeval reads, plus its keyword arguments."""
        gold = [[scoring_tag(t) for t in tags] for tags in gold]
        pred = [[scoring_tag(t) for t in tags] for tags in pred]
        if mode == "default":
            return gold, pred, {}
        from seqeval.scheme import IOB2, IOBES

        source = normalize_scheme(self.source_scheme)
        if source == "IOB1":
            # seqeval's strict mode has no IOB1; rewrite both sides to IOB2 first (a lossless
            # rewrite for well-formed IOB1, which is the only IOB1 strict mode accepts anyway).
            gold = [convert(t, "IOB1", "IOB2") for t in gold]
            pred = [convert(t, "IOB1", "IOB2") for t in pred]
        scheme = IOBES if source == "BIOES" else IOB2
        allowed = "OBIES" if scheme is IOBES else "OBI"
        # Tags foreign to the scheme would make seqeval raise; as O they simply score no entity.
        gold = [[t if t[0] in allowed else "O" for t in tags] for tags in gold]
        return gold, pred, {"mode": "strict", "scheme": scheme}

    # ------------------------------------------------------------------ prediction
    def _nlp(self):
        if getattr(self, "_spacy", None) is None:
            import spacy

            lang = self.recipe.tokenizer.lang
            try:
                self._spacy = spacy.blank(lang)
            except (ImportError, OSError, ValueError) as e:  # spaCy raises ImportError for unknown codes
                raise SeqtextError(f"[tokenizer] lang: spaCy has no language {lang!r} ({e})") from None
        return self._spacy

    @torch.inference_mode()
    def tag_tokens(self, net: Net, sentences: list[list[str]], device, batch_size: int = 64,
                   documents: list[int] | None = None) -> list[list[str]]:
        """BIOES tags for pre-split sentences, batched by length (empty sentences get []).

        Args:
            net, device: the model and where to run it.
            sentences: token lists.
            batch_size: sequences per forward pass.
            documents: a document id per sentence; with ``[data] context_tokens`` neighbouring
                sentences of one document are tagged together, as in training.
        """
        net.eval()
        rows = [self.encode_tokens(words) for words in sentences]
        lengths = np.asarray([len(r["ids"]) for r in rows], dtype=np.int64)
        out: list[list[str]] = [[] for _ in rows]
        nonempty = np.flatnonzero(lengths > 0)
        context = self.recipe.data.context_tokens if documents is not None else 0
        docs = np.asarray(documents)[nonempty] if documents is not None else np.zeros(len(nonempty))
        groups = [nonempty[g] for g in pack_sentences(lengths[nonempty], docs, context)]
        for i, tags in self._tag_runs(net, groups, lengths, rows.__getitem__, device, batch_size):
            out[i] = tags
        return out

    @torch.inference_mode()
    def predict(self, net: Net, texts: list[str], device, batch_size: int = 64) -> list[dict]:
        """Entities with character offsets for raw texts, tokenized with spaCy's tokenizer and
        tagged sentence by sentence, as the tagger was trained (:func:`doc_sentences`; with ``[data]
        context_tokens`` a text's sentences are read together, as a document's in training).

        Returns one dict per text: ``entities`` (``text``, ``label``, ``start``, ``end``; ``end``
        exclusive), ``tokens`` and ``tags`` (in the training data's scheme).
        """
        docs = list(self._nlp().tokenizer.pipe([t or "" for t in texts], batch_size=256))
        spans, owners = sentence_units(docs)
        units = [[t for t in span if not t.is_space] for span in spans]
        tagged = self.tag_tokens(net, [[t.text for t in u] for u in units], device, batch_size, documents=owners)
        toks: list[list] = [[] for _ in docs]
        ents: list[list] = [[] for _ in docs]
        tags: list[list] = [[] for _ in docs]
        for owner, unit, unit_tags in zip(owners, units, tagged):
            for typ, start, end in entities(unit_tags, TRAIN_SCHEME):
                s, e = unit[start].idx, unit[end - 1].idx + len(unit[end - 1].text)
                ents[owner].append({"text": texts[owner][s:e], "label": typ, "start": s, "end": e})
            toks[owner] += [t.text for t in unit]
            tags[owner] += convert(unit_tags, TRAIN_SCHEME, self.source_scheme)
        return [{"entities": e, "tokens": w, "tags": t} for e, w, t in zip(ents, toks, tags)]

    def predict_conll(self, net: Net, file: str | Path, output: str | Path | None, device,
                      batch_size: int = 64) -> int:
        """Tag a CoNLL file: write its columns plus a predicted tag column (data's scheme).

        The token is read from column ``[data] token_index``; all columns are kept. Sentences
        are processed in chunks, so memory stays bounded for large files. ``output=None``
        writes to stdout. Document breaks are kept as ``-DOCSTART-`` lines, written as CoNLL-2003
        writes them (``-DOCSTART- -X- -X- O`` in a 4-column file) plus the predicted ``O``.
        Returns the number of sentences.

        Args:
            net, device: the model and where to run it.
            file: input column file (tags optional).
            output: output path (written atomically), or None for stdout.
            batch_size: sentences per forward pass.
        """
        from ..data.conll import read_conll, write_conll

        sentences = read_conll(file, token_column=self.recipe.data.token_index, tag_column=None)
        count, document = 0, 0

        def tagged() -> Iterator[tuple[list[list[str]], list[str]]]:
            nonlocal count, document
            for chunk in _chunks(sentences, CHUNK_SENTENCES):
                tags = self.tag_tokens(net, [s.tokens for s in chunk], device, batch_size,
                                       documents=[s.document for s in chunk])
                for s, t in zip(chunk, tags):
                    width = len(s.lines[0])
                    for _ in range(s.document - document):  # each document break: a block of its own
                        yield [[DOCSTART, *["-X-"] * (width - 2), "O"][:width]], ["O"]
                    document = s.document
                    count += 1
                    yield s.lines, convert(t, TRAIN_SCHEME, self.source_scheme)

        if output is not None:
            write_conll(tagged(), output)
        else:
            for lines, tags in tagged():
                sys.stdout.write("".join(" ".join([*cols, tag]) + "\n" for cols, tag in zip(lines, tags)) + "\n")
        return count


class PackedSplit:
    """An encoded tag split whose examples are runs of consecutive sentences of one document
    (``[data] context_tokens``; one sentence per run without it): batches, training and decoding
    see the runs, while scores and outputs stay per sentence (``sentences``, in their row order)."""

    def __init__(self, sentences: Split, groups: list[np.ndarray]):
        self.sentences, self.groups = sentences, groups
        self.ds, self.cols = sentences.ds, sentences.cols
        self.lengths = np.asarray([sentences.lengths[g].sum() for g in groups], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.groups)

    def sentence(self, i: int) -> dict[str, np.ndarray]:
        """Sentence ``i``'s id columns (as :meth:`TagTask.encode_tokens` gives them)."""
        return {k: c.row(i) for k, c in self.cols.items()}


def pack_sentences(lengths: np.ndarray, documents: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Group consecutive sentences of the same document into runs of at most ``max_tokens`` tokens
    (greedily, in order); a longer sentence is a run of its own, so ``max_tokens = 0`` gives one
    run per sentence.

    Args:
        lengths: tokens per sentence.
        documents: a document id per sentence (a run never crosses a change of id).
        max_tokens: the most tokens a run may hold.
    """
    groups: list[np.ndarray] = []
    start, total = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (documents[i] != documents[i - 1] or total + n > max_tokens):
            groups.append(np.arange(start, i))
            start, total = i, 0
        total += int(n)
    if len(lengths):
        groups.append(np.arange(start, len(lengths)))
    return groups


# ---------------------------------------------------------------------- helpers

_SENTENCIZER = None


def doc_sentences(doc) -> list:
    """A spaCy doc's sentences as spans: the boundaries a pipe set (sentencizer, senter, parser),
    else those of spaCy's rule-based ``sentencizer`` (after . ! ? and the like) and blank lines,
    found without setting them on the doc. A tagger trained on sentences tags each one as its own sequence: a
    whole text as one sequence scores lower and decodes slower (the CRF runs token by token)."""
    global _SENTENCIZER
    if not len(doc):
        return []
    if doc.has_annotation("SENT_START"):
        return list(doc.sents)
    if _SENTENCIZER is None:
        from spacy.pipeline import Sentencizer

        _SENTENCIZER = Sentencizer()
    starts = {i for i, first in enumerate(_SENTENCIZER.predict([doc])[0]) if first and i}
    # a blank line ends a sentence too (a heading or list item without a full stop): no entity spans it
    starts.update(t.i + 1 for t in doc[:-1] if t.is_space and t.text.count("\n") >= 2)
    starts = [0, *sorted(starts)]
    return [doc[a:b] for a, b in zip(starts, [*starts[1:], len(doc)])]


def sentence_units(docs, per_sentence: bool = True) -> tuple[list, list[int]]:
    """What a tagger reads as one sequence in spaCy docs, and the index of each one's doc (for
    :meth:`TagTask.tag_tokens`' ``documents``): each sentence (:func:`doc_sentences`), or with
    ``per_sentence=False`` each whole doc; spans of whitespace alone are left out. Shared by
    ``seqtext predict`` and the ``seqtext_ner`` spaCy component, so the two agree."""
    units, owners = [], []
    for i, doc in enumerate(docs):
        for span in doc_sentences(doc) if per_sentence else [doc[:]] if len(doc) else []:
            if any(not t.is_space for t in span):
                units.append(span)
                owners.append(i)
    return units, owners


def _class_names(feature) -> list[str] | None:
    """Names of a ``Sequence(ClassLabel)`` / ``List(ClassLabel)`` feature, else None."""
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def _tag_name(value, names: list[str] | None, where, row: int) -> str:
    """A tag as its name; ``where(row)`` names the row in an error (see base.row_locator)."""
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        value = names[value]
    if isinstance(value, str):
        if problem := case_problem(value):
            raise SeqtextError(f"{where(row)}: {problem}")
        return value
    if value is None:
        raise SeqtextError(f"{where(row)}: missing tag")
    if names is not None:
        raise SeqtextError(f"{where(row)}: tag id {value} out of range (0..{len(names) - 1})")
    if isinstance(value, (int, float)):  # an export of a hub dataset without its tag names
        raise SeqtextError(f"{where(row)}: tag {value!r} is a number, and the data names no tags for "
                           "the numbers (a ClassLabel feature); write the tags as strings (B-PER, I-PER, O, ...)")
    return str(value)


def _concat_rows(rows: list[dict]) -> dict:
    """One encoded sequence from several (see :meth:`TagTask.encode_tokens`), columns concatenated."""
    if len(rows) == 1:
        return rows[0]
    return {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def _split_tags(tags: list[str], lengths: np.ndarray) -> list[list[str]]:
    """Cut one run's tags back into its sentences; an entity left open at a sentence end is
    closed there (and one continuing into the next sentence starts afresh), as gold entities
    never cross sentences."""
    if len(lengths) == 1:
        return [tags]
    out, start = [], 0
    for n in lengths:
        out.append(convert(tags[start: start + int(n)], TRAIN_SCHEME, TRAIN_SCHEME))
        start += int(n)
    return out


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
