import json

from click.testing import CliRunner

from seqtext.cli import main


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_help_everywhere():
    for cmd in ([], *([name] for name in main.commands)):
        r = run(*cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output
    for name in ("train", "evaluate", "predict", "generate"):
        assert "Examples:\n    seqtext " + name in run(name, "--help").output


def test_train_evaluate_predict_info(tiny, tmp_path):
    out = tmp_path / "run"
    r = run("train", tiny, "--output", out, "--set", "train.epochs=2", "-q")
    assert r.exit_code == 0, r.output
    r = run("evaluate", out, "--json")
    assert r.exit_code == 0
    m = json.loads(r.output)
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "roc_auc"} <= set(m)
    r = run("evaluate", out)
    assert "accuracy" in r.output and "confusion matrix" in r.output
    r = run("predict", out, "a great great film", "awful boring plot", "--json")
    lines = [json.loads(x) for x in r.output.splitlines()]
    assert len(lines) == 2 and set(lines[0]["probs"]) == {"neg", "pos"}
    r = run("predict", out, "-", input="one\ntwo\nthree\n")
    assert r.exit_code == 0 and len(r.output.splitlines()) == 3
    f = tmp_path / "in.txt"
    f.write_text("".join(f"line {i} great\n" for i in range(2500)))
    r = run("predict", out, "--file", f)
    assert r.exit_code == 0 and len(r.output.splitlines()) == 2500
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffline 0 great\n".encode())
    r = run("predict", out, "--file", bom, "--json")
    assert json.loads(r.output)["text"] == "line 0 great"  # a byte-order mark is not text
    r = run("predict", out)
    assert r.exit_code == 2 and r.output.startswith("error: no input"), r.output
    rows = [{"text": "a great wonderful film", "label": "pos"}, {"text": "an awful boring plot", "label": "neg"},
            {"text": "the cast was superb and fun", "label": "pos"}]
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = run("evaluate", out, "--data", extra, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert sum(map(sum, m["confusion_matrix"])) == len(rows)  # the file's rows, not the recipe's test split
    r = run("predict", out, *[x["text"] for x in rows], "--json")
    predicted = [json.loads(line)["label"] for line in r.output.splitlines()]
    assert m["accuracy"] == sum(p == x["label"] for p, x in zip(predicted, rows)) / len(rows)
    conflicts = [  # options that would otherwise be silently ignored
        (("predict", out, "a text", "--file", f), "give TEXTS or --file, not both"),
        (("predict", out, "a text", "-o", tmp_path / "o.txt"), "--output writes tagged CoNLL files"),
        (("evaluate", out, "--split", "dev", "--data", extra), "--split and --data: give one"),
        (("evaluate", out, "--cache-theta", "1"), "--cache-theta and --cache-lambda need --cache-size"),
        (("evaluate", out, "--mode", "strict"), "--mode: only for taggers"),
        (("evaluate", out, "--cache-size", "10"), "--cache-size: only for language models"),
        (("generate", "--prompt", "x", "--greedy", "--temperature", "0.5"), "--greedy always takes"),
    ]
    for args, message in conflicts:
        r = run(*args)
        assert r.exit_code == 2 and r.output.startswith(f"error: {message}"), (args, r.output)
    assert not (tmp_path / "o.txt").exists()
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(json.dumps({"text": "a film"}) + "\n")
    r = run("evaluate", out, "--data", unlabelled)
    assert r.exit_code == 2 and f"{unlabelled}: evaluation data has no labels (column 'label')" in r.output
    unlabelled.write_text(json.dumps({"text": "a film", "label": "pos"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    r = run("evaluate", out, "--data", unlabelled)  # the file's row, not the split it is scored as
    assert r.exit_code == 2 and f"error: {unlabelled}, row 2: no label (null in column 'label')" in r.output
    r = run("predict", out, "-", input="")
    assert r.exit_code == 2 and "stdin ('-') was empty" in r.output
    r = run("info", out)
    assert r.exit_code == 0 and "classify" in r.output and "parameters" in r.output
    assert "  data: train /" in r.output  # where its data came from
    summary = json.loads(run("info", out, "--json").output)
    assert summary["labels"] == ["neg", "pos"] and set(summary["data"]) == {"train", "test"}


def test_errors_are_one_line_exit_2(tmp_path, tiny):
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "classify"\n[model]\nhiden_size = 4\n')
    cases = [
        ("train", bad),
        ("train", tiny, "--set", "model.nope=1"),
        ("evaluate", tmp_path / "missing"),
        ("predict", tmp_path),
        ("info", tmp_path),
    ]
    for args in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: ")
    assert not (tmp_path / "runs").exists()
    r = run("--debug", "evaluate", tmp_path / "missing")  # --debug: the traceback, then the same line
    assert r.exit_code == 2 and "Traceback" in r.output
    assert r.output.strip().splitlines()[-1].startswith("error: ") and "no such model directory" in r.output


def _python(script, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)


def test_help_does_not_import_torch():
    # torch takes seconds to import: `seqtext --help` must not wait for it (commands import what they use)
    r = _python("import sys\nfrom click.testing import CliRunner\nfrom seqtext.cli import main\n"
                "for args in (['--help'], ['train', '--help'], ['generate', '--help']):\n"
                "    print(CliRunner().invoke(main, args).exit_code)\n"
                "print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["0", "0", "0", "False"]


def test_seqtext_train_stays_the_function_when_its_module_is_imported():
    r = _python("import importlib, seqtext\nmodule = importlib.import_module('seqtext.train')\n"
                "assert seqtext.train is module.train and callable(seqtext.train), seqtext.train\n"
                "assert seqtext.load is importlib.import_module('seqtext.model').load\n"
                "assert {'Model', 'Recipe', 'load_recipe', 'train'} <= set(dir(seqtext))")
    assert r.returncode == 0, r.stderr[-2000:]


def test_ctrl_c_while_a_command_imports_torch_is_one_line(tiny):
    # a finder that raises KeyboardInterrupt when torch is imported: Ctrl-C during the slowest part of start-up
    r = _python("import sys\nclass Interrupt:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name == 'torch':\n            raise KeyboardInterrupt\n"
                "sys.meta_path.insert(0, Interrupt())\nfrom seqtext.cli import main\n"
                "sys.argv = ['seqtext', 'train', sys.argv[1], '--quiet']\nmain()", str(tiny))
    assert r.returncode == 130 and r.stderr == "interrupted\n", r.stderr[-2000:]


def test_predict_streams_stdin(trained_demo, monkeypatch):
    """A pipe is read 1,000 lines at a time (bounded memory), a terminal line by line; a line that is
    not UTF-8 is named by its number."""
    import io
    import sys

    from seqtext import cli
    from seqtext.model import Model

    sizes = []
    real = Model.predict
    monkeypatch.setattr(Model, "predict", lambda self, texts, **kw: sizes.append(len(texts)) or real(self, texts, **kw))
    r = run("predict", trained_demo, "-", input="".join(f"line {i} great\n" for i in range(2500)))
    assert r.exit_code == 0 and len(r.output.splitlines()) == 2500
    assert sizes == [1000, 1000, 500]
    r = run("predict", trained_demo, "-", input=b"fine\n\xff bad\n")
    assert r.exit_code == 2 and r.output.startswith("error: stdin:2: ")

    class Terminal(io.TextIOWrapper):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"one\ntwo\n")))
    assert list(cli._stdin_chunks()) == [["one"], ["two"]]


def test_metrics_print_integers_as_integers(capsys):
    from seqtext.cli import _print_metrics

    _print_metrics({"perplexity": 100.5, "cache": {"size": 100_000_000, "theta": 0.3, "lambda": 0.1}})
    assert "cache: size 100000000, theta 0.3, lambda 0.1" in capsys.readouterr().out
