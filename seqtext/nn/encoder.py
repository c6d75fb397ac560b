"""The one sequence encoder every seqtext task uses: a stacked (Bi)LSTM over padded batches.

Why not ``nn.LSTM(bidirectional=True)`` on packed sequences? On CPU, packed input leaves
oneDNN's fused RNN kernel and runs 12–28× slower (benchmarks/lstm_kernels.py). Padded input is
fast, and a forward LSTM's outputs at real positions never depend on trailing padding. For the
backward direction we reverse each sequence *within its own length* (padding stays at the end),
run a forward LSTM, and reverse back. Outputs at real positions are therefore exactly independent of how
much padding a batch has, at full kernel speed.

Two wirings:
- ``joint`` (default for classify/tag): layer l+1 reads both directions of layer l.
- separate (``joint=False``, ELMo-style, used by the language model): two independent
  stacks, so the forward stack never sees the future and the backward one never sees the
  past; only the top outputs are concatenated. An LM trained this way can initialise a
  classifier or tagger encoder of the same wiring.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .embeddings import LockedDropout

State = list[tuple[torch.Tensor, torch.Tensor]]


def reversal_index(lengths: torch.Tensor, T: int, device=None) -> torch.Tensor:
    """Flat row permutation of a [B, T] batch that reverses each row's first ``lengths[b]`` steps."""
    B = lengths.numel()
    t = torch.arange(T, device=device).unsqueeze(0)
    L = lengths.to(device).unsqueeze(1)
    return (torch.where(t < L, L - 1 - t, t) + torch.arange(B, device=device).unsqueeze(1) * T).view(-1)


def drop_connect(weight: torch.Tensor, p: float, fast: bool = True) -> torch.Tensor:
    """``F.dropout(weight, p)`` (DropConnect), with the mask drawn faster on CPU (``fast``).

    torch's CPU ``bernoulli_`` draws one Mersenne-Twister number per element on one thread; NumPy's
    PCG64 fills the mask from random bytes (one layer of the WikiText-2 LM, forward + backward,
    7.0 → 2.7 ms: ``python benchmarks/lstm_kernels.py --only dropconnect``; the whole step 1.065×:
    ``python benchmarks/speedups.py --compare dropconnect --threads 2``). Each element keeps with
    probability ``round((1 - p) · 2¹⁶) / 2¹⁶`` (within 2⁻¹⁷ of 1 - p) and is scaled by its inverse,
    so the expectation is exact. The generator is seeded from torch's, so seeded runs and resumed
    runs (which restore torch's RNG state) draw the same masks.
    """
    if p <= 0:
        return weight
    threshold = round((1 - p) * 65536)
    if not fast or weight.device.type != "cpu" or threshold == 0:
        return F.dropout(weight, p)
    seed = int(torch.randint(2**63 - 1, ()))
    bits = np.frombuffer(np.random.default_rng(seed).bytes(2 * weight.numel()), dtype=np.uint16)
    keep = torch.from_numpy(bits < threshold).view(weight.shape)
    return weight * (keep.to(weight.dtype) * (65536 / threshold))


class _Permute(torch.autograd.Function):
    """Row permutation that is its own inverse, so backward is the same cheap index_select
    (autograd's gather → scatter_add backward was the largest non-LSTM cost in profiles)."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        return x.reshape(index.numel(), -1).index_select(0, index).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.reshape(index.numel(), -1).index_select(0, index).view(grad.shape), None


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse the first ``lengths[b]`` steps of each row of ``x`` [B, T, ...]; padding stays put."""
    if index is None:
        index = reversal_index(lengths, x.size(1), x.device)
    return _Permute.apply(x, index)


class Encoder(nn.Module):
    """Stacked LSTM encoder.

    Args:
        input_size: size of the token features fed in.
        hidden_size: LSTM units per direction (128–512; 256 is a good CPU default).
        layers: stacked layers per direction (1–2 for classify/tag, 2–3 for an LM).
        bidirectional: also run a backward stack (classify/tag: yes; a pure next-word LM: no).
        joint: layer l+1 sees both directions of layer l (standard BiLSTM); False keeps the
            directions apart (ELMo-style biLM).
        dropout: locked dropout between layers (0.2–0.5).
        weight_dropout: DropConnect on hidden-to-hidden weights during training (AWD-LSTM; 0.2–0.5 for LMs).
    """

    def __init__(self, input_size: int, hidden_size: int, layers: int = 1, bidirectional: bool = True,
                 joint: bool = True, dropout: float = 0.0, weight_dropout: float = 0.0):
        super().__init__()
        self.hidden_size, self.layers = hidden_size, layers
        self.bidirectional, self.joint = bidirectional, joint and bidirectional
        width = 2 * hidden_size if self.joint else hidden_size
        sizes = [input_size] + [width] * (layers - 1)
        self.fwd = nn.ModuleList(nn.LSTM(s, hidden_size, batch_first=True) for s in sizes)
        self.bwd = nn.ModuleList(nn.LSTM(s, hidden_size, batch_first=True) for s in sizes) if bidirectional else None
        self.drop = LockedDropout(dropout)
        self.weight_dropout = weight_dropout
        # draw DropConnect masks with NumPy on CPU (see drop_connect); False: torch's bernoulli_
        # (the same distribution, slower; for benchmarks/speedups.py)
        self.fast_drop_connect = True

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)

    def flops_per_token(self) -> float:
        """Forward FLOPs per token of the LSTM gate matmuls (4 gates, input and recurrent weights)."""
        stacks = [self.fwd] + ([self.bwd] if self.bwd is not None else [])
        return sum(2 * 4 * lstm.hidden_size * (lstm.input_size + lstm.hidden_size) for s in stacks for lstm in s)

    def _run(self, lstm: nn.LSTM, x: torch.Tensor, state=None):
        if self.training and self.weight_dropout > 0:
            params = dict(lstm.named_parameters())
            params["weight_hh_l0"] = drop_connect(params["weight_hh_l0"], self.weight_dropout, self.fast_drop_connect)
            return functional_call(lstm, params, (x, state))
        return lstm(x, state)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: State | None = None,
                outputs: str = "concat"):
        """Encode ``x`` [B, T, input_size] with real lengths ``lengths`` [B].

        ``state`` (forward stack only) carries LSTM state across calls for truncated BPTT
        on token streams. Returns ``(outputs, new_state)``, where ``outputs`` is, by ``outputs``:

        - ``"concat"``: one [B, T, output_size] tensor, both directions side by side;
        - ``"directions"``: the top (forward [B, T, H], backward [B, T, H] or None) outputs
          (a biLM scores each direction on its own, so nothing is concatenated);
        - ``"directions_reversed"``: as ``"directions"``, but the backward outputs are left in the
          order the backward LSTM made them, each row reversed within its length (position t
          holds token ``lengths[b] - 1 - t``): the caller reverses something narrower instead
          (the tagger its tag scores, :meth:`TaggerHead.emissions`), saving a pass over the
          states each way and the concatenation.
        """
        if outputs not in ("concat", "directions", "directions_reversed"):
            raise ValueError(f"outputs must be 'concat', 'directions' or 'directions_reversed', got {outputs!r}")
        state = state or [None] * self.layers
        new_state: State = []
        rev = reversal_index(lengths, x.size(1), x.device) if self.bidirectional else None
        if self.joint:
            h = x
            for i in range(self.layers):
                f, s = self._run(self.fwd[i], h, state[i])
                b, _ = self._run(self.bwd[i], reverse_padded(h, lengths, rev))
                new_state.append(s)
                if i == self.layers - 1 and outputs == "directions_reversed":
                    return (f, b), new_state
                h = torch.cat([f, reverse_padded(b, lengths, rev)], -1)
                if i < self.layers - 1:
                    h = self.drop(h)
            if outputs == "concat":
                return h, new_state
            return (h[..., : self.hidden_size], h[..., self.hidden_size:]), new_state
        f = x
        for i in range(self.layers):
            f, s = self._run(self.fwd[i], f, state[i])
            new_state.append(s)
            if i < self.layers - 1:
                f = self.drop(f)
        b = None
        if self.bidirectional:
            b = reverse_padded(x, lengths, rev)
            for i in range(self.layers):
                b, _ = self._run(self.bwd[i], b)
                if i < self.layers - 1:
                    b = self.drop(b)
            if outputs != "directions_reversed":
                b = reverse_padded(b, lengths, rev)
        if outputs == "concat":
            return (f if b is None else torch.cat([f, b], -1)), new_state
        return (f, b), new_state


def detach_state(state: State | None) -> State | None:
    if state is None:
        return None
    return [None if s is None else (s[0].detach(), s[1].detach()) for s in state]
