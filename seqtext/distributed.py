"""torch.distributed glue: a no-op in a single process, DDP under ``torchrun``.

``torchrun --nproc_per_node N -m seqtext train RECIPE`` sets RANK/WORLD_SIZE; we then use
gloo on CPU and NCCL on GPU. Each rank reads its own share of the batches (classify/tag:
every world-th bucketed batch; LM: its own columns of the token stream), only rank 0
writes files, and dev metrics are averaged across ranks.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as tdist


def init() -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend)


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


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)


def average_metrics(metrics: dict) -> dict:
    """Every rank evaluates the full dev split, so metrics agree; average guards drift."""
    if not active():
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    tdist.all_reduce(t)
    return {**metrics, **{k: v / world_size() for k, v in zip(keys, t.tolist())}}


def agreed_seconds(seconds: float) -> float:
    """Rank 0's elapsed time on every rank, so time budgets stop all ranks at the same step and
    time-based LR schedules give every rank the same LR (a mismatch would hang or drift DDP)."""
    if not active():
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64)
    tdist.broadcast(t, src=0)
    return float(t.item())


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
