"""The plain PyTorch loops the benchmark suite compares seqtext with (benchmarks/plain_loops.py)
are real models: their CRF loss is the CRF's, and they learn."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_recipe
from test_tag import write_recipe

from benchmarks.common import prepare
from benchmarks.plain_loops import crf_nll, plain_step
from seqtext.nn.crf import CRF


def test_plain_crf_loss_is_the_crf_negative_log_likelihood():
    torch.manual_seed(0)
    crf = CRF(5)  # unconstrained, as pytorch-crf is
    emissions = torch.randn(4, 7, 5)
    tags = torch.randint(0, 5, (4, 7))
    mask = torch.arange(7) < torch.tensor([7, 3, 1, 5]).unsqueeze(1)
    expected = crf.neg_log_likelihood(emissions, tags, mask)
    got = crf_nll(emissions, tags, mask, crf.transitions, crf.start_transitions, crf.end_transitions)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["classify", "tag"])
def test_plain_loops_learn_the_task(tmp_path, kind):
    recipe = tiny_recipe(tmp_path) if kind == "classify" else write_recipe(tmp_path)
    task, data = prepare(str(recipe), None)
    step = plain_step(task)
    batches = list(itertools.islice(task.train_batches(data["train"], epoch=0), 8))
    losses = [step(b) for _ in range(6) for b in batches]
    assert sum(losses[-8:]) < 0.5 * sum(losses[:8])
