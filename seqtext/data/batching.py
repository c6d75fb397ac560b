"""Turning tokenized splits into tensors.

Token ids stay in the datasets' memory-mapped Arrow tables: :func:`ragged_column` gives a
zero-copy (flat values, offsets) view of a list column, so batching never copies a split
into Python lists. Classification/tagging batches are length-bucketed so padding is small;
the LM reads contiguous (batch × bptt) windows of one token stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Ragged:
    """A list column as one flat array plus offsets (row i = values[offsets[i]:offsets[i+1]])."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]: self.offsets[i + 1]]


def ragged_column(dataset, column: str) -> Ragged:
    """Zero-copy view of ``dataset[column]`` (a list<int> column) as numpy arrays."""
    import pyarrow as pa

    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    array = dataset.data.column(column).combine_chunks()
    if isinstance(array, pa.ChunkedArray):  # empty table
        array = pa.array([], type=array.type)
    offsets = array.offsets.to_numpy(zero_copy_only=False)
    values = array.values.to_numpy(zero_copy_only=False)
    start = offsets[0]
    return Ragged(values=values, offsets=offsets - start if start else offsets)


def token_stream(dataset, column: str = "ids") -> np.ndarray:
    """All rows of a list<int> column as one int32 token stream, memory-mapped from disk.

    Written once (atomically) beside the dataset's Arrow cache file, chunk by chunk, then
    opened with ``np.memmap``: peak memory does not grow with the corpus. In-memory datasets
    (no cache file) fall back to a flat numpy array.
    """
    import os

    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    files = dataset.cache_files
    if not files:
        return ragged_column(dataset, column).values.astype(np.int32)
    path = f"{files[0]['filename']}.{column}.int32"
    if not os.path.exists(path):
        from ..io import atomic_write

        with atomic_write(path, "wb") as f:
            for chunk in dataset.data.column(column).chunks:
                f.write(chunk.flatten().to_numpy(zero_copy_only=False).astype(np.int32).tobytes())
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=np.int32)
    return np.memmap(path, dtype=np.int32, mode="r")


@dataclass
class Batch:
    """A padded batch. ``mask[b, t]`` is True for real tokens; padding is always at the end."""

    ids: torch.Tensor  # [B, T] long
    lengths: torch.Tensor  # [B] long (CPU)
    mask: torch.Tensor  # [B, T] bool
    targets: torch.Tensor | None = None  # classify [B]; tag [B, T]; lm [B, T]
    chars: torch.Tensor | None = None  # tag: [B, T, L] char ids
    casing: torch.Tensor | None = None  # tag: [B, T]
    index: np.ndarray | None = None  # dataset rows in this batch (to put predictions back in order)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device) -> Batch:
        def move(t):
            return t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t

        return Batch(move(self.ids), self.lengths, move(self.mask), move(self.targets), move(self.chars),
                     move(self.casing), self.index)


def pad(rows: list[np.ndarray], pad_id: int = 0, dtype=torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), max(int(lengths.max()), 1) if len(rows) else 1), pad_id, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.from_numpy(np.array(r, dtype=np.int64))
    return out, lengths


def bucket_batches(lengths: np.ndarray, batch_size: int, batch_tokens: int = 0, shuffle: bool = True,
                   seed: int = 0, pool: int = 50) -> list[np.ndarray]:
    """Group row indices into batches of similar length.

    Rows are shuffled (with ``seed``), cut into pools of ``pool`` batches, sorted by length
    inside each pool and split; the batch order is then shuffled again. Without shuffling,
    rows are simply sorted by length (fastest for evaluation). ``batch_tokens`` caps the
    padded size B × T_max instead of the row count.
    """
    rng = np.random.default_rng(seed)
    n = len(lengths)
    if shuffle:
        order = rng.permutation(n)
        pools = [order[i: i + batch_size * pool] for i in range(0, n, batch_size * pool)]
        order = np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in pools]) if n else order
    else:
        order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < n:
        if batch_tokens:
            longest = max(int(lengths[order[start]]), 1)
            size = max(1, min(batch_tokens // longest, n - start))
        else:
            size = batch_size
        batches.append(order[start: start + size])
        start += size
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def lm_stream_batches(stream: np.ndarray, batch_size: int, bptt: int, random_bptt: bool = False,
                      seed: int = 0, rank: int = 0, world: int = 1):
    """Yield (inputs [B, L], targets [B, L]) windows of a token stream for truncated BPTT.

    The stream is cut into ``batch_size × world`` equal columns; this rank reads its own
    ``batch_size`` of them, so hidden state carries across consecutive windows of the same
    column. With ``random_bptt`` the window length varies (AWD-LSTM: bptt, or bptt/2 with
    p=0.05, then N(·, 5)), so the model does not always see the same segment boundaries.
    """
    columns = batch_size * world
    n = (len(stream) - 1) // columns
    if n < 2:
        raise ValueError("token stream shorter than one batch")
    # Read each window straight from the (possibly memory-mapped) stream: no whole-stream copy,
    # so memory stays flat however large the corpus is.
    starts = (np.arange(rank * batch_size, (rank + 1) * batch_size) * n)[:, None]
    rng = np.random.default_rng(seed)
    i = 0
    while i < n - 1:
        length = bptt
        if random_bptt:
            base = bptt if rng.random() < 0.95 else bptt / 2
            length = max(5, int(rng.normal(base, 5)))
        length = min(length, n - i)
        window = torch.from_numpy(np.asarray(stream[starts + i + np.arange(length + 1)], dtype=np.int64))
        yield window[:, :-1], window[:, 1:]
        i += length
