"""Output layers: the fused linear + cross-entropy of the LM head equals the plain one."""

import pytest
import torch
import torch.nn.functional as F

from seqtext.nn.heads import LMHead


def _pair(seed: int, tied: bool):
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(40, 6) if tied else None
    head = LMHead(6, 40, dropout=0.0, tied_to=emb).double()
    return head


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_nll_matches_cross_entropy_values_and_gradients(tied):
    states = torch.randn(3, 5, 6, dtype=torch.double)
    targets = torch.randint(0, 40, (3, 5))
    targets[1, 4] = -100  # ignored position: no loss, no gradient
    upstream = torch.rand(3, 5, dtype=torch.double)

    ref_head, head = _pair(0, tied), _pair(0, tied)
    ref_states, got_states = states.clone().requires_grad_(True), states.clone().requires_grad_(True)
    ref = F.cross_entropy(ref_head(ref_states).flatten(0, 1), targets.flatten(), reduction="none").view(3, 5)
    got = head.nll(got_states, targets)
    (ref * upstream).sum().backward()
    (got * upstream).sum().backward()

    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got_states.grad, ref_states.grad)
    for (name, p), (_, q) in zip(head.named_parameters(), ref_head.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert got[1, 4] == 0 and got_states.grad[1, 4].abs().max() == 0


def test_lm_head_nll_under_bf16_autocast_is_close_and_fp32():
    torch.manual_seed(1)
    head = LMHead(16, 300, dropout=0.0)
    states = torch.randn(4, 7, 16)
    targets = torch.randint(0, 300, (4, 7))
    ref = F.cross_entropy(head(states).flatten(0, 1), targets.flatten(), reduction="none").view(4, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head.nll(states.requires_grad_(True), targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0.02)
    got.sum().backward()
    assert head.decoder.weight.grad.dtype == torch.float32 and states.grad.dtype == torch.float32


def test_adaptive_softmax_row_buckets_change_nothing_under_autocast(monkeypatch):
    """Under bf16 autocast the tail clusters run on row counts padded to a bucket (bounded oneDNN
    kernel cache); the padded rows must not change losses or gradients."""
    from seqtext.nn import adaptive
    from seqtext.nn.adaptive import AdaptiveSoftmax

    torch.manual_seed(0)
    head = AdaptiveSoftmax(8, 60, [10, 30])
    states = torch.randn(5, 7, 8)
    targets = torch.randint(0, 60, (5, 7))

    def run():
        head.zero_grad()
        x = states.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll = head.nll(x, targets)
        nll.sum().backward()
        return nll.detach(), x.grad, [p.grad.clone() for p in head.parameters()]

    assert adaptive._bucketed(torch.arange(3)).tolist() == [0, 1, 2] + [0] * (adaptive.ROW_BUCKET - 3)
    padded = run()
    monkeypatch.setattr(adaptive, "ROW_BUCKET", 1)
    exact = run()
    torch.testing.assert_close(padded[0], exact[0])
    torch.testing.assert_close(padded[1], exact[1])
    for a, b in zip(padded[2], exact[2]):
        torch.testing.assert_close(a, b)


def test_flops_per_token_counts_lstm_gates_and_output_layers():
    """MFU's numerator, against counts by hand: an LSTM layer costs 2 · 4 gates · hidden ·
    (input + hidden) FLOPs a token, a linear layer 2 · in · out; a biLM's head runs per direction."""
    from seqtext.nn.embeddings import Embedder
    from seqtext.nn.encoder import Encoder
    from seqtext.tasks.base import Net
    from seqtext.tasks.lm import LMNet

    bilstm = Encoder(8, 4, layers=2, bidirectional=True)  # layer 2 reads both directions: 8 wide
    assert bilstm.flops_per_token() == 4 * (2 * 4 * 4 * (8 + 4))
    net = Net(Embedder(10, 8), bilstm, torch.nn.Linear(8, 3))
    assert net.flops_per_token() == 1536 + 2 * 8 * 3
    bilm = LMNet(Embedder(10, 8), Encoder(8, 4, bidirectional=True, joint=False), LMHead(4, 10))
    assert bilm.flops_per_token() == 2 * (2 * 4 * 4 * 12) + 2 * (2 * 4 * 10)
