import numpy as np
import pytest
import torch

import seqtext
from seqtext.data.batching import Batch
from seqtext.errors import SeqtextError
from seqtext.nn.encoder import Encoder, drop_connect, reverse_padded
from seqtext.nn.heads import masked_pool


def test_reverse_padded_keeps_padding_in_place():
    x = torch.arange(8).view(2, 4, 1)
    out = reverse_padded(x, torch.tensor([3, 4]))
    assert out[..., 0].tolist() == [[2, 1, 0, 3], [7, 6, 5, 4]]


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
def test_encoder_outputs_do_not_depend_on_padding(joint, layers):
    torch.manual_seed(0)
    enc = Encoder(5, 7, layers=layers, bidirectional=True, joint=joint).eval()
    x = torch.randn(1, 6, 5)
    alone, _ = enc(x, torch.tensor([6]))
    garbage = torch.randn(3, 10, 5) * 100  # padding content must not matter either
    batch = garbage.clone()
    batch[1, :6] = x[0]
    out, _ = enc(batch, torch.tensor([10, 6, 3]))
    torch.testing.assert_close(out[1, :6], alone[0], rtol=1e-5, atol=1e-6)


def test_backward_direction_sees_the_future_forward_does_not():
    torch.manual_seed(0)
    enc = Encoder(4, 3, layers=1, bidirectional=True, joint=False).eval()
    x = torch.randn(1, 5, 4)
    y = x.clone()
    y[0, 4] += 1.0
    a, _ = enc(x, torch.tensor([5]))
    b, _ = enc(y, torch.tensor([5]))
    torch.testing.assert_close(a[0, :4, :3], b[0, :4, :3])  # forward half unchanged before t=4
    assert not torch.allclose(a[0, :4, 3:], b[0, :4, 3:])


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
def test_encoder_output_modes_agree(joint, layers):
    torch.manual_seed(0)
    enc = Encoder(5, 7, layers=layers, bidirectional=True, joint=joint).eval()
    x, lengths = torch.randn(3, 6, 5), torch.tensor([6, 2, 4])
    out, _ = enc(x, lengths)
    (f, b), _ = enc(x, lengths, outputs="directions")
    torch.testing.assert_close(torch.cat([f, b], -1), out)
    (f2, b_reversed), _ = enc(x, lengths, outputs="directions_reversed")
    torch.testing.assert_close(f2, f)
    torch.testing.assert_close(reverse_padded(b_reversed, lengths)[1, :2], b[1, :2])
    torch.testing.assert_close(b_reversed[1, :2], b[1, :2].flip(0))  # row 1 has length 2
    torch.testing.assert_close(reverse_padded(b_reversed, lengths), b)  # padding kept in place
    with pytest.raises(ValueError, match="outputs must be"):
        enc(x, lengths, outputs="both")


@pytest.mark.parametrize("how", ["max", "mean", "maxmean", "last", "attention"])
def test_pooling_ignores_padding(how):
    torch.manual_seed(0)
    att = torch.nn.Linear(6, 1)
    states = torch.randn(2, 5, 6)
    states[1, 2:] = 1e6  # padding positions hold huge values
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]], dtype=torch.bool)
    lengths = torch.tensor([5, 2])
    pooled = masked_pool(states, mask, lengths, how, att)
    alone = masked_pool(states[1:, :2], mask[1:, :2], lengths[1:], how, att)
    torch.testing.assert_close(pooled[1:], alone)


@pytest.mark.parametrize("how", ["max", "mean", "maxmean"])
def test_fast_pooling_matches_autograd_reference(how):
    """The fused max/mean pooling gives the plain autograd formulas' values and gradients, and no
    gradient reaches padding."""
    torch.manual_seed(0)
    lengths = torch.tensor([7, 3, 5, 7, 1])
    mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    states = torch.randn(5, 7, 4, dtype=torch.float64)
    states[~mask] = 1e6
    m = mask.unsqueeze(-1)
    reference = {"max": lambda x: x.masked_fill(~m, float("-inf")).max(1).values,
                 "mean": lambda x: (x * m).sum(1) / lengths.unsqueeze(1)}
    reference["maxmean"] = lambda x: torch.cat([reference["max"](x), reference["mean"](x)], -1)
    a, b = states.clone().requires_grad_(True), states.clone().requires_grad_(True)
    fast, slow = masked_pool(a, mask, lengths, how), reference[how](b)
    torch.testing.assert_close(fast, slow)
    grad = torch.randn_like(fast)
    fast.backward(grad)
    slow.backward(grad)
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad[~mask].abs().sum() == 0
    x = torch.randn(5, 7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: masked_pool(x, mask, lengths, how), (x,))


def test_classifier_prediction_alone_equals_in_padded_batch(trained_demo):
    model = seqtext.load(trained_demo)
    text = "The film is a wonderful ride."
    others = ["Avoid it. " * 30, "Dull.", "It runs for about two hours and the cast is superb " * 5]
    alone = model.predict([text])[0]
    together = model.predict(others[:1] + [text] + others[1:])[1]
    assert alone["label"] == together["label"]
    for k in alone["probs"]:
        assert abs(alone["probs"][k] - together["probs"][k]) < 1e-5


def test_save_load_gives_identical_predictions(trained_demo):
    """The saved model is the one training scored: loaded again, it gets the test metrics that
    training wrote into metrics.json, and two loads predict alike."""
    import json

    model = seqtext.load(trained_demo)
    written = json.loads((trained_demo / "metrics.json").read_text())["test"]
    reloaded = model.evaluate(split="test")
    assert reloaded["accuracy"] == written["accuracy"] and reloaded["macro_f1"] == written["macro_f1"]
    assert reloaded["confusion_matrix"] == written["confusion_matrix"]
    texts = ["A superb cast and a touching script.", "A tedious, lazy mess.", ""]
    a = model.predict(texts)
    b = seqtext.load(trained_demo).predict(texts)
    assert a == b
    assert a[0]["label"] == "pos" and a[1]["label"] == "neg"
    assert set(a[2]["probs"]) == {"neg", "pos"}  # empty text still gets a prediction


def test_model_directory_contents(trained_demo):
    names = {p.name for p in trained_demo.iterdir()}
    assert {"recipe.toml", "vocab.txt", "meta.json", "weights.safetensors", "metrics.json", "metrics.jsonl",
            "curves.png", "checkpoint.safetensors"} <= names
    assert not [n for n in names if n.endswith((".pt", ".bin", ".pkl", ".tmp"))]
    metrics = seqtext.load(trained_demo).metrics()
    assert metrics["test"]["accuracy"] > 0.8 and "roc_auc" in metrics["test"]
    assert set(metrics["test"]["per_class"]) == {"neg", "pos"}


def test_evaluate_python_api(trained_demo):
    m = seqtext.load(trained_demo).evaluate(split="test")
    assert m["examples"] == 200 and 0.8 < m["accuracy"] <= 1 and len(m["confusion_matrix"]) == 2


def test_planted_pickle_is_never_executed(trained_demo, tmp_path):
    import pickle
    import shutil

    d = tmp_path / "model"
    shutil.copytree(trained_demo, d)
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("pytorch_model.bin", "model.pt", "weights.pkl"):
        (d / name).write_bytes(pickle.dumps(Boom()))
    seqtext.load(d).predict(["fine"])
    assert not marker.exists()
    # a pickle disguised as the weights file is refused, not executed
    (d / "weights.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(SeqtextError, match="not a valid safetensors file"):
        seqtext.load(d)
    assert not marker.exists()


def test_file_names_cannot_escape_model_dir(tmp_path):
    from seqtext.io import inside

    with pytest.raises(SeqtextError, match="outside the model directory"):
        inside(tmp_path, "../../etc/passwd")
    assert inside(tmp_path, "vocab.txt") == (tmp_path / "vocab.txt").resolve()


def test_pretrained_vectors_fill_rows(tmp_path):
    from seqtext.nn.embeddings import Embedder

    vec = tmp_path / "vec.txt"
    vec.write_text("2 3\nthe 1 2 3\nParis 4 5 6\n")
    emb = Embedder(6, 3)
    stats = emb.load_vectors(vec, ["<pad>", "<unk>", "<bos>", "<eos>", "the", "paris"])
    assert stats["vectors_found"] == 1 and emb.words.weight[4].tolist() == [1, 2, 3]
    (tmp_path / "bad.txt").write_text("the 1 2\n")
    with pytest.raises(SeqtextError, match=r"bad.txt:1: vector has 2 values, expected 3"):
        emb.load_vectors(tmp_path / "bad.txt", ["<pad>", "the"])


def test_batch_to_device_keeps_lengths_on_cpu():
    b = Batch(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 1]), torch.ones(2, 3, dtype=torch.bool),
              index=np.array([0, 1]))
    assert b.to("cpu").lengths.device.type == "cpu" and b.num_tokens == 4


def test_reverse_padded_gradient():
    x = torch.randn(2, 4, 3, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([4, 2])
    assert torch.autograd.gradcheck(lambda t: reverse_padded(t, lengths), (x,))


@pytest.mark.parametrize("training", [False, True])
def test_tagger_head_scores_directions_like_their_concatenation(training):
    """Tag scores from the split directions (backward scores reversed, not the states) equal the
    scores of the concatenated states, values and gradients, with the same dropout mask drawn."""
    from seqtext.nn.heads import TaggerHead

    torch.manual_seed(0)
    enc = Encoder(5, 4, bidirectional=True).double().train(training)
    head = TaggerHead(8, 3, dropout=0.5).double().train(training)
    x, lengths = torch.randn(3, 6, 5, dtype=torch.double), torch.tensor([6, 2, 4])
    upstream = torch.randn(3, 6, 3, dtype=torch.double)
    results = []
    for outputs in ("concat", "directions_reversed"):
        torch.manual_seed(1)
        states, _ = enc(x, lengths, outputs=outputs)
        scores = head.emissions(states, lengths)
        (scores * upstream).sum().backward()
        results.append([scores.detach()] + [p.grad.clone() for p in [*enc.parameters(), *head.parameters()]])
        enc.zero_grad(), head.zero_grad()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    if training:  # the dropout mask did apply: scores differ from evaluation mode
        head.eval()
        assert not torch.allclose(head.emissions(enc(x, lengths)[0]), results[0][0])


@pytest.mark.parametrize("time_major", [True, False])
def test_linear_as_stored_is_f_linear_without_copying_time_major_states(time_major):
    """An LSTM's batch-first output lies time-major in memory: the product then runs on that
    layout (no copy of the states), and the gradient reaching the states keeps it (no copy back
    in the LSTM's backward). Values and gradients are F.linear's."""
    import torch.nn.functional as F

    from seqtext.nn.heads import linear_as_stored

    torch.manual_seed(0)
    stored = torch.randn(6, 3, 5, dtype=torch.double) if time_major else torch.randn(3, 6, 5, dtype=torch.double)
    weight = torch.randn(4, 5, dtype=torch.double, requires_grad=True)
    bias = torch.randn(4, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(3, 6, 4, dtype=torch.double)
    grads = []
    for linear in (linear_as_stored, F.linear):
        x = stored.clone().requires_grad_()
        states = x.transpose(0, 1) if time_major else x  # [3, 6, 5] either way
        out = linear(states, weight, bias)
        (out * upstream).sum().backward()
        grads.append((out.detach(), x.grad, weight.grad.clone(), bias.grad.clone()))
        weight.grad = bias.grad = None
        if linear is linear_as_stored:
            assert out.shape == (3, 6, 4)
            assert out.transpose(0, 1).is_contiguous() == time_major  # computed in the states' layout
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    lstm = torch.nn.LSTM(5, 5, batch_first=True)
    assert not lstm(torch.randn(3, 6, 5))[0].is_contiguous()  # what the time-major case stands for


@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_drop_connect_is_inverted_dropout_of_the_weights(p):
    w = torch.randn(400, 300, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    out = drop_connect(w, p)
    kept = out != 0
    keep = kept.double().mean().item()
    assert abs(keep - (1 - p)) < 0.005  # 120k draws: ~5 standard deviations
    scale = (out[kept] / w[kept]).detach()
    assert torch.allclose(scale, scale[0].expand_as(scale)) and abs(scale[0].item() * (1 - p) - 1) < 1e-4
    out.sum().backward()
    # the gradient is the same mask and scale (the exact scale: out / w can be off in the last bit)
    assert torch.equal(w.grad, kept.double() * (65536 / round((1 - p) * 65536)))
    torch.manual_seed(0)
    assert torch.equal(drop_connect(w, p), out)  # torch's seed decides the mask
    assert not torch.equal(drop_connect(w, p), out)  # and each call draws a new one
    assert drop_connect(w, 0.0) is w


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_weights_that_do_not_fit_the_recipe_are_refused_in_one_line(trained_demo, tmp_path, change):
    """Weights of another run, or a vocab.txt edited since training: load refuses them, naming
    the directory and the tensor, instead of loading part of them or failing with a traceback."""
    import shutil

    from seqtext.model import load_state_dict, save_state_dict

    run = shutil.copytree(trained_demo, tmp_path / "run")
    state = load_state_dict(run / "weights.safetensors")
    if change == "drop":
        del state["embedder.words.weight"]
    elif change == "extra":
        state["head.extra"] = torch.zeros(3)
    else:
        w = state["embedder.words.weight"]
        state["embedder.words.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])
    save_state_dict(run / "weights.safetensors", state)
    pattern = {"drop": r"missing \['embedder\.words\.weight'\]", "extra": r"unexpected \['head\.extra'\]",
               "shape": r"embedder\.words\.weight has shape"}[change]
    with pytest.raises(SeqtextError, match=pattern):
        seqtext.load(run)


def test_python_api_arguments_are_checked_with_one_line_errors(trained_demo):
    """A tagger's predict(batch_size=0) used to loop for ever; a negative one gave empty results."""
    from seqtext.model import resolve_device

    model = seqtext.load(trained_demo, "cpu")
    for bad in (0, -1, "8", 2.5, None):
        with pytest.raises(SeqtextError, match=r"^batch_size: expected an integer ≥ 1"):
            model.predict(["a fine film"], batch_size=bad)
    with pytest.raises(SeqtextError, match=r"^texts\[1\]: expected a string, got int"):
        model.predict(["a fine film", 5])
    with pytest.raises(SeqtextError, match=r"^texts: expected a string or an iterable of strings, got int"):
        model.predict(5)
    assert model.predict(np.array(["a fine film"]))[0]["label"] in {"neg", "pos"}  # numpy strings are strings
    with pytest.raises(SeqtextError, match="not an option for a 'classify' model"):
        model.evaluate(batch_size=4)
    with pytest.raises(SeqtextError, match="the continuous cache is for 'lm' models"):
        model.tune_cache(10)
    assert resolve_device("CPU") == torch.device("cpu")
    for bad in ("mps", "gpu", "", None, 0):
        with pytest.raises(SeqtextError, match=r"expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(SeqtextError, match=r"^device 'cuda:0': no CUDA device is available"):
            seqtext.load(trained_demo, "cuda:0")


def test_train_applies_overrides_to_a_recipe_object_and_takes_one_override_string(tiny, tmp_path):
    from seqtext.recipe import load_recipe

    out = seqtext.train(load_recipe(tiny), {"train.max_steps": 2}, output=tmp_path / "a", quiet=True)
    assert seqtext.load(out).recipe.train.max_steps == 2
    again = seqtext.train(tiny, ["train.max_steps=1"], output=tmp_path / "b", device="CPU", quiet=True)
    assert seqtext.load(again).recipe.train.device == "cpu"  # saved as the recipe key takes it
    with pytest.raises(SeqtextError, match=r"^device 'cuda:0': expected auto, cpu or cuda"):
        seqtext.train(tiny, output=tmp_path / "c", device="cuda:0", quiet=True)
    assert load_recipe(tiny, "train.epochs=7").train.epochs == 7
    with pytest.raises(SeqtextError, match=r"^override train.epochs: None is not a recipe value"):
        load_recipe(tiny, {"train.epochs": None})
