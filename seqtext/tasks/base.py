"""What every task shares, and the hooks a task fills in.

A task turns raw splits into id columns (through cached ``datasets.map``), builds the
model (shared :class:`Net`: embedder → encoder → its head), yields training batches,
computes the loss and metrics, and predicts. The trainer, the model directory and the CLI
only talk to this interface.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.batching import (
    Batch,
    Ragged,
    bucket_batches,
    dataset_files,
    iter_batches,
    pad,
    ragged_column,
    release_file_pages,
)
from ..data.sources import carved_from, source_rows
from ..data.tokenizers import Tokenizer, build_tokenizer
from ..data.vocab import Vocab
from ..errors import SeqtextError
from ..nn.embeddings import Embedder
from ..nn.encoder import Encoder
from ..recipe import Recipe


def row_locator(ds, split: str):
    """``where(i)`` names row ``i`` (0-based) of the raw split ``ds`` for an error message, by the
    row of the data it was read from (``"train data, row 7"``): a split sampled by ``max_examples``
    is a selection of its file's rows, and a dev split carved from train is rows of train's."""
    rows, parent = source_rows(ds), carved_from(ds)

    def where(i: int) -> str:
        row = int(rows[i]) + 1 if rows is not None else i + 1
        return f"{split} data (carved from {parent}), {parent} row {row}" if parent else f"{split} data, row {row}"

    return where


def require_column(ds, column: str, what: str, hint: str, kind: str = "", hide: tuple[str, ...] = ()) -> None:
    """One-line error when the dataset ``ds`` lacks ``column``, listing the columns it has (but
    ``hide``: columns seqtext added itself)."""
    if column not in ds.column_names:
        have = [c for c in ds.column_names if c not in hide]
        if any(len(c.split()) > 1 for c in have):  # names that read like text: a .csv/.tsv with no header line
            hint += " (a .csv/.tsv file's first line names its columns: does this file have a header line?)"
        raise SeqtextError(f"{what} has no {kind + ' ' if kind else ''}column {column!r} (columns: "
                           f"{', '.join(have)}); {hint}")


def shown(value, limit: int = 40) -> str:
    """A data value as an error message shows it: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= limit else text[:limit] + '...'}"


def require_text(ds, column: str, split: str) -> None:
    """One-line error, naming the first such row, when the text column holds something other than
    strings (numbers, lists, a JSON file's mix of types); null rows are empty texts."""
    import datasets

    feature = ds.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "null"):
        return
    where = row_locator(ds, split)
    for i, value in enumerate(ds[column]):  # only for a column that is not all strings
        if value is not None and not isinstance(value, str):
            raise SeqtextError(f"{where(i)}: column {column!r} must hold text (a string), got {shown(value)}; "
                               "check [data] text_column")


class Net(nn.Module):
    """Embedder → Encoder → head. One class for every task; ``head`` differs."""

    def __init__(self, embedder: Embedder, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.embedder, self.encoder, self.head = embedder, encoder, head

    def forward(self, fn, *args):
        """Run ``fn(self, *args)``: lets a task's loss go through DistributedDataParallel's forward."""
        return fn(self, *args)

    def encode(self, batch: Batch, state=None, outputs: str = "concat"):
        """Embed and encode a batch: ``(outputs, new_state)``, ``outputs`` as in :meth:`Encoder.forward`."""
        x = self.embedder(batch.ids, batch.chars, batch.casing)
        return self.encoder(x, batch.lengths, state, outputs=outputs)

    def flops_per_token(self) -> float:
        """Forward FLOPs per token of the matmul work (LSTM gates + output layers), for MFU."""
        return self.encoder.flops_per_token() + self.head_flops_per_token()

    def head_flops_per_token(self) -> float:
        return sum(2 * m.in_features * m.out_features for m in self.head.modules() if isinstance(m, nn.Linear))


class Ensemble(nn.Module):
    """Models trained separately (one seed each, ``[model] ensemble``) that predict together; the
    task combines them (tagger: mean tag and CRF transition scores; classifier: mean class
    probabilities). Weights are saved as ``members.<i>.*``."""

    def __init__(self, members: list[Net]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def flops_per_token(self) -> float:
        return sum(m.flops_per_token() for m in self.members)


class Split:
    """An encoded split: the Arrow-backed dataset plus numpy views of its id columns.

    The views are made once per split (not per batch); row ``i`` of column ``c`` is
    ``split.cols[c].row(i)``.
    """

    def __init__(self, ds, ragged: tuple[str, ...] = ("ids",), flat: tuple[str, ...] = ()):
        self.ds = ds
        self.cols: dict[str, Ragged] = {c: ragged_column(ds, c) for c in ragged}
        self.flat: dict[str, np.ndarray] = {c: np.asarray(ds.data.column(c).to_numpy()) for c in flat}
        self.lengths = self.cols["ids"].lengths

    def __len__(self) -> int:
        return len(self.lengths)


def count_tokens(ds, column: str = "tokens", batch_size: int | None = None) -> Counter:
    """Token frequencies of a list<string> column, counted chunk by chunk in Arrow (bounded
    memory: the pages each chunk touched are given back). Equal to updating a Counter with every
    row's tokens; null rows/tokens are skipped."""
    import pyarrow.compute as pc

    counts: Counter = Counter()
    for batch in iter_batches(ds, [column], batch_size):
        flat = pc.list_flatten(batch.column(column)).drop_null()
        if len(flat):
            vc = pc.value_counts(flat)
            counts.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)))
    return counts


def fingerprint(*parts: Any) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]



def eval_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Index batches for scoring/prediction: length-bucketed, unshuffled, at most ``batch_size``
    sequences and about ``batch_size`` × 256 padded tokens each."""
    return bucket_batches(lengths, batch_size, batch_tokens=batch_size * 256, shuffle=False)

class Task:
    """Base class: shared tokenization, vocab and bucketing; subclasses fill in the rest."""

    name = "task"
    metric = "accuracy"  # dev metric that drives early stopping and best-model selection
    higher_is_better = True
    text_column = "text"
    map_batch_size = 1000  # rows per datasets.map batch and per record batch of its Arrow cache file

    def __init__(self, recipe: Recipe, tokenizer: Tokenizer | None = None, vocab: Vocab | None = None,
                 meta: dict | None = None):
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.meta: dict = meta or {}
        self.row_names: dict[str, Any] = {}  # split -> row_locator of the raw split last tokenized

    # ------------------------------------------------------------------ data preparation
    def setup(self, splits: dict, run_dir: Path) -> dict[str, Any]:
        """Fit tokenizer, vocab and labels on train (unless given) and encode every split."""
        if self.tokenizer is None:
            texts = None
            if self.recipe.tokenizer.kind == "sentencepiece":
                col = self.text_column_of(splits["train"], "train")
                texts = (t or "" for b in iter_batches(splits["train"], [col]) for t in b.column(col).to_pylist())
            self.tokenizer = build_tokenizer(self.recipe.tokenizer, run_dir, texts)
        tokenized = {k: self.tokenize_split(ds, k) for k, ds in splits.items()}
        if self.vocab is None:
            self.vocab = self.build_vocab(tokenized["train"])
        self.fit_labels(tokenized["train"])
        for k, ds in tokenized.items():  # found now, not when test is scored after the whole run
            if missing := self.missing_targets(ds):
                where = self.recipe.data.files.get(k) or f"{k} data"
                raise SeqtextError(f"{where}: has no {missing}; training scores every split against its labels")
        return {k: self.encode_split(ds, k) for k, ds in tokenized.items()}

    def missing_targets(self, ds) -> str | None:
        """What a tokenized split lacks to be scored, e.g. "label column 'label' ([data] label_column)"."""
        return None

    def text_column_of(self, ds, split: str) -> str:
        """The column of the raw split ``ds`` that holds its texts, checked to be there and to be text."""
        col = self.recipe.data.text_column
        require_column(ds, col, f"{split} data", "set [data] text_column")
        require_text(ds, col, split)
        return col

    def tokenize_split(self, ds, split: str):
        """Add a ``tokens`` column (cached datasets.map)."""
        col = self.text_column_of(ds, split)
        self.row_names[split] = row_locator(ds, split)
        tok = self.tokenizer

        def fn(batch):
            return {"tokens": tok.tokenize_batch([t or "" for t in batch[col]])}

        return self._map(ds, fn, f"tokenize {split}", tok.fingerprint(), col)

    def build_vocab(self, train) -> Vocab:
        v = self.recipe.vocab
        vocab = Vocab.build(count_tokens(train, "tokens"), v.min_freq, v.max_size)
        if len(vocab) == len(Vocab(()).itos):  # nothing but the specials: every input would look alike
            raise SeqtextError(f"train data: no token occurs at least [vocab] min_freq = {v.min_freq} times, so the "
                               "vocabulary would hold only the special tokens; lower min_freq")
        return vocab

    def fit_labels(self, train) -> None:
        """Learn label names from the training data (classify/tag)."""

    def encode_split(self, ds, split: str):
        raise NotImplementedError

    def _map(self, ds, fn, desc: str, *key, remove=None, arrow: bool = False, with_indices: bool = False):
        """Batched, disk-cached datasets.map with a fingerprint we control (stable across runs).

        With ``arrow`` the function gets each batch as a ``pyarrow.Table`` and returns one (the
        columns to keep or add), so no batch is ever turned into Python objects as a whole. With
        ``with_indices`` it also gets the batch's row positions, as ``datasets.map`` gives them.
        """
        new_fp = fingerprint(getattr(ds, "_fingerprint", ""), desc.split()[0], *key)
        files = dataset_files(ds)

        def run(batch, *indices):
            # give back the input file's pages each batch touched: the map sweeps the whole split
            try:
                return fn(batch, *indices)
            finally:
                release_file_pages(files)

        out = (ds.with_format("arrow") if arrow else ds).map(
            run, batched=True, batch_size=self.map_batch_size, writer_batch_size=self.map_batch_size,
            with_indices=with_indices, num_proc=self._num_proc(ds), desc=desc, new_fingerprint=new_fp,
            remove_columns=remove)
        if arrow:
            out = out.with_format(None)
            out._fingerprint = new_fp  # with_format re-fingerprints; keep the one that names the cache
        release_file_pages(files + dataset_files(out))  # opening the result maps pages around each batch
        return out

    def _num_proc(self, ds):
        n = self.recipe.data.num_proc
        return n if n > 1 and len(ds) >= 2 * n else None

    # ------------------------------------------------------------------ model
    def build_net(self) -> Net | Ensemble:
        """One model, or ``[model] ensemble`` of them (each trained as its own run, see seqtext.train)."""
        n = self.recipe.model.ensemble
        return Ensemble([self.build_member() for _ in range(n)]) if n > 1 else self.build_member()

    def build_member(self) -> Net:
        """One model of this task (an ensemble is several)."""
        raise NotImplementedError

    def make_embedder(self, **extra) -> Embedder:
        m = self.recipe.model
        return Embedder(len(self.vocab), m.embedding_dim, m.embedding_dropout, **extra)

    def make_encoder(self, input_size: int, joint: bool = True) -> Encoder:
        m = self.recipe.model
        return Encoder(input_size, m.hidden_size, m.layers, m.bidirectional, joint=self.meta.get("joint", joint),
                       dropout=m.dropout, weight_dropout=m.weight_dropout)

    @property
    def output_dropout(self) -> float:
        m = self.recipe.model
        return m.dropout if m.output_dropout < 0 else m.output_dropout

    # ------------------------------------------------------------------ training
    def train_batches(self, data, epoch: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        t = self.recipe.train
        # every process takes the same number of steps (or DDP would hang), on batches of similar length
        batches = bucket_batches(data.lengths, t.batch_size, t.batch_tokens, shuffle=True,
                                 seed=t.seed * 1000 + epoch, group=world)
        for i, idx in enumerate(batches):
            if i % world == rank:
                yield self.collate(data, idx)

    def steps_per_epoch(self, data, world: int = 1) -> int:
        t = self.recipe.train
        n = len(bucket_batches(data.lengths, t.batch_size, t.batch_tokens, shuffle=True, seed=0))
        if n < world:
            raise SeqtextError(f"train data: {n} batch{'es' if n != 1 else ''} per epoch, fewer than the {world} "
                               "processes that each need one; lower [train] batch_size (or batch_tokens) or run "
                               "fewer processes")
        return n // world

    def collate(self, data, idx: np.ndarray) -> Batch:
        raise NotImplementedError

    def word_dropout(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.recipe.model.word_dropout
        if p <= 0:
            return ids
        drop = (torch.rand(ids.shape, device=ids.device) < p) & mask
        return ids.masked_fill(drop, Vocab.unk_id)

    def loss(self, net: Net, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, net: Net, data, device) -> dict:
        """Metrics on an encoded split; tasks may add keyword options (Model.evaluate checks them)."""
        raise NotImplementedError

    def dev_metrics(self, net: Net, data, device) -> dict:
        """The dev score that selects weights and stops training; the reported scores come from
        ``evaluate``."""
        return self.evaluate(net, data, device)

    def train_state(self) -> dict[str, torch.Tensor]:
        """Tensors a resumed run needs besides weights and optimizer (the LM's carried state)."""
        return {}

    def load_train_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def reset_epoch(self) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    def pad_rows(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, lengths = pad(rows, self.vocab.pad_id)
        mask = torch.arange(ids.size(1)).unsqueeze(0) < lengths.unsqueeze(1)
        return ids, lengths, mask

    def eval_batches(self, data, batch_size: int = 64) -> Iterator[Batch]:
        for idx in eval_order(data.lengths, batch_size):
            yield self.collate(data, idx)
