"""2-process DistributedDataParallel (gloo, CPU) training through torchrun."""

import json
import os
import socket
import subprocess
import sys

import seqtext


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_quality(tiny, tmp_path):
    epochs = ["--set", "train.epochs=6", "--set", "train.patience=0"]
    single = seqtext.train(tiny, ["train.batch_size=16", "train.epochs=6", "train.patience=0"],
                           output=tmp_path / "one", quiet=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "seqtext", "train", str(tiny), "--set", "train.batch_size=8",
           *epochs, "-o", str(tmp_path / "two"), "-q"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["train"]["steps"] == one["train"]["steps"]  # same global batch → same number of steps
    assert two["test"]["accuracy"] >= one["test"]["accuracy"] - 0.05
    assert one["test"]["accuracy"] > 0.7  # learned something: chance is 0.5
    # only rank 0 wrote files, and the model directory is complete
    assert seqtext.load(tmp_path / "two").predict(["a great film"])[0]["label"] in {"neg", "pos"}
