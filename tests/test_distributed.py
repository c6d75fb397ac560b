"""DistributedDataParallel (gloo, CPU) training through torchrun: quality, several nodes, resume, stop."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_lm import lm_recipe, toml_of

import seqtext
from seqtext.model import load_state_dict

HERE = Path(__file__).resolve().parent
# CPU and gloo even where a GPU is: one GPU cannot hold two NCCL ranks (test_init_* cover the choice)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(program: list[str], nproc: int = 2, port: int | None = None, launch: list[str] = ()) -> list[str]:
    """The torchrun command line for ``program`` (``-m seqtext ...`` or a script and its arguments)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *launch,
            "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()), *program]


def run(cmd: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def why(r: subprocess.CompletedProcess) -> str:
    """What a failed torchrun said: the workers' own error lines (a C++ abort's "terminate called
    ... what(): ..." comes long before torchrun's summary), then the end of its output."""
    clues = [line for line in r.stderr.splitlines()
             if re.search(r"terminate called|what\(\)|Error|error:|enforce", line)]
    return "\n".join(clues[:30]) + "\n...\n" + r.stderr[-1500:]


@pytest.fixture
def as_rank(monkeypatch):
    """This process as rank 0 of 2 on one machine, the process group recorded instead of joined."""
    from seqtext import distributed as dist

    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    backends = []
    monkeypatch.setattr(dist.tdist, "init_process_group", backends.append)
    return backends


def test_init_uses_gloo_for_a_cpu_run_even_where_a_gpu_is(as_rank, monkeypatch):
    from seqtext import distributed as dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dist.init(torch.device("cpu"))
    assert as_rank == ["gloo"]


def test_init_refuses_more_cuda_ranks_than_gpus_on_a_machine(as_rank, monkeypatch):
    from seqtext import distributed as dist
    from seqtext.errors import SeqtextError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SeqtextError, match=r"2 processes on this machine but it has 1 GPU.*--device cpu"):
        dist.init(torch.device("cuda"))
    assert as_rank == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    dist.init(torch.device("cuda"))
    assert as_rank == ["nccl"]


def test_process_group_is_left_at_the_end_of_a_run_that_joined_it(monkeypatch):
    """A rank that exits with the group still up can abort at interpreter exit (gloo's threads),
    failing a run that finished: the group is destroyed at the end of the block, after an error
    too, and a group the caller had joined already is left alone."""
    from seqtext import distributed as dist

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    with dist.process_group(torch.device("cpu")):
        assert dist.active() and dist.world_size() == 1
    assert not dist.active()
    with pytest.raises(RuntimeError, match="boom"), dist.process_group(torch.device("cpu")):
        assert dist.active()
        raise RuntimeError("boom")
    assert not dist.active()
    dist.init(torch.device("cpu"))  # joined by the caller
    try:
        with dist.process_group(torch.device("cpu")):
            pass
        assert dist.active()
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_match_one_process_quality(tiny, tmp_path):
    epochs = ["--set", "train.epochs=6", "--set", "train.patience=0"]
    single = seqtext.train(tiny, ["train.batch_size=16", "train.epochs=6", "train.patience=0"],
                           output=tmp_path / "one", quiet=True)
    r = run(torchrun(["-m", "seqtext", "train", str(tiny), "--set", "train.batch_size=8", *epochs,
                      "-o", str(tmp_path / "two"), "-q"]))
    assert r.returncode == 0, why(r)
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["train"]["steps"] == one["train"]["steps"]  # same global batch → same number of steps
    assert two["test"]["accuracy"] >= one["test"]["accuracy"] - 0.05
    assert one["test"]["accuracy"] > 0.7  # learned something: chance is 0.5
    # only rank 0 wrote files, and the model directory is complete
    assert seqtext.load(tmp_path / "two").predict(["a great film"])[0]["label"] in {"neg", "pos"}


def test_two_nodes_one_process_each(tiny, tmp_path):
    """``--nnodes 2``: two launchers (here both on localhost) rendezvous and train one model."""
    port = free_port()
    program = ["-m", "seqtext", "train", str(tiny), "--set", "train.batch_size=8", "--set", "train.epochs=6",
               "--set", "train.patience=0", "-o", str(tmp_path / "run"), "-q"]
    nodes = [subprocess.Popen(torchrun(program, nproc=1, port=port, launch=["--nnodes", "2", "--node_rank", str(n)]),
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    results = [p.communicate(timeout=400) for p in nodes]
    for p, (_, err) in zip(nodes, results):
        assert p.returncode == 0, err[-2000:]
    single = seqtext.train(tiny, ["train.batch_size=16", "train.epochs=6", "train.patience=0"],
                           output=tmp_path / "one", quiet=True)
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert two["train"]["steps"] == one["train"]["steps"]
    assert two["test"]["accuracy"] >= one["test"]["accuracy"] - 0.05 and one["test"]["accuracy"] > 0.7
    history = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(history) == len({json.loads(line)["step"] for line in history})  # one writer, no duplicate lines


def test_a_time_budget_stops_every_rank_at_the_same_step(tiny, tmp_path):
    """max_minutes under DDP: the ranks share one clock, so they stop together (a rank that stopped
    alone would leave the other waiting in an all-reduce until torchrun's timeout)."""
    r = run(torchrun(["-m", "seqtext", "train", str(tiny), "-o", str(tmp_path / "run"), "-q",
                      "--set", "train.epochs=100000", "--set", "train.patience=0", "--set", "train.max_minutes=0.05",
                      "--set", "train.schedule=linear", "--set", "train.anneal_by_time=true"]), timeout=200)
    assert r.returncode == 0, why(r)
    train = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    assert train["seconds"] >= 3 and train["steps"] < 100000  # stopped by the 3 s budget, not the epochs


def test_a_non_finite_loss_on_one_rank_is_skipped_by_every_rank(tiny, tmp_path):
    """Rank 1's 3rd loss is NaN. The ranks must skip that step together (the others see it in the
    all-reduced gradients): a rank skipping alone leaves its gradient all-reduces out of step with
    the others' (DDP's error, a hang, or gloo aborting on mismatched sizes)."""
    program = [str(HERE / "nan_on_rank.py"), "1", "3", "train", str(tiny), "--set", "train.batch_size=8",
               "--set", "train.epochs=6", "--set", "train.patience=0", "-q"]
    r = run(torchrun([*program, "--set", "train.max_bad_steps=1", "-o", str(tmp_path / "skip")]), timeout=300)
    assert r.returncode == 0, why(r)
    assert json.loads((tmp_path / "skip" / "metrics.json").read_text())["test"]["accuracy"] > 0.7
    # without a budget for bad steps, every rank stops there with the one-line error
    r = run(torchrun([*program, "-o", str(tmp_path / "stop")]), timeout=300)
    assert r.returncode != 0
    assert r.stderr.count("became non-finite (local loss nan) at step 3") == 1, why(r)
    assert r.stderr.count("became non-finite (local loss") == 2, why(r)


def test_two_processes_with_layers_frozen_for_the_first_epoch(tiny, tmp_path):
    """freeze_epochs: the embedding and encoder get no gradient at first, which DDP must expect."""
    r = run(torchrun(["-m", "seqtext", "train", str(tiny), "-o", str(tmp_path / "run"), "-q",
                      "--set", "train.freeze_epochs=1", "--set", "train.batch_size=8"]))
    assert r.returncode == 0, why(r)


def test_an_ensemble_recipe_with_parallel_members_trains_its_members_in_turn(tiny, tmp_path):
    """The shipped ensemble recipes set parallel_members = 2; under torchrun every process trains
    each member together, one member after another, with one warning."""
    r = run(torchrun(["-m", "seqtext", "train", str(tiny), "-o", str(tmp_path / "run"), "-q",
                      "--set", "model.ensemble=2", "--set", "train.parallel_members=2", "--set", "train.epochs=2"]))
    assert r.returncode == 0, why(r)
    assert r.stderr.count("under torchrun the members train one after another") == 1, why(r)
    train = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    assert train["members"] == 2 and train["parallel_members"] == 1
    assert seqtext.load(tmp_path / "run").predict(["a great film"])[0]["label"] in {"neg", "pos"}


def test_sparse_embedding_gradients_are_averaged_outside_ddp():
    """The sparse (row) gradient of an embedding is left out of DDP, whose gloo sparse all-reduce
    corrupts the heap now and then (benchmarks/sparse_allreduce.py), and averaged by
    ``dist.average_row_gradients``: the same as averaging the dense gradients, with repeated rows,
    rows on one rank only, a rank without rows and a step without any (tests/row_gradients_on_rank.py)."""
    r = run(torchrun([str(HERE / "row_gradients_on_rank.py")]), timeout=120)
    assert r.returncode == 0, why(r)


def test_two_process_tagger_with_crf_chars_and_sparse_embeddings(tmp_path):
    """Every tagger parameter gets a gradient each step (DDP is not asked to look for unused
    ones), and the sparse word-embedding gradient is averaged across the ranks outside DDP."""
    from test_tag import write_recipe

    recipe = write_recipe(tmp_path, model={"crf": "true"},
                          train={"batch_size": 8, "sparse_embeddings": "true", "ema_decay": 0.9})
    r = run(torchrun(["-m", "seqtext", "train", str(recipe), "-o", str(tmp_path / "two"), "-q"]))
    assert r.returncode == 0, why(r)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["test"]["f1"] > 0.8


def lm_ddp_recipe(tmp_path: Path, **model) -> Path:
    """A tiny LM with dropout (each rank draws its own masks) and state carried across windows."""
    r = lm_recipe(tmp_path, "lm", dropout=0.2, weight_dropout=0.2, **model)
    r["train"] |= {"epochs": 2, "batch_size": 4, "checkpoint_every": 5}
    path = tmp_path / "lm.toml"
    path.write_text(toml_of(r))
    return path


@pytest.fixture(scope="module")
def ddp_recipes(tmp_path_factory):
    """(recipe, uninterrupted 2-process run) for a classifier and language models (full and adaptive softmax)."""
    from conftest import tiny_recipe

    out = {}
    for task in ("classify", "lm", "lm_adaptive"):
        base = tmp_path_factory.mktemp(f"ddp_{task}")
        if task == "classify":  # dropout: each rank draws its own masks, from a random state a resume must restore
            recipe = tiny_recipe(base, model={"embedding_dim": "16", "hidden_size": "16", "dropout": "0.3",
                                              "word_dropout": "0.1"})
        elif task == "lm":
            recipe = lm_ddp_recipe(base)
        else:  # steps where the rare words' cluster gets no target still give its weights a gradient
            recipe = lm_ddp_recipe(base, softmax="adaptive", softmax_cutoffs=[20, 60], tie_weights=False)
        r = run(torchrun(["-m", "seqtext", "train", str(recipe), "-o", str(base / "full"), "-q"]))
        assert r.returncode == 0, why(r)
        out[task] = recipe, base / "full"
    return out


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_state_dict(a / "weights.safetensors"), load_state_dict(b / "weights.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("task", ["classify", "lm", "lm_adaptive"])
def test_killed_two_process_run_resumes_to_the_uninterrupted_weights(ddp_recipes, tmp_path, task):
    """Both ranks die mid-epoch after a checkpoint; resuming restores each rank's own random
    state and (LM) carried LSTM state, so the result is bit-identical to never stopping."""
    recipe, full = ddp_recipes[task]
    out = tmp_path / "run"
    killed = run(torchrun([str(HERE / "killable.py"), "trainstep", "8", "train", str(recipe), "-o", str(out), "-q"]))
    assert killed.returncode != 0
    assert (out / "checkpoint.safetensors").is_file()
    resumed = run(torchrun(["-m", "seqtext", "train", str(recipe), "-o", str(out), "--resume", "-q"]))
    assert resumed.returncode == 0, why(resumed)
    assert same_weights(full, out)


def test_resume_with_another_number_of_processes_is_refused(ddp_recipes, tmp_path):
    _, full = ddp_recipes["classify"]
    copy = shutil.copytree(full, tmp_path / "copy")
    r = run([sys.executable, "-m", "seqtext", "train", str(copy / "recipe.toml"), "-o", str(copy), "--resume"])
    assert r.returncode == 2
    assert "a run of 2 process(es), resumed with 1" in r.stderr and "Traceback" not in r.stderr


def start_endless_torchrun(recipe: Path, out: Path) -> subprocess.Popen:
    """A 2-process training into ``out`` that would run for 1,000 epochs, once it has started training."""
    cmd = torchrun(["-m", "seqtext", "train", str(recipe), "-o", str(out), "-q",
                    "--set", "train.epochs=1000", "--set", "train.patience=0"])
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 200
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # training has started
        time.sleep(0.2)
    return proc


def both_ranks_checkpoint(out: Path) -> dict:
    """The metadata of ``out``'s checkpoint, checked to hold both ranks' random state."""
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"rank0.rng.cpu", "rank1.rng.cpu"} <= keys and meta["world"] == "2"
    return meta


def test_stopping_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(ddp_recipes, tmp_path):
    """Ctrl-C on torchrun (it passes SIGINT or SIGTERM on to the workers): the ranks agree on the step to stop at,
    save one checkpoint holding each rank's state, and exit without waiting to be killed."""
    out = tmp_path / "run"
    proc = start_endless_torchrun(ddp_recipes["classify"][0], out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # (workers that ignored SIGTERM would be killed by torchrun after 30 s and write no checkpoint)
    assert err.count("checkpoint saved. Resume with") == 1, err[-2000:]  # rank 0 alone explains
    assert f"Resume with: torchrun --nproc_per_node 2 -m seqtext train {out / 'recipe.toml'} --resume" in err
    meta = both_ranks_checkpoint(out)
    assert not json.loads(meta["loop"])["done"]


def test_killing_torchrun_stops_its_workers_with_a_checkpoint(ddp_recipes, tmp_path):
    """kill -9 of torchrun itself tells its workers nothing, but each asked the kernel for a SIGTERM
    when its parent dies: the ranks stop at one step with a checkpoint instead of training on, orphaned."""
    from test_crash import alive, child_pids

    out = tmp_path / "run"
    proc = start_endless_torchrun(ddp_recipes["classify"][0], out)
    workers = child_pids(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 120
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.2)
    err = proc.stderr.read()  # the workers held the pipe open until they exited
    assert err.count("checkpoint saved. Resume with") == 1, err[-2000:]
    both_ranks_checkpoint(out)


def test_an_error_that_every_process_meets_is_printed_once_per_machine(tmp_path):
    """Every process of a machine runs the same command on the same files, so a bad recipe or
    option fails in all of them: the machine's first process (LOCAL_RANK 0) prints the error line,
    the others exit 2 quietly."""
    from click.testing import CliRunner

    from seqtext.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('task = "classify"\n[train]\nepochs = "x"\n')
    for local, says in (("0", True), ("1", False)):
        env = {"RANK": local, "LOCAL_RANK": local, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        for args in (["train", str(bad)], ["train", str(bad), "--bogus"]):
            r = CliRunner().invoke(main, args, env=env)
            assert r.exit_code == 2 and ("error: " in r.output) == says, r.output


@pytest.mark.parametrize("command", [["evaluate", "runs/x"], ["predict", "runs/x", "a film"], ["info", "runs/x"],
                                     ["generate", "--model", "runs/x"], ["export-spacy", "runs/x", "out"]])
def test_commands_other_than_train_refuse_to_run_under_torchrun(command):
    """Each process would do all of the work and print it again (export-spacy: all of them writing one directory)."""
    from click.testing import CliRunner

    from seqtext.cli import main

    r = CliRunner().invoke(main, command, env={"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    assert r.exit_code == 2
    assert f"error: seqtext {command[0]} runs in one process, and RANK/WORLD_SIZE say this is one of torchrun's 2: " \
           "start it without torchrun" in r.output


def test_threads_default_to_the_cores_shared_among_the_processes_of_a_machine(monkeypatch):
    """threads = 0 under torchrun: each process taking every core oversubscribed them (2 processes
    on 2 cores trained the demo tagger 3x slower than with one thread each)."""
    from seqtext.model import set_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    try:
        for per_machine, threads, expected in (("2", 0, 2), ("8", 0, 1), ("2", 3, 3), (None, 0, 4)):
            if per_machine is None:
                monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
            else:
                monkeypatch.setenv("LOCAL_WORLD_SIZE", per_machine)
            set_threads(threads)
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_failures_before_training_print_one_error_line_and_leave_no_run(tiny, tmp_path):
    """Bad data fails rank 0 while the others wait for it: they stop quietly instead of each
    printing a traceback of the barrier its exit broke. Fewer batches than processes (found on
    every rank) is said once, and leaves no run directory, so the corrected command runs."""
    out = tmp_path / "run"
    for override in ("data.label_column=nope", "train.batch_size=1000"):
        r = run(torchrun(["-m", "seqtext", "train", str(tiny), "-o", str(out), "-q", "--set", override]), timeout=200)
        assert r.returncode != 0
        assert r.stderr.count("error: ") == 1, why(r)
        assert "[rank" not in r.stderr and "closed by peer" not in r.stderr, why(r)  # no worker tracebacks
        assert not out.exists()


def test_a_killed_process_leaves_the_others_one_line_saying_so(tiny, tmp_path):
    """kill -9 of one rank mid-training: the other, whose gradient all-reduce lost its peer, says
    so in one line (not gloo's traceback) with the way on, --resume."""
    r = subprocess.run(torchrun([str(HERE / "killable.py"), "trainstep", "3", "train", str(tiny), "-o",
                                 str(tmp_path / "run"), "-q"], launch=["--monitor-interval", "5"]),
                       env={**ENV, "KILL_RANK": "1"}, capture_output=True, text=True, timeout=200)
    assert r.returncode != 0
    assert r.stderr.count("error: another process of this torchrun job stopped") == 1, why(r)
    assert "[rank0]" not in r.stderr, why(r)


def test_a_warning_is_printed_once_per_machine(monkeypatch, capsys):
    """Data warnings (malformed tags, say) come from every process of a machine, which read the
    same files: its first process says them."""
    from seqtext.errors import warn

    for local, says in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", local)
        warn("train data: 3 malformed tags")
        assert ("warning: train data: 3 malformed tags" in capsys.readouterr().err) == says
