"""Micro-benchmarks behind the encoder and pooling design (README "Architecture", benchmarks/README.md).

    python benchmarks/lstm_kernels.py             # all of them
    python benchmarks/lstm_kernels.py --only crf  # one part (writes lstm_kernels_crf.json)
    python benchmarks/lstm_kernels.py --only crf --name /tmp/crf.json  # elsewhere

1. nn.LSTM training tokens/s on packed vs padded input (CPU: packed leaves oneDNN's kernel).
2. One bidirectional nn.LSTM vs seqtext's two unidirectional LSTMs + within-length reversal.
3. Within-length reversal, forward+backward: autograd gather vs seqtext's self-inverse permutation.
4. Masked max+mean pooling (the IMDB classifier's), forward+backward: the autograd formulas vs
   seqtext's fused ``masked_pool``.
5. CRF log partition (the tagger's loss), forward+backward over 17 BIOES tags, in torch (as on
   a GPU): the log-space recursion under autograd vs seqtext's probability-space forward-backward;
   and the whole CRF loss, composed in torch vs in NumPy (seqtext on CPU).
6. Char CNN convolution (the tagger's), forward+backward over a CoNLL batch's characters:
   ``nn.Conv1d`` vs the same convolution as one matrix product, on inputs whose length changes
   every call as it does from batch to batch, and at one fixed length; and the whole
   ``CharCNN.encode`` with that product vs with the table rows it now sums.
7. DropConnect (the WikiText-2 LM's weight drop 0.3) on one layer's 1600 × 400 hidden-to-hidden
   weights, forward+backward: ``F.dropout`` (torch's ``bernoulli_``) vs seqtext's ``drop_connect``
   (NumPy random bytes on CPU).
Writes benchmarks/results/lstm_kernels[_<part>].json, or ``--name`` (a name in benchmarks/results/
or a path).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import seqtext.nn.crf
from benchmarks.common import RESULTS_HELP, run_main, save, table
from seqtext.nn.chars import CharCNN, conv1d_as_matmul
from seqtext.nn.crf import CRF
from seqtext.nn.encoder import Encoder, drop_connect, reverse_padded
from seqtext.nn.heads import masked_pool


def timed(fn, reps: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def packed_vs_padded(E, H, B, T):
    lstm = torch.nn.LSTM(E, H, batch_first=True, bidirectional=True)
    x = torch.randn(B, T, E, requires_grad=True)
    lengths = torch.randint(T - 20, T + 1, (B,))

    def padded():
        lstm(x)[0].sum().backward()

    def packed():
        lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))[0].data.sum().backward()

    return B * T / timed(packed), B * T / timed(padded)


def bi_vs_ours(E, H, B, T):
    bi = torch.nn.LSTM(E, H, batch_first=True, bidirectional=True)
    enc = Encoder(E, H, 1, bidirectional=True)
    x = torch.randn(B, T, E, requires_grad=True)
    lengths = torch.randint(T - 20, T + 1, (B,))
    reps = 3 if B * T >= 4096 else 50  # small batches take milliseconds: time more of them
    return (B * T / timed(lambda: bi(x)[0].sum().backward(), reps),
            B * T / timed(lambda: enc(x, lengths)[0].sum().backward(), reps))


def reversal_ms(B=32, T=400, D=256):
    x = torch.randn(B, T, D, requires_grad=True)
    g = torch.randn(B, T, D)
    lengths = torch.randint(350, T + 1, (B,))
    t = torch.arange(T).unsqueeze(0)
    L = lengths.unsqueeze(1)
    idx = torch.where(t < L, L - 1 - t, t).unsqueeze(-1).expand_as(x)
    gather = timed(lambda: x.gather(1, idx).backward(g), 20)
    ours = timed(lambda: reverse_padded(x, lengths).backward(g), 20)
    return 1000 * gather, 1000 * ours


def pooling_ms(B=32, T=350, D=384):
    x = torch.randn(B, T, D, requires_grad=True)
    lengths = torch.randint(300, T + 1, (B,))
    lengths[0] = T
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    m = mask.unsqueeze(-1)
    g = torch.randn(B, 2 * D)

    def autograd_formulas():
        top = x.masked_fill(~m, float("-inf")).max(1).values
        mean = (x * m).sum(1) / lengths.unsqueeze(1)
        torch.cat([top, mean], -1).backward(g)

    fused = timed(lambda: masked_pool(x, mask, lengths, "maxmean").backward(g), 20)
    return 1000 * timed(autograd_formulas, 20), 1000 * fused


def crf_ms(B, T, K=17):
    crf = CRF(K)
    x = torch.randn(B, T, K, requires_grad=True)
    mask = torch.arange(T).unsqueeze(0) < torch.randint(T // 2, T + 1, (B,)).unsqueeze(1)
    mask[0] = True

    def loss(partition):
        partition(x, mask, *crf._scores()).sum().backward()

    return (1000 * timed(lambda: loss(CRF._log_partition_log_space), 50),
            1000 * timed(lambda: loss(CRF._log_partition), 50))


def char_cnn_ms(words=690, chars=100, reps=20):
    """ms per forward+backward of ``CharCNN.encode`` over a batch's distinct words (~690 at 1,280
    tokens: a 0.53 share, results/char_table.json; here 1-15 random characters each): the
    convolution as a matrix product over windows vs as a sum of table rows (the default)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 16, (words,), generator=gen)
    ids = torch.zeros(words, int(lengths.max()), dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.randint(2, chars, (n,), generator=gen)
    cnn = CharCNN(chars, char_dim=30, filters=50)
    upstream = torch.randn(words, 50, generator=gen)

    def run(table: bool):
        cnn.window_table = table
        cnn.zero_grad(set_to_none=True)
        (cnn.encode(ids) * upstream).sum().backward()

    return 1000 * timed(lambda: run(False), reps), 1000 * timed(lambda: run(True), reps)


def crf_nll_ms(B, T, K=17):
    """ms per forward+backward of the whole CRF loss (gold path score - log Z, constrained BIOES
    tags): composed in torch (path score under autograd + the scaled forward-backward, as on a
    GPU) vs seqtext's CPU path, all in NumPy."""
    types = ["LOC", "MISC", "ORG", "PER"][: max(1, (K - 1) // 4)]
    labels = ["O"] + [f"{p}-{t}" for t in types for p in "BIES"]
    crf = CRF.for_labels(labels, "BIOES")
    x = torch.randn(B, T, len(labels), requires_grad=True)
    mask = torch.arange(T).unsqueeze(0) < torch.randint(T // 2, T + 1, (B,)).unsqueeze(1)
    mask[0] = True
    tags = torch.randint(0, len(labels), (B, T))

    def loss():
        crf.neg_log_likelihood(x, tags, mask, reduction="sum").backward()

    def composed():
        seqtext.nn.crf.NUMPY_ON_CPU = False
        try:
            loss()
        finally:
            seqtext.nn.crf.NUMPY_ON_CPU = True

    return 1000 * timed(composed, 50), 1000 * timed(loss, 50)


def char_conv_ms(lengths: list[int], C=30, filters=50, k=3):
    """ms per forward+backward of a width-k convolution over [length, C] character embeddings."""
    conv = torch.nn.Conv1d(C, filters, k)
    inputs = [torch.randn(n, C, requires_grad=True) for n in lengths]

    def conv1d():
        for x in inputs:
            conv(x.t().unsqueeze(0)).sum().backward()

    def matmul():  # as seqtext.nn.chars.CharCNN computes it
        for x in inputs:
            conv1d_as_matmul(x, conv.weight, conv.bias).sum().backward()

    return 1000 * timed(conv1d) / len(inputs), 1000 * timed(matmul) / len(inputs)


def packed_part(result, rows):
    result["packed_vs_padded"] = []
    for E, H, B, T in [(128, 128, 32, 256), (200, 200, 64, 256)]:
        packed, padded = packed_vs_padded(E, H, B, T)
        result["packed_vs_padded"].append({"shape": [E, H, B, T], "packed": round(packed), "padded": round(padded)})
        rows.append((f"BiLSTM {E}/{H} B={B} T={T}: packed / padded tokens/s", f"{packed:.0f} / {padded:.0f}"))


def encoder_part(result, rows):
    result["bidirectional_vs_encoder"] = []
    for E, H, B, T in [(128, 128, 32, 256), (300, 256, 32, 256), (158, 300, 5, 64)]:  # last: a CoNLL batch
        bi, ours = bi_vs_ours(E, H, B, T)
        result["bidirectional_vs_encoder"].append({"shape": [E, H, B, T], "nn_lstm_bi": round(bi),
                                                   "seqtext_encoder": round(ours)})
        rows.append((f"{E}/{H} B={B} T={T}: nn.LSTM(bi) / seqtext Encoder tokens/s", f"{bi:.0f} / {ours:.0f}"))


def reversal_part(result, rows):
    gather, ours = reversal_ms()
    result["reversal_ms"] = {"gather": round(gather, 1), "permutation": round(ours, 1)}
    rows.append(("reversal fwd+bwd 32x400x256: gather / permutation ms", f"{gather:.1f} / {ours:.1f}"))


def pooling_part(result, rows):
    formulas, fused = pooling_ms()
    result["maxmean_pooling_ms"] = {"autograd_formulas": round(formulas, 1), "fused": round(fused, 1)}
    rows.append(("max+mean pooling fwd+bwd 32x350x384: autograd formulas / fused ms", f"{formulas:.1f} / {fused:.1f}"))


def crf_part(result, rows):
    result["crf_partition_ms"] = []
    for B, T in [(5, 64), (45, 78)]:  # a CoNLL training batch of runs of sentences; an eval-sized batch
        log_space, probability_space = crf_ms(B, T)
        result["crf_partition_ms"].append({"shape": [B, T, 17], "log_space_autograd": round(log_space, 2),
                                           "probability_space": round(probability_space, 2)})
        rows.append((f"CRF log Z fwd+bwd {B}x{T}x17 (torch, as on a GPU): log space (autograd) / probability space ms",
                     f"{log_space:.2f} / {probability_space:.2f}"))
    result["crf_loss_ms"] = []
    for B, T in [(20, 64), (45, 78)]:  # a 1,280-token CoNLL training batch; an eval-sized batch
        composed, numpy = crf_nll_ms(B, T)
        result["crf_loss_ms"].append({"shape": [B, T, 17], "torch_composed": round(composed, 2),
                                      "numpy": round(numpy, 2)})
        rows.append((f"CRF loss fwd+bwd {B}x{T}x17: composed in torch / in NumPy (seqtext on CPU) ms",
                     f"{composed:.2f} / {numpy:.2f}"))


def chars_part(result, rows):
    # ~320 words of ~6 characters plus one gap each: 1,800-2,400 positions per CoNLL batch
    result["char_conv_ms"] = {}
    for name, lengths in (("varying_length", list(range(1800, 2400, 3))), ("fixed_length", [2100] * 200)):
        conv1d, matmul = char_conv_ms(lengths)
        result["char_conv_ms"][name] = {"conv1d": round(conv1d, 2), "matmul": round(matmul, 2)}
        rows.append((f"char conv fwd+bwd, {name.replace('_', ' ')}: nn.Conv1d / matmul ms",
                     f"{conv1d:.2f} / {matmul:.2f}"))
    matmul, table = char_cnn_ms()
    result["char_cnn_ms"] = {"window_matmul": round(matmul, 2), "window_table": round(table, 2)}
    rows.append(("char CNN encode fwd+bwd, 690 words: window matmul / window table ms", f"{matmul:.2f} / {table:.2f}"))


def dropconnect_part(result, rows):
    weight = torch.randn(1600, 400, requires_grad=True)

    def run(drop):
        weight.grad = None
        drop(weight, 0.3).sum().backward()

    bernoulli = 1000 * timed(lambda: run(torch.nn.functional.dropout), 50)
    numpy_bits = 1000 * timed(lambda: run(drop_connect), 50)
    result["drop_connect_ms"] = {"shape": [1600, 400], "f_dropout": round(bernoulli, 2),
                                 "numpy_bits": round(numpy_bits, 2)}
    rows.append(("DropConnect fwd+bwd 1600x400, p 0.3: F.dropout / drop_connect ms",
                 f"{bernoulli:.2f} / {numpy_bits:.2f}"))


PARTS = {"packed": packed_part, "encoder": encoder_part, "reversal": reversal_part,
         "pooling": pooling_part, "crf": crf_part, "chars": chars_part, "dropconnect": dropconnect_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(PARTS), help="run one part")
    parser.add_argument("--name", help=f"{RESULTS_HELP} (default lstm_kernels[_<part>])")
    args = parser.parse_args()
    torch.manual_seed(0)
    result, rows = {}, []
    for name, part in PARTS.items():
        if args.only in (None, name):
            part(result, rows)
    print(table(rows, f"LSTM kernels ({torch.get_num_threads()} threads)"))
    print(f"written {save(args.name or 'lstm_kernels' + (f'_{args.only}' if args.only else ''), result)}")


if __name__ == "__main__":
    run_main(main)
