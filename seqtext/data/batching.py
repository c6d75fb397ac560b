"""Turning tokenized splits into tensors.

Token ids stay in the datasets' memory-mapped Arrow tables: :func:`ragged_column` gives a
zero-copy (flat values, offsets) view of a list column, so batching never copies a split
into Python lists. Classification/tagging batches are length-bucketed so padding is small;
the LM reads contiguous (batch × bptt) windows of one token stream.

Memory-mapped pages a sweep has read stay in the process's resident set until the kernel
needs the memory, so a pass over a whole memory-mapped corpus would still make peak memory
grow with the corpus. Sweeps therefore go chunk by chunk (:func:`iter_batches`,
:func:`iter_stream`) and give the pages they touched back (:func:`release_file_pages`,
:func:`release_array_pages`): the files' contents stay in the page cache, shared and
reclaimable, and a later access simply maps them again. LM windows, a few tokens from each of
many far-apart places, are read from the stream's file with file reads (:func:`read_rows`).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

CHUNK_ROWS = 10_000  # rows per chunk when sweeping a dataset
CHUNK_TOKENS = 1 << 20  # tokens per chunk when sweeping a token stream (4 MB of int32)
RELEASE_BYTES = 8 << 20  # bytes of a mapped file read between page releases
READ_TOKENS = 4096  # tokens read ahead per stream column by lm_stream_batches (one file read each)
_MADV_DONTNEED = 4  # Linux
_MADVISE: object = False  # libc's madvise once looked up; None where unavailable


def _madvise():
    """libc's madvise, or None where pages cannot be released this way (not Linux, no libc)."""
    global _MADVISE
    if _MADVISE is False:
        try:
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
            _MADVISE = fn if sys.platform.startswith("linux") else None
        except (OSError, AttributeError):
            _MADVISE = None
    return _MADVISE


def release_file_pages(paths: Iterable[str]) -> None:
    """Drop this process's resident pages of every read-only memory mapping of ``paths``.

    ``madvise(MADV_DONTNEED)`` on a read-only file mapping only unmaps pages from this
    process (the data are the file's; the next access faults them back in from the page
    cache), so it is safe for mappings other code (pyarrow) owns. Writable mappings are left
    alone: dropping a private writable page would lose its changes. No-op off Linux.
    """
    madvise = _madvise()
    names = {os.path.realpath(p) for p in paths}
    if madvise is None or not names:
        return
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return
    if not any(n in maps for n in names):
        return
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "w" not in parts[1] and parts[5] in names:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            madvise(start, end - start, _MADV_DONTNEED)


def release_array_pages(array) -> None:
    """Drop the resident pages of a read-only ``np.memmap`` (see :func:`release_file_pages`);
    anything else is left alone."""
    madvise = _madvise()
    if madvise is None or not isinstance(array, np.memmap) or array.flags.writeable or not array.nbytes:
        return
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    start = array.ctypes.data // page * page
    end = array.ctypes.data + array.nbytes
    madvise(start, end - start, _MADV_DONTNEED)


def dataset_files(dataset) -> list[str]:
    """The Arrow cache files a ``datasets.Dataset`` is memory-mapped from (none when in memory)."""
    return [f["filename"] for f in getattr(dataset, "cache_files", None) or []]


def iter_batches(dataset, columns: list[str] | None = None, batch_size: int | None = None) -> Iterator:
    """``dataset`` (or only ``columns``) as pyarrow Tables of at most ``batch_size`` (default
    :data:`CHUNK_ROWS`) rows, in order (any indices mapping applied), giving the mapped pages each
    one touched back after it is used: a whole-dataset sweep in bounded memory."""
    batch_size = batch_size or CHUNK_ROWS
    files = dataset_files(dataset)
    if columns is not None:
        dataset = dataset.select_columns(columns)
    try:
        for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
            yield batch
            release_file_pages(files)
    finally:
        release_file_pages(files)


def iter_stream(stream: np.ndarray, size: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive slices of a (memory-mapped) token stream, at most ``size`` (default
    :data:`CHUNK_TOKENS`) tokens each; the pages a slice touched are given back before the next
    one is read."""
    size = size or CHUNK_TOKENS
    for start in range(0, len(stream), size):
        yield stream[start: start + size]
        release_array_pages(stream)


def read_rows(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """``stream[s : s + length]`` for each start, as an int64 array [len(starts), length].

    A stream memory-mapped from its file (as :func:`token_stream` opens it) is read with file
    reads, not through the mapping: the kernel maps whole (large) page-cache folios around every
    touched page, so reading a few tokens from each of many far-apart columns would make the
    resident set grow with the distance between columns, i.e. with the corpus.
    """
    starts = np.asarray(starts, dtype=np.int64)
    path = _file_of(stream)
    if path is None:
        return np.asarray(stream[starts[:, None] + np.arange(length)], dtype=np.int64)
    out = np.empty((len(starts), length), dtype=stream.dtype)
    size = stream.dtype.itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        for row, start in zip(out, starts.tolist(), strict=True):
            if os.preadv(fd, [row], start * size) != row.nbytes:
                raise IndexError(f"{path}: cannot read tokens {start}..{start + length} of {len(stream)}")
    finally:
        os.close(fd)
    return out.astype(np.int64)


def _file_of(stream) -> str | None:
    """The file a whole-file, read-only ``np.memmap`` maps (None for anything else, or where
    positional file reads are not available)."""
    if not (isinstance(stream, np.memmap) and isinstance(stream.base, mmap.mmap) and hasattr(os, "preadv")):
        return None
    if stream.offset or stream.ndim != 1 or stream.flags.writeable or not stream.filename:
        return None
    return stream.filename


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
    """Zero-copy view of ``dataset[column]`` (a list<int> column) as numpy arrays (a copy of the
    selected rows when the dataset is a selection)."""
    import pyarrow as pa

    array = dataset.data.column(column)
    if getattr(dataset, "_indices", None) is not None:
        # A selection (e.g. rows without tokens dropped): take this column's rows in Arrow, instead
        # of flatten_indices(), which would rewrite every column of the dataset through Python.
        array = array.take(dataset._indices.column(0))
    array = array.combine_chunks()
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
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    files = dataset.cache_files
    if not files:
        return ragged_column(dataset, column).values.astype(np.int32)
    path = f"{files[0]['filename']}.{column}.int32"
    if not os.path.exists(path):
        from ..io import atomic_write

        # chunk by chunk, giving back the Arrow file's pages as we go: bounded memory
        cache, read = [f["filename"] for f in files], 0
        with atomic_write(path, "wb") as f:
            for chunk in dataset.data.column(column).chunks:
                values = chunk.flatten()
                f.write(np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype=np.int32).tobytes())
                read += values.nbytes
                if read >= RELEASE_BYTES:
                    release_file_pages(cache)
                    read = 0
        release_file_pages(cache)
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
                   seed: int = 0, pool: int = 50, group: int = 1) -> list[np.ndarray]:
    """Group row indices into batches of similar length.

    Rows are shuffled (with ``seed``), cut into pools of ``pool`` batches, sorted by length
    inside each pool and split; the batch order is then shuffled again. Without shuffling,
    rows are simply sorted by length (fastest for evaluation). ``batch_tokens`` caps the
    padded size B × T_max instead of the row count.

    ``group`` > 1 (DDP: the number of processes) keeps runs of ``group`` neighbouring batches
    together through the final shuffle, and drops an incomplete last run: batch ``k·group + r``
    goes to process r, so the processes' batches at a step have similar lengths and none waits
    long for the others.
    """
    rng = np.random.default_rng(seed)
    n = len(lengths)
    if shuffle:
        order = rng.permutation(n)
        pools = [order[i: i + batch_size * pool] for i in range(0, n, batch_size * pool)]
        pools = [p[np.argsort(-lengths[p], kind="stable")] for p in pools]
    else:
        pools = [np.argsort(-lengths, kind="stable")]
    batches = []
    for order in pools:  # a batch never spans two pools: the next pool starts with long rows again
        start = 0
        while start < len(order):
            if batch_tokens:
                longest = max(int(lengths[order[start]]), 1)
                size = max(1, min(batch_tokens // longest, len(order) - start))
            else:
                size = batch_size
            batches.append(order[start: start + size])
            start += size
    if shuffle:
        runs = len(batches) // group
        batches = [batches[i * group + r] for i in rng.permutation(runs) for r in range(group)]
    return batches


def lm_window_lengths(n: int, bptt: int, random_bptt: bool = False, seed: int = 0) -> Iterator[int]:
    """The window lengths that cut a column of ``n`` stream positions for truncated BPTT: ``bptt``
    each, or with ``random_bptt`` drawn per window (AWD-LSTM: bptt, or bptt/2 with p=0.05, then
    N(·, 5), at least 5). Counting them needs no data, so the trainer can size an epoch cheaply."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < n - 1:
        length = bptt
        if random_bptt:
            base = bptt if rng.random() < 0.95 else bptt / 2
            length = max(5, int(rng.normal(base, 5)))
        length = min(length, n - i)
        yield length
        i += length


def lm_stream_batches(stream: np.ndarray, batch_size: int, bptt: int, random_bptt: bool = False,
                      seed: int = 0, rank: int = 0, world: int = 1):
    """Yield (inputs [B, L], targets [B, L]) windows of a token stream for truncated BPTT.

    The stream is cut into ``batch_size × world`` equal columns; this rank reads its own
    ``batch_size`` of them, so hidden state carries across consecutive windows of the same
    column. Window lengths come from :func:`lm_window_lengths`; with ``random_bptt`` they vary,
    so the model does not always see the same segment boundaries.
    """
    columns = batch_size * world
    n = (len(stream) - 1) // columns
    if n < 2:
        raise ValueError("token stream shorter than one batch")
    # Windows come from blocks of READ_TOKENS tokens per column read ahead from the (possibly
    # memory-mapped) stream with :func:`read_rows`: no whole-stream copy and no mapped pages,
    # so memory stays flat however large the corpus is.
    starts = np.arange(rank * batch_size, (rank + 1) * batch_size) * n
    i, first, block = 0, 0, np.zeros((batch_size, 0), dtype=np.int64)  # block = columns [first, first + width)
    for length in lm_window_lengths(n, bptt, random_bptt, seed):
        if i + length + 1 > first + block.shape[1]:  # the last column ends at stream[columns * n]
            first, block = i, read_rows(stream, starts + i, max(length + 1, min(READ_TOKENS, n + 1 - i)))
        window = torch.from_numpy(np.ascontiguousarray(block[:, i - first: i - first + length + 1]))
        yield window[:, :-1], window[:, 1:]
        i += length
