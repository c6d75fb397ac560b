"""Bounded-memory data preparation (issue #6): chunked sweeps give the same results as whole-column
ones, and the memory-mapped pages a sweep touched are given back."""

from __future__ import annotations

import os
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from test_lm import lm_recipe

from seqtext.data import batching
from seqtext.data.batching import (
    iter_batches,
    iter_stream,
    lm_stream_batches,
    read_rows,
    release_array_pages,
    release_file_pages,
    token_stream,
)
from seqtext.data.vocab import EOS, Vocab
from seqtext.recipe import load_recipe
from seqtext.tasks.base import count_tokens
from seqtext.tasks.lm import LMTask

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release is Linux-only")


def arrow_dataset(tmp_path, rows: dict):
    """A datasets.Dataset memory-mapped from an Arrow cache file (as every loaded split is)."""
    import datasets

    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert ds.cache_files
    return ds


def resident_kb(path) -> int:
    """Resident KB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and head[0].endswith(":"):  # a field of the current mapping
                if inside and head[0] == "Rss:":
                    total += int(head[1])
            else:  # a mapping's header: address perms offset dev inode [path]
                inside = len(head) == 6 and head[5].rstrip("\n") == target
    return total


def test_chunked_token_counts_equal_row_by_row_counts(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[f"w{int(i)}" for i in rng.zipf(1.5, rng.integers(0, 9)) if i < 50] for _ in range(200)]
    ds = arrow_dataset(tmp_path, {"tokens": rows})
    expected = Counter()
    for r in rows:
        expected.update(r)
    for batch_size in (1, 7, 64, None):
        assert count_tokens(ds, "tokens", batch_size) == expected
    # through an indices mapping (a shuffled selection), as train_test_split produces
    sel = ds.shuffle(seed=1).select(range(50))
    expected = Counter()
    for r in sel["tokens"]:
        expected.update(r)
    assert count_tokens(sel, "tokens", 8) == expected
    # the vocabulary (most frequent first, ties alphabetical) is the same either way
    assert Vocab.build(count_tokens(ds, "tokens", 5)).itos == Vocab.build(Counter(t for r in rows for t in r)).itos


def test_iter_batches_keeps_rows_in_order(tmp_path):
    ds = arrow_dataset(tmp_path, {"a": list(range(23)), "b": [str(i) for i in range(23)]})
    batches = list(iter_batches(ds, ["a"], 5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3] and batches[0].column_names == ["a"]
    assert [x for b in batches for x in b.column("a").to_pylist()] == list(range(23))


def test_arrow_encoding_equals_python_encoding():
    v = Vocab(["a", "b", "a", "c"])  # a duplicate keeps its last id, as stoi does
    rows = [["a", "x", "c"], [], ["b", None, EOS, "<pad>"], ["c"], None]
    arr = pa.array(rows, pa.list_(pa.string()))
    for tokens in (arr, arr.slice(1, 3), pa.chunked_array([arr.slice(0, 2), arr.slice(2)]),
                   pa.array(rows, pa.large_list(pa.large_string())), pa.array([], pa.list_(pa.string()))):
        got = v.encode_arrow(tokens).to_pylist()
        assert got == [None if r is None else v.encode(r) for r in tokens.to_pylist()]


def test_chunked_cluster_shares_equal_a_histogram(tmp_path, monkeypatch):
    recipe = load_recipe(lm_recipe(tmp_path, softmax="adaptive", softmax_cutoffs=[10, 20]))
    task = LMTask(recipe, vocab=Vocab(f"w{i}" for i in range(36)))  # 40 ids
    stream = np.random.default_rng(0).integers(0, 40, 1001).astype(np.int32)
    expected = np.histogram(stream, bins=[10, 20, 40])[0] / len(stream)
    monkeypatch.setattr(batching, "CHUNK_TOKENS", 64)
    assert [len(c) for c in iter_stream(stream)][-2:] == [64, 1001 % 64]
    assert task._cluster_shares(stream) == expected.tolist()


def test_lm_data_is_identical_to_python_tokenize_and_encode(tmp_path):
    """The Arrow-side tokenize/encode maps give exactly the ids of the per-row Python path."""
    recipe = load_recipe(lm_recipe(tmp_path, lines=200))
    task = LMTask(recipe)
    from seqtext.data.sources import load_splits

    splits = load_splits(recipe)
    data = task.setup(splits, tmp_path)
    texts = [t or "" for t in splits["train"]["text"]]
    counts = Counter(t for x in texts for t in task.tokenizer.tokenize(x) + [EOS])
    assert task.vocab.itos == Vocab.build(counts).itos
    expected = [i for x in texts for i in task.vocab.encode(task.tokenizer.tokenize(x) + [EOS])]
    assert np.asarray(data["train"].stream).tolist() == expected


def test_windows_read_with_file_reads_equal_windows_indexed_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 1000, rng.integers(1, 40)).tolist() for _ in range(300)]
    ds = arrow_dataset(tmp_path, {"ids": rows})
    stream = token_stream(ds)
    flat = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows])
    assert isinstance(stream, np.memmap) and batching._file_of(stream) and not isinstance(flat, np.memmap)
    assert batching._file_of(stream[5:]) is None  # a slice's offset is not its file position: index it
    starts = np.array([0, 17, len(flat) - 9])
    assert read_rows(stream, starts, 9).tolist() == read_rows(flat, starts, 9).tolist()
    assert read_rows(stream, starts, 9).dtype == np.int64
    monkeypatch.setattr(batching, "READ_TOKENS", 23)  # many read-ahead blocks, windows across their ends
    for kw in ({"random_bptt": True, "seed": 4}, {"rank": 1, "world": 2}):
        got = list(lm_stream_batches(stream, 4, 7, **kw))
        want = list(lm_stream_batches(flat, 4, 7, **kw))
        assert len(got) == len(want) > 20
        assert all((gx == wx).all() and (gy == wy).all() for (gx, gy), (wx, wy) in zip(got, want, strict=True))
    with pytest.raises(IndexError):
        read_rows(stream, np.array([len(flat) - 3]), 9)


@linux_only
def test_released_memmap_pages_leave_the_resident_set_and_read_back_the_same(tmp_path):
    path = tmp_path / "stream.int32"
    values = np.arange(4 << 20, dtype=np.int32)  # 16 MB
    values.tofile(path)
    m = np.memmap(path, dtype=np.int32, mode="r")
    total = int(m.sum(dtype=np.int64))  # touches every page
    assert resident_kb(path) > 8 << 10
    release_array_pages(m)
    assert resident_kb(path) < 1 << 10
    assert int(m.sum(dtype=np.int64)) == total  # the data are still there
    m.sum()
    release_file_pages([str(path)])  # the same through /proc/self/maps
    assert resident_kb(path) < 1 << 10


@linux_only
def test_writable_mappings_are_never_released(tmp_path):
    path = tmp_path / "rw.int32"
    np.zeros(1 << 20, dtype=np.int32).tofile(path)
    m = np.memmap(path, dtype=np.int32, mode="r+")
    m[:] = 7  # dirty pages: dropping them would lose the writes
    release_array_pages(m)
    release_file_pages([str(path)])
    assert (m == 7).all()


@linux_only
def test_lm_preparation_and_an_epoch_leave_little_of_the_corpus_resident(tmp_path):
    """Every sweep over the memory-mapped Arrow files and the token stream gives its pages back."""
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in (("train", 60_000), ("valid", 500), ("test", 500)):
        with open(corpus / f"{split}.txt", "w") as f:
            f.writelines(" ".join(f"w{i}" for i in np.minimum(rng.zipf(1.3, 20), 3000)) + "\n" for _ in range(n))
    r = lm_recipe(tmp_path, softmax="adaptive", softmax_cutoffs=[100, 1000])
    del r["data"]["max_examples"]
    recipe = load_recipe(r)
    from seqtext.data.sources import load_splits

    task = LMTask(recipe)
    splits = load_splits(recipe, corpus)
    data = task.setup(splits, tmp_path)
    train = data["train"]
    files = [f["filename"] for d in (*splits.values(), train.ds) for f in d.cache_files] + [train.stream.filename]
    sizes = sum(os.path.getsize(f) for f in set(files)) >> 10
    assert sizes > 15 << 10  # > 15 MB of memory-mapped files (text, ids, stream; the tokens file too)
    assert sum(resident_kb(f) for f in set(files)) < 2 << 10
    assert sum(1 for _ in task.train_batches(train, epoch=0)) > 100
    assert resident_kb(train.stream.filename) < 2 << 10
