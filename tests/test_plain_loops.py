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


def test_benchmark_timings_run_under_the_trainers_allocator_settings(tmp_path, monkeypatch):
    """Benchmarks that time seqtext's step outside ``fit()`` apply fit()'s allocator settings
    (without them an LM's vocabulary-sized buffers page-fault back in every step: a refactor once
    dropped them from the pytorch/examples comparison, which then read 1.39x instead of 1.89x)."""
    import contextlib
    import importlib

    from test_lm import lm_recipe, toml_of

    from benchmarks.common import throughput
    from benchmarks.wikitext2_lm import reference_size_speed

    hardware = importlib.import_module("seqtext.hardware")
    entered = []
    real = hardware.freed_memory_kept

    @contextlib.contextmanager
    def spy(enabled=True):
        entered.append(enabled)
        with real(enabled) as applied:
            yield applied

    monkeypatch.setattr(hardware, "freed_memory_kept", spy)
    recipe = tmp_path / "lm.toml"
    recipe.write_text(toml_of(lm_recipe(tmp_path)))
    same = reference_size_speed(str(recipe), None, threads=1, n_batches=2)
    assert entered == [True] and same["seqtext_tokens_per_s"] > 0 and same["reference_tokens_per_s"] > 0
    task, data = prepare(str(recipe), None)
    assert throughput(task, data, n_batches=2, warmup=1)["full_tokens_per_s"] > 0
    assert entered == [True, True]


@pytest.mark.parametrize("layers,bidirectional", [(1, True), (2, False), (2, True)])
def test_step_anatomy_times_every_lstm_kernel_once(layers, bidirectional):
    """benchmarks/step_anatomy.py's clock finds one oneDNN kernel node per layer and direction of a
    watched nn.LSTM, and times its forward and backward: the LSTM's share of a step it reports
    rests on these."""
    from benchmarks.step_anatomy import LSTMClock, _kernel_nodes

    lstm = torch.nn.LSTM(6, 5, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    x = torch.randn(3, 4, 6, requires_grad=True)
    out = torch.nn.Linear(10 if bidirectional else 5, 2)(lstm(x)[0])  # more nodes above the LSTM
    nodes = _kernel_nodes(out, layers * (2 if bidirectional else 1))
    assert len(set(nodes)) == layers * (2 if bidirectional else 1)
    assert all(n.name().startswith("MkldnnRnnLayerBackward") for n in nodes)
    clock = LSTMClock()
    clock.watch(lstm, "x")
    lstm(x)[0].sum().backward()
    assert clock.seconds["x_lstm_forward"] > 0 and clock.seconds["x_lstm_backward"] > 0
    backward_calls = []
    clock._add = lambda key, started: backward_calls.append(key)  # count the timed kernel nodes
    lstm(x)[0].sum().backward()
    assert len(backward_calls) == layers * (2 if bidirectional else 1)
