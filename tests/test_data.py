import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reviews, tiny_recipe, write_jsonl

from seqtext.data import sources
from seqtext.data.batching import bucket_batches, ragged_column
from seqtext.data.tokenizers import RegexTokenizer, SentencePieceTokenizer, SpacyTokenizer, WhitespaceTokenizer
from seqtext.data.vocab import Vocab
from seqtext.errors import SeqtextError
from seqtext.recipe import load_recipe


def test_regex_tokenizer():
    tok = RegexTokenizer(lowercase=True, strip_html=True)
    assert tok.tokenize("Don't stop!<br /><br />It's 3.5 stars, e.g. GREAT") == \
        ["don't", "stop", "!", "it's", "3.5", "stars", ",", "e", ".", "g", ".", "great"]
    assert tok.tokenize("") == []
    # only tags are HTML: a "<" before a space or digit is text, and what follows it is kept
    assert tok.tokenize("runs < than 30 minutes <br /> <3 <i>good</i>") == \
        ["runs", "<", "than", "30", "minutes", "<", "3", "good"]


def test_whitespace_and_spacy_tokenizers():
    assert WhitespaceTokenizer().tokenize(" a <unk> b ") == ["a", "<unk>", "b"]
    assert SpacyTokenizer("en", lowercase=False).tokenize("Hello, world!") == ["Hello", ",", "world", "!"]


def test_sentencepiece_train_save_load(tmp_path):
    texts = [r["text"] for r in make_reviews(300)]
    tok = SentencePieceTokenizer.train(texts, tmp_path / "a", vocab_size=100, model_type="unigram")
    pieces = tok.tokenize("the film was great")
    assert pieces and tok.detokenize(pieces) == "the film was great"
    tok.save(tmp_path / "b")
    again = SentencePieceTokenizer(tmp_path / "b" / "tokenizer.model")
    assert again.tokenize("the film was great") == pieces
    assert again.fingerprint() == tok.fingerprint()
    # the same text and settings train the same bytes (no temporary paths inside), so a second
    # run finds the first one's tokenization cache
    other = SentencePieceTokenizer.train(texts, tmp_path / "c", vocab_size=100, model_type="unigram")
    assert other.fingerprint() == tok.fingerprint() and str(tmp_path).encode() not in (tmp_path / "c" /
                                                                                   "tokenizer.model").read_bytes()
    (tmp_path / "bad.model").write_text("not a model")
    with pytest.raises(SeqtextError, match=r"bad\.model: not a sentencepiece model"):
        SentencePieceTokenizer(tmp_path / "bad.model")

    with pytest.raises(SeqtextError, match=r"^train data: no text to train the sentencepiece tokenizer on$"):
        SentencePieceTokenizer.train(["", " "], tmp_path / "d", vocab_size=100, model_type="unigram")
    many_chars = ["".join(chr(0x4E00 + 7 * i + j) for j in range(7)) for i in range(40)]  # 280 characters
    with pytest.raises(SeqtextError, match=r"^\[tokenizer\] vocab_size = 100: .* need 28\d sentencepiece pieces; "
                                           r"raise it to at least 28\d$"):
        SentencePieceTokenizer.train(many_chars, tmp_path / "d", vocab_size=100, model_type="unigram")


def test_sentencepiece_is_trained_on_the_checked_text_column(tmp_path):
    """The texts sentencepiece learns from are checked like those it tokenizes: a null text is an
    empty one, a missing column is named, and an LM reads a text file's one column whatever
    [data] text_column says (a hub recipe used with --data-dir)."""
    import datasets

    from seqtext.tasks.classify import ClassifyTask
    from seqtext.tasks.lm import LMTask

    sp = {"kind": "sentencepiece", "vocab_size": 100}
    recipe = load_recipe({"task": "classify", "tokenizer": sp, "vocab": {"min_freq": 1}})
    rows = make_reviews(40) + [{"text": None, "label": "pos"}]
    train, dev = datasets.Dataset.from_list(rows), datasets.Dataset.from_list(make_reviews(4))
    ClassifyTask(recipe).setup({"train": train, "dev": dev}, tmp_path / "a")
    recipe = load_recipe({"task": "classify", "tokenizer": sp, "data": {"text_column": "review"}})
    with pytest.raises(SeqtextError, match=r"^train data has no column 'review' \(columns: text, label\)"):
        ClassifyTask(recipe).setup({"train": train, "dev": dev}, tmp_path / "b")
    recipe = load_recipe({"task": "lm", "tokenizer": sp, "data": {"text_column": "sentence"}, "vocab": {"min_freq": 1}})
    lines = datasets.Dataset.from_dict({"text": [r["text"] for r in make_reviews(40)]})
    LMTask(recipe).setup({"train": lines, "dev": lines}, tmp_path / "c")


def test_vocab_round_trip(tmp_path):
    from collections import Counter

    v = Vocab.build(Counter({"b": 3, "a": 3, "c": 1, "<pad>": 9}), min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "<bos>", "<eos>", "a", "b"]
    assert v.encode(["a", "zzz"]) == [4, 1]
    v.save(tmp_path)
    assert Vocab.load(tmp_path).itos == v.itos
    assert len(Vocab.build(Counter({str(i): 10 - i for i in range(10)}), max_size=6)) == 6


def test_vocab_file_must_start_with_specials(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(SeqtextError, match=r"vocab\.txt:1"):
        Vocab.load(tmp_path)


def test_bucket_batches_cover_all_rows_and_are_deterministic():
    lengths = np.random.default_rng(0).integers(1, 100, size=1000)
    a = bucket_batches(lengths, 32, seed=5)
    b = bucket_batches(lengths, 32, seed=5)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    # bucketing keeps padding small compared with random batches
    padded = sum(len(x) * lengths[x].max() for x in a)
    assert padded < 1.2 * lengths.sum()
    for pool in (50, 2):  # one pool of all rows; pools of 64 rows, each sorted on its own
        capped = bucket_batches(lengths, 32, batch_tokens=500, seed=1, pool=pool)
        assert sorted(np.concatenate(capped).tolist()) == list(range(1000))
        # the cap holds also where a pool's short rows end and the next pool's long ones begin
        assert all(len(x) * lengths[x].max() <= 500 or len(x) == 1 for x in capped)


@pytest.mark.parametrize("batch_tokens", [0, 300])
def test_bucket_batches_in_groups_give_the_processes_of_a_step_neighbouring_lengths(batch_tokens):
    """DDP: batch k·world + r goes to process r; the batches of one step must come from one
    stretch of the length order, or every step waits for its longest batch."""
    lengths = np.random.default_rng(0).permutation(1000) + 1
    world = 3
    batches = bucket_batches(lengths, 10, batch_tokens, seed=4, pool=1000, group=world)  # one pool: a global sort
    assert len(batches) % world == 0
    one = bucket_batches(lengths, 10, batch_tokens, seed=4, pool=1000)
    assert len(batches) == len(one) // world * world  # only an incomplete last group is dropped
    for k in range(0, len(batches), world):
        step = np.sort(lengths[np.concatenate(batches[k: k + world])])
        assert step[-1] - step[0] + 1 == len(step)  # a contiguous run of the sorted lengths
    # without groups, the steps' batches would be scattered over the length range
    assert any(abs(int(lengths[one[k]].max()) - int(lengths[one[k + 1]].max())) > 100 for k in range(0, 20, 2))


def test_local_formats_and_columns(tmp_path):
    import pandas as pd

    rows = make_reviews(40)
    df = pd.DataFrame(rows).rename(columns={"text": "review", "label": "stars"})
    df.to_csv(tmp_path / "train.csv", index=False)
    df.to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    df.to_parquet(tmp_path / "dev.parquet")
    recipe = load_recipe({"task": "classify", "data": {"text_column": "review", "label_column": "stars"}})
    splits = sources.load_splits(recipe, data_dir=tmp_path)
    assert set(splits) == {"train", "dev", "test"} and all(len(s) == 40 for s in splits.values())
    assert splits["test"][0]["review"] == rows[0]["text"]


def test_json_files_are_read_as_json_whatever_the_format_and_tsv_quotes_are_text(tmp_path):
    """An LM recipe's format = "text" must not read a --data-dir JSON file as lines of raw JSON;
    a TSV field that starts with a quote must not swallow the rows after it; a text file's
    byte-order mark is not part of its first line."""
    write_jsonl(tmp_path / "train.jsonl", [{"text": "the cat sat"}, {"text": "a dog ran"}])
    (tmp_path / "valid.txt").write_bytes("\ufeffthe dog sat\n".encode())
    (tmp_path / "test.tsv").write_text('text\n"quoted start\nplain\nlast\n')
    lm = load_recipe({"task": "lm", "data": {"format": "text"}})
    splits = sources.load_splits(lm, data_dir=tmp_path)
    assert splits["train"]["text"] == ["the cat sat", "a dog ran"]
    assert splits["dev"]["text"] == ["the dog sat"]
    classify = load_recipe({"task": "classify"})
    assert sources.load_file(tmp_path / "test.tsv", "auto", classify)["text"] == ['"quoted start', "plain", "last"]
    # the recipe's format decides where the extension cannot; "jsonl" is a name for the JSON reader
    assert sources.file_format(tmp_path / "train.txt", "text", "tag") == "text"
    assert sources.file_format(tmp_path / "train.tsv", "conll", "tag") == "conll"
    # a tagger's tab-separated files are CoNLL columns (a table has no token lists), a classifier's a table
    assert sources.file_format(tmp_path / "train.tsv", "auto", "tag") == "conll"
    assert sources.file_format(tmp_path / "train.tsv", "auto", "classify") == "tsv"
    assert sources.file_format(tmp_path / "x.dat", "jsonl", "classify") == "json"


def test_two_files_for_one_split_are_an_error_and_test_alone_can_be_scored(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", make_reviews(4))
    r = load_recipe({"task": "classify"})
    assert len(sources.load_splits(r, data_dir=tmp_path, only=("test",))["test"]) == 4
    with pytest.raises(SeqtextError, match="no train file"):
        sources.load_splits(r, data_dir=tmp_path)
    write_jsonl(tmp_path / "train.jsonl", make_reviews(4))
    write_jsonl(tmp_path / "train.csv", make_reviews(4))
    with pytest.raises(SeqtextError, match=r"2 files for the train split \(train\.jsonl, train\.csv\); keep one"):
        sources.load_splits(r, data_dir=tmp_path)


def test_dev_split_is_carved_deterministically(tiny):
    r = load_recipe(tiny)
    a = sources.load_splits(r)
    b = sources.load_splits(r)
    assert len(a["dev"]) == 32 and len(a["train"]) == 128
    assert a["dev"]["text"] == b["dev"]["text"]
    assert sources.load_splits(r, only=("train",))["train"]["text"] == a["train"]["text"]  # evaluate --split train


def test_train_alone_is_all_of_train_when_there_is_a_dev_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_reviews(30))
    write_jsonl(tmp_path / "dev.jsonl", make_reviews(5))
    r = load_recipe({"task": "classify"})
    assert len(sources.load_splits(r, data_dir=tmp_path, only=("train",))["train"]) == 30
    (tmp_path / "train.txt").write_text("a b c\n" * 30)
    (tmp_path / "valid.txt").write_text("a b\n" * 5)
    for f in ("train.jsonl", "dev.jsonl"):
        (tmp_path / f).unlink()
    lm = load_recipe({"task": "lm"})
    assert len(sources.load_splits(lm, data_dir=tmp_path, only=("train",))["train"]) == 30


def test_dev_split_in_blocks_keeps_neighbouring_rows_together():
    import datasets
    ds = datasets.Dataset.from_dict({"i": list(range(1000))})
    train, dev = sources.carve_dev(ds, 0.1, seed=3, block_size=50)
    ids = list(dev["i"])
    assert len(ids) == 100 and sorted(ids + list(train["i"])) == list(range(1000))
    # two whole runs of 50 consecutive rows, starting on a block boundary
    runs = [ids[k:k + 50] for k in range(0, 100, 50)]
    assert all(r == list(range(r[0], r[0] + 50)) and r[0] % 50 == 0 for r in runs)
    assert list(sources.carve_dev(ds, 0.1, seed=3, block_size=50)[1]["i"]) == ids  # seeded
    assert list(sources.carve_dev(ds, 0.1, seed=4, block_size=50)[1]["i"]) != ids
    # scattered (the default): not runs
    scattered = sorted(sources.carve_dev(ds, 0.1, seed=3)[1]["i"])
    assert len(scattered) == 100 and scattered != list(range(scattered[0], scattered[0] + 100))
    with pytest.raises(SeqtextError, match="dev_block_size = 1000 leaves no training rows"):
        sources.carve_dev(ds, 0.1, seed=3, block_size=1000)
    with pytest.raises(SeqtextError, match="train has 1 row: too few to carve a dev split"):
        sources.carve_dev(ds.select([0]), 0.1, seed=3)


def test_recipe_dev_block_size_reaches_the_split(tiny):
    r = load_recipe(tiny)
    r.data.dev_block_size = 16
    dev = sources.load_splits(r)["dev"]["text"]
    lines = Path(r.data.files["train"]).read_text().splitlines()
    train_rows = [json.loads(line)["text"] for line in lines]
    where = sorted(train_rows.index(t) for t in dev)
    assert len(where) == 32 and all(b - a == 1 for a, b in itertools.pairwise(where[:16]))


@pytest.mark.parametrize("content, msg", [
    (b"", "file is empty"),
    (b'{"text": "ok", "label": 1}\n{"text": "bad \xff byte", "label": 0}\n', r"train.jsonl:2: not valid UTF-8"),
    # the line (pyarrow's "in row N" counts from 0 within each block it parses) and what is wrong there
    (b"not json at all\n", r"train.jsonl:1: not valid JSON \(Expecting value at column 1\)$"),
    (b'{"text": "ok", "label": 1}\n\n{"text": "no end", "label": 0\n{"text": "ok", "label": 1}\n',
     r"train.jsonl:3: not valid JSON \(Expecting ',' delimiter at column 30\)$"),
    (b'[{"text": "ok", "label": 1},\n{"text": "no end"]\n', r"train.jsonl: could not read as json \("),
])
def test_bad_files(tmp_path, content, msg):
    (tmp_path / "train.jsonl").write_bytes(content)
    r = load_recipe({"task": "classify"})
    with pytest.raises(SeqtextError, match=msg):
        sources.load_splits(r, data_dir=tmp_path)


def test_a_header_without_rows_and_a_null_label_are_named(tmp_path):
    import datasets

    from seqtext.tasks.classify import ClassifyTask

    (tmp_path / "train.csv").write_text("text,label\n")
    r = load_recipe({"task": "classify", "vocab": {"min_freq": 1}})
    with pytest.raises(SeqtextError, match=r"train\.csv: no examples$"):
        sources.load_splits(r, data_dir=tmp_path)
    task = ClassifyTask(r)
    task.setup({"train": datasets.Dataset.from_list(make_reviews(20)), "dev": datasets.Dataset.from_list(
        make_reviews(4))}, tmp_path)
    nulls = datasets.Dataset.from_list([{"text": "a", "label": "pos"}, {"text": "b", "label": None}])
    with pytest.raises(SeqtextError, match=r"^test data, row 2: no label \(null in column 'label'\)"):
        task.encode_split(task.tokenize_split(nulls, "test"), "test")


def test_row_errors_name_the_row_of_the_file(tmp_path):
    """A carved dev split or a max_examples sample is a selection of a file's rows: an error names
    the row the user can find in the file, not the row's position in the selection."""
    from seqtext.tasks.classify import ClassifyTask
    from seqtext.tasks.tag import TagTask

    rows = make_reviews(60)
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = load_recipe({"task": "classify", "vocab": {"min_freq": 1}})
    dev = sources.load_splits(recipe, data_dir=tmp_path)["dev"]
    picked = int(sources.source_rows(dev)[-1])  # the last dev row: its file row is not its dev position
    assert picked + 1 != len(dev)
    rows[picked]["label"] = "meh"  # a label training never sees: train holds no other "meh"
    write_jsonl(tmp_path / "train.jsonl", rows)
    splits = sources.load_splits(recipe, data_dir=tmp_path)
    assert sources.carved_from(splits["dev"]) == "train" and sources.carved_from(splits["train"]) is None
    with pytest.raises(SeqtextError, match=rf"^dev data \(carved from train\), train row {picked + 1}: "
                                           r"label 'meh' was not seen in training"):
        ClassifyTask(recipe).setup(splits, tmp_path)

    tagged = [{"tokens": ["Ann", "ran"], "tags": ["B-PER", "O"]} for _ in range(30)]
    tagged[17]["tags"] = ["B-PER", None]
    write_jsonl(tmp_path / "tags" / "train.jsonl", tagged)
    write_jsonl(tmp_path / "tags" / "dev.jsonl", tagged[:3])
    recipe = load_recipe({"task": "tag", "data": {"max_examples": 25}})
    splits = sources.load_splits(recipe, data_dir=tmp_path / "tags")
    assert list(sources.source_rows(splits["train"])).index(17) != 17  # sampled, at another position
    with pytest.raises(SeqtextError, match=r"^train data, row 18: missing tag"):
        TagTask(recipe).setup(splits, tmp_path)


def test_missing_data_dir_and_file(tmp_path):
    r = load_recipe({"task": "classify", "data": {"files": {"train": str(tmp_path / "nope.jsonl")}}})
    with pytest.raises(SeqtextError, match=r"nope\.jsonl: no such file"):
        sources.load_splits(r)
    with pytest.raises(SeqtextError, match="no such directory"):
        sources.load_splits(r, data_dir=tmp_path / "missing")
    (tmp_path / "a.jsonl").write_text("{}\n")
    with pytest.raises(SeqtextError, match=r"a\.jsonl: is a file; expected the directory"):
        sources.load_splits(r, data_dir=tmp_path / "a.jsonl")
    with pytest.raises(SeqtextError, match=r": is a directory; expected a data file"):
        sources.load_file(tmp_path, "auto", r)
    with pytest.raises(SeqtextError, match="no train file"):
        sources.load_splits(r, data_dir=tmp_path)


def test_hub_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    import datasets

    def no_hub(*args, **kwargs):  # what would retry for ~25 s offline: it must not be reached
        pytest.fail("datasets.load_dataset was called although the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    r = load_recipe({"task": "classify", "data": {"hub": "stanfordnlp/imdb"}})
    with pytest.raises(SeqtextError, match=r"cannot reach the Hugging Face hub to load 'stanfordnlp/imdb'.*--data-dir"):
        sources.load_splits(r)


def test_ragged_column_is_a_view(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"ids": [[1, 2, 3], [], [4]]})
    r = ragged_column(ds, "ids")
    assert r.lengths.tolist() == [3, 0, 1] and r.row(2).tolist() == [4]
    sel = ds.select([2, 0])
    assert ragged_column(sel, "ids").row(1).tolist() == [1, 2, 3]
    # a selection is read column by column in Arrow, not by rewriting the whole dataset
    many = datasets.Dataset.from_dict({"ids": [[i] * (i % 4) for i in range(3000)], "text": ["x"] * 3000})
    keep = [i for i in range(3000) if i % 4]
    sel = many.select(keep)
    sel.flatten_indices = None  # would raise if called
    r = ragged_column(sel, "ids")
    assert r.lengths.tolist() == [i % 4 for i in keep] and r.row(4).tolist() == [keep[4]] * (keep[4] % 4)


def test_tokenization_is_cached_between_runs(tmp_path):
    from seqtext.tasks.classify import ClassifyTask

    path = tiny_recipe(tmp_path)
    r = load_recipe(path)
    t1 = ClassifyTask(r)
    d1 = t1.setup(sources.load_splits(r), tmp_path / "s1")
    t2 = ClassifyTask(r)
    d2 = t2.setup(sources.load_splits(r), tmp_path / "s2")
    assert d1["train"].ds.cache_files and d1["train"].ds.cache_files == d2["train"].ds.cache_files


def test_multiclass_string_labels(tmp_path):
    from seqtext.tasks.classify import ClassifyTask

    rows = make_reviews(30, labels=("red", "green", "blue"))
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows[:5] + [{"text": "x", "label": "purple"}])
    r = load_recipe({"task": "classify", "vocab": {"min_freq": 1}})
    task = ClassifyTask(r)
    splits = sources.load_splits(r, data_dir=tmp_path)
    with pytest.raises(SeqtextError, match="label 'purple' was not seen in training"):
        task.setup(splits, tmp_path)
    assert task.labels == ["blue", "green", "red"]
    json.dumps(task.meta)


def test_label_names_make_number_labels_and_named_labels_one_model(tmp_path):
    """IMDB's local files say 0/1 where the hub dataset says neg/pos: with [data] label_names the
    two train and score the same labels."""
    import datasets

    from seqtext.tasks.classify import ClassifyTask

    rows = make_reviews(30, labels=(0, 1))
    r = load_recipe({"task": "classify", "vocab": {"min_freq": 1}, "data": {"label_names": ["neg", "pos"]}})
    numbers = datasets.Dataset.from_list(rows)
    named = datasets.Dataset.from_list([{**x, "label": ["neg", "pos"][x["label"]]} for x in rows])
    task = ClassifyTask(r)
    data = task.setup({"train": numbers, "dev": named}, tmp_path)
    assert task.labels == ["neg", "pos"]
    assert list(data["train"].flat["target"]) == list(data["dev"].flat["target"]) == [x["label"] for x in rows]
    with pytest.raises(SeqtextError, match=r"label 2 has no name in \[data\] label_names \(2 names\)"):
        task.encode_split(task.tokenize_split(datasets.Dataset.from_list([{"text": "x", "label": 2}]), "test"), "test")
    hub = numbers.cast_column("label", datasets.ClassLabel(names=["negative", "positive"]))
    with pytest.raises(SeqtextError, match=r"label_names \['neg', 'pos'\] differ from the names the data gives"):
        ClassifyTask(r).setup({"train": hub, "dev": hub}, tmp_path)
    bad = load_recipe({"task": "classify", "data": {"label_names": ["a", "a"]}})
    with pytest.raises(SeqtextError, match=r"label_names: expected 2 or more different names"):
        ClassifyTask(bad).setup({"train": numbers, "dev": numbers}, tmp_path)


def test_lm_stream_windows_match_contiguous_columns():
    from seqtext.data.batching import lm_stream_batches

    stream = np.arange(1001)
    n = 1000 // 4
    windows = list(lm_stream_batches(stream, batch_size=4, bptt=7, random_bptt=True, seed=3))
    x = np.concatenate([w[0].numpy() for w in windows], 1)
    y = np.concatenate([w[1].numpy() for w in windows], 1)
    assert (x[:, 0] == np.arange(4) * n).all() and (y == x + 1).all()
    assert (np.diff(x, axis=1) == 1).all()  # each row is one contiguous column: state can carry
    # two ranks with half the batch each read exactly the rows of the single-process layout
    ranks = [next(iter(lm_stream_batches(stream, 2, 7, random_bptt=True, seed=3, rank=r, world=2)))
             for r in range(2)]
    assert np.concatenate([ranks[0][0], ranks[1][0]]).tolist() == windows[0][0].tolist()


def test_token_stream_is_memory_mapped(tmp_path):
    import datasets

    from seqtext.data.batching import token_stream

    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"ids": list(range(i, i + 5))} for i in range(0, 50, 5)])
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    s = token_stream(ds)
    assert isinstance(s, np.memmap) and s.tolist() == list(range(50))
    assert token_stream(ds).tolist() == list(range(50))  # second call reuses the file


@pytest.mark.parametrize("kind", ["jsonl", "tsv", "conll"])
def test_a_file_replaced_with_the_same_modification_time_is_read_again(tmp_path, kind):
    """datasets keys its cache by path and modification time: `cp -p` of another file over the data
    (same size here, and the same time) must still be read anew, with its own map caches."""
    import os

    task = "tag" if kind == "conll" else "classify"
    r = load_recipe({"task": task})
    path = tmp_path / f"train.{kind}"

    def write(word):
        if kind == "jsonl":
            path.write_text("".join(json.dumps({"text": f"{word} {i}", "label": "pos"}) + "\n" for i in range(4)))
        elif kind == "tsv":
            path.write_text("text\tlabel\n" + "".join(f"{word} {i}\tpos\n" for i in range(4)))
        else:
            path.write_text("".join(f"{word}{i} B-PER\nran O\n\n" for i in range(4)))
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)

    def first_word():
        row = sources.load_file(path, "auto", r)[0]
        return row["tokens"][0] if kind == "conll" else row["text"].split()[0]

    write("Anna")
    assert first_word() == ("Anna0" if kind == "conll" else "Anna")
    write("Bert")
    assert first_word() == ("Bert0" if kind == "conll" else "Bert")
