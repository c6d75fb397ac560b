"""The benchmark scripts' shared plumbing (benchmarks/common.py): where results go, the default
data of a recipe, and the one-line errors of a script's entry point."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import common
from seqtext import SeqtextError
from seqtext.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


def test_results_path_takes_a_name_or_a_path():
    assert common.results_path("suite") == common.RESULTS / "suite.json"
    assert common.results_path("suite.json") == common.RESULTS / "suite.json"
    assert common.results_path("/tmp/x") == Path("/tmp/x.json")
    assert common.results_path("/tmp/x.json") == Path("/tmp/x.json")
    assert common.results_path("out/y") == Path("out/y.json")


def test_save_records_the_command_and_machine(tmp_path):
    path = common.save(str(tmp_path / "sub" / "r"), {"x": 1})
    assert path == tmp_path / "sub" / "r.json"
    saved = json.loads(path.read_text())
    assert list(saved)[:2] == ["command", "machine"] and saved["x"] == 1
    assert {"cpu", "threads", "cpu_count", "torch"} <= set(saved["machine"])


def test_default_data_follows_the_recipe():
    assert common.recipe_data_dir("recipes/wikitext2_lm.toml") == str(common.DATA_ROOT / "wikitext2")
    assert common.recipe_data_dir("recipes/conll2003_ner.toml") == str(common.DATA_ROOT / "conll2003")
    assert common.recipe_data_dir("recipes/demo_ner.toml") is None  # its own [data] files
    assert REPO.parent / "shared" / "data" == common.DATA_ROOT


def test_a_missing_data_root_names_the_option(tmp_path):
    with pytest.raises(SeqtextError, match=r"^--data-root .*: no conll2003 data"):
        common.data_under(tmp_path, "conll2003")
    (tmp_path / "conll2003").mkdir()
    assert common.data_under(tmp_path, "conll2003") == str(tmp_path / "conll2003")


@pytest.mark.parametrize("error", [SeqtextError("--data-dir x: no such directory\nmore"),
                                   FileNotFoundError(2, "No such file or directory", "x/train.txt")])
def test_run_main_turns_user_errors_into_one_line(error, capsys):
    def main():
        raise error

    with pytest.raises(SystemExit) as e:
        common.run_main(main)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_childs_one_line_error_is_passed_on(capsys):
    with pytest.raises(SystemExit) as e:
        common.child_failed(SimpleNamespace(returncode=2, stderr="warning: w\nerror: no data\n"), "child")
    assert e.value.code == 2 and capsys.readouterr().err == "error: no data\n"
    with pytest.raises(SystemExit, match="child failed:\nTraceback"):
        common.child_failed(SimpleNamespace(returncode=1, stderr="Traceback (most recent call last):\n"), "child")


def test_speedups_refuses_a_recipe_its_comparison_does_not_apply_to():
    from benchmarks.speedups import not_applicable

    tagger, lm = load_recipe(REPO / "recipes/conll2003_ner.toml"), load_recipe(REPO / "recipes/wikitext2_lm.toml")
    assert "weight dropout" in not_applicable("dropconnect", tagger)
    assert "char CNN" in not_applicable("table", lm)
    assert not_applicable("dropconnect", lm) == "" and not_applicable("dedup", tagger) == ""


def test_a_script_without_its_data_ends_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "imdb_grouping.py"), "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: --data-dir {tmp_path}: no IMDB train file "
                                             f"({tmp_path / 'train.jsonl.gz'}: no such file)"]
