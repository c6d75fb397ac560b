"""spaCy integration: seqtext_ner / seqtext_textcat components, pipeline round trips, export-spacy,
entry points, the seqtext.BiLSTMEncoder.v1 tok2vec architecture and a real `spacy train` run."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spacy
import torch
from click.testing import CliRunner
from conftest import cpu_runs_bf16, make_tagged_sentences, tiny_recipe
from spacy.tokens import Doc, DocBin
from spacy.training import Example, biluo_tags_to_spans, iob_to_biluo
from test_tag import write_conll

import seqtext
from seqtext.cli import main
from seqtext.errors import SeqtextError
from seqtext.spacy_ext import export_pipeline

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "recipes" / "spacy" / "ner_bilstm.cfg"

NAMES = {
    "PER": ["Angela Merkel", "John Smith", "Maria", "Peter Blackburn", "Li Wei"],
    "LOC": ["Paris", "New York", "Berlin", "Tokyo", "Kenya", "London"],
    "ORG": ["United Nations", "Google", "Reuters", "Siemens"],
}
TEMPLATES = ["{PER} visited {LOC} .", "{PER} works for {ORG} in {LOC} .", "In {LOC} , {PER} met {PER} .",
             "{ORG} shares rose 3 percent .", "It rained all day .", "{PER} and {PER} left {ORG} ."]
NER_TEXTS = ["John Smith visited Paris.", "Angela Merkel works for Google in  New York .", "", "   ",
             "It rained all day.", "In Berlin, Maria met Li Wei.", "Siemens shares rose 3 percent .\n",
             "Peter Blackburn left London"]
CLS_TEXTS = ["A wonderful, moving film.", "Dull and far too long.", "", "the plot was superb and fun",
             "awful cast, boring story", "It was a film."]


def make_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    return make_tagged_sentences(n, seed, TEMPLATES, NAMES)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Path:
    """A tiny tagger (char CNN + casing + BiLSTM + CRF) trained in a few seconds."""
    tmp = tmp_path_factory.mktemp("spacy_ner")
    train = write_conll(tmp / "data" / "train.txt", make_sentences(200, 1))
    test = write_conll(tmp / "data" / "test.txt", make_sentences(40, 2))
    recipe = tmp / "ner.toml"
    recipe.write_text(f"""task = "tag"
[data]
files = {{ train = "{train}", test = "{test}" }}
[tokenizer]
kind = "spacy"
[vocab]
min_freq = 1
[model]
embedding_dim = 16
hidden_size = 16
char_encoder = "cnn"
char_dim = 8
char_filters = 8
casing = true
[train]
epochs = 4
batch_size = 16
lr = 0.02
seed = 1
threads = 1
patience = 0
""", encoding="utf-8")
    return seqtext.train(recipe, output=tmp / "run", quiet=True)


def cli_predict(model_dir: Path, texts: list[str]) -> list[dict]:
    """What `seqtext predict MODEL_DIR TEXT ... --json` prints, one dict per text."""
    r = CliRunner().invoke(main, ["predict", str(model_dir), "--json", *texts])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def ents(doc: Doc) -> list[tuple]:
    return [(e.text, e.label_, e.start_char, e.end_char) for e in doc.ents]


def count_calls(monkeypatch, obj, name: str) -> list[int]:
    """Record the batch size of every call to ``obj.name`` (its second positional argument)."""
    calls: list[int] = []
    original = getattr(obj, name)

    def spy(net, items, *a, **kw):
        calls.append(len(items))
        return original(net, items, *a, **kw)

    monkeypatch.setattr(obj, name, spy)
    return calls


# ---------------------------------------------------------------------- components

def test_ner_component_matches_cli_and_batches(ner_run, monkeypatch):
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    expected = [[(e["text"], e["label"], e["start"], e["end"]) for e in r["entities"]]
                for r in cli_predict(ner_run, NER_TEXTS)]
    assert sum(map(len, expected)) >= 5  # the tiny model does find entities: the check is not vacuous

    calls = count_calls(monkeypatch, ner.seqtext_model.task, "tag_tokens")
    docs = list(nlp.pipe(NER_TEXTS, batch_size=3))
    assert calls == [2, 2, 2]  # one model run per batch of docs, not one per doc (blank docs skip it)
    assert [ents(d) for d in docs] == expected
    assert [ents(nlp(t)) for t in NER_TEXTS] == expected
    assert all(isinstance(e.label_, str) and e.label_ in ner.labels for d in docs for e in d.ents)
    assert set(ner.labels) == {"LOC", "ORG", "PER"}
    # no token dropped: the doc keeps spaCy's tokenization, whitespace tokens included
    assert [t.text for t in docs[1]] == [t.text for t in spacy.blank("en")(NER_TEXTS[1])]


def test_ner_component_tags_sentences_separately(ner_run, monkeypatch):
    first, second = "John Smith visited Paris.", "Maria works for Google in London."
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ner = nlp.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    calls = count_calls(monkeypatch, ner.seqtext_model.task, "tag_tokens")
    doc = nlp(f"{first} {second}")
    assert calls == [2]  # two sequences, in one batch
    a, b = cli_predict(ner_run, [first, second])
    shift = len(first) + 1
    expected = [(e["text"], e["label"], e["start"], e["end"]) for e in a["entities"]] + \
        [(e["text"], e["label"], e["start"] + shift, e["end"] + shift) for e in b["entities"]]
    assert ents(doc) == expected and expected


def test_ner_component_and_predict_split_raw_text_into_sentences(ner_run, monkeypatch):
    """Without sentence boundaries on the doc, the component and `seqtext predict` both split the
    text as spaCy's sentencizer would, and agree; per_sentence=False tags the doc whole."""
    first, second = "John Smith visited Paris.", "Maria works for Google in London."
    a, b = cli_predict(ner_run, [first, second])
    shift = len(first) + 1
    separate = [(e["text"], e["label"], e["start"], e["end"]) for e in a["entities"]] + \
        [(e["text"], e["label"], e["start"] + shift, e["end"] + shift) for e in b["entities"]]
    both = cli_predict(ner_run, [f"{first} {second}"])[0]
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in both["entities"]] == separate and separate
    assert both["tokens"] == a["tokens"] + b["tokens"] and both["tags"] == a["tags"] + b["tags"]
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    calls = count_calls(monkeypatch, ner.seqtext_model.task, "tag_tokens")
    doc = nlp(f"{first} {second}")
    assert calls == [2] and ents(doc) == separate and not doc.has_annotation("SENT_START")
    whole = spacy.blank("en")
    ner = whole.add_pipe("seqtext_ner", config={"model": str(ner_run), "per_sentence": False})
    calls = count_calls(monkeypatch, ner.seqtext_model.task, "tag_tokens")
    whole(f"{first} {second}")
    assert calls == [1]


def test_ner_component_and_predict_split_at_blank_lines(ner_run, monkeypatch):
    """A blank line ends a sentence (a heading, a list item without a full stop): no entity spans
    it, and each paragraph is tagged as on its own, by the component and by `seqtext predict`."""
    first, second = "Maria", "John Smith visited Paris ."
    a, b = cli_predict(ner_run, [first, second])
    shift = len(first) + 2
    separate = [(e["text"], e["label"], e["start"], e["end"]) for e in a["entities"]] + \
        [(e["text"], e["label"], e["start"] + shift, e["end"] + shift) for e in b["entities"]]
    text = f"{first}\n\n{second}"
    both = cli_predict(ner_run, [text])[0]
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in both["entities"]] == separate and separate
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    calls = count_calls(monkeypatch, ner.seqtext_model.task, "tag_tokens")
    assert ents(nlp(text)) == separate
    assert calls == [2]  # two sequences, one per paragraph


def test_ner_component_keeps_preset_entities_and_aligns_by_chars(ner_run):
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "CITY", "pattern": "Paris"}])
    nlp.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    doc = nlp("John Smith visited Paris.")
    assert ("Paris", "CITY", 19, 24) in ents(doc)

    # A doc tokenized differently from the model ("Paris." as one token): tokenization="model"
    # tags the model's own tokens and widens entities to whole doc tokens.
    words = ["John", "Smith", "visited", "Paris."]
    expected = cli_predict(ner_run, ["John Smith visited Paris."])[0]["entities"]
    nlp2 = spacy.blank("en")
    nlp2.add_pipe("seqtext_ner", config={"model": str(ner_run), "tokenization": "model"})
    doc = nlp2(Doc(nlp2.vocab, words=words))
    assert len(doc) == 4
    assert [(e.label_, e.start_char) for e in doc.ents] == [(e["label"], e["start"]) for e in expected]
    assert all(e.end_char >= x["end"] for e, x in zip(doc.ents, expected))


WORKERS = """
import json, os, sys, spacy, torch
from spacy.language import Language

@Language.component("threads")
def threads(doc):
    doc.user_data["threads"], doc.user_data["pid"] = torch.get_num_threads(), os.getpid()
    return doc

torch.set_num_threads(2)  # OpenMP threads in the parent, even on a one-core machine
nlp = spacy.blank("en")
nlp.add_pipe("seqtext_ner", config={"model": sys.argv[1]})
nlp.add_pipe("seqtext_textcat", config={"model": sys.argv[2]})
nlp.add_pipe("threads")
texts = ["John Smith visited Paris.", "", "Maria met Li Wei in Berlin .", "a wonderful film"] * 4
here = [([e.text for e in d.ents], d.cats) for d in nlp.pipe(texts)]  # the parent runs the models first
docs = list(nlp.pipe(texts, n_process=2, batch_size=3))
print(json.dumps({"same": [([e.text for e in d.ents], d.cats) for d in docs] == here,
                  "threads": sorted({d.user_data["threads"] for d in docs}),
                  "workers": len({d.user_data["pid"] for d in docs} - {os.getpid()}),
                  "parent_threads": torch.get_num_threads()}))
"""


def test_nlp_pipe_with_worker_processes(ner_run, trained_demo):
    """nlp.pipe(n_process=2) after the parent has run the models: forked workers used to hang in
    torch's OpenMP pool (inherited from the parent); each worker now runs torch on one thread,
    which also keeps n_process workers from running n_process × cores threads."""
    proc = subprocess.Popen([sys.executable, "-c", WORKERS, str(ner_run), str(trained_demo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the hung workers too
        proc.communicate()
        pytest.fail("nlp.pipe(n_process=2) hung")
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.splitlines()[-1])
    assert out == {"same": True, "threads": [1], "workers": 2, "parent_threads": 2}


def test_ner_component_respects_blocked_tokens(ner_run):
    """Tokens set as blocked (doc.set_ents(..., blocked=...): never an entity) get no predicted
    entity and stay blocked, as with spaCy's own ner."""
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    text = "John Smith visited Paris."
    free = ents(nlp(text))
    assert [e[:2] for e in free] == [("John Smith", "PER"), ("Paris", "LOC")]
    doc = nlp.make_doc(text)
    doc.set_ents([], blocked=[doc[0:2]])
    ner(doc)
    assert ents(doc) == free[1:]
    assert [(t.ent_iob, t.ent_type) for t in doc[0:2]] == [(3, 0), (3, 0)]  # still blocked


def test_textcat_component_matches_cli_and_batches(trained_demo, monkeypatch):
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("seqtext_textcat", config={"model": str(trained_demo), "batch_size": 4})
    expected = [r["probs"] for r in cli_predict(trained_demo, CLS_TEXTS)]
    calls = count_calls(monkeypatch, textcat.seqtext_model.task, "predict")
    docs = list(nlp.pipe(CLS_TEXTS, batch_size=4))
    assert calls == [4, 2]
    for doc, probs in zip(docs, expected):
        assert doc.cats == pytest.approx(probs, abs=1e-5)
        assert sum(doc.cats.values()) == pytest.approx(1.0, abs=1e-5)
    assert nlp(CLS_TEXTS[0]).cats == pytest.approx(expected[0], abs=1e-5)
    assert textcat.labels == ("neg", "pos")


def test_nlp_evaluate_scores_the_components(ner_run, trained_demo):
    """nlp.evaluate (and `spacy evaluate`) score seqtext's components with spaCy's scorers: against
    gold annotations made from the components' own output minus one entity (one label flipped),
    the scores come out as counted by hand."""
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    predicted = [nlp(t) for t in NER_TEXTS]
    found = sum(len(d.ents) for d in predicted)
    assert found >= 5
    examples = []
    for i, doc in enumerate(predicted):
        gold = nlp.make_doc(doc.text)
        spans = [(e.start_char, e.end_char, e.label_) for e in doc.ents]
        if i == 0:
            spans = spans[1:]  # one predicted entity is not in the gold annotation
        examples.append(Example.from_dict(gold, {"entities": spans}))
    scores = nlp.evaluate(examples)
    assert scores["ents_p"] == pytest.approx((found - 1) / found)
    assert scores["ents_r"] == pytest.approx(1.0)

    clf = spacy.blank("en")
    clf.add_pipe("seqtext_textcat", config={"model": str(trained_demo)})
    docs = [clf(t) for t in CLS_TEXTS]
    flipped = {0: "pos", 1: "neg"}
    examples = []
    for i, doc in enumerate(docs):
        label = max(doc.cats, key=doc.cats.get)
        if i == 0:
            label = flipped[label == "pos"]  # the first gold label disagrees with the prediction
        examples.append(Example.from_dict(clf.make_doc(doc.text), {"cats": {c: float(c == label) for c in doc.cats}}))
    scores = clf.evaluate(examples)
    assert scores["cats_score_desc"] == "macro F"
    gold = [max(e.reference.cats, key=e.reference.cats.get) for e in examples]
    guess = [max(d.cats, key=d.cats.get) for d in docs]
    from sklearn.metrics import f1_score

    assert scores["cats_score"] == pytest.approx(f1_score(gold, guess, average="macro"))


def test_component_errors(ner_run, trained_demo, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_ner", config={"model": str(tmp_path / "missing")})
    with pytest.raises(SeqtextError, match="no such model directory"):
        nlp("Paris")
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_textcat", config={"model": str(ner_run)})
    with pytest.raises(SeqtextError, match="use the seqtext_ner component"):
        nlp("Paris")
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_ner")
    with pytest.raises(SeqtextError, match="no model"):
        nlp("Paris")
    with pytest.raises(SeqtextError, match="tokenization"):
        spacy.blank("en").add_pipe("seqtext_ner", config={"tokenization": "chars"})
    with pytest.raises(SeqtextError, match=r"batch_size must be an integer ≥ 1, got '8'"):
        spacy.blank("en").add_pipe("seqtext_ner", config={"model": str(ner_run), "batch_size": "8"})
    with pytest.raises(SeqtextError, match=r"pipe batch_size must be an integer ≥ 1, got 0"):
        list(spacy.blank("en").add_pipe("seqtext_ner", config={"model": str(ner_run)}).pipe([], batch_size=0))
    with pytest.raises(SeqtextError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        spacy.blank("en").add_pipe("seqtext_ner", config={"model": str(ner_run), "device": "gpu"})
    nlp = spacy.blank("en")  # the values seqtext.load takes, in any case
    nlp.add_pipe("seqtext_ner", config={"model": str(ner_run), "device": "CPU"})
    assert nlp("Paris").ents is not None
    # a saved pipeline's component is not a training run: no "--resume" advice for its files
    nlp.to_disk(tmp_path / "pipe")
    (tmp_path / "pipe" / "seqtext_ner" / "weights.safetensors").unlink()
    with pytest.raises(SeqtextError, match=r"incomplete model directory, missing weights\.safetensors$"):
        spacy.load(tmp_path / "pipe")


def test_a_spacy_pipeline_as_model_says_to_spacy_load_it(ner_run, tmp_path):
    export_pipeline(ner_run, tmp_path / "pipeline")
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_ner", config={"model": str(tmp_path / "pipeline")})
    with pytest.raises(SeqtextError, match=r"pipeline: is a spaCy pipeline directory, not a seqtext model; open it "
                                           r"with spacy.load\(.*pipeline'\)$"):
        nlp("Paris")


# ---------------------------------------------------------------------- serialization

def test_pipeline_round_trip_without_run_dirs(ner_run, trained_demo, tmp_path):
    ner_copy = shutil.copytree(ner_run, tmp_path / "runs" / "ner")
    cls_copy = shutil.copytree(trained_demo, tmp_path / "runs" / "cls")
    unrun = spacy.blank("en")  # saved before its first run: meta.json still lists the labels
    unrun.add_pipe("seqtext_ner", config={"model": str(ner_copy)})
    unrun.to_disk(tmp_path / "unrun")
    saved_labels = json.loads((tmp_path / "unrun" / "meta.json").read_text())["labels"]
    assert saved_labels == {"seqtext_ner": ["LOC", "ORG", "PER"]}
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_ner", config={"model": str(ner_copy)})
    nlp.add_pipe("seqtext_textcat", config={"model": str(cls_copy)})
    texts = NER_TEXTS + CLS_TEXTS
    before = list(nlp.pipe(texts))
    nlp.to_disk(tmp_path / "pipeline")
    data = nlp.to_bytes()
    shutil.rmtree(tmp_path / "runs")  # the saved pipeline must not need the original runs

    files = {p.relative_to(tmp_path / "pipeline").as_posix() for p in (tmp_path / "pipeline").rglob("*")}
    assert {"seqtext_ner/weights.safetensors", "seqtext_ner/vocab.txt", "seqtext_ner/recipe.toml",
            "seqtext_ner/meta.json", "seqtext_textcat/weights.safetensors"} <= files
    # the components hold exactly the model directory's files (spaCy's own vocab/ and tokenizer are msgpack)
    assert {f for f in files if f.startswith("seqtext_ner/")} == \
        {"seqtext_ner/" + n for n in ("recipe.toml", "meta.json", "vocab.txt", "weights.safetensors")}

    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.pipe_names == ["seqtext_ner", "seqtext_textcat"]
    assert json.loads((tmp_path / "pipeline" / "meta.json").read_text())["labels"] == \
        {"seqtext_ner": ["LOC", "ORG", "PER"], "seqtext_textcat": ["neg", "pos"]}
    after = list(loaded.pipe(texts))
    assert [ents(d) for d in after] == [ents(d) for d in before]
    assert [d.cats for d in after] == [d.cats for d in before]
    assert loaded.meta["labels"]["seqtext_ner"] == ["LOC", "ORG", "PER"]

    # to_bytes / from_bytes (msgpack of the same files) and saving a loaded pipeline again
    fresh = spacy.blank("en")
    fresh.add_pipe("seqtext_ner")
    fresh.add_pipe("seqtext_textcat")
    fresh.from_bytes(data)
    assert [ents(d) for d in fresh.pipe(texts)] == [ents(d) for d in before]
    loaded.to_disk(tmp_path / "again")
    assert [d.cats for d in spacy.load(tmp_path / "again").pipe(texts)] == [d.cats for d in before]


def test_components_run_in_bf16_when_asked(ner_run, trained_demo, tmp_path):
    """bf16=True runs the encoders under bf16 autocast (the tagger's Viterbi and the classifier's
    softmax still get fp32 scores), finds the same entities as fp32 here, and survives to_disk."""
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("seqtext_ner", config={"model": str(ner_run), "bf16": True})
    cat = nlp.add_pipe("seqtext_textcat", config={"model": str(trained_demo), "bf16": True})
    fp32 = spacy.blank("en")
    fp32.add_pipe("seqtext_ner", config={"model": str(ner_run)})
    fp32.add_pipe("seqtext_textcat", config={"model": str(trained_demo)})

    encoded, decoded = [], []
    for component in (ner, cat):
        component.seqtext_model.net.encoder.register_forward_hook(
            # the tagger takes the directions apart: (forward, backward) states
            lambda module, args, out: encoded.extend(t.dtype for t in (out[0] if isinstance(out[0], tuple)
                                                                       else [out[0]])))
    head = ner.seqtext_model.net.head
    original_decode = head.decode
    head.decode = lambda scores, *a: decoded.append(scores.dtype) or original_decode(scores, *a)

    texts = NER_TEXTS + CLS_TEXTS
    docs, reference = list(nlp.pipe(texts)), list(fp32.pipe(texts))
    assert encoded and set(encoded) == {torch.bfloat16 if cpu_runs_bf16() else torch.float32}
    assert decoded and set(decoded) == {torch.float32}
    assert [ents(d) for d in docs] == [ents(d) for d in reference]
    assert sum(len(d.ents) for d in docs) >= 5
    for d, r in zip(docs, reference):
        assert d.cats.keys() == r.cats.keys()
        assert all(abs(d.cats[k] - r.cats[k]) < 0.05 for k in d.cats)
        if d.cats:
            assert abs(sum(d.cats.values()) - 1) < 1e-5

    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("seqtext_ner").bf16 and loaded.get_pipe("seqtext_textcat").bf16  # the setting
    assert loaded.get_pipe("seqtext_ner").seqtext_model.bf16 == cpu_runs_bf16()  # what runs
    assert not fp32.get_pipe("seqtext_ner").seqtext_model.bf16


def test_cli_bf16_predict_and_evaluate(ner_run):
    runner = CliRunner()
    plain = runner.invoke(main, ["predict", str(ner_run), "--json", *NER_TEXTS[:2]])
    bf16 = runner.invoke(main, ["predict", str(ner_run), "--json", "--bf16", *NER_TEXTS[:2]])
    assert plain.exit_code == 0 and bf16.exit_code == 0, bf16.output
    assert bf16.stdout == plain.stdout
    scores = [json.loads(runner.invoke(main, ["evaluate", str(ner_run), "--json", *flag]).stdout)
              for flag in ([], ["--bf16"])]
    assert abs(scores[0]["f1"] - scores[1]["f1"]) < 0.05
    assert seqtext.load(ner_run, "cpu", bf16=True).bf16 == cpu_runs_bf16()


def test_sentencepiece_classifier_round_trip(tmp_path):
    recipe = tiny_recipe(tmp_path, tokenizer={"kind": '"sentencepiece"', "vocab_size": "100"}, train={"epochs": "1"})
    run = seqtext.train(recipe, output=tmp_path / "run", quiet=True)
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_textcat", config={"model": str(run)})
    before = [d.cats for d in nlp.pipe(CLS_TEXTS)]
    nlp.to_disk(tmp_path / "pipeline")
    shutil.rmtree(run)
    assert (tmp_path / "pipeline" / "seqtext_textcat" / "tokenizer.model").is_file()
    assert [d.cats for d in spacy.load(tmp_path / "pipeline").pipe(CLS_TEXTS)] == before


def test_export_spacy_cli(ner_run, trained_demo, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out" / "ner_pipeline"
    r = runner.invoke(main, ["export-spacy", str(ner_run), str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    nlp = spacy.load(out)
    assert nlp.pipe_names == ["seqtext_ner"] and nlp.config["components"]["seqtext_ner"]["model"] == ""
    expected = [[(e["text"], e["label"], e["start"], e["end"]) for e in x["entities"]]
                for x in cli_predict(ner_run, NER_TEXTS)]
    assert [ents(d) for d in nlp.pipe(NER_TEXTS)] == expected

    r = runner.invoke(main, ["export-spacy", str(trained_demo), str(out)])
    assert r.exit_code == 2 and "not empty" in r.output and "--force" in r.output
    r = runner.invoke(main, ["export-spacy", str(trained_demo), str(out), "--force"])
    assert r.exit_code == 0, r.output
    assert spacy.load(out).pipe_names == ["seqtext_textcat"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind

    lm = shutil.copytree(ner_run, tmp_path / "lm")
    (lm / "meta.json").write_text(json.dumps({"task": "lm"}))
    r = runner.invoke(main, ["export-spacy", str(lm), str(tmp_path / "x")])
    assert r.exit_code == 2 and "'lm' model" in r.output
    r = runner.invoke(main, ["export-spacy", str(ner_run), str(tmp_path / "y"), "--lang", "zz"])
    assert r.exit_code == 2 and "no language 'zz'" in r.output
    r = runner.invoke(main, ["export-spacy", str(tmp_path / "nope"), str(tmp_path / "z")])
    assert r.exit_code == 2 and "no such model directory" in r.output
    # --force never replaces the model being exported, nor a folder holding it (and other runs)
    run = shutil.copytree(ner_run, tmp_path / "runs" / "ner")
    for target in (run, run.parent):
        r = runner.invoke(main, ["export-spacy", str(run), str(target), "--force"])
        assert r.exit_code == 2 and "holds the model" in r.output and (run / "weights.safetensors").is_file()
    r = runner.invoke(main, ["export-spacy", str(run), str(run / "pipeline")])
    assert r.exit_code == 2 and "is inside the model" in r.output and not (run / "pipeline").exists()
    # OUT_DIR "." (the current directory): its temporary folders go beside it, not inside
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (here / "old.txt").write_text("replaced by --force")
    cwd = os.getcwd()
    try:
        os.chdir(here)
        r = runner.invoke(main, ["export-spacy", str(run), ".", "--force"])
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    assert spacy.load(here).pipe_names == ["seqtext_ner"] and not (here / "old.txt").exists()
    assert sorted(p.name for p in here.parent.iterdir()) == ["here"]


def test_export_spacy_directory_has_the_usual_permissions(ner_run, tmp_path):
    """The pipeline directory is readable by others as any directory made under the umask (it was
    a private 0700 temporary directory renamed into place, also when replacing one with --force)."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "pipeline"
        export_pipeline(ner_run, out)
        assert out.stat().st_mode & 0o777 == 0o755
        assert (out / "seqtext_ner").stat().st_mode & 0o777 == 0o755
        os.umask(0o027)
        export_pipeline(ner_run, out, force=True)
        assert out.stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old)


def test_entry_points_in_a_fresh_process():
    code = (
        "import sys, spacy\n"
        "assert 'seqtext' not in sys.modules\n"
        "assert spacy.registry.architectures.get('seqtext.BiLSTMEncoder.v1').__module__ == 'seqtext.spacy_ext'\n"
        "nlp = spacy.blank('en')\n"  # a Language instance loads the spacy_factories entry points
        "assert spacy.registry.factories.get('seqtext_ner').__module__ == 'seqtext.spacy_ext'\n"
        "assert spacy.registry.factories.get('seqtext_textcat')\n"
        "nlp.add_pipe('seqtext_textcat')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ---------------------------------------------------------------------- tok2vec architecture

def test_encoder_architecture_gradients_and_serialization():
    from thinc.api import Adam

    make = spacy.registry.architectures.get("seqtext.BiLSTMEncoder.v1")
    nlp = spacy.blank("en")
    docs = [nlp("John Smith visited Paris ."), nlp(""), nlp("It rained all day in  New York .")]
    model = make(width=8, depth=2, embed_size=100, embed_dim=6, dropout=0.0)
    model.initialize(X=docs)
    assert model.get_dim("nO") == 16
    Y, backprop = model.begin_update(docs)
    assert [y.shape for y in Y] == [(len(d), 16) for d in docs] and Y[0].dtype == np.float32
    module = model.layers[0].shims[0]._model
    before = {k: v.clone() for k, v in module.state_dict().items()}
    backprop([np.ones_like(y) for y in Y])
    model.finish_update(Adam(0.01))
    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(before)  # every weight (embeddings, casing, both LSTM stacks) got a gradient

    predicted = model.predict(docs)
    restored = make(width=8, depth=2, embed_size=100, embed_dim=6, dropout=0.0).from_bytes(model.to_bytes())
    assert all(np.array_equal(a, b) for a, b in zip(predicted, restored.predict(docs)))
    with pytest.raises(SeqtextError, match="width and depth"):
        make(width=0)
    with pytest.raises(SeqtextError, match=r"width must be an integer, got '64'"):
        make(width="64")


def test_encoder_init_from_a_seqtext_run(ner_run, tmp_path):
    make = spacy.registry.architectures.get("seqtext.BiLSTMEncoder.v1")
    source = shutil.copytree(ner_run, tmp_path / "source")
    nlp = spacy.blank("en")
    docs = [nlp("John Smith visited Paris in 1996 ."), nlp("It rained all day in New York .")]
    model = make(width=16, depth=1, init_from=str(source))
    model.initialize(X=docs)
    out = model.predict(docs)

    # Same vectors as the source tagger's own encoder on the same words (vocab, digits, chars, casing).
    src = seqtext.load(source, "cpu")
    batch = src.task.collate_rows([src.task.encode_tokens([t.text for t in d]) for d in docs])
    with torch.no_grad():
        ref, _ = src.net.encode(batch)
    for i, (o, d) in enumerate(zip(out, docs)):
        np.testing.assert_allclose(o, ref[i, : len(d)].numpy(), atol=1e-5)

    data = model.to_bytes()
    shutil.rmtree(source)  # a trained layer loads without its init_from run
    restored = make(width=16, depth=1, init_from=str(source)).from_bytes(data)
    assert all(np.array_equal(a, b) for a, b in zip(out, restored.predict(docs)))
    with pytest.raises(SeqtextError, match="set width = 16"):
        make(width=32, depth=1, init_from=str(ner_run)).initialize(X=docs)
    with pytest.raises(SeqtextError, match=r"^seqtext.BiLSTMEncoder.v1: init_from: .*nope: no such model directory"):
        make(width=16, depth=1, init_from=str(tmp_path / "nope")).initialize(X=docs)


def test_encoder_init_from_a_classifier(trained_demo):
    from seqtext.data.batching import Batch

    make = spacy.registry.architectures.get("seqtext.BiLSTMEncoder.v1")
    nlp = spacy.blank("en")
    docs = [nlp("A Wonderful film"), nlp("dull and far too long .")]
    model = make(width=64, depth=1, init_from=str(trained_demo))
    model.initialize(X=docs)
    src = seqtext.load(trained_demo, "cpu")
    ids, lengths, mask = src.task.pad_rows([src.task.vocab.encode([t.text.lower() for t in d]) for d in docs])
    with torch.no_grad():
        ref, _ = src.net.encode(Batch(ids, lengths, mask))
    for i, (o, d) in enumerate(zip(model.predict(docs), docs)):
        np.testing.assert_allclose(o, ref[i, : len(d)].numpy(), atol=1e-5)


def test_encoder_as_textcat_tok2vec():
    nlp = spacy.blank("en")
    nlp.add_pipe("textcat", config={"model": {
        "@architectures": "spacy.TextCatReduce.v1", "exclusive_classes": True, "use_reduce_first": False,
        "use_reduce_last": False, "use_reduce_max": True, "use_reduce_mean": True, "nO": None,
        "tok2vec": {"@architectures": "seqtext.BiLSTMEncoder.v1", "width": 16, "depth": 1, "embed_size": 500,
                    "dropout": 0.0}}})
    rng = random.Random(0)
    examples = []
    for i in range(40):
        label = i % 2
        words = ["the", "film", "was", rng.choice(["great", "superb"] if label else ["awful", "dull"])]
        rng.shuffle(words)
        examples.append(Example.from_dict(nlp.make_doc(" ".join(words)),
                                          {"cats": {"pos": float(label), "neg": float(1 - label)}}))
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 0.02
    losses = []
    for _ in range(12):
        step: dict = {}
        nlp.update(examples, sgd=optimizer, losses=step)
        losses.append(step["textcat"])
    assert losses[-1] < 0.5 * losses[0]
    assert nlp("superb film").cats["pos"] > 0.5 > nlp("dull film").cats["pos"]


def test_spacy_train_with_seqtext_encoder(tmp_path):
    nlp = spacy.blank("en")
    for split, n, seed in (("train", 60, 1), ("dev", 20, 2)):
        db = DocBin()
        for words, tags in make_sentences(n, seed):
            doc = Doc(nlp.vocab, words=words)
            doc.ents = biluo_tags_to_spans(doc, iob_to_biluo(tags))
            db.add(doc)
        db.to_disk(tmp_path / f"{split}.spacy")
    out = tmp_path / "out"
    # No --code: the architecture comes from the entry point. Small sizes keep it to seconds.
    cmd = [sys.executable, "-m", "spacy", "train", str(CONFIG), "--output", str(out),
           "--paths.train", str(tmp_path / "train.spacy"), "--paths.dev", str(tmp_path / "dev.spacy"),
           "--training.max_steps", "20", "--training.eval_frequency", "10",
           "--components.ner.model.tok2vec.width", "16", "--components.ner.model.tok2vec.embed_size", "500",
           "--components.ner.model.tok2vec.embed_dim", "16", "--components.ner.model.hidden_width", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for name in ("model-best", "model-last"):
        trained = spacy.load(out / name)
        assert trained.pipe_names == ["ner"]
        doc = trained("John Smith visited Paris .")
        assert len(doc) == 5 and all(e.label_ in {"PER", "LOC", "ORG"} for e in doc.ents)
    # the encoder's weights are stored as safetensors (with their spec) inside spaCy's model file
    assert b"seqtext_spec" in (out / "model-last" / "ner" / "model").read_bytes()


def test_a_cuda_device_without_a_gpu_is_one_neutral_error(ner_run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    nlp = spacy.blank("en")
    nlp.add_pipe("seqtext_ner", config={"model": str(ner_run), "device": "cuda"})
    with pytest.raises(SeqtextError, match=r"^device 'cuda': no CUDA device is available") as e:
        nlp("Angela Merkel visited Paris.")
    assert "--device" not in str(e.value)  # not a CLI flag: the user set a config value
