"""Batched linear-chain CRF: log-likelihood by the forward algorithm, Viterbi decoding.

Both loop over time only; every step is vectorized over the batch and the tags. Optional
masks of allowed transitions (see :func:`constraints_for`) keep decoded paths well-formed
for a tag scheme.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..data.tagging import normalize_scheme, transition_ok
from .encoder import reversal_index, reverse_padded

# Added to the score of a forbidden transition. Finite rather than -inf so that gradients
# and logsumexp stay finite even when emissions leave no allowed path with real mass.
FORBIDDEN = -1e4

# Compute the CRF loss in NumPy for CPU tensors (see _NumpyLogLikelihood); tests and benchmarks
# switch it off to check and time the torch path that other devices take.
NUMPY_ON_CPU = True


def constraints_for(labels: list[str], scheme: str) -> tuple[Tensor, Tensor, Tensor]:
    """Allowed-transition masks ``(allowed [K, K], allowed_start [K], allowed_end [K])``.

    ``allowed[i, j]`` says whether label ``j`` may follow label ``i``. IOB2: I-X only after
    B-X or I-X, never first. IOB1: B-X only after B-X or I-X. BIOES: I-X/E-X only after
    B-X/I-X, which must be followed by I-X/E-X; never start with I-/E-, never end with B-/I-.
    Labels without a B/I/E/S prefix (e.g. padding) are left unconstrained.

    Args:
        labels: tag strings in label-id order, e.g. ``["O", "B-PER", "I-PER"]``.
        scheme: IOB1, IOB2 (or BIO), BIOES (or IOBES/BILOU).
    """
    scheme = normalize_scheme(scheme)
    k = len(labels)
    allowed = torch.ones(k, k, dtype=torch.bool)
    for i, prev in enumerate(labels):
        for j, tag in enumerate(labels):
            allowed[i, j] = transition_ok(prev, tag, scheme)
    start = torch.tensor([transition_ok(None, tag, scheme) for tag in labels], dtype=torch.bool)
    end = torch.tensor([transition_ok(tag, None, scheme) for tag in labels], dtype=torch.bool)
    return allowed, start, end


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` tags.

    Args:
        num_tags: number of tags K.
        allowed: bool ``[K, K]``, ``allowed[i, j]`` permits tag j after tag i (default: all).
        allowed_start: bool ``[K]``, tags a sequence may start with (default: all).
        allowed_end: bool ``[K]``, tags a sequence may end with (default: all).

    The masks are persistent buffers, so they are saved and loaded with the weights.
    Masks are left-aligned: True for the first ``length`` positions of each sequence, and
    every sequence must have at least one position.
    """

    def __init__(self, num_tags: int, allowed: Tensor | None = None,
                 allowed_start: Tensor | None = None, allowed_end: Tensor | None = None):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.register_buffer("allowed", _mask(allowed, (num_tags, num_tags), "allowed"))
        self.register_buffer("allowed_start", _mask(allowed_start, (num_tags,), "allowed_start"))
        self.register_buffer("allowed_end", _mask(allowed_end, (num_tags,), "allowed_end"))
        self.reset_parameters()

    @classmethod
    def for_labels(cls, labels: list[str], scheme: str | None) -> CRF:
        """A CRF over ``labels``, constrained to ``scheme`` when one is given."""
        if scheme is None:
            return cls(len(labels))
        return cls(len(labels), *constraints_for(labels, scheme))

    constraints_for = staticmethod(constraints_for)

    def reset_parameters(self) -> None:
        for p in (self.transitions, self.start_transitions, self.end_transitions):
            nn.init.uniform_(p, -0.1, 0.1)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    def _scores(self) -> tuple[Tensor, Tensor, Tensor]:
        # Transition scores with the penalty for forbidden moves folded in.
        trans = self.transitions + (~self.allowed) * FORBIDDEN
        start = self.start_transitions + (~self.allowed_start) * FORBIDDEN
        end = self.end_transitions + (~self.allowed_end) * FORBIDDEN
        return trans, start, end

    def _check(self, emissions: Tensor, mask: Tensor | None, tags: Tensor | None = None) -> Tensor:
        if emissions.dim() != 3 or emissions.size(2) != self.num_tags:
            raise ValueError(f"emissions must be [batch, time, {self.num_tags}], got {tuple(emissions.shape)}")
        if emissions.size(1) == 0:
            raise ValueError("emissions have no time steps")
        if mask is None:
            mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        mask = mask.bool()
        if mask.shape != emissions.shape[:2] or (tags is not None and tags.shape != mask.shape):
            raise ValueError("emissions, tags and mask disagree on [batch, time]")
        if not bool(mask[:, 0].all()):
            raise ValueError("every sequence needs at least one position (mask[:, 0] must be True)")
        if not bool((mask[:, 1:] <= mask[:, :-1]).all()):
            raise ValueError("mask must be left-aligned (True for the first length positions)")
        return mask

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log-likelihood ``log p(tags | emissions)`` per sequence, shape ``[B]``.

        Args:
            emissions: float ``[B, T, K]`` unnormalized tag scores.
            tags: long ``[B, T]`` gold tags; values at padded positions are ignored.
            mask: bool ``[B, T]``, True at real positions (default: all real).
        """
        mask = self._check(emissions, mask, tags)
        trans, start, end = self._scores()
        # Padded positions may hold any filler id (e.g. -100); keep the gathers in range.
        tags = tags.masked_fill(~mask, 0)
        if emissions.device.type == "cpu" and NUMPY_ON_CPU:
            log_likelihood = _NumpyLogLikelihood.apply(emissions, tags, mask, trans, start, end)
            if bool(torch.isfinite(log_likelihood).all()):
                return log_likelihood
            # every allowed path underflowed in probability space: only log space is finite
            log_z = self._log_partition_log_space(emissions, mask, trans, start, end)
        else:
            log_z = self._log_partition(emissions, mask, trans, start, end)
        return self._path_score(emissions, tags, mask, trans, start, end) - log_z

    def neg_log_likelihood(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None,
                           reduction: str = "mean") -> Tensor:
        """Negative log-likelihood, the training loss.

        Args:
            emissions, tags, mask: as for :meth:`forward`.
            reduction: ``"mean"`` over sequences, ``"sum"``, or ``"none"`` (shape ``[B]``).
        """
        nll = -self.forward(emissions, tags, mask)
        if reduction == "mean":
            return nll.mean()
        if reduction == "sum":
            return nll.sum()
        if reduction == "none":
            return nll
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")

    @staticmethod
    def _path_score(emissions: Tensor, tags: Tensor, mask: Tensor, trans: Tensor, start: Tensor,
                    end: Tensor) -> Tensor:
        zero = emissions.new_zeros(())
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # [B, T]
        score = start[tags[:, 0]] + torch.where(mask, emit, zero).sum(1)
        if tags.size(1) > 1:
            step = trans[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
            score = score + torch.where(mask[:, 1:], step, zero).sum(1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)
        return score + end[last]

    @staticmethod
    def _log_partition(emissions: Tensor, mask: Tensor, trans: Tensor, start: Tensor,
                       end: Tensor) -> Tensor:
        # The probability-space recursion runs ~3x fewer small kernels per time step and no
        # autograd graph; it underflows only when no allowed path keeps any mass (scores
        # ~1e4 apart), and then the log-space recursion gives the finite answer.
        log_z = _ScaledForwardBackward.apply(emissions, mask, trans, start, end)
        if bool(torch.isfinite(log_z).all()):
            return log_z
        return CRF._log_partition_log_space(emissions, mask, trans, start, end)

    @staticmethod
    def _log_partition_log_space(emissions: Tensor, mask: Tensor, trans: Tensor, start: Tensor,
                                 end: Tensor) -> Tensor:
        # Split by time once: indexing emissions[:, t] in the loop costs a full-size zero-filled
        # gradient per step in backward (this loop is ~64 steps of small kernels)
        steps, keep = emissions.unbind(1), mask.unsqueeze(2).unbind(1)
        alpha = start + steps[0]  # [B, K]: log-sum of all prefixes ending in each tag
        for t in range(1, len(steps)):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans + steps[t].unsqueeze(1), dim=1)
            # Finished sequences carry their alpha through the padding unchanged.
            alpha = torch.where(keep[t], nxt, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    @staticmethod
    def mean_scores(crfs: list[CRF]) -> tuple[Tensor, Tensor, Tensor]:
        """Transition, start and end scores averaged over CRFs with the same tags and constraints
        (an ensemble: with averaged tag scores too, Viterbi finds the path of the product of the
        members' CRF distributions)."""
        scores = [c._scores() for c in crfs]
        return tuple(torch.stack(parts).mean(0) for parts in zip(*scores))

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None,
               scores: tuple[Tensor, Tensor, Tensor] | None = None) -> list[list[int]]:
        """Viterbi best tag path of each sequence, each as long as its mask.

        Args:
            emissions: float ``[B, T, K]`` unnormalized tag scores.
            mask: bool ``[B, T]``, True at real positions (default: all real).
            scores: (transition, start, end) scores to use instead of this CRF's own
                (see :meth:`mean_scores`).
        """
        mask = self._check(emissions, mask)
        trans, start, end = scores if scores is not None else self._scores()
        batch, steps, k = emissions.shape
        score = start + emissions[:, 0]
        # At padded steps the backpointer is the identity, so backtracking from the last
        # column walks unchanged through the padding to each sequence's own last tag.
        identity = torch.arange(k, device=emissions.device).expand(batch, k)
        history = []
        for t in range(1, steps):
            best, idx = (score.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1)).max(dim=1)
            keep = mask[:, t].unsqueeze(1)
            score = torch.where(keep, best, score)
            history.append(torch.where(keep, idx, identity))
        tag = (score + end).argmax(dim=1)  # [B]
        path = [tag]
        for idx in reversed(history):
            tag = idx.gather(1, tag.unsqueeze(1)).squeeze(1)
            path.append(tag)
        paths = torch.stack(path[::-1], dim=1).tolist()
        lengths = mask.sum(1).tolist()
        return [p[:n] for p, n in zip(paths, lengths)]


class _ScaledForwardBackward(torch.autograd.Function):
    """log Z per sequence by the forward algorithm in probability space, rescaled every step
    (Rabiner's scaling); backward computes the exact gradient from the forward-backward
    marginals: d log Z / d emission = P(tag at t), d log Z / d transition = expected count.

    The log-space recursion under autograd costs ~25 small kernels per time step (logsumexp's
    max, subtract, exp, sum and log, broadcasts, their backward); this costs 4. When a gradient
    will be needed, the forward and the backward messages run side by side in the same loop
    (:func:`_scaled_recursion` with two groups), so the loop runs once per step instead of twice.
    On CPU the whole loss runs in NumPy instead (:class:`_NumpyLogLikelihood`, the same
    arithmetic). Every score is shifted by its maximum before ``exp``, so nothing overflows; a
    sequence whose allowed paths all underflow returns a non-finite value (the caller falls back).
    """

    @staticmethod
    def forward(ctx, emissions: Tensor, mask: Tensor, trans: Tensor, start: Tensor,
                end: Tensor) -> Tensor:
        dtype = torch.promote_types(emissions.dtype, torch.float32)  # bf16/fp16 scores run in fp32
        scores, trans, start, end = (x.detach().to(dtype) for x in (emissions, trans, start, end))
        emit_max = scores.amax(2, keepdim=True)  # [B, T, 1]
        emit = torch.exp(scores - emit_max)
        T, K = emit.shape[1:]
        trans_max, start_max, end_max = trans.max(), start.max(), end.max()
        p_trans, p_end = torch.exp(trans - trans_max), torch.exp(end - end_max)
        p_start = torch.exp(start - start_max)
        lengths = mask.sum(1)
        # alphas[:, t] = alpha_t / (its scales so far), each summing to 1. The recursion runs on
        # through each sequence's padding; nothing past a sequence's end is used.
        # Backward messages run on each sequence reversed within its length (so every one starts
        # at column 0), in the forward recursion's form: gamma_t = emit_t * beta_t, with
        # gamma_t ∝ (gamma_{t+1} @ p_trans.T) * emit_t and gamma_last ∝ emit_last * p_end.
        index = None
        if any(ctx.needs_input_grad):
            index = reversal_index(lengths, T, emit.device)
            flip = reverse_padded(emit, lengths, index)
            messages, scales = _scaled_recursion(
                torch.cat([emit, flip], 2), torch.block_diag(p_trans, p_trans.t()),
                torch.cat([p_start * emit[:, 0], p_end * flip[:, 0]], 1), groups=2)
            alphas, gammas = messages[..., :K], messages[..., K:]
            scales = scales[..., 0]
        else:
            alphas, scales = _scaled_recursion(emit, p_trans, p_start * emit[:, 0])
            gammas = None
        last = alphas.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, K)).squeeze(1)
        log_scale = (torch.log(scales) + emit_max.squeeze(2)).masked_fill(~mask, 0).sum(1)  # [B]
        log_z = log_scale + (lengths - 1) * trans_max + start_max + end_max + torch.log((last * p_end).sum(1))
        if gammas is not None:
            ctx.save_for_backward(mask, lengths, index, p_trans, p_start, p_end, alphas, gammas, last)
        return log_z

    @staticmethod
    def backward(ctx, grad: Tensor):
        mask, lengths, index, p_trans, p_start, p_end, alphas, gammas, last = ctx.saved_tensors
        B, K = alphas.size(0), alphas.size(2)
        live = mask.unsqueeze(2)
        gammas = torch.where(live, reverse_padded(gammas, lengths, index), 0.0)
        alphas = torch.where(live, alphas, 0.0)  # past a sequence's end: unused, maybe NaN
        # What reaches tag j at t from before: start scores at t = 0, a_{t-1} @ p_trans after.
        reach = torch.cat([p_start.expand(B, 1, K), torch.matmul(alphas[:, :-1], p_trans)], 1)
        joint = reach * gammas  # ∝ P(tag at t); each position's sum normalises it and the pairs
        norm = joint.sum(2, keepdim=True)  # [B, T, 1], 0 in padding
        g = grad.to(alphas.dtype).view(B, 1, 1)
        weight = torch.where(live, g / norm, 0.0)
        grad_emissions = joint * weight  # zero in padding
        grad_start = grad_emissions[:, 0].sum(0)
        ends = last * p_end
        grad_end = (ends / ends.sum(1, keepdim=True) * g.view(B, 1)).sum(0)
        # P(tag i at t-1, tag j at t) ∝ a_{t-1}(i) * p_trans(i, j) * gamma_t(j)
        counts = alphas[:, :-1].reshape(-1, K).t() @ (gammas[:, 1:] * weight[:, 1:]).reshape(-1, K)
        grad_trans = counts * p_trans
        # (autograd casts each gradient to its input's dtype)
        return grad_emissions, None, grad_trans, grad_start, grad_end


class _NumpyLogLikelihood(torch.autograd.Function):
    """The whole log-likelihood of CPU scores, ``gold path score - log Z`` per sequence, and its
    exact gradient, in NumPy: the same arithmetic as :meth:`CRF._path_score` (under autograd)
    minus :class:`_ScaledForwardBackward`, which other devices run. At a CoNLL batch the loss is
    ~60 tiny torch calls and as many autograd nodes, whose per-call overhead is most of its cost;
    a NumPy call costs a fraction of it. The gradient is the forward-backward posteriors minus the
    gold path's indicators (tag at t, tag pair at t-1 → t, first and last tag). A sequence whose
    allowed paths all underflow gives a non-finite value, and the caller falls back to the log-space
    recursion, as it does for :class:`_ScaledForwardBackward`.
    """

    @staticmethod
    def forward(ctx, emissions: Tensor, tags: Tensor, mask: Tensor, trans: Tensor, start: Tensor,
                end: Tensor) -> Tensor:
        dtype = torch.promote_types(emissions.dtype, torch.float32)  # bf16/fp16 scores run in fp32
        scores, trans, start, end = (x.detach().to(dtype).contiguous().numpy()
                                     for x in (emissions, trans, start, end))
        tags, live = tags.numpy(), mask.numpy()
        B, T, K = scores.shape
        lengths = live.sum(1)
        rows = np.arange(B)
        last_tags = tags[rows, lengths - 1]
        pairs = tags[:, :-1] * K + tags[:, 1:]  # [B, T-1] flat (previous, next) tag ids
        gold = (start[tags[:, 0]] + end[last_tags]
                + np.where(live, scores[rows[:, None], np.arange(T), tags], 0).sum(1)
                + np.where(live[:, 1:], trans.reshape(-1)[pairs], 0).sum(1))
        emit_max = scores.max(2, keepdims=True)
        emit = np.exp(scores - emit_max)
        trans_max, start_max, end_max = trans.max(), start.max(), end.max()
        p_trans, p_start, p_end = np.exp(trans - trans_max), np.exp(start - start_max), np.exp(end - end_max)
        # Each sequence reversed within its length, for the backward messages (as in
        # _ScaledForwardBackward, whose comments say what each quantity is).
        t = np.arange(T)
        flip_index = np.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # [B, T], its own inverse
        flip = emit[rows[:, None], flip_index]
        block = np.zeros((2 * K, 2 * K), dtype=p_trans.dtype)
        block[:K, :K], block[K:, K:] = p_trans, p_trans.T
        with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
            messages, scales = _recurse(np.concatenate([emit, flip], 2), block,
                                        np.concatenate([p_start * emit[:, 0], p_end * flip[:, 0]], 1), 2)
            messages, scales = np.stack(messages, 1), np.stack(scales, 1)[:, :, 0]
            alphas = messages[:, :, :K]
            last = alphas[rows, lengths - 1]
            log_scale = np.where(live, np.log(scales) + emit_max[:, :, 0], 0).sum(1)
            log_z = (log_scale + (lengths - 1) * trans_max + start_max + end_max
                     + np.log((last * p_end).sum(1)))
        ctx.saved = (live, tags, pairs, last_tags, flip_index, p_trans, p_start, p_end, messages, last)
        return torch.from_numpy((gold - log_z).astype(scores.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        live, tags, pairs, last_tags, flip_index, p_trans, p_start, p_end, messages, last = ctx.saved
        B, T, K = tags.shape[0], tags.shape[1], p_trans.shape[0]
        g = grad.detach().numpy().astype(p_trans.dtype)
        live3 = live[:, :, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            gammas = np.where(live3, messages[np.arange(B)[:, None], flip_index, K:], 0)
            alphas = np.where(live3, messages[:, :, :K], 0)
            reach = np.concatenate([np.broadcast_to(p_start, (B, 1, K)), _matmul(alphas[:, :-1], p_trans)], 1)
            joint = reach * gammas
            weight = np.where(live3, g[:, None, None] / joint.sum(2, keepdims=True), 0)
        # d(gold - log Z): the gold path's indicators minus the posteriors
        grad_emissions = -(joint * weight)
        grad_emissions.reshape(-1)[(np.arange(B * T) * K + tags.reshape(-1))[live.reshape(-1)]] += \
            np.broadcast_to(g[:, None], (B, T))[live]
        grad_start = grad_emissions[:, 0].sum(0)  # the first tag's indicator minus its posterior
        ends = last * p_end
        grad_end = (np.bincount(last_tags, weights=g, minlength=K)
                    - (ends / ends.sum(1, keepdims=True) * g[:, None]).sum(0))
        counts = _matmul(alphas[:, :-1].reshape(-1, K).T, (gammas[:, 1:] * weight[:, 1:]).reshape(-1, K))
        gold_pairs = np.bincount(pairs[live[:, 1:]], weights=np.broadcast_to(g[:, None], pairs.shape)[live[:, 1:]],
                                 minlength=K * K).reshape(K, K)
        grad_trans = gold_pairs - counts * p_trans
        out = [torch.from_numpy(np.ascontiguousarray(x)) for x in (grad_emissions, grad_trans, grad_start, grad_end)]
        return out[0], None, None, out[1], out[2], out[3]


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` by torch, on torch's threads: NumPy's OpenBLAS starts threads of its own for
    products this size (a [17, B·T] × [B·T, 17] one is), which then spin beside torch's and slowed
    the whole CRF loss 3× on 2 threads (``python benchmarks/lstm_kernels.py --only crf``)."""
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _scaled_recursion(emit: Tensor, p: Tensor, first: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Messages ``out[:, t]`` ∝ ``(out[:, t - 1] @ p) * emit[:, t]`` from ``out[:, 0]`` ∝ ``first``,
    each of the ``groups`` equal slices of the last axis normalised to sum 1, and the normalisers
    ``[B, T, groups]`` (the scales before normalising).

    With ``p`` block-diagonal, the groups are independent recursions run in one loop (the CRF's
    forward and backward messages). The loop is T steps of 4 tiny operations on [B, K] tensors,
    where the cost is each call's overhead, not arithmetic; on CPU, :class:`_NumpyLogLikelihood`
    runs the same loop (:func:`_recurse`) on NumPy arrays, whose calls cost a fraction of torch's."""
    outs, scales = _recurse(emit, p, first, groups)
    return torch.stack(outs, 1), torch.stack(scales, 1)


def _recurse(emit, p, u, groups: int) -> tuple[list, list]:
    """The loop of :func:`_scaled_recursion`, written once for torch tensors (other devices) and
    NumPy arrays (:class:`_NumpyLogLikelihood` on CPU)."""
    outs, scales = [], []
    B, width = u.shape
    for t in range(emit.shape[1]):
        if t:
            u = (outs[-1] @ p) * emit[:, t]
        u = u.reshape(B, groups, width // groups)
        total = u.sum(2)
        outs.append((u / total[:, :, None]).reshape(B, width))
        scales.append(total)
    return outs, scales


def _mask(mask: Tensor | None, shape: tuple[int, ...], name: str) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    return mask.clone()
