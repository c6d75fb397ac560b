"""Every bad input: exit code 2, one line naming the file/line/key, no traceback, no partial output."""

import json
import re
import shutil

import pytest
from click.testing import CliRunner
from conftest import make_reviews, write_jsonl

from seqtext.cli import main


def recipe(tmp_path, data_files: str | None = None, extra: str = "", top: str = 'task = "classify"') -> str:
    if data_files is None:
        train = write_jsonl(tmp_path / "d" / "train.jsonl", make_reviews(20))
        data_files = f'files = {{ train = "{train}" }}'
    text = f'{top}\n[data]\n{data_files}\n[vocab]\nmin_freq = 1\n[model]\nembedding_dim = 8\nhidden_size = 8\n' \
           f'[train]\nepochs = 1\nthreads = 1\n{extra}'
    p = tmp_path / "r.toml"
    p.write_text(text)
    return str(p)


def bad_file(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / "d" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def jsonl_rows(tmp_path, row: int, name: str = "train.jsonl", **bad) -> str:
    """A .jsonl file of 20 good reviews whose row ``row`` (0-based) gets the values ``bad``."""
    rows = make_reviews(20)
    rows[row].update(bad)
    return str(write_jsonl(tmp_path / "d" / name, rows))


def files(path: str) -> str:
    return f'files = {{ train = "{path}" }}'


def lm_files(train: str, dev: str) -> str:
    return f'files = {{ train = "{train}", dev = "{dev}" }}'


def R(tmp_path, **kw):
    return ["train", recipe(tmp_path, **kw), "-o", str(tmp_path / "out")]


CASES = {
    # recipes
    "toml syntax": (lambda t: R(t, extra="x = = 1\n"), r"r\.toml: TOML syntax error.*line 12"),
    "unknown section": (lambda t: R(t, extra="[modle]\nx = 1\n"), r"unknown key 'modle'.*did you mean 'model'"),
    "unknown key": (lambda t: R(t, extra="patiense = 3\n"), r"\[train\].*did you mean 'patience'"),
    "wrong type": (lambda t: R(t, extra="batch_size = \"big\"\n"), r"\[train\] batch_size: expected an integer"),
    "negative size": (lambda t: R(t, extra="batch_size = -4\n"), r"\[train\] batch_size: expected a value at least 1"),
    "zero size": (lambda t: R(t, extra="[tokenizer]\nvocab_size = 0\n"), r"\[tokenizer\] vocab_size"),
    "vocab of specials only": (lambda t: ["train", recipe(t), "--set", "vocab.max_size=4", "-o", str(t / "out")],
                               r"^error: --set vocab\.max_size: expected 0 \(no limit\) or more than the 4 special "
                               r"tokens it includes, got 4$"),
    "unknown task": (lambda t: R(t, top='task = "translate"'), r"key 'task': expected one of classify, tag, lm"),
    "unknown tokenizer": (lambda t: R(t, extra="[tokenizer]\nkind = \"bert\"\n"), r"\[tokenizer\] kind: expected one"),
    "unknown pooling": (lambda t: ["train", recipe(t), "--set", "model.pooling=avg", "-o", str(t / "out")],
                        r"--set model\.pooling: expected one of"),
    "output dropout between -1 and 0": (lambda t: ["train", recipe(t), "--set", "model.output_dropout=-0.5", "-o",
                                                  str(t / "out")],
                                        r"--set model\.output_dropout: expected -1 \(same as dropout\) or a value "
                                        r"from 0 to 0\.95, got -0\.5$"),
    "missing data path": (lambda t: R(t, data_files=files("nope.jsonl")), r"nope\.jsonl: no such file"),
    # data
    "no train file in data dir": (lambda t: ["train", recipe(t), "--data-dir", str(t), "-o", str(t / "out")],
                                  r"no train file"),
    "empty file": (lambda t: R(t, data_files=files(bad_file(t, "e.jsonl", b""))),
                   r"e\.jsonl: file is empty"),
    "missing text column": (lambda t: ["train", recipe(t), "--set", "data.text_column=review", "-o", str(t / "out")],
                            r"train data has no column 'review' \(columns: text, label\); set \[data\] text_column$"),
    "tsv without a header line": (lambda t: R(t, data_files=files(bad_file(t, "nh.tsv", b"a great film\tpos\n" * 20))),
                                  r"train data has no column 'text' \(columns: a great film, pos\); set \[data\] "
                                  r"text_column \(a \.csv/\.tsv file's first line names its columns: does this file "
                                  r"have a header line\?\)$"),
    "empty vocabulary": (lambda t: ["train", recipe(t), "--set", "vocab.min_freq=100000", "-o", str(t / "out")],
                         r"no token occurs at least \[vocab\] min_freq = 100000 times"),
    "missing label column": (lambda t: ["train", recipe(t), "--set", "data.label_column=stars", "-o", str(t / "out")],
                             r"train data has no label column 'stars' \(columns: text, label\); set \[data\] "
                             r"label_column$"),
    "non-utf8": (lambda t: R(t, data_files=files(bad_file(
        t, "u.jsonl", b'{"text": "fine", "label": "pos"}\n{"text": "caf\xe9", "label": "neg"}\n'))),
        r"u\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 14 of the line\); convert the file to UTF-8 \(e\.g\. "
        r"iconv -f latin1 -t utf-8\)$"),
    "text not a string": (lambda t: R(t, data_files=files(jsonl_rows(t, 2, text=5))),
                          r"row 3: column 'text' must hold text \(a string\), got int 5; check \[data\] text_column$"),
    "lm text not a string": (lambda t: R(t, top='task = "lm"', data_files=lm_files(jsonl_rows(t, 2, text=[1]),
                                                                                   jsonl_rows(t, 0, "dev.jsonl"))),
                             r"^error: train data, row 3: column 'text' must hold text \(a string\), got list \[1\]"),
    "labels of two types": (lambda t: R(t, data_files=files(jsonl_rows(t, 2, label=1))),
                            r"train data, row 3: label int 1, but train data, row \d+ has str '(neg|pos)': write every "
                            r"label in column 'label' the same way"),
    "label a list": (lambda t: R(t, data_files=files(jsonl_rows(t, 2, label=["pos"]))),
                     r"row 3: label column 'label' must hold a single label .* per row, got list \['pos'\]$"),
    "lower-case tags": (lambda t: R(t, top='task = "tag"', data_files=files(str(write_jsonl(
        t / "d" / "train.jsonl", [{"tokens": ["Ann", "ran"], "tags": ["b-per", "o"]}] * 20)))),
        r"row \d+: tag 'b-per' has a lower-case prefix; write O and the B-, I-, E-, S-, L-, U- prefixes in upper "
        r"case \(entity types may be lower-case: B-per\)$"),
    "tags as one string": (lambda t: R(t, top='task = "tag"', data_files=files(str(write_jsonl(
        t / "d" / "train.jsonl", [{"tokens": ["Ann", "ran"], "tags": "B-PER O"}] * 20)))),
        r"row \d+: column 'tags' must hold a list of tags, got str$"),
    "conll wrong column count": (lambda t: R(t, top='task = "tag"', data_files=files(bad_file(
        t, "train.conll", b"EU B-ORG\nrejects O\nGerman B-MISC extra\n"))), r"train\.conll:3: expected 2 columns"),
    # CLI
    "set unknown key": (lambda t: ["train", recipe(t), "--set", "train.epoch=3"], r"did you mean 'epochs'"),
    "set malformed": (lambda t: ["train", recipe(t), "--set", "epochs"], r"expected section\.key=value"),
    "set a whole section": (lambda t: ["train", recipe(t), "--set", "train=3"],
                            r"--set train: \[train\] is a section; expected section\.key=value"),
    "recipe is a directory": (lambda t: ["train", str(t)], r": is a directory; expected a recipe \.toml file"),
    "set bad value": (lambda t: ["train", recipe(t), "--set", "train.epochs=abc", "-o", str(t / "out")],
                      r"^error: --set train\.epochs: expected an integer"),
    "model dir missing": (lambda t: ["evaluate", str(t / "nothing")], r"no such model directory"),
    "predict model dir missing": (lambda t: ["predict", str(t / "nothing")], r"no such model directory"),
    "oom-sized model": (lambda t: ["train", recipe(t), "--set", "model.hidden_size=4000000", "-o", str(t / "out")],
                        r"out of memory: lower .*batch_size.*model\] sizes"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(tmp_path, name):
    make_args, pattern = CASES[name]
    r = CliRunner().invoke(main, make_args(tmp_path))
    assert r.exit_code == 2, (name, r.output[-1500:])
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and r.output.rstrip().endswith(errors[0]), r.output[-500:]
    assert re.search(pattern, errors[0]), errors[0]
    assert not (tmp_path / "out").exists(), "bad input must leave no partial output"


@pytest.fixture
def model_dir(trained_demo, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(trained_demo, d)
    return d


def test_incomplete_model_dir(model_dir):
    (model_dir / "weights.safetensors").unlink()
    r = CliRunner().invoke(main, ["predict", str(model_dir), "hello"])
    assert r.exit_code == 2 and "missing weights.safetensors" in r.output and "--resume" in r.output


def test_unseen_label_at_evaluation(model_dir, tmp_path):
    f = write_jsonl(tmp_path / "eval.jsonl", [{"text": "fine film", "label": "pos"}, {"text": "meh", "label": "mixed"}])
    r = CliRunner().invoke(main, ["evaluate", str(model_dir), "--data", str(f)])
    assert r.exit_code == 2 and "label 'mixed' was not seen in training" in r.output


def test_predict_non_utf8_file_names_line(model_dir, tmp_path):
    f = tmp_path / "in.txt"
    f.write_bytes(b"good line\nbad \xff line\n")
    r = CliRunner().invoke(main, ["predict", str(model_dir), "--file", str(f)])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith(f"error: {f}:2: not valid UTF-8")


def test_long_and_empty_texts_are_fine(tmp_path):
    rows = make_reviews(30) + [{"text": "", "label": "pos"}, {"text": "great " * 20000, "label": "pos"}]
    train = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    r = CliRunner().invoke(main, ["train", recipe(tmp_path, data_files=f'files = {{ train = "{train}" }}'),
                                  "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output[-1000:]
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "out"), "", "--json"])
    assert json.loads(r.output)["label"] in {"neg", "pos"}


@pytest.mark.parametrize("args, message", [
    (["train", "r.toml", "--devic", "cpu"], "error: No such option '--devic'. Did you mean '--device'? "
                                            "(see 'seqtext train --help')"),
    (["trian"], "error: No such command 'trian'. Did you mean 'train'? (see 'seqtext --help')"),
    (["evaluate"], "error: Missing argument 'MODEL_DIR'. (see 'seqtext evaluate --help')"),
    (["predict", "m", "--format", "xml"], "error: Invalid value for '--format': 'xml' is not one of 'text', 'conll'."),
])
def test_usage_errors_are_one_line_too(args, message):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [r.output.strip()]
    assert r.output.startswith(message), r.output
