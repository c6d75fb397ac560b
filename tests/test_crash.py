"""Kill -9 and Ctrl-C a real training process, then resume (issue: crash safety)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import seqtext
from seqtext.model import load_state_dict

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_state_dict(a / "weights.safetensors"), load_state_dict(b / "weights.safetensors")
    ca, cb = load_state_dict(a / "checkpoint.safetensors"), load_state_dict(b / "checkpoint.safetensors")
    keys = [k for k in ca if k.startswith(("model.", "optim."))]
    return all(torch.equal(wa[k], wb[k]) for k in wa) and all(torch.equal(ca[k], cb[k]) for k in keys)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from conftest import tiny_recipe

    base = tmp_path_factory.mktemp("crash")
    recipe = tiny_recipe(base)
    return recipe, seqtext.train(recipe, output=base / "uninterrupted", quiet=True)


@pytest.mark.parametrize("mode, n", [("step", 7), ("step", 19), ("checkpoint", 2)])
def test_sigkill_then_resume_reproduces_the_run(reference, tmp_path, mode, n):
    recipe, full = reference
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(HERE / "killable.py"), mode, str(n), "train", str(recipe),
                             "-o", str(out), "-q"], env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-500:]
    resumed = subprocess.run([sys.executable, "-m", "seqtext", "train", str(recipe), "-o", str(out), "--resume",
                              "-q"], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-1000:]
    assert same_weights(full, out)
    assert not list(out.glob(".*.tmp"))  # the interrupted write left nothing behind


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; a job scheduler's stop
def test_sigint_or_sigterm_saves_checkpoint_and_explains_resume(reference, tmp_path, sig):
    recipe, _ = reference
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "seqtext", "train", str(recipe), "-o", str(out), "-q",
                             "--set", "train.epochs=200", "--set", "train.patience=0"],
                            env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-800:]
    assert "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint.safetensors").is_file()


def child_pids(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc; zombies count as gone)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["sigterm_to_parent", "ctrl_c_to_group", "sigkill_to_parent"])
def test_stopping_a_parallel_ensemble_stops_its_member_processes(reference, tmp_path, how):
    """SIGTERM reaches the parent alone: it passes it on; Ctrl-C reaches every process; a SIGKILL
    kills the parent alone, and the members get a SIGTERM from the kernel (Linux). Each way each
    running member saves a checkpoint, no member process is left training on its own, and the
    queued members are not started (4 members, 2 at a time)."""
    recipe, _ = reference
    out = tmp_path / "ens"
    proc = subprocess.Popen([sys.executable, "-m", "seqtext", "train", str(recipe), "-o", str(out), "-q",
                             "--set", "model.ensemble=4", "--set", "train.parallel_members=2",
                             "--set", "train.threads=2", "--set", "train.epochs=500", "--set", "train.patience=0"],
                            env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    checkpoints = [out / "members" / str(i) / "checkpoint.safetensors" for i in (1, 2)]
    deadline = time.time() + 200
    while not all(c.exists() for c in checkpoints) and time.time() < deadline:
        time.sleep(0.2)
    members = child_pids(proc.pid)
    assert len(members) >= 2
    if how == "ctrl_c_to_group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM if how == "sigterm_to_parent" else signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    if how == "sigkill_to_parent":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err[-800:]
        assert "--resume" in err and "Traceback" not in err
    deadline = time.time() + 60  # a member left training would outlive any wait
    while [pid for pid in members if alive(pid)] and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in members if alive(pid)]
    assert sorted(d.name for d in (out / "members").iterdir()) == ["1", "2"]  # 3 and 4 never started


def test_a_member_process_killed_alone_gives_a_resumable_one_line_error(reference, tmp_path):
    """The kernel's OOM killer takes one member process, not the ensemble: the parent says so in
    one line with the resume command, and the resume finishes the run."""
    recipe, _ = reference
    out = tmp_path / "ens"
    args = [sys.executable, "-m", "seqtext", "train", str(recipe), "-o", str(out), "-q", "--set", "model.ensemble=2",
            "--set", "train.parallel_members=2", "--set", "train.threads=2", "--set", "train.epochs=30"]
    proc = subprocess.Popen(args, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 200
    while not (out / "members" / "1" / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.2)
    members = [pid for pid in child_pids(proc.pid)
               if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert members
    os.kill(members[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    # (the surviving member, stopped by the parent, may report on its own way out: only the
    # parent's exit status and its one line are the contract)
    assert proc.returncode == 2, err[-800:]
    assert f"error: {out}: a member's process died" in err
    assert "--resume" in err
    assert "leaked semaphore" not in err  # nothing the killed process held is left to warn about
    resumed = subprocess.run([sys.executable, "-m", "seqtext", "train", str(out / "recipe.toml"), "--resume", "-q"],
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    assert (out / "metrics.json").is_file()


def test_atomic_write_gives_normal_permissions_and_keeps_existing_ones(tmp_path):
    """Temp-file-and-rename must not leave model files private (mkstemp's 0600)."""
    import os

    from seqtext.io import write_text

    umask = os.umask(0o022)
    try:
        new = tmp_path / "new.json"
        write_text(new, "{}")
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        write_text(kept, "new")
        assert kept.read_text() == "new" and kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
