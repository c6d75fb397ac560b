"""Continuous cache for a language model (Grave, Joulin & Usunier, ICLR 2017).

A trained LM's recent hidden states are stored with the word that followed each of them. When
a word was recently used after a context like the present one, the cache gives it probability
in proportion to the (exponentiated) similarity of the two hidden states:

    p_cache(w | h_t) ∝ Σ_{i < t, x_{i+1} = w} exp(θ · h_t·h_i)      over the last ``size`` positions
    p(w) = (1 - λ) · p_model(w) + λ · p_cache(w)

It needs no training (θ and λ are chosen on the dev split) and uses only words already seen,
so the next-word model still never sees the future. Cheap at evaluation time: one
[T × (size + T)] dot-product matrix per window, and only the target word's probability is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ContinuousCache:
    """Per-stream memory of (hidden state, next word) pairs, scoring targets for several θ at once.

    Args:
        size: positions remembered per stream (Grave et al.: 100-2000; larger helps on WikiText).
        thetas: flatness θ of the cache distribution; several values are scored in one pass so
            the dev split can choose one (recommended grid: 0.05-3 for LSTM outputs in [-1, 1]).
    """

    def __init__(self, size: int, thetas: Sequence[float]):
        if size < 1:
            raise ValueError(f"cache size must be ≥ 1, got {size}")
        self.size = size
        self.thetas = [float(t) for t in thetas]
        self.keys: torch.Tensor | None = None    # [B, M, H] hidden states, M ≤ size
        self.values: torch.Tensor | None = None  # [B, M] the word that followed each state

    def keep_streams(self, rows: torch.Tensor | list[int]) -> None:
        """Keep only these streams' memories (e.g. the last column, continued by a shorter tail)."""
        if self.keys is not None:
            self.keys, self.values = self.keys[rows], self.values[rows]

    @torch.no_grad()
    def target_probs(self, states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache probability of each target, then remember this window.

        Args:
            states: [B, T, H] top hidden states (what the output layer reads) at positions t.
            targets: [B, T] the word at t + 1.
        Returns:
            probs [len(thetas), B, T] = p_cache(targets) for each θ, and ``available`` [B, T]
            (False where the memory was still empty: the stream's very first position).
        """
        states = states.float()
        B, T, H = states.shape
        if self.keys is None:
            self.keys = states.new_zeros(B, 0, H)
            self.values = targets.new_zeros(B, 0)
        keys = torch.cat([self.keys, states], 1)      # [B, M + T, H]
        values = torch.cat([self.values, targets], 1)  # [B, M + T]
        M = self.keys.size(1)
        j = torch.arange(M + T, device=states.device)
        t = torch.arange(T, device=states.device)[:, None]
        # position t may use pairs (h_i, x_{i+1}) with i < t (x_{i+1} is then already seen), the last `size` of them
        allowed = (j < M + t) & (j >= M + t - self.size)  # [T, M + T]
        available = allowed.any(-1).expand(B, T)
        scores = torch.bmm(states, keys.transpose(1, 2))
        hit = (values[:, None, :] == targets[:, :, None]).float()  # [B, T, M + T]
        probs = []
        for theta in self.thetas:
            # masked after scaling: θ = 0 (a uniform vote over the memory) must not meet 0 · −inf
            logits = (theta * scores).masked_fill(~allowed, float("-inf"))
            weights = torch.softmax(logits, -1).nan_to_num(0.0)  # rows with no memory → 0
            probs.append((weights * hit).sum(-1))
        self.keys, self.values = keys[:, -self.size:], values[:, -self.size:]
        return torch.stack(probs), available


def mix_log_prob(model_log_prob: torch.Tensor, cache_prob: torch.Tensor, available: torch.Tensor,
                 lam: float) -> torch.Tensor:
    """log((1 - λ) p_model + λ p_cache) where the cache has memory, else log p_model."""
    mixed = torch.logaddexp(model_log_prob + torch.log1p(torch.tensor(-lam, dtype=model_log_prob.dtype)),
                            torch.log(lam * cache_prob.to(model_log_prob.dtype)))
    return torch.where(available, mixed, model_log_prob)
