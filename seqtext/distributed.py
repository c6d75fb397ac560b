"""torch.distributed glue: a no-op in a single process, DDP under ``torchrun``.

``torchrun --nproc_per_node N -m seqtext train RECIPE`` sets RANK/WORLD_SIZE; we then use
gloo on CPU and NCCL on GPU. Each rank reads its own share of the batches (classify/tag:
every world-th bucketed batch, the batches of one step neighbours in length; LM: its own
columns of the token stream), only rank 0 writes files (gathering each rank's random and
carried state into the checkpoint), and dev metrics are averaged across ranks.
"""

from __future__ import annotations

import contextlib
import gc
import os

import torch
import torch.distributed as tdist

from .errors import SeqtextError
from .hardware import stop_with_parent


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
        gc.collect()  # DDP wrappers in reference cycles hold the group: let them go first
        tdist.barrier()
        tdist.destroy_process_group()


def init(device: torch.device) -> bool:
    """Join the process group: NCCL when the run trains on CUDA, gloo on CPU (also where a GPU is
    present but ``--device cpu`` was asked for: NCCL reduces CUDA tensors only). True if this
    call joined it (False: not under torchrun, or already in a group)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or tdist.is_initialized():
        return False
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: if it is killed (kill -9), stop too
        stop_with_parent(os.getppid())
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
    asked for only where that can happen.

    Parameters with sparse (row) gradients (see :func:`row_gradient_params`) are left out of DDP:
    their gradients are averaged by :func:`average_row_gradients` after the backward pass instead,
    and they are broadcast from rank 0 here, as DDP does with the others."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    rows = row_gradient_params(net)
    if rows:
        for p in rows.values():
            tdist.broadcast(p.data, 0)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(net, list(rows))
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused,
                                   gradient_as_bucket_view=True)


def row_gradient_params(net: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The weights of ``net``'s embeddings that give sparse (row) gradients (``sparse=True``), by name."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in net.named_modules()
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse}


def average_row_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the sparse (row) gradients of ``params`` over the ranks, as DDP averages the dense
    ones; every rank must call it after each backward pass, with the same ``params``.

    Not DDP's own reduction of sparse gradients: gloo's sparse all-reduce corrupts the heap now and
    then on CPU (a rank dies with SIGSEGV or glibc's "malloc(): unaligned tcache chunk detected":
    a toy model in plain torch crashed in 3 of 3 runs of 20,000 steps, and ran them all with a
    dense embedding or with this function; ``python benchmarks/sparse_allreduce.py``). Each rank's
    rows and values go out as bytes in one dense all-gather instead (padded to the largest count,
    which a first all-gather shares), and every rank adds them up."""
    if not active():
        return
    world = world_size()
    for p in params:
        if p.grad is None:  # no rows on this rank this step; the others may have some
            rows, values = p.new_empty(0, dtype=torch.long), p.new_empty(0, p[0].numel())
        else:
            grad = p.grad.coalesce()
            rows, values = grad.indices()[0], grad.values().flatten(1)
        # one row of bytes per gradient row: its index (int64), then its values
        packed = torch.cat([rows[:, None].view(torch.uint8), values.contiguous().view(torch.uint8)], 1)
        count = torch.tensor([packed.size(0)], dtype=torch.long)
        counts = [torch.empty_like(count) for _ in range(world)]
        tdist.all_gather(counts, count)
        longest = max(int(c) for c in counts)
        if not longest:  # no rows anywhere (a frozen embedding has no gradient at all): as it is
            continue
        parts = [packed.new_empty(longest, packed.size(1)) for _ in range(world)]
        tdist.all_gather(parts, torch.cat([packed, packed.new_zeros(longest - packed.size(0), packed.size(1))]))
        gathered = torch.cat([part[: int(c)] for part, c in zip(parts, counts)])
        all_rows = gathered[:, :8].contiguous().view(torch.long)[:, 0]
        all_values = gathered[:, 8:].contiguous().view(values.dtype).view(-1, *p.shape[1:])
        # checked: rows out of range would make later sparse kernels write out of bounds
        p.grad = torch.sparse_coo_tensor(all_rows[None], all_values / world, p.shape, check_invariants=True).coalesce()


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
    """Rank 0 runs the block first (filling caches, writing files); the others follow. Where rank
    0's block fails (bad data, a run directory it refuses), the others stop with an empty
    SeqtextError, which the CLI does not print: rank 0 says why. (Waiting in a barrier instead,
    each printed a traceback of "Connection closed by peer" when rank 0 exited.)"""
    if not active():
        yield
        return
    if not is_main() and not _main_succeeded():
        raise SeqtextError("")
    try:
        yield
    except BaseException:
        if is_main():
            _main_succeeded(False)
        raise
    if is_main():
        _main_succeeded(True)


def _main_succeeded(ok: bool = False) -> bool:
    """Rank 0 passes ``ok`` (whether its block succeeded); every rank returns it."""
    t = torch.tensor([float(ok)], device=_collective_device())
    tdist.broadcast(t, 0)
    return bool(t[0])


def barrier() -> None:
    if active():
        tdist.barrier()
