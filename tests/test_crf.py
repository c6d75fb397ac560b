"""CRF against brute-force enumeration of all tag paths, plus constraints and padding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import seqtext.nn.crf
from seqtext.nn.crf import CRF, FORBIDDEN, _ScaledForwardBackward, constraints_for

IOB2_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
BIOES_LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def _effective(crf: CRF) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # The brute force applies the same penalty for forbidden transitions as the CRF.
    trans = crf.transitions + (~crf.allowed) * FORBIDDEN
    start = crf.start_transitions + (~crf.allowed_start) * FORBIDDEN
    end = crf.end_transitions + (~crf.allowed_end) * FORBIDDEN
    return trans, start, end


def _path_score(crf: CRF, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    trans, start, end = _effective(crf)
    score = start[path[0]] + emissions[0, path[0]]
    for t in range(1, len(path)):
        score = score + trans[path[t - 1], path[t]] + emissions[t, path[t]]
    return score + end[path[-1]]


def _brute_force(crf: CRF, emissions: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Log partition and best path of one unpadded sequence ``[T, K]``."""
    paths = list(itertools.product(range(crf.num_tags), repeat=emissions.size(0)))
    scores = torch.stack([_path_score(crf, emissions, p) for p in paths])
    return torch.logsumexp(scores, 0), paths[int(scores.argmax())]


def _batch(lengths: list[int], k: int, gen: torch.Generator):
    t = max(lengths)
    emissions = torch.randn(len(lengths), t, k, generator=gen, dtype=torch.double) * 2
    tags = torch.randint(0, k, (len(lengths), t), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return emissions, tags.masked_fill(~mask, -100), mask


@pytest.fixture(params=["numpy", "torch"])
def message_loops(request, monkeypatch):
    """Run a test with the CRF loss in NumPy (CPU) and composed in torch (other devices)."""
    monkeypatch.setattr(seqtext.nn.crf, "NUMPY_ON_CPU", request.param == "numpy")
    return request.param


def _crf(k: int, seed: int, *masks) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(k, *masks).double()
    with torch.no_grad():  # larger than the default init, so paths differ clearly
        for p in crf.parameters():
            p.uniform_(-1.5, 1.5)
    return crf


@pytest.mark.parametrize("k,lengths", [(3, [4, 1, 3, 2]), (4, [1]), (4, [3, 4, 2])])
def test_matches_brute_force(k, lengths, message_loops):
    gen = torch.Generator().manual_seed(k * 10 + len(lengths))
    crf = _crf(k, seed=k)
    emissions, tags, mask = _batch(lengths, k, gen)
    ll = crf(emissions, tags, mask)
    paths = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        log_z, best = _brute_force(crf, emissions[b, :n])
        gold = _path_score(crf, emissions[b, :n], tuple(tags[b, :n].tolist()))
        torch.testing.assert_close(ll[b], gold - log_z)
        assert paths[b] == list(best)
        assert len(paths[b]) == n


def test_matches_brute_force_with_constraints():
    gen = torch.Generator().manual_seed(7)
    crf = _crf(len(IOB2_LABELS), 7, *constraints_for(IOB2_LABELS, "IOB2"))
    emissions, tags, mask = _batch([3, 1, 2], len(IOB2_LABELS), gen)
    ll = crf(emissions, tags, mask)
    for b, n in enumerate([3, 1, 2]):
        log_z, best = _brute_force(crf, emissions[b, :n])
        gold = _path_score(crf, emissions[b, :n], tuple(tags[b, :n].tolist()))
        torch.testing.assert_close(ll[b], gold - log_z)
        assert crf.decode(emissions[b : b + 1, :n])[0] == list(best)


def test_padding_invariance():
    gen = torch.Generator().manual_seed(3)
    crf = _crf(5, 3)
    emissions, tags, mask = _batch([2, 6, 1, 4], 5, gen)
    ll = crf(emissions, tags, mask)
    paths = crf.decode(emissions, mask)
    for b, n in enumerate([2, 6, 1, 4]):
        alone_ll = crf(emissions[b : b + 1, :n], tags[b : b + 1, :n])
        torch.testing.assert_close(alone_ll[0], ll[b])
        assert crf.decode(emissions[b : b + 1, :n]) == [paths[b]]
    # Garbage in the padded emissions changes nothing either.
    noisy = torch.where(mask.unsqueeze(2), emissions, torch.full_like(emissions, 1e3))
    torch.testing.assert_close(crf(noisy, tags, mask), ll)
    assert crf.decode(noisy, mask) == paths


def test_length_one_and_probabilities_sum_to_one():
    crf = _crf(3, 11)
    emissions = torch.randn(1, 1, 3, dtype=torch.double)
    total = sum(math.exp(crf(emissions, torch.tensor([[j]])).item()) for j in range(3))
    assert total == pytest.approx(1.0)
    assert len(crf.decode(emissions)[0]) == 1


def test_nll_reductions_and_gradients():
    gen = torch.Generator().manual_seed(5)
    crf = CRF(4, *constraints_for(["O", "B-X", "I-X", "S-X"], "IOB2"))
    emissions, tags, mask = _batch([3, 5, 1], 4, gen)
    emissions = emissions.float().requires_grad_()
    per_seq = crf.neg_log_likelihood(emissions, tags, mask, reduction="none")
    assert per_seq.shape == (3,) and bool((per_seq > 0).all())
    torch.testing.assert_close(crf.neg_log_likelihood(emissions, tags, mask, "sum"), per_seq.sum())
    loss = crf.neg_log_likelihood(emissions, tags, mask)
    torch.testing.assert_close(loss, per_seq.mean())
    loss.backward()
    for g in (emissions.grad, crf.transitions.grad, crf.start_transitions.grad, crf.end_transitions.grad):
        assert g is not None and bool(torch.isfinite(g).all())
    assert bool((emissions.grad[~mask] == 0).all())  # padding gets no gradient
    with pytest.raises(ValueError, match="reduction"):
        crf.neg_log_likelihood(emissions, tags, mask, reduction="avg")


def test_bad_masks_are_rejected():
    crf = CRF(3)
    emissions = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match="left-aligned"):
        crf.decode(emissions, torch.tensor([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="at least one"):
        crf.decode(emissions, torch.tensor([[False, False, False], [True, True, True]]))


def _valid_iob2(tags: list[str]) -> bool:
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


def _valid_bioes(tags: list[str]) -> bool:
    prev = "O"
    for tag in [*tags, "O"]:
        inside = prev[:2] in ("B-", "I-")
        if tag[:2] in ("I-", "E-"):
            if not inside or prev[2:] != tag[2:]:
                return False
        elif inside:
            return False
        prev = tag
    return True


@pytest.mark.parametrize("labels,scheme,valid", [(IOB2_LABELS, "IOB2", _valid_iob2),
                                                 (BIOES_LABELS, "BIOES", _valid_bioes)])
def test_constrained_decode_is_always_valid(labels, scheme, valid):
    gen = torch.Generator().manual_seed(len(labels))
    crf = CRF(len(labels), *constraints_for(labels, scheme))
    lengths = [int(n) for n in torch.randint(1, 9, (64,), generator=gen)]
    # Emissions scaled far above the transition scores: unconstrained decoding would pick
    # ill-formed paths all the time.
    emissions, _, mask = _batch(lengths, len(labels), gen)
    paths = crf.decode(emissions.float() * 5, mask)
    assert [len(p) for p in paths] == lengths
    for path in paths:
        assert valid([labels[i] for i in path]), [labels[i] for i in path]
    unconstrained = CRF(len(labels)).decode(emissions.float() * 5, mask)
    assert not all(valid([labels[i] for i in p]) for p in unconstrained)


def test_constraints_for():
    allowed, start, end = constraints_for(IOB2_LABELS, "BIO")
    ix = {t: i for i, t in enumerate(IOB2_LABELS)}
    assert allowed[ix["B-PER"], ix["I-PER"]] and allowed[ix["I-PER"], ix["I-PER"]]
    assert not allowed[ix["O"], ix["I-PER"]] and not allowed[ix["B-LOC"], ix["I-PER"]]
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    allowed, start, end = constraints_for(BIOES_LABELS, "BIOES")
    ix = {t: i for i, t in enumerate(BIOES_LABELS)}
    assert not allowed[ix["B-PER"], ix["O"]] and not allowed[ix["I-PER"], ix["S-LOC"]]
    assert allowed[ix["E-PER"], ix["B-LOC"]] and allowed[ix["B-PER"], ix["E-PER"]]
    assert [BIOES_LABELS[i] for i in range(len(BIOES_LABELS)) if start[i]] == \
        ["O", "B-PER", "S-PER", "B-LOC", "S-LOC"]
    assert [BIOES_LABELS[i] for i in range(len(BIOES_LABELS)) if end[i]] == \
        ["O", "E-PER", "S-PER", "E-LOC", "S-LOC"]


def test_constraints_are_saved_with_weights():
    crf = CRF.for_labels(IOB2_LABELS, "IOB2")
    state = crf.state_dict()
    assert {"allowed", "allowed_start", "allowed_end"} <= set(state)
    fresh = CRF(len(IOB2_LABELS))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.allowed, crf.allowed)
    assert torch.equal(fresh.allowed_start, crf.allowed_start)


@pytest.mark.parametrize("constrained", [False, True])
def test_gradients_match_brute_force(constrained, message_loops):
    """The hand-written forward-backward gradient equals autograd through brute-force enumeration,
    for emissions, transitions, start and end scores, on a padded batch."""
    k = len(IOB2_LABELS)
    masks = constraints_for(IOB2_LABELS, "IOB2") if constrained else ()
    lengths = [3, 1, 4, 2]
    gen = torch.Generator().manual_seed(11)
    emissions, tags, mask = _batch(lengths, k, gen)
    weights = torch.rand(len(lengths), generator=gen, dtype=torch.double)  # non-uniform upstream grad

    crf = _crf(k, 3, *masks)
    emissions.requires_grad_(True)
    (crf(emissions, tags, mask) * weights).sum().backward()
    got = [emissions.grad, crf.transitions.grad, crf.start_transitions.grad, crf.end_transitions.grad]

    ref_crf = _crf(k, 3, *masks)
    ref_emissions = emissions.detach().clone().requires_grad_(True)
    total = 0.0
    for b, n in enumerate(lengths):
        log_z, _ = _brute_force(ref_crf, ref_emissions[b, :n])
        gold = _path_score(ref_crf, ref_emissions[b, :n], tuple(tags[b, :n].tolist()))
        total = total + weights[b] * (gold - log_z)
    total.backward()
    want = [ref_emissions.grad, ref_crf.transitions.grad, ref_crf.start_transitions.grad,
            ref_crf.end_transitions.grad]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert emissions.grad[~mask].abs().max() == 0  # padding gets no gradient


def test_log_partition_gradcheck(message_loops):
    k = 3
    gen = torch.Generator().manual_seed(5)
    emissions, _, mask = _batch([4, 2, 1], k, gen)
    crf = _crf(k, 5)
    trans, start, end = (p.detach().clone().requires_grad_(True) for p in _effective(crf))
    emissions.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e, tr, s, en: CRF._log_partition(e, mask, tr, s, en),
                                    (emissions, trans, start, end))


def test_scaled_partition_matches_log_space(message_loops):
    """The probability-space forward-backward gives the log-space recursion's values and
    gradients, on a padded, constrained batch with large scores and with a length-1 batch."""
    k = len(BIOES_LABELS)
    crf = _crf(k, 13, *constraints_for(BIOES_LABELS, "BIOES"))
    gen = torch.Generator().manual_seed(13)
    for lengths in ([7, 1, 5, 7, 2], [1, 1]):
        emissions, _, mask = _batch(lengths, k, gen)
        emissions = (emissions * 10).requires_grad_(True)  # scores spread over ~±60
        weights = torch.rand(len(lengths), generator=gen, dtype=torch.double)
        results = []
        for fn in (CRF._log_partition, CRF._log_partition_log_space):
            log_z = fn(emissions, mask, *crf._scores())
            params = [emissions, crf.transitions, crf.start_transitions, crf.end_transitions]
            results.append((log_z, torch.autograd.grad((log_z * weights).sum(), params,
                                                          materialize_grads=True)))
        (z, grads), (want_z, want_grads) = results
        torch.testing.assert_close(z, want_z)
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w)


def test_partition_falls_back_when_every_allowed_path_underflows(message_loops):
    """Emissions that favour only forbidden starts by 1000 leave the allowed paths no mass in
    probability space; the log partition is then taken in log space, finite, with gradients."""
    k = len(BIOES_LABELS)
    allowed, start_ok, end_ok = constraints_for(BIOES_LABELS, "BIOES")
    crf = _crf(k, 17, allowed, start_ok, end_ok)
    emissions = torch.zeros(2, 3, k, dtype=torch.double)
    emissions[:, 0, start_ok] = -1000.0  # exp(-1000) is 0 even in float64
    emissions.requires_grad_(True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():  # the case this test is about: probability space underflows
        assert not torch.isfinite(_ScaledForwardBackward.apply(emissions, mask, *crf._scores())).any()
    log_z = CRF._log_partition(emissions, mask, *crf._scores())
    want = CRF._log_partition_log_space(emissions, mask, *crf._scores())
    assert torch.isfinite(log_z).all()
    torch.testing.assert_close(log_z, want)
    (grad,) = torch.autograd.grad(log_z.sum(), [emissions])
    assert torch.isfinite(grad).all()


def test_partition_of_low_precision_scores_is_computed_in_float32():
    k = len(IOB2_LABELS)
    crf = _crf(k, 19).float()
    gen = torch.Generator().manual_seed(19)
    emissions, _, mask = _batch([6, 3], k, gen)
    half = emissions.to(torch.bfloat16).requires_grad_(True)
    log_z = CRF._log_partition(half, mask, *crf._scores())
    assert log_z.dtype == torch.float32
    want = CRF._log_partition_log_space(half.float(), mask, *crf._scores())
    torch.testing.assert_close(log_z, want)
    (grad,) = torch.autograd.grad(log_z.sum(), [half])
    assert grad.dtype == torch.bfloat16


def _likelihood_and_grads(crf: CRF, emissions, tags, mask, weights):
    emissions = emissions.detach().clone().requires_grad_(True)
    crf.zero_grad()
    ll = crf(emissions, tags, mask)
    (ll * weights).sum().backward()
    return ll.detach(), [emissions.grad, crf.transitions.grad, crf.start_transitions.grad, crf.end_transitions.grad]


def test_numpy_likelihood_matches_the_torch_composition(monkeypatch):
    """On CPU the whole log-likelihood and its gradient run in NumPy; other devices compose the
    path score (autograd) and the scaled forward-backward in torch. Same values and gradients on a
    padded, constrained batch with large scores, with T = 1, and in float32."""
    k = len(BIOES_LABELS)
    gen = torch.Generator().manual_seed(23)
    for lengths, dtype in (([7, 1, 5, 7, 2], torch.double), ([1, 1], torch.double), ([6, 4, 1], torch.float)):
        crf = _crf(k, 23, *constraints_for(BIOES_LABELS, "BIOES")).to(dtype)
        emissions, tags, mask = _batch(lengths, k, gen)
        emissions = (emissions * 10).to(dtype)
        weights = torch.rand(len(lengths), generator=gen, dtype=dtype)
        monkeypatch.setattr(seqtext.nn.crf, "NUMPY_ON_CPU", True)
        got = _likelihood_and_grads(crf, emissions, tags, mask, weights)
        assert got[0].dtype == dtype
        monkeypatch.setattr(seqtext.nn.crf, "NUMPY_ON_CPU", False)
        want = _likelihood_and_grads(crf, emissions, tags, mask, weights)
        torch.testing.assert_close(got[0], want[0])
        for g, w in zip(got[1], want[1]):
            torch.testing.assert_close(g, w)


def test_numpy_likelihood_is_the_path_taken_on_cpu_and_falls_back_when_it_underflows():
    k = len(BIOES_LABELS)
    allowed, start_ok, end_ok = constraints_for(BIOES_LABELS, "BIOES")
    crf = _crf(k, 17, allowed, start_ok, end_ok)
    emissions, tags, mask = _batch([3, 2], k, torch.Generator().manual_seed(3))
    emissions.requires_grad_(True)
    assert type(crf(emissions, tags, mask).grad_fn).__name__ == "_NumpyLogLikelihoodBackward"
    emissions = torch.zeros(2, 3, k, dtype=torch.double)
    emissions[:, 0, start_ok] = -1000.0  # allowed starts: no mass in probability space
    emissions.requires_grad_(True)
    ll = crf(emissions, tags, mask)
    assert type(ll.grad_fn).__name__ != "_NumpyLogLikelihoodBackward"  # the log-space recursion
    assert torch.isfinite(ll).all()
    (grad,) = torch.autograd.grad(ll.sum(), [emissions])
    assert torch.isfinite(grad).all()


def test_likelihood_of_bf16_scores_is_float32_with_bf16_gradients(monkeypatch):
    k = len(IOB2_LABELS)
    crf = _crf(k, 19).float()
    emissions, tags, mask = _batch([6, 3], k, torch.Generator().manual_seed(19))
    half = emissions.to(torch.bfloat16).requires_grad_(True)
    ll = crf(half, tags, mask)
    assert ll.dtype == torch.float32
    monkeypatch.setattr(seqtext.nn.crf, "NUMPY_ON_CPU", False)
    torch.testing.assert_close(ll, crf(half.float(), tags, mask))
    monkeypatch.undo()
    (grad,) = torch.autograd.grad(ll.sum(), [half])
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()
