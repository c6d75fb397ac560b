"""NER tagger task: data (CoNLL and hub-style), schemes, training, scoring, predict/evaluate CLI."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tagged_sentences

import seqtext
from seqtext.cli import main
from seqtext.data.conll import read_conll
from seqtext.data.sources import load_splits
from seqtext.data.tagging import convert
from seqtext.errors import SeqtextError
from seqtext.model import load_state_dict
from seqtext.nn.chars import clip_word
from seqtext.recipe import load_recipe
from seqtext.tasks.tag import TagTask, scoring_tag

PER = ["Angela Merkel", "John Smith", "Maria", "Peter Blackburn", "Barack Obama", "Li Wei", "Anna Karenina"]
LOC = ["Paris", "New York", "Berlin", "Tokyo", "Buenos Aires", "Kenya", "London", "Rio de Janeiro"]
ORG = ["United Nations", "Google", "Reuters", "European Union", "Acme Corp", "FIFA", "Siemens"]
NAMES = {"PER": PER, "LOC": LOC, "ORG": ORG}
TEMPLATES = [
    "{PER} visited {LOC} .", "{PER} works for {ORG} in {LOC} .",
    "The {ORG} said on Monday that {PER} will travel to {LOC} .", "In {LOC} , {PER} met {PER} .",
    "{ORG} shares rose 3 percent .", "It rained all day .", "{PER} and {PER} left {ORG} .",
    # adjacent chunks of one type: the only place IOB1 uses B-
    "Flights from {LOC} {LOC} resumed in 1996 .",
]


def make_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    return make_tagged_sentences(n, seed, TEMPLATES, NAMES)


def write_conll(path: Path, sentences, scheme: str = "IOB2", newline: str = "\n", docstart: bool = True) -> Path:
    """CoNLL-2003 layout: token POS chunk NER; -DOCSTART-; no newline after the last line."""
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for tokens, tags in sentences:
        for tok, tag in zip(tokens, convert(tags, "IOB2", scheme)):
            lines.append(f"{tok} NNP I-NP {tag}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join(lines).rstrip("\n").encode("utf-8"))
    return path


def write_recipe(tmp_path: Path, scheme: str = "IOB2", model: dict | None = None, train: dict | None = None,
                 name: str = "ner") -> Path:
    data = tmp_path / "data"
    write_conll(data / "train.txt", make_sentences(240, 1), scheme)
    write_conll(data / "valid.txt", make_sentences(50, 2), scheme)
    write_conll(data / "test.txt", make_sentences(60, 3), scheme)
    m = {"embedding_dim": 32, "hidden_size": 32, "char_encoder": '"cnn"', "char_dim": 16, "char_filters": 16,
         "casing": "true", "dropout": 0.2, "embedding_dropout": 0.1, **(model or {})}
    t = {"epochs": 6, "batch_size": 16, "lr": 0.01, "seed": 1, "threads": 1, "patience": 0, **(train or {})}
    text = f"""task = "tag"
name = "{name}"
[data]
files = {{ train = "{data / 'train.txt'}", dev = "{data / 'valid.txt'}", test = "{data / 'test.txt'}" }}
tokens_column = "tokens"
tags_column = "ner_tags"
[tokenizer]
kind = "spacy"
[vocab]
min_freq = 1
[model]
""" + "".join(f"{k} = {v}\n" for k, v in m.items()) + "[train]\n" + "".join(f"{k} = {v}\n" for k, v in t.items())
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tagger")
    # lazy embedding-row updates, as recipes/conll2003_ner.toml trains (other tests train dense)
    return seqtext.train(write_recipe(tmp, train={"sparse_embeddings": "true"}), output=tmp / "run", quiet=True)


@pytest.fixture(scope="module")
def model(trained):
    return seqtext.load(trained, "cpu")


# ---------------------------------------------------------------------- data

def test_conll_files_through_load_splits(tmp_path):
    data = tmp_path / "d"
    sents = make_sentences(5, 0)
    write_conll(data / "train.txt", sents, newline="\r\n")
    (data / "valid.txt").write_text("-DOCSTART- -X- -X- O\n\nParis NNP I-NP B-LOC  \t\nis VBZ B-VP O\n\n\n",
                                    encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path))
    splits = load_splits(recipe, data)
    assert set(splits) == {"train", "dev"}
    assert splits["train"]["tokens"] == [["-DOCSTART-"]] + [s[0] for s in sents]
    assert splits["train"]["ner_tags"] == [["O"]] + [s[1] for s in sents]
    # the -DOCSTART- line stays a row of its own (as in hub copies): it marks a document break
    assert splits["dev"]["tokens"] == [["-DOCSTART-"], ["Paris", "is"]]
    assert splits["dev"]["ner_tags"] == [["O"], ["B-LOC", "O"]]

    # another column layout: tag first, token third
    (data / "train.txt").write_text("B-PER x Maria\nO x left\n", encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path), ["data.token_index=2", "data.tag_index=0"])
    assert load_splits(recipe, data)["train"]["tokens"] == [["Maria", "left"]]


def test_gzipped_conll_files_through_data_dir(tmp_path):
    import gzip

    data = tmp_path / "d"
    data.mkdir()
    sents = make_sentences(5, 0)
    write_conll(tmp_path / "plain.txt", sents)
    (data / "train.txt.gz").write_bytes(gzip.compress((tmp_path / "plain.txt").read_bytes()))
    write_conll(data / "valid.txt", make_sentences(2, 1))  # else dev is carved from train, reordering it
    splits = load_splits(load_recipe(write_recipe(tmp_path)), data)
    assert splits["train"]["tokens"][1:] == [s[0] for s in sents]


def test_conll_file_is_parsed_once_into_a_memory_mapped_cache(tmp_path):
    data = tmp_path / "d"
    write_conll(data / "train.txt", make_sentences(5, 0))
    write_conll(data / "valid.txt", make_sentences(2, 1))
    recipe = load_recipe(write_recipe(tmp_path))
    first = load_splits(recipe, data)["train"]
    assert first.cache_files  # an Arrow file on disk, not a table in memory
    again = load_splits(recipe, data)["train"]
    assert again.cache_files == first.cache_files and again["tokens"] == first["tokens"]
    # a changed file is parsed again (the cache is keyed by its size and modification time)
    (data / "train.txt").write_text("Maria x B-PER\nleft x O\n", encoding="utf-8")
    changed = load_splits(recipe, data)["train"]
    assert changed.cache_files != first.cache_files and changed["tokens"] == [["Maria", "left"]]


@pytest.mark.parametrize("content, msg", [
    ("a x O\nb O\n", r"train.txt:2: expected 3 columns, found 2"),
    ("-DOCSTART- -X- O\n\n\n", r"train.txt: no sentences found"),
])
def test_bad_conll_file_through_load_splits_names_the_line(tmp_path, content, msg):
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.txt").write_text(content, encoding="utf-8")
    with pytest.raises(SeqtextError, match=msg):
        load_splits(load_recipe(write_recipe(tmp_path)), data)


def test_hub_style_classlabel_tags_and_empty_sentences(tmp_path, capsys):
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    rows = {"tokens": [["-DOCSTART-"], ["Angela", "Merkel", "visited", "Paris"], [], ["Tom", "left"]],
            "ner_tags": [[0], [1, 2, 0, 3], [], [1, 0]]}
    ds = datasets.Dataset.from_dict(rows, features=features)
    recipe = load_recipe(write_recipe(tmp_path), ["data.tags_column=ner_tags"])
    task = TagTask(recipe)
    data = task.setup({"train": ds, "dev": ds}, tmp_path)
    assert task.meta["source_scheme"] == "IOB2" and task.meta["types"] == ["LOC", "PER"]
    assert task.meta["labels"][:5] == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    assert len(data["train"]) == 2  # the empty sentence and the -DOCSTART- row are skipped
    assert "skipped 1 empty sentences" in capsys.readouterr().err  # a document break is no data problem
    tgt = data["train"].cols["target"].row(0)
    assert [task.labels[i] for i in tgt] == ["B-PER", "E-PER", "O", "S-LOC"]


def test_bad_data_gives_one_line_errors(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    task = TagTask(recipe)
    ds = datasets.Dataset.from_dict({"words": [["a"]], "ner_tags": [["O"]]})
    with pytest.raises(SeqtextError, match=r"train data has no column 'tokens'.*tokens_column"):
        task.setup({"train": ds, "dev": ds}, tmp_path)
    ds = datasets.Dataset.from_dict({"tokens": [["a", "b"], ["c"]], "ner_tags": [["O", "O"], ["O", "B-PER"]]})
    with pytest.raises(SeqtextError, match=r"train data, row 2: 1 tokens but 2 tags"):  # rows count from 1
        TagTask(recipe).setup({"train": ds, "dev": ds}, tmp_path)
    ds = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [[1, 0]]})  # numbers without names
    with pytest.raises(SeqtextError, match=r"train data, row 1: tag 1 is a number, and the data names no tags"):
        TagTask(recipe).setup({"train": ds, "dev": ds}, tmp_path)
    ds = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [["O", "O"]]})
    with pytest.raises(SeqtextError, match=r"no entities found"):
        TagTask(recipe).setup({"train": ds, "dev": ds}, tmp_path)


def test_malformed_tags_warn_with_counts(tmp_path, capsys):
    recipe = load_recipe(write_recipe(tmp_path), ["data.scheme=IOB2"])
    ds = datasets.Dataset.from_dict({"tokens": [["a", "b", "c"], ["d", "e"]],
                                     "ner_tags": [["O", "I-PER", "I-PER"], ["I-LOC", "O"]]})
    task = TagTask(recipe)
    data = task.setup({"train": ds, "dev": ds}, tmp_path)
    err = capsys.readouterr().err
    assert "warning: train data: 2 malformed tags for IOB2" in err
    assert "I-PER after O ×1 (first in sentence 1)" in err and "I-LOC at sentence start ×1 (first in sentence 2)" in err
    # read like conlleval: the stray I- tags open entities
    assert [task.labels[i] for i in data["train"].cols["target"].row(0)] == ["O", "B-PER", "E-PER"]


def test_entity_types_unseen_in_training_warn(tmp_path, capsys):
    """A classifier refuses labels it was not trained on; a tagger can score them (as missed
    entities), but says so."""
    recipe = load_recipe(write_recipe(tmp_path))
    train = datasets.Dataset.from_dict({"tokens": [["Ann", "ran"]], "ner_tags": [["B-PER", "O"]]})
    test = datasets.Dataset.from_dict({"tokens": [["Ann", "saw", "EU", "Rome"]],
                                       "ner_tags": [["B-PER", "O", "B-ORG", "B-LOC"]]})
    TagTask(recipe).setup({"train": train, "dev": train, "test": test}, tmp_path)
    err = capsys.readouterr().err
    assert "warning: test data: entity types LOC, ORG not in the training data: the model never predicts them, " \
           "so they are scored as missed" in err and "dev data" not in err


@pytest.mark.parametrize("scheme", ["auto", "BILOU"])
def test_bilou_data_is_detected_or_named_and_written_back_as_bilou(tmp_path, scheme):
    recipe = load_recipe(write_recipe(tmp_path), [f"data.scheme={scheme}"])
    sents = make_sentences(30, 4)
    ds = datasets.Dataset.from_dict({"tokens": [t for t, _ in sents],
                                     "ner_tags": [convert(g, "IOB2", "BILOU") for _, g in sents]})
    task = TagTask(recipe)
    task.setup({"train": ds, "dev": ds}, tmp_path)
    assert task.meta["source_scheme"] == "BILOU"
    torch.manual_seed(0)
    net = task.build_net()
    src = write_conll(tmp_path / "in.conll", sents)
    assert task.predict_conll(net, src, tmp_path / "out.conll", "cpu") == 30
    tags = {s.lines[i][-1][:2] for s in read_conll(tmp_path / "out.conll") for i in range(len(s.lines))}
    # an untrained net predicts some entities; written back, they use BILOU's L-/U- and never E-/S-
    assert tags <= {"O", "B-", "I-", "L-", "U-"} and tags & {"L-", "U-"}


def test_scoring_tags_for_seqeval():
    assert [scoring_tag(t) for t in ["O", "B-PER", "L-PER", "U-LOC", "PER", "E-X"]] == \
        ["O", "B-PER", "E-PER", "S-LOC", "I-PER", "E-X"]
    assert clip_word("x" * 10) == "x" * 10
    long = "a" * 20 + "b" * 20
    assert clip_word(long) == "a" * 15 + "b" * 15


# ---------------------------------------------------------------------- training and scoring

def test_training_reaches_high_f1(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["metric"] == "f1"
    assert metrics["dev"]["f1"] >= 0.9 and metrics["test"]["f1"] >= 0.9
    assert set(metrics["test"]["per_type"]) == {"PER", "LOC", "ORG"}
    meta = json.loads((trained / "meta.json").read_text())
    assert meta["source_scheme"] == "IOB2" and meta["train_scheme"] == "BIOES"
    assert meta["labels"][0] == "O" and len(meta["labels"]) == 13
    history = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert all("dev_f1" in h for h in history)


def test_save_load_reproduces_training_time_scores(trained, model):
    """The loaded model predicts exactly what the in-memory one did when metrics.json was written."""
    metrics = json.loads((trained / "metrics.json").read_text())
    again = model.evaluate(split="test")
    for key in ("f1", "precision", "recall", "token_accuracy", "predicted_entities"):
        assert again[key] == metrics["test"][key]
    twice = seqtext.load(trained, "cpu")
    texts = [" ".join(t) for t, _ in make_sentences(20, 9)]
    assert twice.predict(texts) == model.predict(texts)


def test_iob1_data_trains_and_scores_in_its_own_scheme(tmp_path):
    run = seqtext.train(write_recipe(tmp_path, "IOB1", train={"epochs": 5}), output=tmp_path / "run", quiet=True)
    m = seqtext.load(run, "cpu")
    assert m.task.meta["source_scheme"] == "IOB1"
    # the gold tags scored are the file's own IOB1 tags
    test_file = tmp_path / "data" / "test.txt"
    gold = [s.tags for s in read_conll(test_file)]
    assert any(t.startswith("B-") for g in gold for t in g) and gold[0][0] != "B-PER"
    result = m.evaluate(split="test")
    assert result["scheme"] == "IOB1" and result["f1"] >= 0.9
    strict = m.evaluate(split="test", mode="strict")
    assert strict["f1"] >= 0.9
    # output is written back in IOB1: no B- except between adjacent same-type chunks
    out = tmp_path / "out.conll"
    n = m.task.predict_conll(m.net, test_file, out, m.device)
    assert n == 60
    pred = [s.tags for s in read_conll(out)]
    for tags in pred:
        assert convert(tags, "IOB1", "IOB1") == tags


def test_strict_mode_drops_ill_formed_chunks(model):
    from seqeval.metrics import f1_score

    task = model.task
    gold = [["B-PER", "I-PER", "O", "I-LOC"]]  # a stray I-LOC: an entity for conlleval, none in strict IOB2
    pred = [["B-PER", "I-PER", "O", "O"]]
    y_true, y_pred, kw = task._scoring_tags(gold, pred, "default")
    assert kw == {} and f1_score(y_true, y_pred) == pytest.approx(2 / 3)
    y_true, y_pred, kw = task._scoring_tags(gold, pred, "strict")
    assert kw["mode"] == "strict" and f1_score(y_true, y_pred, **kw) == 1.0


def test_padding_invariance(model):
    task, net = model.task, model.net
    short = task.encode_tokens(["Angela", "Merkel", "visited", "Paris", "."])
    long = task.encode_tokens(["The", "United", "Nations", "said", "on", "Monday", "that", "Barack", "Obama",
                               "will", "travel", "to", "Rio", "de", "Janeiro", "and", "then", "to",
                               "supercalifragilisticexpialidocious-land", "."])
    alone = task.collate_rows([short])
    mixed = task.collate_rows([long, short, long])
    assert mixed.chars.shape[2] > alone.chars.shape[2] and mixed.ids.shape[1] > alone.ids.shape[1]
    with torch.no_grad():
        e1 = task.emissions(net.eval(), alone)[0]
        e2 = task.emissions(net, mixed)[1, : e1.shape[0]]
    assert torch.allclose(e1, e2, atol=1e-5)
    assert task.decode(net, alone)[0] == task.decode(net, mixed)[1]


def test_char_encoder_handles_empty_and_very_long_words(model):
    task, net = model.task, model.net
    row = task.encode_tokens(["", "x" * 5000, "Paris", "\u00e9t\u00e9", "\U0001f600"])
    assert row["char_lens"] == [0, 30, 5, 3, 1]
    batch = task.collate_rows([row])
    assert batch.chars.shape == (1, 5, 30)
    with torch.no_grad():
        assert torch.isfinite(task.emissions(net, batch)).all()
    result = model.predict(["Paris " + "a" * 10000 + " Berlin", "", "   "])
    assert result[1] == {"entities": [], "tokens": [], "tags": []} and result[2]["tokens"] == []
    assert all(e["text"] == ("Paris " + "a" * 10000 + " Berlin")[e["start"]: e["end"]]
               for e in result[0]["entities"])


def test_pretrained_vectors_are_used(tmp_path):
    rng = np.random.default_rng(0)
    words = ["paris", "berlin", "visited", "works", "for", ".", "notinvocab"]
    vectors = {w: rng.normal(size=32).round(4) for w in words}
    path = tmp_path / "vectors.txt"
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()), encoding="utf-8")
    recipe = write_recipe(tmp_path, model={"pretrained_vectors": f'"{path}"', "freeze_embeddings": "true"},
                          train={"epochs": 1})
    run = seqtext.train(recipe, output=tmp_path / "run", quiet=True)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["vectors"]["vectors_found"] == 6 and meta["vectors"]["coverage"] > 0
    m = seqtext.load(run, "cpu")
    weight = m.net.embedder.words.weight
    for w in words[:-1]:
        assert torch.allclose(weight[m.task.vocab.stoi[w]], torch.tensor(vectors[w], dtype=torch.float32))


# ---------------------------------------------------------------------- CLI

def test_cli_evaluate_json(trained):
    result = CliRunner().invoke(main, ["evaluate", str(trained), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"f1", "precision", "recall", "per_type", "token_accuracy"} <= set(metrics)
    assert {"precision", "recall", "f1", "support"} == set(metrics["per_type"]["PER"])
    text = CliRunner().invoke(main, ["evaluate", str(trained), "--mode", "strict", "--split", "dev"])
    assert text.exit_code == 0 and "PER" in text.output and "f1" in text.output


def test_cli_predict_text_and_json(trained):
    text = "Angela Merkel visited Paris ."
    result = CliRunner().invoke(main, ["predict", str(trained), text])
    assert result.exit_code == 0, result.output
    assert "Angela Merkel [PER] 0-13" in result.output and "Paris [LOC] 22-27" in result.output
    result = CliRunner().invoke(main, ["predict", str(trained), "--json", text, "John Smith works for Google."])
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert lines[0]["entities"] == [{"text": "Angela Merkel", "label": "PER", "start": 0, "end": 13},
                                    {"text": "Paris", "label": "LOC", "start": 22, "end": 27}]
    assert {"text": "Google", "label": "ORG", "start": 21, "end": 27} in lines[1]["entities"]


def test_cli_predict_conll_file(trained, tmp_path):
    src = tmp_path / "in.conll"
    src.write_bytes(b"-DOCSTART- -X- O\r\n\r\nAngela NNP x\r\nMerkel NNP x\r\nvisited VBD x\r\nParis NNP x \r\n"
                    b"\r\n\r\nTom NNP x")
    out = tmp_path / "out.conll"
    result = CliRunner().invoke(main, ["predict", str(trained), "--file", str(src), "--format", "conll",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[:2] == ["-DOCSTART- -X- O O", ""]  # the document break is kept
    assert lines[2:7] == ["Angela NNP x B-PER", "Merkel NNP x I-PER", "visited VBD x O", "Paris NNP x B-LOC", ""]
    assert lines[7].startswith("Tom NNP x ")
    # consecutive document breaks (an empty document) each keep their line
    docs = tmp_path / "docs.conll"
    docs.write_text("-DOCSTART- O\n\nParis x\n\n-DOCSTART- O\n\n-DOCSTART- O\n\nTom x\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["predict", str(trained), "--file", str(docs), "--format", "conll",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    blocks = out.read_text(encoding="utf-8").strip().split("\n\n")
    assert [b.split()[0] for b in blocks] == ["-DOCSTART-", "Paris", "-DOCSTART-", "-DOCSTART-", "Tom"]
    # stdout when no --output; missing input file → one-line error, exit 2
    result = CliRunner().invoke(main, ["predict", str(trained), "--file", str(src), "--format", "conll"])
    assert "Paris NNP x B-LOC" in result.output and result.output.endswith("O\n\n")
    result = CliRunner().invoke(main, ["predict", str(trained), "--file", str(tmp_path / "nope.conll"),
                                       "--format", "conll", "--output", str(out)])
    assert result.exit_code == 2 and "nope.conll: no such file" in result.output


def test_evaluate_data_file_without_token_lists_names_the_file(trained, tmp_path):
    bad = tmp_path / "reviews.jsonl"
    bad.write_text(json.dumps({"text": "a film", "label": "pos"}) + "\n")
    result = CliRunner().invoke(main, ["evaluate", str(trained), "--data", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {bad}: has no column 'tokens' (columns: text, label)")


# ---------------------------------------------------------------------- ensembles

def test_ensemble_of_copies_predicts_like_its_member(model):
    from seqtext.tasks.base import Ensemble

    task, net = model.task, model.net
    twin = task.build_member()
    twin.load_state_dict(net.state_dict())
    batch = task.collate_rows([task.encode_tokens(t) for t, _ in make_sentences(12, 5)])
    ensemble = Ensemble([net, twin]).eval()
    assert task.decode(ensemble, batch) == task.decode(net, batch)
    torch.testing.assert_close(task.emissions(ensemble, batch), task.emissions(net, batch))


def test_ensemble_averages_scores_and_transitions(model):
    """Decoding an ensemble = Viterbi over the members' mean tag scores and mean transitions."""
    from seqtext.nn.crf import CRF
    from seqtext.tasks.base import Ensemble

    task, net = model.task, model.net
    other = task.build_member()
    torch.manual_seed(3)
    with torch.no_grad():
        for p, q in zip(other.parameters(), net.parameters()):
            p.copy_(q + 0.5 * torch.randn_like(q))
    ensemble = Ensemble([net, other]).eval()
    batch = task.collate_rows([task.encode_tokens(t) for t, _ in make_sentences(12, 6)])
    with torch.no_grad():
        mean = (task.emissions(net.eval(), batch) + task.emissions(other.eval(), batch)) / 2
        trans, start, end = (torch.stack(x).mean(0) for x in zip(net.head.crf._scores(), other.head.crf._scores()))
    expected = CRF(len(task.labels)).decode(mean, batch.mask, (trans, start, end))
    assert task.decode(ensemble, batch) == [[task.labels[i] for i in p] for p in expected]
    assert task.decode(ensemble, batch) != task.decode(other, batch)  # the average is not one member


def test_ensemble_training_resume_and_model_directory(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, model={"ensemble": 2})
    out = tmp_path / "ens"
    real, calls = TagTask.loss, {"n": 0}

    def dying(self, net, batch):  # dies in the second member's first epoch
        calls["n"] += 1
        if calls["n"] == 6 * 15 + 5:
            raise KeyboardInterrupt
        return real(self, net, batch)

    monkeypatch.setattr(TagTask, "loss", dying)
    with pytest.raises(seqtext.errors.Interrupted):
        seqtext.train(recipe, output=out, quiet=True)
    monkeypatch.undo()
    first = (out / "members" / "1" / "weights.safetensors").stat().st_mtime_ns
    assert not (out / "members" / "2" / "metrics.json").exists()
    seqtext.train(recipe, output=out, resume=True, quiet=True)
    assert (out / "members" / "1" / "weights.safetensors").stat().st_mtime_ns == first  # not retrained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["members"] == 2 and metrics["test"]["f1"] >= 0.9
    model = seqtext.load(out, "cpu")
    assert len(model.net.members) == 2
    members = [seqtext.load(out / "members" / str(i), "cpu") for i in (1, 2)]
    seeds = [m.recipe.train.seed for m in members]
    assert seeds == [1, 2]
    texts = ["Angela Merkel visited Paris ."]
    assert model.predict(texts)[0]["entities"] == [
        {"text": "Angela Merkel", "label": "PER", "start": 0, "end": 13},
        {"text": "Paris", "label": "LOC", "start": 22, "end": 27}]
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_ner", config={"model": str(out)})
    assert [(e.text, e.label_) for e in nlp("Angela Merkel visited Paris .").ents] == [
        ("Angela Merkel", "PER"), ("Paris", "LOC")]
    with pytest.raises(SeqtextError, match="is an ensemble of 2 models; initialise from one of them"):
        importlib.import_module("seqtext.train").init_from(members[0].net, str(out), "tag")
    result = CliRunner().invoke(main, ["evaluate", str(out), "--json", "--split", "test"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["f1"] == metrics["test"]["f1"]
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "ensemble: 2 taggers (seeds 1-2)" in info.output


def test_ensemble_is_for_classifiers_and_taggers_only(tmp_path):
    from test_lm import lm_recipe

    with pytest.raises(SeqtextError, match=r"\[model\] ensemble: only classify and tag models"):
        seqtext.train(load_recipe(lm_recipe(tmp_path, ensemble=2)), quiet=True)


def test_ensemble_members_train_in_parallel_processes(tmp_path):
    recipe = write_recipe(tmp_path, model={"ensemble": 2}, train={"parallel_members": 2, "threads": 2})
    out = seqtext.train(recipe, output=tmp_path / "par", quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["parallel_members"] == 2 and metrics["test"]["f1"] >= 0.9
    for i in (1, 2):
        member = seqtext.load(out / "members" / str(i), "cpu")
        assert member.recipe.train.seed == i and member.recipe.train.threads == 1
    # the same members trained one after the other give the same weights
    serial = seqtext.train(recipe, ["train.parallel_members=1", "train.threads=1"], output=tmp_path / "ser",
                           quiet=True)
    a, b = (load_state_dict(d / "members" / "2" / "weights.safetensors") for d in (out, serial))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- document context

def test_pack_sentences_keeps_documents_and_the_token_cap():
    from seqtext.tasks.tag import pack_sentences

    lengths = np.array([3, 4, 2, 9, 1, 1, 12, 2])
    docs = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = [g.tolist() for g in pack_sentences(lengths, docs, 9)]
    # greedy in order; never across a document; a sentence over the cap is a run of its own
    assert groups == [[0, 1, 2], [3], [4, 5], [6], [7]]
    assert [g.tolist() for g in pack_sentences(lengths, docs, 100)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert pack_sentences(np.array([], dtype=int), np.array([], dtype=int), 10) == []


def test_split_tags_closes_entities_at_sentence_ends():
    from seqtext.tasks.tag import _split_tags

    # an entity the packed run carried over a sentence break becomes one entity per sentence
    tags = ["S-PER", "O", "B-LOC", "E-LOC", "O"]
    assert _split_tags(tags, np.array([3, 2])) == [["S-PER", "O", "S-LOC"], ["S-LOC", "O"]]
    assert _split_tags(tags, np.array([5])) == [tags]


def _write_documents(path: Path, sentences, per_doc: int) -> Path:
    lines = []
    for i, (tokens, tags) in enumerate(sentences):
        if i % per_doc == 0:
            lines += ["-DOCSTART- -X- -X- O", ""]
        lines += [f"{tok} NNP I-NP {tag}" for tok, tag in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_document_context_trains_scores_and_writes_per_sentence(tmp_path, monkeypatch):
    """With [data] context_tokens the encoder sees runs of neighbouring sentences of a document;
    scores count sentences, and CoNLL output keeps one block per input sentence."""
    recipe = write_recipe(tmp_path, train={"batch_tokens": 160, "batch_size": 1})
    data = tmp_path / "data"
    for name, (n, seed) in {"train.txt": (240, 1), "valid.txt": (50, 2), "test.txt": (60, 3)}.items():
        _write_documents(data / name, make_sentences(n, seed), per_doc=7)
    recipe.write_text(recipe.read_text().replace("[data]\n", "[data]\ncontext_tokens = 40\n"))
    run = seqtext.train(recipe, output=tmp_path / "run", quiet=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["f1"] >= 0.9 and metrics["test"]["sentences"] == 60
    m = seqtext.load(run, "cpu")
    task = m.task
    splits = task.setup(load_splits(task.recipe, None), tmp_path)
    test = splits["test"]
    assert len(test.sentences) == 60 and len(test) < 60  # runs of several sentences
    assert all(test.lengths[i] <= 40 or len(g) == 1 for i, g in enumerate(test.groups))
    assert m.evaluate(split="test")["f1"] == metrics["test"]["f1"]

    # predict_conll packs sentences of a document together, as in training, and writes them back apart
    seen: list[int] = []
    collate = task.collate_rows
    monkeypatch.setattr(task, "collate_rows", lambda rows: seen.extend(len(r["ids"]) for r in rows) or collate(rows))
    out = tmp_path / "out.conll"
    assert task.predict_conll(m.net, data / "test.txt", out, m.device) == 60
    assert out.read_text().count("-DOCSTART-") == (data / "test.txt").read_text().count("-DOCSTART-") > 0
    gold = list(read_conll(data / "test.txt"))
    pred = list(read_conll(out))
    assert [p.tokens for p in pred] == [g.tokens for g in gold]
    assert max(seen) > max(len(g.tokens) for g in gold) and len(seen) < 60
    correct = sum(p.tags == g.tags for p, g in zip(pred, gold))
    assert correct >= 50

    # the neighbours are context: a sentence's scores differ alone and inside its run
    first, second = (task.encode_tokens(g.tokens) for g in gold[:2])
    from seqtext.tasks.tag import _concat_rows

    with torch.no_grad():
        alone = task.emissions(m.net.eval(), task.collate_rows([second]))[0]
        packed = task.emissions(m.net, task.collate_rows([_concat_rows([first, second])]))[0, len(first["ids"]):]
    assert not torch.allclose(alone, packed)
