"""Continuous cache (Grave et al. 2017): exact against a direct loop, causal, bounded, and a no-op at λ = 0."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from test_lm import lm_recipe, toml_of

from seqtext.cli import main
from seqtext.nn.cache import ContinuousCache, mix_log_prob


def brute_force(states, targets, size, theta):
    """p_cache(target_t) for one long [B, N, H] sequence, straight from the definition."""
    B, N, _ = states.shape
    out = torch.zeros(B, N)
    for b in range(B):
        for t in range(N):
            past = range(max(0, t - size), t)
            if not past:
                continue
            w = torch.stack([theta * states[b, t] @ states[b, i] for i in past]).softmax(0)
            out[b, t] = sum(w[k] for k, i in enumerate(past) if targets[b, i] == targets[b, t])
    return out


@pytest.mark.parametrize("size", [1, 3, 50])
def test_window_by_window_equals_definition(size):
    torch.manual_seed(size)
    states, targets = torch.randn(2, 17, 5), torch.randint(0, 4, (2, 17))
    thetas = [0.0, 0.3, 1.0]  # θ = 0: a uniform vote over the memory
    cache = ContinuousCache(size, thetas)
    parts = [cache.target_probs(states[:, a:b], targets[:, a:b]) for a, b in ((0, 6), (6, 7), (7, 17))]
    probs = torch.cat([p for p, _ in parts], 2)
    available = torch.cat([a for _, a in parts], 1)
    for i, theta in enumerate(thetas):
        torch.testing.assert_close(probs[i], brute_force(states, targets, size, theta), atol=1e-5, rtol=1e-5)
    assert not available[:, 0].any() and available[:, 1:].all()


def test_size_one_remembers_only_the_previous_word():
    targets = torch.tensor([[1, 1, 2, 1, 1]])
    probs, _ = ContinuousCache(1, [1.0]).target_probs(torch.randn(1, 5, 3), targets)
    assert probs[0, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]


def test_no_future_position_changes_an_earlier_probability():
    torch.manual_seed(0)
    states, targets = torch.randn(1, 12, 4), torch.randint(0, 3, (1, 12))
    before, _ = ContinuousCache(20, [0.5]).target_probs(states, targets)
    states2, targets2 = states.clone(), targets.clone()
    states2[:, 7:] = torch.randn(1, 5, 4)
    targets2[:, 7:] = (targets[:, 7:] + 1) % 3
    after, _ = ContinuousCache(20, [0.5]).target_probs(states2, targets2)
    torch.testing.assert_close(before[..., :7], after[..., :7])


def test_mixing():
    log_p = torch.log(torch.tensor([0.2, 0.5], dtype=torch.float64))
    cache_p = torch.tensor([1.0, 0.0], dtype=torch.float64)
    available = torch.tensor([True, False])
    torch.testing.assert_close(mix_log_prob(log_p, cache_p, available, 0.0), log_p)
    mixed = mix_log_prob(log_p, cache_p, available, 0.25)
    assert mixed[0].item() == pytest.approx(math.log(0.75 * 0.2 + 0.25))
    assert mixed[1].item() == pytest.approx(math.log(0.5))  # no memory yet: the model alone


def test_evaluate_cli_with_cache(tmp_path):
    runner = CliRunner()
    path = tmp_path / "lm.toml"
    path.write_text(toml_of(lm_recipe(tmp_path, "lm")))
    assert runner.invoke(main, ["train", str(path), "-q", "--set", "train.max_steps=20"]).exit_code == 0
    run = str(tmp_path / "lm")
    res = runner.invoke(main, ["evaluate", run, "--json", "--cache-size", "100"])
    assert res.exit_code == 0, res.output
    tuned = json.loads(res.stdout)
    assert tuned["cache"]["size"] == 100 and 0 <= tuned["cache"]["lambda"] < 1
    assert tuned["cache_perplexity"] == pytest.approx(math.exp(tuned["cache_loss"]))
    # λ = 0 is exactly the model: the cache pass does not disturb the ordinary perplexity
    res = runner.invoke(main, ["evaluate", run, "--json", "--cache-size", "100", "--cache-theta", "0.3",
                               "--cache-lambda", "0"])
    plain = json.loads(res.stdout)
    assert plain["cache_perplexity"] == pytest.approx(plain["perplexity"], rel=1e-9)
    assert plain["perplexity"] == pytest.approx(tuned["perplexity"], rel=1e-9)
    res = runner.invoke(main, ["evaluate", run, "--cache-size", "10", "--cache-theta", "0.3", "--cache-lambda", "1"])
    assert res.exit_code == 2 and "--cache-lambda" in res.output
    for theta in ("nan", "inf"):
        res = runner.invoke(main, ["evaluate", run, "--cache-size", "10", "--cache-theta", theta,
                                   "--cache-lambda", "0.1"])
        assert res.exit_code == 2 and "--cache-theta: expected a finite number ≥ 0" in res.output, res.output


def test_one_cache_setting_given_the_other_is_chosen_for_it(tmp_path):
    """Given θ, λ is tuned with that θ (not taken from the best pair for another θ), and the
    score is never worse on dev than without the cache, since λ = 0 is on the grid."""
    import seqtext
    from seqtext.errors import SeqtextError
    from seqtext.tasks.lm import CACHE_LAMBDAS

    path = tmp_path / "lm.toml"
    path.write_text(toml_of(lm_recipe(tmp_path, "lm")))
    assert CliRunner().invoke(main, ["train", str(path), "-q", "--set", "train.max_steps=20"]).exit_code == 0
    model = seqtext.load(tmp_path / "lm")
    for theta in (0.0, 0.3, 3.0):
        tuned = model.tune_cache(50, theta=theta)
        assert tuned["theta"] == theta and tuned["perplexity"] <= tuned["perplexity_without"] + 1e-9
        scored = model.evaluate("dev", cache_size=50, cache_theta=theta)
        assert scored["cache"] == {"size": 50, "theta": theta, "lambda": tuned["lambda"]}
        best = min(model.evaluate("dev", cache_size=50, cache_theta=theta, cache_lambda=lam)["cache_loss"]
                   for lam in CACHE_LAMBDAS)
        assert scored["cache_loss"] == pytest.approx(best)
    assert model.tune_cache(50, lambda_=0.2)["lambda"] == 0.2
    for bad in (-1.0, float("nan"), "0.3", True):
        with pytest.raises(SeqtextError, match=r"cache_theta: expected a finite number ≥ 0"):
            model.evaluate("dev", cache_size=50, cache_theta=bad, cache_lambda=0.1)
    with pytest.raises(SeqtextError, match=r"cache_lambda: expected a number in \[0, 1\), got '0.1'"):
        model.evaluate("dev", cache_size=50, cache_theta=0.3, cache_lambda="0.1")


def test_cache_tuning_chooses_no_cache_where_the_cache_only_hurts(monkeypatch):
    """A cache that never saw the next word (probability 0) can only lower the model's
    probabilities: the dev-tuned λ must then be 0, the model alone."""
    from seqtext.tasks.lm import CACHE_THETAS, LMTask

    n = 50
    scored = {"fwd_sum": n * math.log(2), "fwd_n": n, "log_p": torch.full((n,), math.log(0.5), dtype=torch.float64),
              "cache_p": [torch.zeros(n, dtype=torch.float64)] * len(CACHE_THETAS),
              "available": torch.ones(n, dtype=torch.bool)}
    monkeypatch.setattr(LMTask, "_score", lambda *args, **kw: scored)
    tuned = LMTask.__new__(LMTask).tune_cache(None, None, "cpu", cache_size=10)
    assert tuned["lambda"] == 0
    assert tuned["perplexity"] == pytest.approx(tuned["perplexity_without"]) == pytest.approx(2)
