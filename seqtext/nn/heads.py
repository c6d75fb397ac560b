"""Task heads that sit on the shared encoder's outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import LockedDropout


def masked_pool(states: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, how: str,
                attention: nn.Module | None = None) -> torch.Tensor:
    """Pool [B, T, D] states over real positions only (padding never contributes)."""
    m = mask.unsqueeze(-1)
    if how == "max":
        return states.masked_fill(~m, float("-inf")).max(1).values
    if how == "mean":
        return (states * m).sum(1) / lengths.to(states.device).clamp(min=1).unsqueeze(1)
    if how == "maxmean":
        return torch.cat([masked_pool(states, mask, lengths, "max"), masked_pool(states, mask, lengths, "mean")], -1)
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


class TaggerHead(nn.Module):
    """Per-token tag scores, decoded with a linear-chain CRF or per-token argmax."""

    def __init__(self, input_size: int, num_tags: int, dropout: float = 0.3, crf=None):
        super().__init__()
        self.dropout = LockedDropout(dropout)
        self.out = nn.Linear(input_size, num_tags)
        self.crf = crf

    def emissions(self, states):
        return self.out(self.dropout(states))

    def loss(self, states, mask, tags):
        scores = self.emissions(states)
        if self.crf is not None:
            return self.crf.neg_log_likelihood(scores, tags, mask, reduction="sum") / mask.sum()
        return F.cross_entropy(scores[mask], tags[mask])

    def decode(self, states, mask) -> list[list[int]]:
        scores = self.emissions(states)
        if self.crf is not None:
            return self.crf.decode(scores, mask)
        best = scores.argmax(-1).cpu()
        return [row[: int(n)].tolist() for row, n in zip(best, mask.sum(1).cpu())]


class LMHead(nn.Module):
    """Next-token logits, optionally through a projection, with the output matrix tied to
    the input embedding (Press & Wolf 2017; Inan et al. 2017) when ``tied_to`` is given."""

    def __init__(self, input_size: int, vocab_size: int, dropout: float = 0.0, projection: int = 0,
                 tied_to: nn.Embedding | None = None):
        super().__init__()
        self.dropout = LockedDropout(dropout)
        self.proj = nn.Linear(input_size, projection) if projection else None
        width = projection or input_size
        self.decoder = nn.Linear(width, vocab_size)
        if tied_to is not None:
            if tied_to.weight.shape != self.decoder.weight.shape:
                raise ValueError("tied weights need embedding_dim == LM output width")
            self.decoder.weight = tied_to.weight
        nn.init.zeros_(self.decoder.bias)

    def forward(self, states):
        h = self.dropout(states)
        if self.proj is not None:
            h = self.proj(h)
        return self.decoder(h)
