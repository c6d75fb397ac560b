"""A two-level (frequency-clustered) softmax whose output embeddings can be tied to the input ones.

Why: with a 33k-word vocabulary (WikiText-2) the full softmax costs ~10× the LSTM per token
on CPU. Splitting the vocabulary by frequency (Goodman 2001; Grave et al. 2017) lets most
tokens stop at a small "head" softmax (the most frequent words plus one logit per rare-word
cluster); only tokens whose target is rare pay for a cluster softmax. The probabilities are
exact and normalised (P(w) = P(cluster | h) · P(w | cluster, h)), so perplexities are
comparable with a full softmax.

Unlike ``torch.nn.AdaptiveLogSoftmaxWithLoss``, every word's output vector is a row of one
[vocab, width] matrix, so it can be *the* input embedding matrix (weight tying, which is worth
~10 perplexity points on WikiText-2). Vocabulary ids must be sorted by frequency, which
:meth:`seqtext.data.vocab.Vocab.build` guarantees (specials first, then most frequent).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .heads import LMOutput

ROW_BUCKET = 64


def _bucketed(index: torch.Tensor) -> torch.Tensor:
    """``index`` padded (with its first entry) to a multiple of :data:`ROW_BUCKET` rows.

    A cluster's row count changes every step. Under bf16 autocast on CPU (oneDNN matmuls, which
    cache per-shape state) that made peak memory grow with every step of WikiText-2 training;
    with row counts in buckets it stays flat. The padded rows' outputs are dropped, so they get
    no gradient.
    """
    n = index.numel()
    extra = -n % ROW_BUCKET
    return torch.cat([index, index[:1].expand(extra)]) if extra else index


class AdaptiveSoftmax(LMOutput):
    """Head softmax over ids ``[0, cutoffs[0])`` plus one logit per cluster ``[c_i, c_{i+1})``.

    Args:
        input_size: size of the encoder states fed in.
        vocab_size: number of output words (ids must be frequency-sorted).
        cutoffs: increasing cluster boundaries, e.g. ``[2000, 10000]`` for WikiText-2
            (the head then covers ~85% of running tokens); values ≥ ``vocab_size`` are dropped.
        dropout: locked dropout on the states before the output layer (0.1–0.5 for LMs).
        projection: >0 adds a linear layer to this width first (needed to tie when
            ``input_size`` differs from the embedding size).
        tied_to: an ``nn.Embedding`` whose weight becomes the output matrix (shared storage).
    """

    def __init__(self, input_size: int, vocab_size: int, cutoffs: list[int], dropout: float = 0.0,
                 projection: int = 0, tied_to: nn.Embedding | None = None):
        super().__init__(input_size, vocab_size, dropout, projection)
        self.cutoffs = [c for c in cutoffs if c < vocab_size] + [vocab_size]
        if tied_to is not None:
            self.weight = self.tied_weight(tied_to)
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, self.width).normal_(0, 0.1))
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.cluster = nn.Linear(self.width, len(self.cutoffs) - 1)
        # Share of running tokens per cluster (set by the LM task from the training stream):
        # only used to estimate FLOPs per token for the MFU read-out.
        self.cluster_share: list[float] | None = None

    @property
    def num_clusters(self) -> int:
        return len(self.cutoffs) - 1

    def _pieces(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Weight and bias rows per part (head words, cluster 1, ...). One ``split`` rather than
        slices: the backward pass then assembles one gradient instead of zero-filling a
        vocabulary-sized tensor per slice (7% of step time in profiles)."""
        sizes = [self.cutoffs[0]] + [b - a for a, b in pairwise(self.cutoffs)]
        return self.weight.split(sizes), self.bias.split(sizes)

    def _head_log_probs(self, h: torch.Tensor, weights, biases) -> torch.Tensor:
        logits = torch.cat([F.linear(h, weights[0], biases[0]), self.cluster(h)], -1)
        return logits.log_softmax(-1)

    def nll(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each target: states [..., D], targets [...] → [...]."""
        h = self.hidden(states).reshape(-1, self.width)
        t = targets.reshape(-1).contiguous()
        weights, biases = self._pieces()
        head = self._head_log_probs(h, weights, biases)
        c0 = self.cutoffs[0]
        # a rare target's head entry is its cluster's logit
        cluster = torch.bucketize(t, torch.tensor(self.cutoffs[:-1], device=t.device), right=True) - 1
        head_index = torch.where(t < c0, t, c0 + cluster)
        out = head.gather(1, head_index.unsqueeze(1)).squeeze(1)
        for i in range(self.num_clusters):
            lo = self.cutoffs[i]
            sel = (cluster == i).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            rows = _bucketed(sel) if torch.is_autocast_enabled(h.device.type) else sel
            tail = F.linear(h[rows], weights[i + 1], biases[i + 1])[: sel.numel()].log_softmax(-1)
            out = out.index_add(0, sel, tail.gather(1, (t[sel] - lo).unsqueeze(1)).squeeze(1))
        return -out.view(targets.shape)

    def log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the whole vocabulary: [..., D] → [..., V] (for sampling)."""
        shape = states.shape[:-1]
        h = self.hidden(states).reshape(-1, self.width)
        weights, biases = self._pieces()
        head = self._head_log_probs(h, weights, biases)
        c0 = self.cutoffs[0]
        parts = [head[:, :c0]]
        for i in range(self.num_clusters):
            tail = F.linear(h, weights[i + 1], biases[i + 1]).log_softmax(-1)
            parts.append(tail + head[:, c0 + i: c0 + i + 1])
        return torch.cat(parts, -1).view(*shape, self.vocab_size)

    def sample(self, state: torch.Tensor, banned: list[int], generator: torch.Generator) -> int:
        """Draw one word for one state [D] from the model's distribution, level by level: the
        head (shortlist words + clusters), then, if a cluster came up, a word inside it. Exact
        (P(w) = P(cluster) · P(w | cluster)), and only the chosen cluster's rows are read, which
        is what batch-1 generation is bound by. ``banned`` ids must lie in the shortlist; they are
        excluded and the rest renormalised, as masking the full distribution would."""
        from ..generate import categorical

        weights, biases = self._pieces()
        h = self.hidden(state.reshape(1, -1))
        head = torch.cat([F.linear(h, weights[0], biases[0]), self.cluster(h)], -1)[0].double()
        head[banned] = float("-inf")
        k = categorical((head - head.max()).exp(), generator)
        c0 = self.cutoffs[0]
        if k < c0:
            return k
        i = k - c0
        logits = F.linear(h, weights[i + 1], biases[i + 1])[0].double()
        return self.cutoffs[i] + categorical((logits - logits.max()).exp(), generator)

    def flops_per_token(self) -> float:
        """Forward matmul FLOPs per token, with cluster softmaxes weighted by how often they run."""
        total = 2 * self.width * (self.cutoffs[0] + self.num_clusters)
        if self.proj is not None:
            total += 2 * self.proj.in_features * self.proj.out_features
        share = self.cluster_share or [1.0] * self.num_clusters
        for i in range(self.num_clusters):
            total += share[i] * 2 * self.width * (self.cutoffs[i + 1] - self.cutoffs[i])
        return total
