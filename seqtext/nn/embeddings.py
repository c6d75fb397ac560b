"""Token features: word embeddings (optionally pretrained), plus char-CNN and casing for tagging."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch import nn

from ..errors import SeqtextError


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence shared over time steps (variational dropout).

    Dropping the same units at every step regularises recurrent models better than fresh
    masks per step (Gal & Ghahramani 2016; AWD-LSTM).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, D]
        mask = self.mask(x)
        return x if mask is None else x * mask

    def mask(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor | None:
        """The scaled mask ``[B, 1, width or D]`` that forward multiplies ``x`` [B, T, D] by
        (drawn the same way), or None where forward returns ``x`` unchanged."""
        if not self.training or self.p == 0:
            return None
        return x.new_empty(x.size(0), 1, width or x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)


CASING = ("pad", "lower", "upper", "title", "digit", "mixed", "other")


def casing_id(word: str) -> int:
    if not word:
        return CASING.index("other")
    if word.isdigit():
        return CASING.index("digit")
    if word.islower():
        return CASING.index("lower")
    if word.isupper():
        return CASING.index("upper")
    if word[0].isupper() and word[1:].islower():
        return CASING.index("title")
    if any(c.isalpha() for c in word):
        return CASING.index("mixed")
    return CASING.index("other")


class Embedder(nn.Module):
    """Ids (+ char ids, casing ids) → per-token feature vectors.

    Args:
        vocab_size: rows of the word embedding (vocab incl. specials).
        dim: word embedding size; 100–300 for tagging/classification, tied LMs use hidden size.
        dropout: locked dropout on the concatenated features (0.1–0.5).
        num_chars: >0 adds a char-CNN word encoder over this many char ids (tagging).
        char_dim, char_filters: char embedding size and CNN output size (30 and 50 are standard).
        casing: add a small casing-class embedding (helps NER when words are lowercased).
    """

    def __init__(self, vocab_size: int, dim: int, dropout: float = 0.0, num_chars: int = 0,
                 char_dim: int = 30, char_filters: int = 50, casing: bool = False):
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.words.weight, std=0.1)
        with torch.no_grad():
            self.words.weight[0].zero_()
        self.chars = None
        self.output_dim = dim
        if num_chars:
            from .chars import CharCNN

            self.chars = CharCNN(num_chars, char_dim=char_dim, filters=char_filters)
            self.output_dim += self.chars.output_dim
        self.casing = nn.Embedding(len(CASING), 8, padding_idx=0) if casing else None
        if casing:
            self.output_dim += 8
        self.dropout = LockedDropout(dropout)

    def forward(self, ids: torch.Tensor, chars: torch.Tensor | None = None,
                casing: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.words(ids)]
        if self.chars is not None:
            B, T, L = chars.shape
            parts.append(self.chars(chars.view(B * T, L)).view(B, T, -1))
        if self.casing is not None:
            parts.append(self.casing(casing))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return self.dropout(x)

    def load_vectors(self, path: str | Path, itos: list[str], freeze: bool = False) -> dict:
        """Initialise rows from a GloVe / word2vec / fastText text file.

        Exact matches win; otherwise a vocab word takes the vector of its lowercase form.
        Words without a vector keep their random init. Returns coverage statistics.
        """
        path = Path(path)
        if not path.is_file():
            raise SeqtextError(f"{path}: pretrained vectors file not found")
        wanted = {w: i for i, w in enumerate(itos) if i > 0}
        lower: dict[str, list[int]] = {}
        for w, i in wanted.items():
            lower.setdefault(w.lower(), []).append(i)
        dim = self.words.embedding_dim
        exact, by_lower = set(), set()
        opener = gzip.open if path.name.endswith(".gz") else open
        weight = self.words.weight.data
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.rstrip().split(" ")
                if line_no == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec / fastText header "count dim"
                if len(parts) < 2:
                    continue
                if len(parts) - 1 != dim:
                    raise SeqtextError(f"{path}:{line_no}: vector has {len(parts) - 1} values, "
                                       f"expected {dim} (set [model] embedding_dim = {len(parts) - 1})")
                word = parts[0]
                targets = []
                if word in wanted and wanted[word] not in exact:
                    targets.append(wanted[word])
                    exact.add(wanted[word])
                for i in lower.get(word, []) if word == word.lower() else []:
                    if i not in exact and i not in by_lower:
                        targets.append(i)
                        by_lower.add(i)
                if targets:
                    try:
                        vec = torch.tensor([float(v) for v in parts[1:]])
                    except ValueError:
                        raise SeqtextError(f"{path}:{line_no}: non-numeric vector value") from None
                    weight[targets] = vec
        self.words.weight.requires_grad_(not freeze)
        found = len(exact | by_lower)
        return {"vectors_found": found, "vocab": len(wanted), "coverage": found / max(1, len(wanted)),
                "exact": len(exact), "lowercase": len(by_lower - exact)}
