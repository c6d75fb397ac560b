"""The same models written as plain PyTorch training loops: what a user would hand-write instead.

The suite times these beside seqtext's step on the very same batches (interleaved, see
``benchmarks.common.throughput``), as the second yardstick next to the bare ``nn.LSTM``: the bare
LSTM leaves out everything a tagger or classifier needs besides the recurrence, while these loops
do all of it with stock torch modules, at the recipe's sizes:

- classifier: ``nn.Embedding`` → ``nn.Dropout`` → ``nn.LSTM(bidirectional=True)`` → masked max and
  mean pooling → ``nn.Dropout`` → ``nn.Linear`` → cross-entropy;
- tagger (BiLSTM-CNN-CRF, Ma & Hovy 2016): word ``nn.Embedding`` + a char CNN (``nn.Embedding`` →
  ``nn.Conv1d`` over each word's padded character row → masked max) + casing ``nn.Embedding`` →
  ``nn.Dropout`` → ``nn.LSTM(bidirectional=True)`` → ``nn.Dropout`` → ``nn.Linear`` → CRF negative
  log-likelihood by the log-space forward algorithm as the ``pytorch-crf`` package computes it
  (``logsumexp`` over one time step at a time, under autograd);

both with ``torch.optim.AdamW`` (dense gradients), ``clip_grad_norm_`` and the recipe's learning
rate and clipping. They take the fastest plain route on CPU: the LSTM runs on the padded batch
(``pack_padded_sequence`` would be correct for the backward direction but leaves oneDNN's kernel
and runs 5-20x slower, ``python benchmarks/lstm_kernels.py --only packed``), so the reverse
direction reads each row's padding first: seqtext does not take that shortcut (its outputs never
depend on padding). Word dropout and the tag-scheme constraints are left out (a few small kernels).
"""

from __future__ import annotations

import torch
from torch import nn

from seqtext.nn.embeddings import CASING


def _optimizer_step(params: list[nn.Parameter], recipe):
    """AdamW + gradient clipping at the recipe's settings."""
    t = recipe.train
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def update(loss: torch.Tensor) -> float:
        opt.zero_grad()
        loss.backward()
        if t.clip:
            nn.utils.clip_grad_norm_(params, t.clip)
        opt.step()
        return loss.item()  # as seqtext's step does

    return update


def crf_nll(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
            start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Mean CRF negative log-likelihood, computed as ``pytorch-crf``'s ``CRF.forward`` does
    (time-major, log-space forward algorithm, one ``logsumexp`` per step)."""
    emissions, tags, mask = emissions.transpose(0, 1), tags.transpose(0, 1), mask.transpose(0, 1)
    steps, batch = tags.shape
    arange = torch.arange(batch)
    # score of the gold path
    score = start[tags[0]] + emissions[0, arange, tags[0]]
    for i in range(1, steps):
        score = score + (transitions[tags[i - 1], tags[i]] + emissions[i, arange, tags[i]]) * mask[i]
    last = tags[mask.long().sum(0) - 1, arange]
    score = score + end[last]
    # log partition
    alpha = start + emissions[0]
    for i in range(1, steps):
        nxt = torch.logsumexp(alpha.unsqueeze(2) + transitions + emissions[i].unsqueeze(1), dim=1)
        alpha = torch.where(mask[i].unsqueeze(1), nxt, alpha)
    log_z = torch.logsumexp(alpha + end, dim=1)
    return (log_z - score).mean()


class PlainTagger(nn.Module):
    def __init__(self, words: int, chars: int, tags: int, m):
        super().__init__()
        self.words = nn.Embedding(words, m.embedding_dim, padding_idx=0)
        self.chars = nn.Embedding(chars, m.char_dim, padding_idx=0)
        self.conv = nn.Conv1d(m.char_dim, m.char_filters, 3, padding=1)
        self.casing = nn.Embedding(len(CASING), 8, padding_idx=0)  # as seqtext's Embedder
        self.drop_in, self.drop_out = nn.Dropout(m.embedding_dropout), nn.Dropout(m.dropout)
        self.lstm = nn.LSTM(m.embedding_dim + m.char_filters + 8, m.hidden_size, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * m.hidden_size, tags)
        self.transitions = nn.Parameter(torch.empty(tags, tags).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(tags).uniform_(-0.1, 0.1))

    def loss(self, b) -> torch.Tensor:
        B, T, L = b.chars.shape
        chars = b.chars.view(B * T, L)
        conv = self.conv(self.chars(chars).transpose(1, 2))  # [B*T, filters, L]
        conv = conv.masked_fill((chars == 0).unsqueeze(1), float("-inf")).amax(2)
        conv = conv.masked_fill(torch.isinf(conv), 0.0).view(B, T, -1)  # padding words: no characters
        x = self.drop_in(torch.cat([self.words(b.ids), conv, self.casing(b.casing)], -1))
        h, _ = self.lstm(x)
        emissions = self.out(self.drop_out(h))
        return crf_nll(emissions, b.targets, b.mask, self.transitions, self.start, self.end)


class PlainClassifier(nn.Module):
    def __init__(self, words: int, classes: int, m):
        super().__init__()
        self.words = nn.Embedding(words, m.embedding_dim, padding_idx=0)
        self.drop_in, self.drop_out = nn.Dropout(m.embedding_dropout), nn.Dropout(m.dropout)
        self.lstm = nn.LSTM(m.embedding_dim, m.hidden_size, batch_first=True, bidirectional=True)
        self.out = nn.Linear(4 * m.hidden_size, classes)

    def loss(self, b) -> torch.Tensor:
        h, _ = self.lstm(self.drop_in(self.words(b.ids)))
        keep = b.mask.unsqueeze(2)
        pooled_max = h.masked_fill(~keep, float("-inf")).amax(1)
        pooled_mean = (h * keep).sum(1) / b.lengths.unsqueeze(1)
        logits = self.out(self.drop_out(torch.cat([pooled_max, pooled_mean], 1)))
        return nn.functional.cross_entropy(logits, b.targets)


def plain_step(task):
    """A plain PyTorch training step (``step(batch) -> loss``) for a classify or tag task, fresh
    weights (seed 0), at the recipe's sizes; ``None`` for other tasks."""
    torch.manual_seed(0)
    m = task.recipe.model
    if task.name == "tag":
        net = PlainTagger(len(task.vocab), len(task.meta.get("chars", "")) + 2, len(task.labels), m)
    elif task.name == "classify":
        net = PlainClassifier(len(task.vocab), len(task.labels), m)
    else:
        return None
    net.train()
    update = _optimizer_step(list(net.parameters()), task.recipe)
    return lambda b: update(net.loss(b))
