"""Task heads that sit on the shared encoder's outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import LockedDropout
from .encoder import reverse_padded


def _mean_weights(mask: torch.Tensor, lengths: torch.Tensor, dtype) -> torch.Tensor:
    """[B, T] weights 1 / length at real positions, 0 at padding: the mean is one bmm with them."""
    return (mask / lengths.clamp(min=1).unsqueeze(1)).to(dtype)


class _MaskedMaxMean(torch.autograd.Function):
    """Max (and optionally mean) over the real positions of [B, T, D] states, in one pass each way.

    The autograd formulas (masked_fill copy → max → zeros + scatter, mask multiply → sum, cat) make
    several full passes over the states; this masks only the tail past the shortest row
    (length-bucketed batches keep it short), takes the mean as one bmm, and writes the input
    gradient once: 15.5 → 6.4 ms forward + backward on 32 × 350 × 384 (benchmarks/lstm_kernels.py)."""

    @staticmethod
    def forward(ctx, x, mask, lengths, with_mean: bool):
        T = x.size(1)
        shortest = int(lengths.min())
        top, arg = x[:, :shortest].max(1)  # positions every row has: no mask needed
        if shortest < T:
            tail = x[:, shortest:].masked_fill(~mask[:, shortest:].unsqueeze(-1), float("-inf"))
            tail_top, tail_arg = tail.max(1)
            take = tail_top > top
            top, arg = torch.where(take, tail_top, top), torch.where(take, tail_arg + shortest, arg)
        weights = _mean_weights(mask, lengths, x.dtype) if with_mean else None
        ctx.save_for_backward(arg, weights)
        ctx.shape, ctx.with_mean = x.shape, with_mean
        if not with_mean:
            return top
        return torch.cat([top, torch.bmm(weights.unsqueeze(1), x).squeeze(1)], -1)

    @staticmethod
    def backward(ctx, grad):
        arg, weights = ctx.saved_tensors
        D = ctx.shape[-1]
        if ctx.with_mean:
            grad_x = weights.unsqueeze(-1) * grad[:, D:].unsqueeze(1)
        else:
            grad_x = grad.new_zeros(ctx.shape)
        grad_x.scatter_add_(1, arg.unsqueeze(1), grad[:, :D].unsqueeze(1))
        return grad_x, None, None, None


def masked_pool(states: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, how: str,
                attention: nn.Module | None = None) -> torch.Tensor:
    """Pool [B, T, D] states over real positions only (padding never contributes).

    ``maxmean`` is [max, mean] concatenated. Every row needs at least one real position."""
    if how in ("max", "maxmean"):
        return _MaskedMaxMean.apply(states, mask.to(states.device), lengths.to(states.device), how == "maxmean")
    if how == "mean":
        weights = _mean_weights(mask.to(states.device), lengths.to(states.device), states.dtype)
        return torch.bmm(weights.unsqueeze(1), states).squeeze(1)
    if how == "last":
        # forward half: state at the last real token; backward half: state at position 0
        idx = (lengths.to(states.device) - 1).clamp(min=0)
        last = states[torch.arange(states.size(0), device=states.device), idx]
        half = states.size(-1) // 2
        return torch.cat([last[:, :half], states[:, 0, half:]], -1) if states.size(-1) % 2 == 0 else last
    if how == "attention":
        scores = attention(states).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1).unsqueeze(-1) * states).sum(1)
    raise ValueError(how)


class ClassifierHead(nn.Module):
    """Pool encoder states and map them to class logits.

    Args:
        input_size: encoder output size.
        num_classes: number of labels.
        pooling: maxmean (max and mean concatenated; best in our IMDB runs), max, mean, last or attention.
        dropout: dropout before the output layer (0.3–0.5).
    """

    def __init__(self, input_size: int, num_classes: int, pooling: str = "maxmean", dropout: float = 0.3):
        super().__init__()
        self.pooling = pooling
        self.attention = nn.Linear(input_size, 1) if pooling == "attention" else None
        width = input_size * (2 if pooling == "maxmean" else 1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, num_classes)

    def forward(self, states, mask, lengths):
        return self.out(self.dropout(masked_pool(states, mask, lengths, self.pooling, self.attention)))


def linear_as_stored(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` [B, T, H] that lies in memory time-major, as an
    LSTM's batch-first output does (a transposed view of its [T, B, H] result): the product runs on
    the [T, B, H] tensor and the small [T, B, K] result is transposed back. Otherwise ``F.linear``
    copies the states to batch-major first, and the LSTM's backward copies their gradient back
    (a CoNLL step runs 1.005x faster without the copies: ``python benchmarks/speedups.py
    --compare layout``). The same product, row by row."""
    if x.dim() == 3 and not x.is_contiguous() and x.transpose(0, 1).is_contiguous():
        return F.linear(x.transpose(0, 1), weight, bias).transpose(0, 1)
    return F.linear(x, weight, bias)


class TaggerHead(nn.Module):
    """Per-token tag scores, decoded with a linear-chain CRF or per-token argmax."""

    def __init__(self, input_size: int, num_tags: int, dropout: float = 0.3, crf=None):
        super().__init__()
        self.dropout = LockedDropout(dropout)
        self.out = nn.Linear(input_size, num_tags)
        self.crf = crf
        # Take the encoder's directions apart and reverse the tag scores (see emissions); False:
        # the concatenated states (the same scores up to rounding; for benchmarks/speedups.py).
        self.split_directions = True
        # Score the states in the layout they lie in memory (see linear_as_stored); False: F.linear
        # as is (the same scores; for benchmarks/speedups.py).
        self.as_stored = True

    def emissions(self, states, lengths=None):
        """Tag scores ``[B, T, num_tags]`` of the encoder's ``states``: its concatenated outputs
        [B, T, input_size], or its ``(forward, backward)`` outputs with the backward ones
        reversed within ``lengths`` (``Encoder(outputs="directions_reversed")``).

        The latter scores each direction with its half of the weights and reverses the
        backward direction's K scores per token instead of its H states, with no concatenation;
        the dropout mask is drawn as for the concatenation, so the scores are the same up to
        rounding (tested)."""
        weight, bias = self.out.weight, self.out.bias
        linear = linear_as_stored if self.as_stored else F.linear
        if not isinstance(states, tuple):
            return linear(self.dropout(states), weight, bias)
        forward, backward = states
        if backward is None:
            return linear(self.dropout(forward), weight, bias)
        width = forward.size(2)
        keep = self.dropout.mask(forward, 2 * width)
        if keep is not None:
            forward, backward = forward * keep[..., :width], backward * keep[..., width:]
        backward_scores = reverse_padded(linear(backward, weight[:, width:]), lengths)
        return linear(forward, weight[:, :width], bias) + backward_scores

    def loss(self, states, mask, tags):
        scores = self.emissions(states, mask.sum(1) if isinstance(states, tuple) else None)
        if self.crf is not None:
            return self.crf.neg_log_likelihood(scores, tags, mask, reduction="sum") / mask.sum()
        return F.cross_entropy(scores[mask], tags[mask])

    def decode(self, scores, mask, transitions=None) -> list[list[int]]:
        """Best tag path per sequence from tag scores (:meth:`emissions`); ``transitions`` replaces
        the CRF's own (transition, start, end) scores, e.g. an ensemble's mean."""
        if self.crf is not None:
            return self.crf.decode(scores, mask, transitions)
        best = scores.argmax(-1).cpu()
        return [row[: int(n)].tolist() for row, n in zip(best, mask.sum(1).cpu())]


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row ``cross_entropy(h @ weight.T + bias, targets)`` that keeps only the logits.

    ``F.cross_entropy`` stores the [N, V] log-probabilities next to the logits and, in backward,
    zero-fills an [N, V] gradient for the NLL and runs log_softmax's backward over it: with a
    33k-word vocabulary those memory-bound passes were most of an LM step's non-matmul time in
    profiles (benchmarks/README.md). Here backward turns
    the saved logits into the softmax in place and subtracts 1 at the targets, which is the whole
    gradient. Targets < 0 are ignored (loss 0, no gradient), like ``ignore_index=-100``.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets):
        # Under autocast the matmuls run in the autocast dtype, as nn.Linear's would; the
        # normaliser and the loss are always fp32.
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        with torch.autocast(device, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            logits = F.linear(hc, wc, bias.to(dtype))
            valid = targets >= 0
            safe = targets.clamp(min=0).unsqueeze(1)
            wide = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
            log_z = torch.logsumexp(logits.to(wide), dim=1)
            nll = torch.where(valid, log_z - logits.gather(1, safe).squeeze(1).to(wide), log_z.new_zeros(()))
        ctx.save_for_backward(hc, wc, logits, log_z, safe, valid)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        return nll

    @staticmethod
    def backward(ctx, grad):
        hc, wc, logits, log_z, safe, valid = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        with torch.autocast(hc.device.type, enabled=False):
            # softmax in place over the fp32 logits (they are not needed again), minus 1 at targets
            probs = logits if logits.dtype == log_z.dtype else logits.to(log_z.dtype)
            probs.sub_(log_z.unsqueeze(1)).exp_()
            probs.scatter_add_(1, safe, probs.new_full(safe.shape, -1.0))
            probs.mul_((grad * valid).unsqueeze(1))
            g = probs.to(hc.dtype)
            return (g @ wc).to(h_dtype), (g.t() @ hc).to(w_dtype), probs.sum(0).to(b_dtype), None


class LMOutput(nn.Module):
    """What the LM output layers (:class:`LMHead`, :class:`~seqtext.nn.adaptive.AdaptiveSoftmax`)
    share: locked dropout on the encoder states, then an optional projection to ``width``."""

    def __init__(self, input_size: int, vocab_size: int, dropout: float, projection: int):
        super().__init__()
        self.dropout = LockedDropout(dropout)
        self.proj = nn.Linear(input_size, projection) if projection else None
        self.width, self.vocab_size = projection or input_size, vocab_size

    def hidden(self, states: torch.Tensor) -> torch.Tensor:
        h = self.dropout(states)
        return self.proj(h) if self.proj is not None else h

    def tied_weight(self, tied_to: nn.Embedding) -> nn.Parameter:
        """The embedding matrix to use as the [vocab, width] output matrix (weight tying)."""
        if tuple(tied_to.weight.shape) != (self.vocab_size, self.width):
            raise ValueError("tied weights need embedding_dim == LM output width")
        return tied_to.weight


class LMHead(LMOutput):
    """Next-token logits, optionally through a projection, with the output matrix tied to
    the input embedding (Press & Wolf 2017; Inan et al. 2017) when ``tied_to`` is given."""

    def __init__(self, input_size: int, vocab_size: int, dropout: float = 0.0, projection: int = 0,
                 tied_to: nn.Embedding | None = None):
        super().__init__(input_size, vocab_size, dropout, projection)
        self.decoder = nn.Linear(self.width, vocab_size)
        if tied_to is not None:
            self.decoder.weight = self.tied_weight(tied_to)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, states):
        return self.decoder(self.hidden(states))

    def nll(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood: states [..., D], targets [...] → [...] (fp32 or wider).

        Same values and gradients as ``F.cross_entropy(self(states), targets)``, faster (see
        :class:`_LinearCrossEntropy`).
        """
        flat = self.hidden(states).reshape(-1, self.width)
        out = _LinearCrossEntropy.apply(flat, self.decoder.weight, self.decoder.bias, targets.reshape(-1))
        return out.view(targets.shape)
