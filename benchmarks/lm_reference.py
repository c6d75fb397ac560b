"""A faithful, minimal re-implementation of pytorch/examples ``word_language_model`` (LSTM, --tied).

Same data handling (dictionary over train/valid/test, one ``<eos>`` per line, ``batchify``
into ``batch`` columns, ``get_batch`` windows of ``bptt``), the same model (Embedding →
dropout → nn.LSTM(2 layers, dropout) → dropout → Linear tied to the embedding, uniform ±0.1
init) and the same loop (plain SGD ``p -= lr · grad``, clip 0.25, lr / 4 when validation
loss does not improve). Defaults are the example's: emsize = nhid = 200, 2 layers, dropout
0.2, bptt 35, batch 20, lr 20, eval batch 10. Used as the "bare nn.LSTM" baseline beside
seqtext's LM: same corpus, same machine, tokens/s and perplexity.

    python benchmarks/lm_reference.py --data-dir ../shared/data/wikitext2 --epochs 6      # main.py --epochs 6 --tied
    python benchmarks/lm_reference.py --data-dir ../shared/data/wikitext2 --max-batches 200  # speed only

(pytorch/examples' README gives test perplexity 110.44 for ``main.py --cuda --epochs 6 --tied``;
that figure is theirs, not a run of this script.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn


class Corpus:
    """pytorch/examples data.py: words of each line plus <eos>, ids in order of first appearance."""

    def __init__(self, directory: str | Path):
        self.word2idx: dict[str, int] = {}
        directory = Path(directory)
        for split in ("train", "valid", "test"):
            if not (directory / f"{split}.txt").is_file():
                raise FileNotFoundError(f"{directory / f'{split}.txt'}: no such file (--data-dir {directory} "
                                        "must hold train.txt, valid.txt and test.txt)")
        self.train = self.tokenize(directory / "train.txt")
        self.valid = self.tokenize(directory / "valid.txt")
        self.test = self.tokenize(directory / "test.txt")

    def tokenize(self, path: Path) -> torch.Tensor:
        ids = []
        with open(path, encoding="utf8") as f:
            for line in f:
                for word in line.split() + ["<eos>"]:
                    ids.append(self.word2idx.setdefault(word, len(self.word2idx)))
        return torch.tensor(ids, dtype=torch.long)


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    """[N] → [N // bsz, bsz]: each column is a contiguous slice of the corpus."""
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i: i + seq_len], source[i + 1: i + 1 + seq_len].reshape(-1)


class RNNModel(nn.Module):
    """Encoder (embedding), LSTM, decoder (tied), as in pytorch/examples model.py."""

    def __init__(self, ntoken: int, ninp: int = 200, nhid: int = 200, nlayers: int = 2, dropout: float = 0.2,
                 tie_weights: bool = True):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        self.nlayers, self.nhid = nlayers, nhid

    def forward(self, x, hidden):
        emb = self.drop(self.encoder(x))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        return self.decoder(output).view(-1, self.decoder.out_features).log_softmax(-1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage_hidden(h):
    return tuple(v.detach() for v in h)


def evaluate(model: RNNModel, data: torch.Tensor, bptt: int, batch: int) -> float:
    """Mean NLL per token over ``data`` (batchified), state carried across windows."""
    model.eval()
    total, hidden = 0.0, model.init_hidden(batch)
    criterion = nn.NLLLoss()
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            x, y = get_batch(data, i, bptt)
            output, hidden = model(x, hidden)
            hidden = repackage_hidden(hidden)
            total += len(x) * criterion(output, y).item()
    return total / (len(data) - 1)


def train_epoch(model: RNNModel, data: torch.Tensor, lr: float, bptt: int, batch: int, clip: float = 0.25,
                max_batches: int = 0, deadline: float | None = None) -> tuple[int, float]:
    """One pass (or ``max_batches`` windows) of the example's loop. Returns (tokens, seconds)."""
    model.train()
    hidden = model.init_hidden(batch)
    tokens, start = 0, time.perf_counter()
    for n, i in enumerate(range(0, data.size(0) - 1, bptt)):
        if (max_batches and n >= max_batches) or (deadline and time.perf_counter() > deadline):
            break
        x, y = get_batch(data, i, bptt)
        hidden = train_step(model, x, y, hidden, lr, clip)
        tokens += y.numel()
    return tokens, time.perf_counter() - start


def train_step(model: RNNModel, x: torch.Tensor, y: torch.Tensor, hidden, lr: float, clip: float = 0.25):
    """One window of the example's loop (x [T, B], y [T·B]): detach the state, forward, NLL,
    backward, clip, plain SGD. Returns the new state."""
    hidden = repackage_hidden(hidden)
    model.zero_grad()
    output, hidden = model(x, hidden)
    nn.functional.nll_loss(output, y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
    return hidden


def run(data_dir: str | Path, epochs: int = 6, max_batches: int = 0, max_minutes: float = 0.0, threads: int = 2,
        emsize: int = 200, nhid: int = 200, nlayers: int = 2, dropout: float = 0.2, lr: float = 20.0,
        bptt: int = 35, batch: int = 20, seed: int = 1111, evaluate_splits: bool = True) -> dict:
    """Train like ``python main.py --tied --epochs N`` and report speed and perplexities."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    corpus = Corpus(data_dir)
    train_data, val_data, test_data = batchify(corpus.train, batch), batchify(corpus.valid, 10), \
        batchify(corpus.test, 10)
    model = RNNModel(len(corpus.word2idx), emsize, nhid, nlayers, dropout)
    deadline = time.perf_counter() + 60 * max_minutes if max_minutes else None
    best, tokens, seconds, history = None, 0, 0.0, []
    for epoch in range(1, epochs + 1):
        n, s = train_epoch(model, train_data, lr, bptt, batch, max_batches=max_batches, deadline=deadline)
        tokens, seconds = tokens + n, seconds + s
        record = {"epoch": epoch, "tokens": n, "seconds": round(s, 1), "tokens_per_second": n / max(s, 1e-9),
                  "lr": lr}
        if evaluate_splits:
            val = evaluate(model, val_data, bptt, 10)
            record["valid_ppl"] = math.exp(val)
            if best is None or val < best[0]:
                best = (val, {k: v.clone() for k, v in model.state_dict().items()})
            else:
                lr /= 4.0
        history.append(record)
        print(json.dumps(record), flush=True)
        if max_batches or (deadline and time.perf_counter() > deadline):
            break
    out = {"vocab": len(corpus.word2idx), "tokens": tokens, "seconds": seconds,
           "tokens_per_second": tokens / max(seconds, 1e-9), "epochs": history}
    if evaluate_splits and best is not None:
        model.load_state_dict(best[1])
        out["valid_ppl"] = math.exp(best[0])
        out["test_ppl"] = math.exp(evaluate(model, test_data, bptt, 10))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/wikitext2", help="train.txt / valid.txt / test.txt")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many windows (speed runs)")
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-eval", action="store_true", help="skip validation/test (speed runs)")
    a = p.parse_args()
    out = run(a.data_dir, a.epochs, a.max_batches, a.max_minutes, a.threads, evaluate_splits=not a.no_eval)
    print(json.dumps({k: v for k, v in out.items() if k != "epochs"}))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.common import run_main

    run_main(main)
