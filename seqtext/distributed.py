"""torch.distributed glue: a no-op in a single process, DDP under ``torchrun``.

``torchrun --nproc_per_node N -m seqtext train RECIPE`` sets RANK/WORLD_SIZE; we then use
gloo on CPU and NCCL on GPU. Each rank reads its own share of the batches (classify/tag:
every world-th bucketed batch, the batches of one step neighbours in length; LM: its own
columns of the token stream), only rank 0 writes files (gathering each rank's random and
carried state into the checkpoint), and dev metrics are averaged across ranks.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as tdist

from .errors import SeqtextError


@contextlib.contextmanager
def process_group(device: torch.device):
    """Inside the block, this process is in the torchrun job's process group (see :func:`init`),
    and it leaves the group at the end of the block if it joined at its start. Leaving: the ranks
    wait for each other, then the group is destroyed, which joins its threads. A rank that exited
    with the group still up aborted now and then at interpreter exit ("terminate called without
    an active exception"), failing a run that had finished."""
    joined = init(device)
    try:
        yield
    except BaseException:
        if joined:
            tdist.destroy_process_group()  # no barrier: the other ranks may be gone
        raise
    if joined:
        tdist.barrier()
        tdist.destroy_process_group()


def init(device: torch.device) -> bool:
    """Join the process group: NCCL when the run trains on CUDA, gloo on CPU (also where a GPU is
    present but ``--device cpu`` was asked for: NCCL reduces CUDA tensors only). True if this
    call joined it (False: not under torchrun, or already in a group)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or tdist.is_initialized():
        return False
    if device.type == "cuda":
        per_node, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count()
        if per_node > gpus:
            raise SeqtextError(f"torchrun started {per_node} processes on this machine but it has {gpus} GPU(s), "
                               f"and NCCL needs one GPU per process: use --nproc_per_node {gpus}, or train on "
                               "CPU with --device cpu (gloo)")
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device_for_rank(device: torch.device) -> torch.device:
    if device.type == "cuda" and active():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def wrap(net: torch.nn.Module, device: torch.device, find_unused: bool) -> torch.nn.Module:
    """DDP around ``net``. ``find_unused``: some parameters may get no gradient in a step (layers
    frozen for the first epochs); it costs a walk over the autograd graph every step, so it is
    asked for only where that can happen."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused,
                                   gradient_as_bucket_view=True)


def _collective_device() -> torch.device:
    """Where small tensors for a collective must live: NCCL reduces CUDA tensors only."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_metrics(metrics: dict) -> dict:
    """Every rank evaluates the full dev split, so metrics agree; average guards drift."""
    if not active():
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    tdist.all_reduce(t)
    return {**metrics, **{k: v / world_size() for k, v in zip(keys, t.tolist())}}


def agree(seconds: float, stop: bool) -> tuple[float, bool]:
    """(the largest elapsed time, whether any rank was asked to stop), the same on every rank.

    One small all-reduce (the Trainer calls it every few steps): time budgets then end every rank
    at the same step, time-based LR schedules give every rank the same LR, and a SIGTERM/SIGINT
    that reaches the ranks at different moments stops them all at one step with one checkpoint
    (a mismatch would hang DDP)."""
    if not active():
        return seconds, stop
    t = torch.tensor([seconds, float(stop)], dtype=torch.float64, device=_collective_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t[0]), bool(t[1])


def gather(obj) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (None on the others); ``[obj]`` without DDP."""
    if not active():
        return [obj]
    out = [None] * world_size() if is_main() else None
    tdist.gather_object(obj, out, dst=0)
    return out


def all_equal(value) -> bool:
    """Whether every rank holds the same (picklable) ``value``."""
    if not active():
        return True
    values = [None] * world_size()
    tdist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (filling caches, writing files); the others follow."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def barrier() -> None:
    if active():
        tdist.barrier()
