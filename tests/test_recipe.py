from pathlib import Path

import pytest

from seqtext.errors import SeqtextError
from seqtext.recipe import apply_override, dumps_toml, load_recipe, reference_markdown


def write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_name(tmp_path):
    r = load_recipe(write(tmp_path, 'task = "classify"\n[data]\nhub = "x/y"\n', "my_run.toml"))
    assert r.name == "my_run" and r.model.hidden_size == 256 and r.train.epochs == 5
    assert str(r.output_dir) == "runs/my_run"


@pytest.mark.parametrize("text, pieces", [
    ('task = "classify"\n[model]\nhiden_size = 3\n', ["r.toml", "hiden_size", "did you mean 'hidden_size'"]),
    ('task = "classify"\n[modle]\nx = 1\n', ["r.toml", "modle", "did you mean 'model'"]),
    ('task = "classify"\n[model]\nhidden_size = "big"\n', ["[model] hidden_size", "expected an integer"]),
    ('task = "classify"\n[model]\nhidden_size = -3\n', ["[model] hidden_size", "at least 1"]),
    ('task = "classify"\n[train]\nlr = 0\n', ["[train] lr", "greater than 0"]),
    ('task = "classify"\n[data]\ndev_fraction = 0\n', ["[data] dev_fraction", "greater than 0"]),
    ('task = "classify"\n[model]\npooling = "maxx"\n', ["[model] pooling", "one of", "did you mean 'max'"]),
    ('task = "clasify"\n', ["key 'task'", "did you mean 'classify'"]),
    ('[model]\nlayers = 1\n', ["missing required key 'task'"]),
    ('task = "classify"\n[tokenizer]\nkind = "bpe"\n', ["[tokenizer] kind", "expected one of"]),
    ('task = "classify"\n[train]\nepochs = 1.5\n', ["[train] epochs", "expected an integer"]),
    ('task = "classify"\n[model]\nbidirectional = 1\n', ["[model] bidirectional", "true or false"]),
    ('task = "classify"\n[data]\nsplits = { training = "train" }\n', ["split 'training'", "did you mean 'train'"]),
    ('task = "classify"\n[data]\nfiles = { validation = "v.txt" }\n', ["split 'validation'", "did you mean 'dev'"]),
    ('task = "classify"\n[train]\nlr = inf\n', ["[train] lr", "expected a finite number, got inf"]),
    ('task = "classify"\n[train]\nlr = nan\n', ["[train] lr", "expected a finite number, got nan"]),
    ('task = "classify"\n[model]\ndropout = 1.5\n', ["[model] dropout", "at most 0.95"]),
    ('task = "classify"\nname = "../out"\n', ["key 'name'", "plain non-empty name"]),  # stays in runs/
    ('task = "classify"\nname = ".hidden"\n', ["key 'name'", "plain non-empty name"]),
])
def test_errors_name_file_and_key(tmp_path, text, pieces):
    with pytest.raises(SeqtextError) as e:
        load_recipe(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg
    for piece in pieces:
        assert piece in msg


def test_toml_syntax_error_has_line(tmp_path):
    with pytest.raises(SeqtextError, match=r"r\.toml: TOML syntax error.*line 3"):
        load_recipe(write(tmp_path, 'task = "classify"\n[model]\nhidden_size = = 3\n'))


def test_missing_file():
    with pytest.raises(SeqtextError, match="no such recipe file"):
        load_recipe("nope/none.toml")


def test_overrides_are_typed(tmp_path):
    p = write(tmp_path, 'task = "classify"\n[data]\nhub = "x/y"\n')
    r = load_recipe(p, ["train.epochs=7", "train.lr=0.5", "tokenizer.kind=spacy", "model.bidirectional=false",
                        "data.files={train = 'a.jsonl'}"])
    assert r.train.epochs == 7 and r.train.lr == 0.5 and r.tokenizer.kind == "spacy"
    assert r.model.bidirectional is False
    assert r.data.files["train"].endswith("a.jsonl") and r.data.files["train"].startswith("/")
    r2 = load_recipe(p, {"train.epochs": 2, "name": "other"})
    assert r2.train.epochs == 2 and r2.name == "other"


@pytest.mark.parametrize("item, msg", [
    ("train.epoch=3", "did you mean 'epochs'"),
    ("trian.epochs=3", "did you mean 'train'"),
    ("epochs", "expected section.key=value"),
    ("a.b.c=1", "expected section.key"),
])
def test_override_errors(item, msg):
    with pytest.raises(SeqtextError, match=msg):
        apply_override({}, item)


def test_override_wrong_type_names_the_override_not_the_file(tmp_path):
    p = write(tmp_path, 'task = "classify"\n[train]\nepochs = 3\n')
    with pytest.raises(SeqtextError, match=r"^--set train\.epochs: expected an integer, got str 'many'"):
        load_recipe(p, ["train.epochs=many"])
    with pytest.raises(SeqtextError, match=r"r\.toml: \[train\] lr: expected a number"):  # the file's own value
        load_recipe(write(tmp_path, 'task = "classify"\n[train]\nlr = "fast"\n'), ["train.epochs=2"])
    with pytest.raises(SeqtextError, match=r"^--set name: expected a plain non-empty name, got 'a/b'"):
        load_recipe(write(tmp_path, 'task = "classify"\n', "n.toml"), ["name=a/b"])


def test_resolved_recipe_round_trips(tmp_path):
    p = write(tmp_path, 'task = "classify"\nname = "x"\n[data]\nfiles = { train = "t.jsonl" }\n[model]\nlayers = 2\n')
    r = load_recipe(p)
    saved = write(tmp_path, r.to_toml(), "saved.toml")
    again = load_recipe(saved)
    assert again.to_dict() == r.to_dict()
    assert "[model]" in dumps_toml(r.to_dict())


def test_paths_expand_the_home_directory(tmp_path, monkeypatch):
    """'~' in a path is the home directory, not a folder named '~' in the working directory."""
    from seqtext.data.sources import find_split_files

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    r = load_recipe({"task": "classify", "output": {"dir": "~/runs/x"}, "data": {"files": {"train": "~/t.jsonl"}}})
    assert r.output_dir == tmp_path / "runs" / "x" and r.data.files["train"] == str(tmp_path / "t.jsonl")
    assert find_split_files(Path("~/data")) == {"train": tmp_path / "data" / "train.jsonl"}


def test_paths_are_relative_to_the_recipe_file_and_overridden_ones_to_the_working_directory(tmp_path,
                                                                                           monkeypatch):
    (tmp_path / "recipes").mkdir()
    p = write(tmp_path / "recipes", 'task = "classify"\n[data]\nfiles = { train = "t.jsonl" }\n[model]\n'
                                    'pretrained_vectors = "v.txt"\n')
    monkeypatch.chdir(tmp_path)
    r = load_recipe(p)
    assert r.data.files["train"] == str(tmp_path / "recipes" / "t.jsonl")
    assert r.model.pretrained_vectors == str(tmp_path / "recipes" / "v.txt")
    r = load_recipe(p, ["model.pretrained_vectors=glove/v.txt", 'data.files={ test = "d/test.jsonl" }',
                        "tokenizer.model_file=m.model"])
    assert r.model.pretrained_vectors == str(tmp_path / "glove" / "v.txt")
    assert r.data.files == {"test": str(tmp_path / "d" / "test.jsonl")}
    assert r.tokenizer.model_file == str(tmp_path / "m.model")


def test_reference_lists_every_key():
    ref = reference_markdown()
    for key in ("data.hub", "model.pooling", "train.patience", "tokenizer.kind", "vocab.min_freq", "init_from"):
        assert f"`{key}`" in ref
