"""Run under ``torchrun --nproc_per_node 2``: checks ``seqtext.distributed``'s handling of sparse
(row) embedding gradients on gloo; exits non-zero with the failed check's message otherwise."""

import gc

import torch
import torch.distributed as tdist
from torch import nn

from seqtext import distributed as dist


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(10, 3, sparse=True)
        self.dense = nn.Linear(3, 2)

    def forward(self, x, use_words: bool = True):
        inputs = self.words(x) if use_words else torch.ones(*x.shape, 3)
        return self.dense(inputs).pow(2).sum()


def dense_average(grad) -> torch.Tensor:
    """The reference: every rank's gradient as a dense matrix, all-reduced and averaged."""
    t = torch.zeros(10, 3) if grad is None else grad.to_dense()
    tdist.all_reduce(t)
    return t / tdist.get_world_size()


def main() -> None:
    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
    torch.manual_seed(rank)  # the ranks build different weights: wrap must make them equal
    toy = Toy()
    assert list(dist.row_gradient_params(toy)) == ["words.weight"]
    net = dist.wrap(toy, torch.device("cpu"), find_unused=False)
    for p in (toy.words.weight, toy.dense.weight):
        first = p.detach().clone()
        tdist.broadcast(first, 0)
        assert torch.equal(p.detach(), first), "wrap left the ranks with different weights"
    rows = [toy.words.weight]
    # (rank 0's words, rank 1's words, rank 1 uses the embedding): repeated rows, rows on one rank
    # only, a rank without any rows, and a step without any
    steps = [([[1, 2, 2], [5, 1, 0]], [[2, 7, 7], [9, 9, 9]], True),
             ([[3, 4, 4]], [[0, 0, 0]], False),
             ([[3]], [[4]], None)]
    for mine, other, rank1_uses_words in steps:
        toy.zero_grad(set_to_none=True)
        x = torch.tensor(mine if rank == 0 else other)
        if rank1_uses_words is None:  # neither rank uses the embedding
            net(x, use_words=False).backward()
            dist.average_row_gradients(rows)
            assert toy.words.weight.grad is None, "a step without rows gave the embedding a gradient"
            continue
        net(x, use_words=rank == 0 or rank1_uses_words).backward()
        local = toy.words.weight.grad
        if local is not None:  # DDP must have left it alone: this rank's rows only
            assert local.is_sparse, "the embedding's gradient is not sparse"
            assert set(local.coalesce().indices()[0].tolist()) == set(x.flatten().tolist()), \
                "DDP reduced the embedding's gradient"
        expected = dense_average(local)
        dist.average_row_gradients(rows)
        grad = toy.words.weight.grad
        assert grad.is_sparse and grad.is_coalesced(), "the averaged gradient is not a coalesced sparse tensor"
        assert torch.allclose(grad.to_dense(), expected, atol=1e-6), f"averaged {grad.to_dense()}, expected {expected}"
        assert set(grad.indices()[0].tolist()) == set(expected.abs().sum(1).nonzero()[:, 0].tolist())
    # the DDP wrapper holds the group too: release it first, so that destroying the group really
    # ends gloo's threads now rather than at interpreter exit, where an abort ("terminate called
    # without an active exception") failed this check once after every assertion had passed
    del net
    gc.collect()
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
