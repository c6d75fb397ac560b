"""A run directory under stress: two trainings at once, damaged files, a kill while the model files
are written, files that are not seqtext's, and errors from the filesystem."""

import json
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import seqtext
from seqtext.cli import main
from seqtext.errors import SeqtextError
from seqtext.io import run_lock
from seqtext.train import resume_command


def test_a_second_training_into_a_locked_run_directory_is_refused(tiny, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):  # as a training run elsewhere holds it
        with pytest.raises(SeqtextError, match=rf"^{out}: another seqtext process \(pid \d+\) is training there"):
            seqtext.train(tiny, output=out, quiet=True)
        with pytest.raises(SeqtextError, match="another seqtext process"):
            seqtext.train(tiny, ["model.ensemble=2"], output=out, quiet=True)
    assert not out.exists()  # the lock's directory held nothing else: it goes with the lock
    seqtext.train(tiny, ["train.max_steps=2"], output=out, quiet=True)  # free again
    assert (out / "weights.safetensors").is_file()


def test_a_filesystem_without_locks_trains_with_a_warning(tiny, tmp_path, monkeypatch, capsys):
    import errno
    import fcntl
    import types

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    # seqtext's lock only: datasets' own file locks must keep working
    monkeypatch.setattr("seqtext.io.fcntl", types.SimpleNamespace(flock=no_locks, LOCK_EX=fcntl.LOCK_EX,
                                                                   LOCK_NB=fcntl.LOCK_NB))
    out = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)
    assert (out / "weights.safetensors").is_file() and not (out / ".seqtext.lock").exists()
    assert "this filesystem cannot lock files (No locks available)" in capsys.readouterr().err


def test_the_lock_file_goes_when_the_run_ends(tiny, tmp_path):
    out = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)
    assert not [p.name for p in out.iterdir() if "lock" in p.name]


def test_a_failed_start_leaves_no_directory_behind(tmp_path):
    from conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, data={"text_column": '"review"'})
    with pytest.raises(SeqtextError, match="no column 'review'"):
        seqtext.train(recipe, output=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()  # a directory the user made is theirs: emptied of the lock, kept
    with pytest.raises(SeqtextError, match="no column 'review'"):
        seqtext.train(recipe, output=tmp_path / "mine", quiet=True)
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_only_seqtexts_own_temp_files_are_swept(tiny, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / ".draft.tmp").write_text("the user's")
    with pytest.raises(SeqtextError, match="exists and is not a seqtext run"):
        seqtext.train(tiny, output=other, quiet=True)
    assert (other / ".draft.tmp").read_text() == "the user's"

    run = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)
    (run / ".checkpoint.safetensors.x1y2.tmp").write_bytes(b"half a write")  # a kill mid-write
    (run / ".mine.tmp").write_text("kept")
    seqtext.train(tiny, ["train.max_steps=2"], output=run, resume=True, quiet=True)
    assert not (run / ".checkpoint.safetensors.x1y2.tmp").exists() and (run / ".mine.tmp").exists()


def test_damaged_run_files_give_one_line_errors(tiny, tmp_path):
    run = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)
    saved = {n: (run / n).read_bytes() for n in ("checkpoint.safetensors", "meta.json", "weights.safetensors",
                                                 "metrics.json")}

    def restore():
        for name, data in saved.items():
            (run / name).write_bytes(data)

    for damage, message in ((b"", "not a readable checkpoint"),
                            (saved["checkpoint.safetensors"][:100], "not a readable checkpoint"),
                            (saved["weights.safetensors"], "weights do not match the recipe")):
        (run / "checkpoint.safetensors").write_bytes(damage)
        with pytest.raises(SeqtextError, match=rf"checkpoint\.safetensors: {message}"):
            seqtext.train(tiny, ["train.max_steps=2"], output=run, resume=True, quiet=True)
    restore()
    (run / "meta.json").write_text("[1, 2]")
    with pytest.raises(SeqtextError, match=r"meta\.json: expected a JSON object, got list"):
        seqtext.load(run)
    (run / "meta.json").write_text(json.dumps({"task": "classify"}))  # the labels are gone
    with pytest.raises(SeqtextError, match=r"meta\.json: does not describe this model \(KeyError"):
        seqtext.load(run)
    restore()
    weights = seqtext.model.load_state_dict(run / "weights.safetensors")
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(run / "weights.safetensors"))
    with pytest.raises(SeqtextError, match=rf"{name} holds NaN or infinite values"):
        seqtext.load(run)
    restore()
    (run / "metrics.json").write_text(json.dumps({"dev": "good"}))
    r = CliRunner().invoke(main, ["info", str(run)])
    assert r.exit_code == 2 and r.output.startswith(f"error: {run / 'metrics.json'}: expected the JSON object")


def test_a_kill_while_the_model_files_are_written_leaves_a_run_that_resumes(tiny, tmp_path):
    """meta.json is written last: a run directory without it (and without a checkpoint) starts
    training over on --resume, from its own recipe file too."""
    run = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)
    for name in ("meta.json", "checkpoint.safetensors", "weights.safetensors", "metrics.json", "metrics.jsonl",
                 "curves.png"):
        (run / name).unlink(missing_ok=True)
    moved = shutil.move(run, tmp_path / "moved")
    seqtext.train(moved / "recipe.toml", resume=True, quiet=True)
    assert (moved / "meta.json").is_file() and (moved / "metrics.json").is_file()


def test_loading_an_unfinished_run_says_so(tiny, tmp_path, capsys):
    run = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)
    seqtext.load(run)
    assert "warning" not in capsys.readouterr().err
    (run / "metrics.json").unlink()  # as while it trains, or after it was stopped
    seqtext.load(run)
    assert f"warning: {run}: training has not finished" in capsys.readouterr().err


def test_filesystem_errors_are_one_line(tiny, tmp_path, monkeypatch):
    import errno

    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(main, ["train", str(tiny), "-q", "-o", str(tmp_path / "afile" / "sub")])
    assert r.exit_code == 2 and r.output == f"error: {tmp_path / 'afile' / 'sub'}: Not a directory\n", r.output

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write or fsync raises it: no file named

    monkeypatch.setattr(sys.modules["seqtext.train"], "write_model_files", full)  # the module, not the function
    r = CliRunner().invoke(main, ["train", str(tiny), "-q", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.startswith("error: writing: No space left on device; free some space")


def test_an_error_while_resuming_that_is_not_the_checkpoints_passes_unchanged(tiny, tmp_path, monkeypatch):
    from seqtext.train import Trainer

    run = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)

    def oom(self):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(Trainer, "_trim_history", oom)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        seqtext.train(tiny, ["train.max_steps=2"], output=run, resume=True, quiet=True)


def test_ctrl_c_before_training_starts_says_what_is_left(tiny, tmp_path, monkeypatch):
    from seqtext.errors import Interrupted

    def stop(*args, **kw):
        raise KeyboardInterrupt

    module = sys.modules["seqtext.train"]
    real = module.load_splits
    monkeypatch.setattr(module, "load_splits", stop)  # Ctrl-C while the data is prepared
    with pytest.raises(Interrupted, match=r"^interrupted before training started: there is nothing to resume"):
        seqtext.train(tiny, output=tmp_path / "run", quiet=True)
    monkeypatch.setattr(module, "load_splits", real)
    run = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", quiet=True)
    monkeypatch.setattr(module, "load_splits", stop)
    with pytest.raises(Interrupted, match=r"^interrupted; the last checkpoint is kept\. Resume with: seqtext train"):
        seqtext.train(tiny, ["train.max_steps=2"], output=run, resume=True, quiet=True)


def test_the_resume_hint_is_quoted_for_the_shell(tmp_path):
    assert resume_command(tmp_path / "my runs" / "a") == f"seqtext train '{tmp_path}/my runs/a/recipe.toml' --resume"
