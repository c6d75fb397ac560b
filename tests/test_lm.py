"""Language model: stream batching, state carry, tying, causality, sampling, generation, transfer, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, cpu_runs_bf16, tiny_recipe
from hypothesis import given, settings
from hypothesis import strategies as st

import seqtext
from seqtext.cli import main
from seqtext.data.vocab import Vocab
from seqtext.errors import SeqtextError
from seqtext.generate import (
    SamplingOptions,
    StreamDetokenizer,
    choose,
    filter_logits,
    leaves_quote_open,
    make_generator,
)
from seqtext.model import load_state_dict
from seqtext.nn.adaptive import AdaptiveSoftmax
from seqtext.recipe import load_recipe
from seqtext.tasks.lm import LMSplit, LMTask

DEMO_LM = REPO / "recipes" / "data" / "demo_lm"


def lm_recipe(tmp_path, name="lm", lines=300, **model) -> dict:
    """A tiny LM recipe over the first ``lines`` lines of the shipped demo corpus."""
    m = {"embedding_dim": 16, "hidden_size": 16, "layers": 1, "bidirectional": False, "dropout": 0.1,
         "embedding_dropout": 0.0, **model}
    return {
        "task": "lm", "name": name,
        "data": {"files": {s: str(DEMO_LM / f"{f}.txt") for s, f in
                           (("train", "train"), ("dev", "valid"), ("test", "test"))},
                 "format": "text", "max_examples": lines},
        "tokenizer": {"kind": "whitespace", "lowercase": False, "strip_html": False},
        "vocab": {"min_freq": 1, "max_size": 0},
        "model": m,
        "train": {"epochs": 1, "batch_size": 8, "bptt": 12, "lr": 0.01, "seed": 2, "threads": 1,
                  "checkpoint_every": 5, "patience": 0},
        "output": {"dir": str(tmp_path / name)},
    }


def toml_of(d: dict) -> str:
    from seqtext.recipe import dumps_toml

    return dumps_toml(d)


@pytest.fixture(scope="session")
def bilm(tmp_path_factory):
    """A bidirectional, adaptive-softmax, tied (with projection) LM trained once per session."""
    tmp = tmp_path_factory.mktemp("bilm")
    r = lm_recipe(tmp, "bilm", embedding_dim=16, hidden_size=24, bidirectional=True, layers=2,
                  softmax="adaptive", softmax_cutoffs=[20, 60])
    return seqtext.train(load_recipe(r), quiet=True)


def task_with_stream(tmp_path, tokens: int = 97, **model) -> tuple[LMTask, LMSplit]:
    """An LMTask with a random vocab of 30 words and a split holding one random stream."""
    import datasets

    recipe = load_recipe(lm_recipe(tmp_path, **model))
    task = LMTask(recipe, vocab=Vocab(f"w{i}" for i in range(26)))
    rng = np.random.default_rng(0)
    ds = datasets.Dataset.from_dict({"ids": [rng.integers(1, 30, tokens).tolist()]})
    return task, LMSplit(ds)


# ---------------------------------------------------------------------- batching and state
def test_windows_are_contiguous_columns_and_targets_are_shifted(tmp_path):
    task, data = task_with_stream(tmp_path, tokens=8 * 20 + 1)
    task.recipe.train.random_bptt = False
    batches = list(task.train_batches(data, epoch=0))
    assert len(batches) == task.steps_per_epoch(data)
    x = torch.cat([b.ids for b in batches], 1)
    y = torch.cat([b.targets for b in batches], 1)
    stream = torch.tensor(data.stream)
    for col in range(8):  # each row is one contiguous column of the stream, windows in order
        start = col * 20
        assert x[col].tolist() == stream[start: start + x.size(1)].tolist()
        assert y[col].tolist() == stream[start + 1: start + 1 + x.size(1)].tolist()
    assert all(b.mask.all() and (b.lengths == b.ids.size(1)).all() for b in batches)


def test_steps_per_epoch_matches_windows_with_random_bptt(tmp_path):
    task, data = task_with_stream(tmp_path, tokens=3000)
    task.recipe.train.random_bptt = True
    assert task.steps_per_epoch(data) == sum(1 for _ in task.train_batches(data, 0))


def test_steps_per_epoch_of_a_time_budgeted_run_reads_no_data(tmp_path, monkeypatch):
    """A run planned for 10**6 epochs (stopped by max_minutes) is sized from the first SIZE_EPOCHS
    epochs' window lengths alone: no pass over the stream per planned epoch."""
    task, data = task_with_stream(tmp_path, tokens=3000)
    t = task.recipe.train
    t.random_bptt, t.epochs = True, 10**6
    want = [sum(1 for _ in task.train_batches(data, e)) for e in range(task.SIZE_EPOCHS)]
    assert len(set(want)) > 1  # the counts do vary between epochs
    monkeypatch.setattr("seqtext.tasks.lm.lm_stream_batches", lambda *a, **k: pytest.fail("read the stream"))
    assert task.steps_per_epoch(data) == round(sum(want) / len(want))


def test_carried_state_over_windows_equals_one_window(tmp_path):
    """Loss over consecutive windows with the carried state = loss over the sequence at once."""
    task, data = task_with_stream(tmp_path, tokens=8 * 24 + 1, layers=2)
    torch.manual_seed(0)
    net = task.build_net().eval()

    def total_nll(bptt):
        task.recipe.train.bptt, task.recipe.train.random_bptt = bptt, False
        task.reset_epoch()
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in task.train_batches(data, 0):
                total += float(task.loss(net, batch)) * batch.targets.numel()
                n += batch.targets.numel()
        return total, n

    windows, whole = total_nll(6), total_nll(1000)
    assert windows[1] == whole[1] == 8 * 24
    assert windows[0] == pytest.approx(whole[0], rel=1e-5)
    # evaluation scores every token once, whatever the window length
    task.recipe.train.bptt = 5
    a = task.evaluate(net, data, "cpu")
    task.recipe.train.bptt = 1000
    b = task.evaluate(net, data, "cpu")
    assert a["tokens"] == b["tokens"] == data.num_tokens - 1
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)


def test_activation_regularisation_adds_ar_and_tar_to_the_training_loss_only(tmp_path):
    task, data = task_with_stream(tmp_path, tokens=8 * 12 + 1)
    task.recipe.train.random_bptt = False
    torch.manual_seed(0)
    net = task.build_net().eval()  # eval: no dropout, so the losses differ by the penalty alone
    batch = next(iter(task.train_batches(data, 0)))
    with torch.no_grad():
        (top, _), _ = net.encode(batch, None, outputs="directions")
    ar = float(top.pow(2).mean())
    tar = float((top[:, 1:] - top[:, :-1]).pow(2).mean())
    assert ar > 0 and tar > 0

    def loss(alpha, beta):
        task.recipe.model.activation_reg, task.recipe.model.temporal_activation_reg = alpha, beta
        task.reset_epoch()
        return float(task.loss(net, batch).detach())

    plain = loss(0.0, 0.0)
    assert loss(2.0, 0.0) == pytest.approx(plain + 2.0 * ar, rel=1e-5)
    assert loss(0.0, 1.0) == pytest.approx(plain + tar, rel=1e-5)
    assert loss(2.0, 1.0) == pytest.approx(plain + 2.0 * ar + tar, rel=1e-5)
    # scoring reports the plain NLL whatever the regularisation
    task.recipe.model.activation_reg = task.recipe.model.temporal_activation_reg = 0.0
    without = task.evaluate(net, data, "cpu")["loss"]
    task.recipe.model.activation_reg, task.recipe.model.temporal_activation_reg = 2.0, 1.0
    assert task.evaluate(net, data, "cpu")["loss"] == pytest.approx(without)


def test_evaluation_builds_no_autograd_graph(tmp_path, monkeypatch):
    """Perplexity carries the state over the whole split; with autograd on, the graph (and the
    memory) would grow with the split too."""
    task, data = task_with_stream(tmp_path, tokens=200)
    net = task.build_net()
    seen = []
    real = LMTask.token_nll

    def spy(net, states, targets):
        seen.append(states.requires_grad or torch.is_grad_enabled())
        return real(net, states, targets)

    monkeypatch.setattr(LMTask, "token_nll", staticmethod(spy))
    task.evaluate(net, data, "cpu")
    assert seen and not any(seen)


def test_train_state_round_trip(tmp_path):
    task, data = task_with_stream(tmp_path, tokens=400, layers=2)
    net = task.build_net().eval()
    batches = list(task.train_batches(data, 0))
    task.loss(net, batches[0])
    saved = {k: v.clone() for k, v in task.train_state().items()}
    assert len(saved) == 4  # h and c for 2 layers
    expected = task.loss(net, batches[1])
    task.reset_epoch()
    assert task.train_state() == {}
    task.load_train_state(saved)
    torch.testing.assert_close(task.loss(net, batches[1]), expected)


class Killed(Exception):
    pass


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, monkeypatch):
    r = lm_recipe(tmp_path, "full", embedding_dim=16, hidden_size=16, dropout=0.2, weight_dropout=0.2)
    r["train"]["epochs"] = 2
    full = seqtext.train(load_recipe(r), quiet=True)
    real, calls = LMTask.loss, {"n": 0}

    def dying(self, net, batch):
        calls["n"] += 1
        if calls["n"] == 13:  # after the checkpoint at step 10, mid-epoch: the carried state matters
            raise Killed
        return real(self, net, batch)

    monkeypatch.setattr(LMTask, "loss", dying)
    r["output"]["dir"] = str(tmp_path / "part")
    with pytest.raises(Killed):
        seqtext.train(load_recipe(r), quiet=True)
    monkeypatch.undo()
    resumed = seqtext.train(load_recipe(r), resume=True, quiet=True)
    a, b = load_state_dict(full / "weights.safetensors"), load_state_dict(resumed / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- model
@pytest.mark.parametrize("softmax", ["full", "adaptive"])
@pytest.mark.parametrize("hidden", [16, 24])
def test_weight_tying_shares_storage(tmp_path, softmax, hidden):
    task, _ = task_with_stream(tmp_path, hidden_size=hidden, softmax=softmax, softmax_cutoffs=[10])
    net = task.build_net()
    out = net.head.decoder.weight if softmax == "full" else net.head.weight
    emb = net.embedder.words.weight
    assert out is emb and out.data_ptr() == emb.data_ptr()
    with torch.no_grad():
        emb[5, 0] = 123.0
    assert out[5, 0] == 123.0
    assert (net.head.proj is not None) == (hidden != 16)  # projected to the embedding size to tie
    # counted once by the optimizer
    assert sum(p is emb for p in net.parameters()) == 1


def test_tied_weights_survive_save_and_load(bilm):
    model = seqtext.load(bilm)
    assert model.net.head.weight is model.net.embedder.words.weight


def test_untied_when_sizes_do_not_allow(tmp_path):
    task, _ = task_with_stream(tmp_path, hidden_size=24, projection_size=20)
    net = task.build_net()
    assert net.head.decoder.weight is not net.embedder.words.weight


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_no_future_leakage(tmp_path, softmax):
    """Changing token t+1 never changes the forward LM's prediction at positions ≤ t."""
    task, _ = task_with_stream(tmp_path, layers=2, bidirectional=True, softmax=softmax, softmax_cutoffs=[10])
    torch.manual_seed(0)
    net = task.build_net().eval()
    x = torch.randint(4, 30, (2, 10))
    for t in range(9):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 7) % 26 + 4
        with torch.no_grad():
            pa = task.log_probs(net, net.encode(task._batch(x), outputs="directions")[0][0])
            pb = task.log_probs(net, net.encode(task._batch(y), outputs="directions")[0][0])
        torch.testing.assert_close(pa[:, : t + 1], pb[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(pa[:, t + 1], pb[:, t + 1])


def test_adaptive_softmax_is_normalised_and_nll_matches(tmp_path):
    torch.manual_seed(0)
    head = AdaptiveSoftmax(8, 50, [10, 30]).eval()
    states = torch.randn(3, 7, 8)
    lp = head.log_probs(states)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(3, 7), atol=1e-5, rtol=0)
    targets = torch.randint(0, 50, (3, 7))
    torch.testing.assert_close(head.nll(states, targets), -lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1))


def test_adaptive_level_by_level_sampling_matches_the_full_distribution():
    """The fast sampler (head, then one cluster) draws from exactly the masked full softmax."""
    torch.manual_seed(1)
    head = AdaptiveSoftmax(6, 40, [8, 20]).eval()
    with torch.no_grad():
        head.cluster.bias += 2.0  # make the clusters likely, so every level is exercised
        state = torch.randn(6)
        probs = head.log_probs(state).exp().double()
    banned = [0, 2]
    probs[banned] = 0
    probs /= probs.sum()
    g = make_generator(3)
    n = 20000
    with torch.no_grad():
        counts = torch.bincount(torch.tensor([head.sample(state, banned, g) for _ in range(n)]), minlength=40)
    assert counts[banned].sum() == 0
    assert 0.5 * (counts / n - probs).abs().sum() < 0.03  # total variation distance


def test_too_little_training_text_is_a_clear_error():
    class TwoTokens:
        num_tokens = 2

    with pytest.raises(SeqtextError, match=r"has 2 tokens, fewer than the 3 that train.batch_size = 1 needs; "
                                           r"add training text$"):
        LMTask._check_length(TwoTokens(), 1, 1)
    with pytest.raises(SeqtextError, match=r"fewer than the 9 .* lower \[train\] batch_size or add training text"):
        LMTask._check_length(TwoTokens(), 4, 1)


def test_bad_softmax_cutoffs_are_a_clear_error(tmp_path):
    with pytest.raises(SeqtextError, match=r": \[model\] softmax_cutoffs: expected increasing ids"):
        load_recipe(lm_recipe(tmp_path, softmax="adaptive", softmax_cutoffs=[10, 5]))
    good = lm_recipe(tmp_path, softmax="adaptive", softmax_cutoffs=[10, 20])
    with pytest.raises(SeqtextError, match=r"^--set model.softmax_cutoffs: expected a non-empty list of integers"):
        load_recipe(good, ['model.softmax_cutoffs=["a"]'])
    with pytest.raises(SeqtextError, match=r"^--set model.softmax_cutoffs: expected increasing ids above the"):
        load_recipe(good, ["model.softmax_cutoffs=[2]"])  # inside the specials


def test_cutoffs_beyond_the_vocabulary_give_a_full_softmax(tmp_path, capsys):
    """No cluster boundary inside the vocabulary: a plain full-softmax head (no empty cluster layer),
    said once while training, and the saved model loads with the same head."""
    recipe = load_recipe(lm_recipe(tmp_path, lines=40, softmax="adaptive", softmax_cutoffs=[100_000]))
    run = seqtext.train(recipe, quiet=True)
    assert "are all at or above the vocabulary size" in capsys.readouterr().err
    reloaded = seqtext.load(run)
    assert not isinstance(reloaded.net.head, AdaptiveSoftmax)
    assert math.isfinite(reloaded.evaluate()["perplexity"])


# ---------------------------------------------------------------------- sampling
def test_top_p_keeps_the_smallest_set_over_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p)).nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.5) == [0]
    assert kept(0.79) == [0, 1]
    assert kept(0.81) == [0, 1, 2]
    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(0.01) == [0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=20), st.floats(0.01, 0.99))
def test_top_p_property(values, p):
    logits = torch.tensor(values, dtype=torch.float64)
    probs = logits.softmax(-1)
    keep = torch.isfinite(filter_logits(logits, top_p=p))
    assert probs[keep].sum() >= p - 1e-9
    smallest_kept = probs[keep].min()
    assert probs[keep].sum() - smallest_kept < p + 1e-9  # dropping any kept token falls below p
    assert probs[~keep].max() <= smallest_kept + 1e-12 if (~keep).any() else True


def test_top_k_filter():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [False, True, True, False]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=2, max_size=30, unique=True), st.integers(0, 1000))
def test_top_k_1_and_tiny_temperature_equal_greedy(values, seed):
    logits = torch.tensor(values, dtype=torch.float32) / 100  # distinct logits, gaps ≥ 0.01
    g = make_generator(seed)
    greedy = int(logits.argmax())
    assert choose(logits, SamplingOptions(top_k=1), g) == greedy
    assert choose(logits, SamplingOptions(temperature=1e-4), g) == greedy
    assert choose(logits, SamplingOptions(temperature=1e-320), g) == greedy  # no NaN from -inf - -inf


def test_a_huge_temperature_samples_uniformly_and_banned_tokens_stay_banned():
    logits = torch.tensor([0.0, -2.0, float("-inf"), -4.0])  # id 2 banned
    g = make_generator(0)
    counts = torch.bincount(torch.tensor([choose(logits, SamplingOptions(temperature=1e300), g)
                                          for _ in range(3000)]), minlength=4)
    assert counts[2] == 0 and all(900 < int(c) < 1100 for c in counts[[0, 1, 3]])


def test_generation_top_k_1_equals_greedy_and_seed_reproducible(bilm):
    model = seqtext.load(bilm)
    greedy = model.generate("the old cat", max_tokens=15, greedy=True)[0]
    assert model.generate("the old cat", max_tokens=15, top_k=1, seed=5)[0]["tokens"] == greedy["tokens"]
    assert model.generate("the old cat", max_tokens=15, temperature=1e-4, seed=9)[0]["tokens"] == greedy["tokens"]
    a = model.generate("the dog", max_tokens=20, seed=7, num_samples=2)
    b = model.generate("the dog", max_tokens=20, seed=7, num_samples=2)
    assert [r["text"] for r in a] == [r["text"] for r in b]
    c = [model.generate("the dog", max_tokens=20, seed=s)[0]["text"] for s in range(4)]
    assert len(set(c)) > 1


def test_empty_prompt_unknown_words_and_banned_tokens(bilm):
    model = seqtext.load(bilm)
    task = model.task
    assert task.prompt_ids("") == [Vocab.eos_id]
    ids = task.prompt_ids("the zzqx blorf\ncat")
    assert ids[0] == Vocab.eos_id and ids.count(Vocab.unk_id) == 2 and ids.count(Vocab.eos_id) == 2
    streamed = []
    out = model.generate("", max_tokens=30, seed=1, temperature=3.0, on_token=lambda i, p: streamed.append(p))[0]
    assert "".join(streamed) == out["text"] and len(out["tokens"]) == 30
    assert not {"<pad>", "<bos>", "<unk>"} & set(out["tokens"])
    out = model.generate("zzqx blorf", max_tokens=5, seed=1)[0]
    assert len(out["tokens"]) == 5
    assert model.generate("the", max_tokens=0)[0]["tokens"] == []


def test_detokenizer_glues_wikitext_splits_and_punctuation():
    d = StreamDetokenizer(object(), line_start=True)
    text = d.text(["a", "role", "@-@", "playing", "game", "(", "1", "@,@", "000", ")", ",", "it", "'s", "fine", ".",
                   "<eos>", "next"])
    assert text == "a role-playing game (1,000), it's fine.\nnext"
    # after a prompt: no space after its opening bracket or its typed trailing space
    assert StreamDetokenizer(object(), line_start=False, prev="(").text(["1", ")"]) == "1)"
    assert StreamDetokenizer(object(), line_start=False, prev="cat").text(["sat"]) == " sat"


def test_detokenizer_pairs_quotes_and_glues_split_hyphens():
    from seqtext.data.tokenizers import RegexTokenizer, WhitespaceTokenizer

    tokens = ["he", "said", '"', "no", "e", "-", "mail", '"', "-", "twice", ".", "<eos>", '"', "hi"]
    assert StreamDetokenizer(RegexTokenizer()).text(tokens) == 'he said "no e-mail" - twice.\n"hi'
    # a whitespace tokenizer keeps hyphenated words whole, so a lone "-" is a spaced dash
    assert StreamDetokenizer(WhitespaceTokenizer()).text(tokens) == 'he said "no e - mail" - twice.\n"hi'
    # a quote the prompt opened is closed without a space (and its line counts, not earlier ones)
    assert StreamDetokenizer(object(), line_start=False, prev="yes", quote_open=True).text(['"', "ok"]) == '" ok'
    # after a prompt that ends in an opening quote or a split hyphen, the first piece is glued on
    assert StreamDetokenizer(RegexTokenizer(), line_start=False, prev='"', quote_open=True).text(
        ["hello", '"', "."]) == 'hello".'
    assert StreamDetokenizer(RegexTokenizer(), line_start=False, prev="-").text(["known"]) == "known"
    assert leaves_quote_open(["a", '"', "b"]) and not leaves_quote_open(['"', "a", '"'])
    assert not leaves_quote_open(['"', "a", "<eos>", "b"]) and leaves_quote_open(['"', "<eos>", '"', "b"])


def test_generation_after_a_prompt_with_a_trailing_space_adds_no_second_space(bilm):
    model = seqtext.load(bilm)
    plain = model.generate("the old cat", max_tokens=3, greedy=True)[0]["text"]
    spaced = model.generate("the old cat ", max_tokens=3, greedy=True)[0]["text"]
    assert plain.startswith(" ") and spaced == plain[1:]


# ---------------------------------------------------------------------- evaluation and transfer
def test_perplexity_metrics(bilm):
    metrics = json.loads((bilm / "metrics.json").read_text())
    for split in ("dev", "test"):
        m = metrics[split]
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
        assert m["perplexity"] < 60  # vocab ~110: well below uniform after one short epoch
        assert "backward_perplexity" in m


def test_bf16_evaluation_close_to_fp32(bilm):
    """evaluate under bf16 autocast (seqtext.load(bf16=True)), cache included, gives about the
    fp32 perplexities: the carried LSTM state and the adaptive softmax work in bf16."""
    fp32 = seqtext.load(bilm, "cpu").evaluate(split="test", cache_size=20, cache_theta=0.3, cache_lambda=0.1)
    bf16 = seqtext.load(bilm, "cpu", bf16=True).evaluate(split="test", cache_size=20, cache_theta=0.3,
                                                            cache_lambda=0.1)
    for key in ("perplexity", "backward_perplexity", "cache_perplexity"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.05)
    # it did run in bf16 (or, on a CPU that cannot, in fp32: the same numbers)
    assert (bf16["perplexity"] != fp32["perplexity"]) == cpu_runs_bf16()


def classifier_recipe(tmp_path, init_from, **model):
    return tiny_recipe(tmp_path, init_from=f'"{init_from}"',
                       model={"embedding_dim": "16", "hidden_size": "24", "layers": "2", **model},
                       train={"epochs": "1", "freeze_epochs": "1", "encoder_lr_factor": "0.5"})


def test_init_from_bilm_copies_embedding_and_encoder(bilm, tmp_path):
    out = seqtext.train(classifier_recipe(tmp_path, bilm), output=tmp_path / "clf", quiet=True)
    lm, clf = load_state_dict(bilm / "weights.safetensors"), load_state_dict(out / "weights.safetensors")
    copied = [k for k in lm if k.startswith(("embedder.words.", "encoder."))]
    assert any(k.startswith("encoder.bwd.") for k in copied)
    # freeze_epochs=1 with epochs=1: the copied weights are still exactly the LM's
    assert all(torch.equal(lm[k], clf[k]) for k in copied)
    assert json.loads((out / "meta.json").read_text())["joint"] is False
    assert (out / "vocab.txt").read_text() == (bilm / "vocab.txt").read_text()
    seqtext.load(out).predict(["the cat sleeps"])
    # the LM's tokenizer (whitespace, cased) replaces the recipe's (regex, lowercase) in the saved
    # recipe, so the reloaded model tokenizes as training did and scores what training scored
    saved, source = load_recipe(out / "recipe.toml"), load_recipe(bilm / "recipe.toml")
    assert saved.tokenizer == source.tokenizer and saved.vocab == source.vocab
    assert saved.tokenizer.kind == "whitespace" and load_recipe(classifier_recipe(tmp_path, bilm)).tokenizer.lowercase
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert seqtext.load(out).evaluate("test")["accuracy"] == pytest.approx(metrics["accuracy"])


def test_init_from_an_lm_into_an_lm_copies_the_output_layer_too(bilm, tmp_path, capsys):
    """Fine-tuning an LM on new text starts from the whole source LM (ULMFiT's second stage);
    a classifier from the same LM gets only the embedding and encoder (test above)."""
    from seqtext.model import load_task
    from seqtext.train import init_from

    source = load_state_dict(bilm / "weights.safetensors")
    head = [k for k in source if k.startswith("head.")]
    assert head
    net = load_task(bilm).build_net()  # same architecture, fresh weights
    assert not all(torch.equal(net.state_dict()[k], source[k]) for k in head)
    copied, fresh = init_from(net, str(bilm), "lm")
    assert set(head) <= set(copied) and fresh == []
    assert all(torch.equal(v, source[k]) for k, v in net.state_dict().items())
    # another output layer (one cluster instead of two) starts fresh instead of refusing the source
    task = load_task(bilm)
    task.recipe.model.softmax_cutoffs = [20]
    copied, fresh = init_from(task.build_net(), str(bilm), "lm")
    assert "head.cluster.weight" in fresh and "head.weight" in copied
    # through train: every tensor of the source is copied (the output layer included)
    target = lm_recipe(tmp_path, "tuned", lines=40, embedding_dim=16, hidden_size=24, bidirectional=True, layers=2,
                       softmax="adaptive", softmax_cutoffs=[20, 60])
    seqtext.train(load_recipe({**target, "init_from": str(bilm)}), overrides=["train.max_steps=1"])
    assert f"initialised {len(source)} tensors from" in capsys.readouterr().err


def test_init_from_is_saved_absolute_so_the_saved_recipe_reproduces_the_run(bilm, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(bilm.parent)
    out = seqtext.train(classifier_recipe(tmp_path, bilm.name), output=tmp_path / "rel",
                        overrides=["train.max_steps=2"])
    assert "its tokenizer and vocabulary are used (tokenizer.kind" in capsys.readouterr().err
    assert load_recipe(out / "recipe.toml").init_from == str(bilm.resolve())
    monkeypatch.chdir(tmp_path)
    again = seqtext.train(out / "recipe.toml", output=tmp_path / "again", quiet=True)
    assert load_state_dict(again / "weights.safetensors").keys() == load_state_dict(out / "weights.safetensors").keys()


def test_init_from_names_the_tensors_a_deeper_model_does_not_get(bilm, tmp_path, capsys):
    seqtext.train(classifier_recipe(tmp_path, bilm, layers="3"), output=tmp_path / "deeper",
                  overrides=["train.max_steps=1"])
    err = capsys.readouterr().err
    assert "transferable tensors have no counterpart in" in err and "start random: encoder." in err
    seqtext.train(classifier_recipe(tmp_path, bilm), output=tmp_path / "same", overrides=["train.max_steps=1"])
    assert "no counterpart" not in capsys.readouterr().err


def test_init_from_rejects_mismatched_shapes(bilm, tmp_path):
    with pytest.raises(SeqtextError, match=r"init_from .*shape .*match \[model\] sizes"):
        seqtext.train(classifier_recipe(tmp_path, bilm, hidden_size="32"), output=tmp_path / "bad", quiet=True)


def test_init_from_a_missing_run_is_named_before_any_data_is_read(tmp_path, monkeypatch):
    import importlib

    train_module = importlib.import_module("seqtext.train")
    monkeypatch.setattr(train_module, "load_splits", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(SeqtextError, match=r"\.toml: init_from: .*nope: no such model directory \(train that run"):
        seqtext.train(classifier_recipe(tmp_path, tmp_path / "nope"), output=tmp_path / "out", quiet=True)


# ---------------------------------------------------------------------- CLI
def test_cli_train_evaluate_generate(tmp_path):
    runner = CliRunner()
    r = lm_recipe(tmp_path, "cli")
    path = tmp_path / "cli.toml"
    path.write_text(toml_of(r))
    res = runner.invoke(main, ["train", str(path), "-q", "--set", "train.max_steps=20"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "cli"
    res = runner.invoke(main, ["evaluate", str(run), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["perplexity"] > 1 and "loss" in metrics
    args = ["generate", "--model", str(run), "--prompt", "the old cat", "--max-tokens", "12", "--seed", "3"]
    a, b = runner.invoke(main, args), runner.invoke(main, args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and a.stdout.startswith("the old cat")
    res = runner.invoke(main, ["generate", "--model", str(run), "--json", "--num-samples", "2", "--max-tokens", "4"])
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 2 and all(len(x["tokens"]) == 4 for x in rows)
    res = runner.invoke(main, ["predict", str(run), "hello"])
    assert res.exit_code == 2 and "generate" in res.output


def test_cli_samples_are_separated_by_a_line_of_their_own(tmp_path, monkeypatch):
    """A sample that ends a line (an <eos>) gets no blank line before the separator."""
    from seqtext.model import Model

    r = lm_recipe(tmp_path, "sep")
    (tmp_path / "sep.toml").write_text(toml_of(r))
    assert CliRunner().invoke(main, ["train", str(tmp_path / "sep.toml"), "-q", "--set", "train.max_steps=5"]) \
        .exit_code == 0
    samples = [[" a", " b", "\n"], [" c", " d"], [" e"]]

    def fake(self, prompt, on_token=None, **options):
        for i, pieces in enumerate(samples):
            for p in pieces:
                on_token(i, p)
        return [{"text": "".join(p), "tokens": list(p), "seconds": 1.0} for p in samples]

    monkeypatch.setattr(Model, "generate", fake)
    res = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "sep"), "--prompt", "x",
                                    "--num-samples", "3"])
    line = "-" * 40
    assert res.exit_code == 0, res.output
    assert res.stdout == f"x a b\n{line}\nx c d\n{line}\nx e\n"


def test_cli_ctrl_c_while_generating_ends_the_text_line_first(tmp_path, monkeypatch):
    """'interrupted' goes on a line of its own, not after the last word streamed."""
    from seqtext.model import Model

    r = lm_recipe(tmp_path, "stop")
    (tmp_path / "stop.toml").write_text(toml_of(r))
    assert CliRunner().invoke(main, ["train", str(tmp_path / "stop.toml"), "-q", "--set", "train.max_steps=5"]) \
        .exit_code == 0

    def interrupted(self, prompt, on_token=None, **options):
        on_token(0, " a")
        raise KeyboardInterrupt

    monkeypatch.setattr(Model, "generate", interrupted)
    res = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "stop"), "--prompt", "x"])
    assert res.exit_code == 130 and res.stdout == "x a\n" and res.stderr == "interrupted\n"


@pytest.mark.parametrize("args, message", [
    (["--max-tokens", "-1"], "--max-tokens"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "-2"], "--temperature"),
    (["--top-k", "-3"], "--top-k"),
    (["--num-samples", "0"], "--num-samples"),
    (["--temperature", "inf"], "--temperature"),
    (["--seed", str(2**64)], "--seed"),
])
def test_cli_generate_bad_options_exit_2(args, message, tmp_path):
    res = CliRunner().invoke(main, ["generate", "--model", str(tmp_path), *args])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize("options, message", [
    ({"top_k": 2.5}, "^top_k: "), ({"num_samples": 2.0}, "^num_samples: "),
    ({"temperature": "hot"}, r"^temperature: .*\(or use greedy\)"), ({"seed": -(2**63) - 1}, "^seed: "),
    ({"greedy": "no"}, r"^greedy: expected True or False, got 'no'"), ({"allow_unk": 1}, "^allow_unk: "),
])
def test_python_generate_options_are_type_checked_and_named_as_keywords(options, message):
    with pytest.raises(SeqtextError, match=message):
        SamplingOptions(**options).validate()


def test_greedy_decoding_ignores_the_temperature_whatever_it_holds():
    SamplingOptions(greedy=True, temperature=None).validate()


def test_numpy_numbers_are_sampling_options_too():
    opts = SamplingOptions(max_tokens=np.int64(5), top_k=np.int32(3), seed=np.uint32(7), temperature=np.float32(0.5))
    opts.validate()
    assert (opts.max_tokens, opts.top_k, opts.seed, opts.temperature) == (5, 3, 7, 0.5)
    assert all(type(v) in (int, float) for v in (opts.max_tokens, opts.top_k, opts.seed, opts.temperature))


def test_python_api_refuses_predict_on_an_lm_and_a_prompt_that_is_not_text(bilm):
    model = seqtext.load(bilm)
    with pytest.raises(SeqtextError, match="'lm' model; predict needs"):
        model.predict(["the cat"])
    with pytest.raises(SeqtextError, match="prompt: expected a string"):
        model.generate(None)
    with pytest.raises(SeqtextError, match=r"^generate: temprature: not a sampling option \(they are: max_tokens, "):
        model.generate("the cat", temprature=0.8)


def test_python_evaluate_refuses_options_the_task_does_not_have(bilm, trained_demo):
    with pytest.raises(SeqtextError, match=r"^evaluate: cache_thet: not an option for a 'lm' model \(its options: "
                                           r"batch_size, cache_lambda, cache_size, cache_theta\)"):
        seqtext.load(bilm).evaluate(cache_thet=0.3)
    lm = seqtext.load(bilm)
    for options, message in (({"batch_size": 0}, "^batch_size: expected an integer ≥ 1"),
                             ({"cache_size": -5}, "^cache_size: expected an integer ≥ 1"),
                             ({"cache_theta": 0.3}, "^cache_theta and cache_lambda need cache_size")):
        with pytest.raises(SeqtextError, match=message):
            lm.evaluate(**options)
    with pytest.raises(SeqtextError, match=r"^cache_size: expected an integer ≥ 1"):
        lm.tune_cache(0)
    classifier = seqtext.load(trained_demo)
    for option in ({"mode": "strict"}, {"cache_size": 100}):
        with pytest.raises(SeqtextError, match=r"not an option for a 'classify' model \(its options: none\)"):
            classifier.evaluate(**option)


def test_cli_generate_on_a_classifier_is_one_line_error(tiny, tmp_path):
    run = seqtext.train(tiny, output=tmp_path / "clf", quiet=True)
    res = CliRunner().invoke(main, ["generate", "--model", str(run), "--prompt", "hi"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "'classify' model" in res.output


def test_cli_generate_without_a_model_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["generate", "--prompt", "hello"])
    assert res.exit_code == 2
    assert "no language model at runs/wikitext2_lm" in res.output
    assert "seqtext train recipes/wikitext2_lm.toml" in res.output


def test_shipped_lm_recipes_fit_their_uses():
    """The next-word LMs (what `seqtext generate` samples from) run forward only; the IMDB biLM
    runs both directions, and the transfer recipe that starts from it has its encoder's sizes
    (init_from refuses others, after the 35-minute LM run)."""
    recipes = {name: load_recipe(REPO / "recipes" / f"{name}.toml")
               for name in ("demo_lm", "wikitext2_lm", "ptb_lm", "imdb_lm", "imdb_sentiment_transfer")}
    for name in ("demo_lm", "wikitext2_lm", "ptb_lm"):
        assert recipes[name].task == "lm" and not recipes[name].model.bidirectional, name
    lm, transfer = recipes["imdb_lm"], recipes["imdb_sentiment_transfer"]
    assert lm.task == "lm" and lm.model.bidirectional
    assert transfer.task == "classify" and transfer.init_from == "runs/imdb_lm"
    sizes = ("embedding_dim", "hidden_size", "layers", "bidirectional")
    assert [getattr(transfer.model, k) for k in sizes] == [getattr(lm.model, k) for k in sizes]


def test_long_prompt_is_processed_in_chunks_with_the_same_result(bilm, monkeypatch):
    import seqtext.tasks.lm as lm

    model = seqtext.load(bilm)
    prompt = " ".join(["the old cat sat on the mat ."] * 60)
    whole = model.generate(prompt, max_tokens=12, greedy=True)[0]["tokens"]
    monkeypatch.setattr(lm, "PROMPT_CHUNK", 7)
    chunked = model.generate(prompt, max_tokens=12, greedy=True)[0]["tokens"]
    assert chunked == whole
