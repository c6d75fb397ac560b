"""Character CNN: padding invariance, empty and huge words, unknown characters."""

from __future__ import annotations

import pytest
import torch

from seqtext.nn.chars import CharCNN, words_to_char_ids

CHARS = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz", start=2)}  # 0 pad, 1 unk


def _model(**kwargs) -> CharCNN:
    torch.manual_seed(0)
    model = CharCNN(len(CHARS) + 2, char_dim=8, filters=6, **kwargs)
    model.eval()
    return model


def test_ids_pad_and_unknown():
    ids = words_to_char_ids(["ab", "", "zé!"], CHARS)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[2, 3, 0], [0, 0, 0], [27, 1, 1]]
    assert words_to_char_ids([""], CHARS).shape == (1, 1)
    assert words_to_char_ids([], CHARS).shape == (0, 1)
    assert words_to_char_ids(["é"], CHARS, unk_id=5).tolist() == [[5]]


def test_long_words_keep_prefix_and_suffix():
    word = "ab" + "x" * 10_000 + "yz"
    ids = words_to_char_ids([word, "c"], CHARS, max_word_len=7)
    assert ids.shape == (2, 7)
    # First 7 // 2 = 3 and last 4 characters.
    assert ids[0].tolist() == [CHARS[c] for c in "abx" + "xxyz"]
    assert words_to_char_ids(["abc"], CHARS, max_word_len=1).tolist() == [[CHARS["c"]]]
    out = _model()(words_to_char_ids([word], CHARS))
    assert out.shape == (1, 6) and bool(torch.isfinite(out).all())


def test_padding_invariance():
    model = _model(kernel_size=3)
    alone = model(words_to_char_ids(["cat"], CHARS))
    batch = model(words_to_char_ids(["cat", "catastrophically", "a"], CHARS))
    torch.testing.assert_close(batch[0], alone[0])
    torch.testing.assert_close(batch[2], model(words_to_char_ids(["a"], CHARS))[0])
    assert not torch.allclose(batch[0], batch[1])


def test_padding_invariance_even_kernel_and_dirty_padding_row():
    model = _model(kernel_size=4)
    with torch.no_grad():  # a padding embedding that drifted from zero must not leak in
        model.embedding.weight[0].fill_(3.0)
    alone = model(words_to_char_ids(["dog"], CHARS))
    batch = model(words_to_char_ids(["dog", "doghouses"], CHARS))
    torch.testing.assert_close(batch[0], alone[0])


def test_empty_words_and_batches():
    model = _model()
    out = model(words_to_char_ids(["", "ab", ""], CHARS))
    assert out.shape == (3, model.output_dim)
    assert bool((out[0] == 0).all()) and bool((out[2] == 0).all())
    assert model(torch.zeros(0, 4, dtype=torch.long)).shape == (0, 6)


def test_gradients_and_dropout():
    model = _model(dropout=0.5)
    model.train()
    out = model(words_to_char_ids(["abc", "", "de"], CHARS))
    out.sum().backward()
    assert bool(torch.isfinite(model.conv.weight.grad).all())
    assert bool((model.embedding.weight.grad[0] == 0).all())


def _padded_reference(cnn: CharCNN, char_ids: torch.Tensor) -> torch.Tensor:
    """The textbook char CNN: convolve each zero-padded row, max over its real characters."""
    import torch.nn.functional as F

    mask = char_ids != cnn.padding_idx
    emb = cnn.embedding(char_ids) * mask.unsqueeze(2)
    feats = cnn.conv(F.pad(emb.transpose(1, 2), cnn._pad)).masked_fill(~mask.unsqueeze(1), float("-inf"))
    pooled = feats.max(dim=2).values
    return torch.where(mask.any(dim=1, keepdim=True), pooled, pooled.new_zeros(()))


@pytest.mark.parametrize("window_table", [True, False])
@pytest.mark.parametrize("kernel", [2, 3, 5])
def test_flat_convolution_equals_padded_rows_values_and_gradients(kernel, window_table):
    torch.manual_seed(kernel)
    lengths = [0, 1, 7, 3, 12, 0, 2]
    ids = torch.zeros(len(lengths), 12, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, 20, (n,))
    cnn = CharCNN(20, char_dim=4, filters=6, kernel_size=kernel).double()
    cnn.window_table = window_table
    upstream = torch.randn(len(lengths), 6, dtype=torch.double)

    (cnn(ids) * upstream).sum().backward()
    got = [p.grad.clone() for p in cnn.parameters()]
    cnn.zero_grad()
    (_padded_reference(cnn, ids) * upstream).sum().backward()
    torch.testing.assert_close(cnn(ids), _padded_reference(cnn, ids))
    for g, p in zip(got, cnn.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_tied_maxima_share_the_gradient():
    """Words with repeated windows ("banana": "ana" twice) hold their max at several characters
    with bit-identical values in the window table's sums; the gradient is split evenly between
    them, as ``amax`` does. (A matrix product need not round equal windows equally.)"""
    torch.manual_seed(1)
    cnn = CharCNN(len(CHARS) + 2, char_dim=5, filters=4).double()
    cnn.dedup = False
    ids = words_to_char_ids(["banana", "aaaaa", "abab", "x"], CHARS)
    upstream = torch.randn(ids.size(0), 4, dtype=torch.double)
    (cnn(ids) * upstream).sum().backward()
    got = [p.grad.clone() for p in cnn.parameters()]
    cnn.zero_grad()
    mask = ids != 0
    emb = cnn.embedding(ids) * mask.unsqueeze(2)
    feats = cnn.conv(torch.nn.functional.pad(emb.transpose(1, 2), cnn._pad))
    feats = feats.masked_fill(~mask.unsqueeze(1), float("-inf"))
    assert bool(((feats == feats.amax(2, keepdim=True)).sum(2) > 1).any())  # there are ties
    (feats.amax(2) * upstream).sum().backward()
    for g, p in zip(got, cnn.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_window_table_under_bf16_autocast():
    """The table is built in fp32 under autocast, so the words' vectors are fp32 and close to
    an fp32 run's; gradients reach every parameter."""
    cnn = _model()
    ids = words_to_char_ids(["Reuters", "said", "on", "Tuesday"], CHARS)
    ref = cnn(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cnn(ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in cnn.parameters())


@pytest.mark.parametrize("kernel", [1, 3, 4])
def test_conv1d_as_matmul_equals_conv1d(kernel):
    import torch.nn.functional as F

    from seqtext.nn.chars import conv1d_as_matmul

    torch.manual_seed(kernel)
    x = torch.randn(17, 5, dtype=torch.double)
    weight, bias = torch.randn(7, 5, kernel, dtype=torch.double), torch.randn(7, dtype=torch.double)
    torch.testing.assert_close(conv1d_as_matmul(x, weight, bias), F.conv1d(x.t().unsqueeze(0), weight, bias)[0].t())


def _ids_with_repeats() -> torch.Tensor:
    words = ["the", "cat", "", "the", "dog", "cat", "the", "", "catastrophe"]
    return words_to_char_ids(words, CHARS)


@pytest.mark.parametrize("numpy", [True, False])
def test_unique_rows(numpy):
    from seqtext.nn.chars import unique_rows

    ids = _ids_with_repeats()
    distinct, inverse = unique_rows(ids, numpy=numpy)
    assert distinct.shape == (5, ids.size(1))  # the, cat, "", dog, catastrophe
    assert len({tuple(r) for r in distinct.tolist()}) == distinct.size(0)
    assert torch.equal(distinct[inverse], ids)


def test_repeated_words_encoded_once_same_values_and_gradients():
    ids = _ids_with_repeats()
    torch.manual_seed(3)
    cnn = CharCNN(len(CHARS) + 2, char_dim=5, filters=7).double()
    upstream = torch.randn(ids.size(0), 7, dtype=torch.double)
    calls = []
    encode = cnn.encode
    cnn.encode = lambda rows: calls.append(rows.size(0)) or encode(rows)
    out = cnn(ids)
    assert calls == [5]  # each distinct row once
    (out * upstream).sum().backward()
    got = [p.grad.clone() for p in cnn.parameters()]
    cnn.zero_grad()
    every_row = encode(ids)
    (every_row * upstream).sum().backward()
    torch.testing.assert_close(out, every_row)
    for g, p in zip(got, cnn.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_character_dropout_gives_each_occurrence_its_own_mask():
    ids = words_to_char_ids(["abcdefgh"] * 4, CHARS)
    cnn = _model(dropout=0.5)
    cnn.train()
    torch.manual_seed(0)
    out = cnn(ids)
    assert not torch.allclose(out[0], out[1])  # not one encoding copied to every occurrence
    cnn.eval()
    out = cnn(ids)
    assert torch.equal(out[0], out[3])
