"""Next-word language modelling (and ELMo-style bidirectional LMs for transfer).

Data: every row (a line of a text file, a document of a hub dataset) is tokenized once
(cached ``datasets.map``) with ``<eos>`` appended, so the split is one long token-id stream:
the flat values of the Arrow ``ids`` column, never copied into Python lists. Training reads
contiguous (batch × bptt) windows of that stream; the forward LSTM state is carried from one
window to the next (detached: truncated BPTT) and reset at the start of each epoch.

Model: Embedder → Encoder (``joint=False``: separate forward / backward stacks, so the
forward stack is a proper next-word model that never sees the future) → output layer (full
softmax, :class:`~seqtext.nn.heads.LMHead`, or :class:`~seqtext.nn.adaptive.AdaptiveSoftmax`),
tied to the input embedding where the sizes allow. With ``model.bidirectional`` the backward
stack is trained to predict the previous token through the same output layer; such an
encoder initialises classifiers/taggers (``init_from``) that use the same separate wiring.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from .. import distributed as dist
from ..data.batching import Batch, iter_stream, lm_stream_batches, lm_window_lengths, read_rows, token_stream
from ..data.vocab import EOS
from ..errors import SeqtextError
from ..generate import (
    SamplingOptions,
    StreamDetokenizer,
    banned_ids,
    choose,
    is_number,
    is_plain,
    leaves_quote_open,
    make_generator,
    sample_tokens,
)
from ..nn.adaptive import AdaptiveSoftmax
from ..nn.cache import ContinuousCache, mix_log_prob
from ..nn.encoder import State, detach_state
from ..nn.heads import LMHead
from .base import Net, Task, fingerprint

PROMPT_CHUNK = 1024  # prompt tokens per LSTM call in generate(): bounded memory for huge prompts
TOKENIZE_ROWS = 1000  # rows tokenized (as Python lists) at a time inside one map batch
# continuous-cache grid searched on the dev split (Grave et al. 2017 tune the same two knobs)
CACHE_THETAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
CACHE_LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)  # 0: where the cache does not help


def check_cache_lambda(lam: float) -> None:
    if not is_number(lam) or not 0.0 <= lam < 1.0:
        raise SeqtextError(f"cache_lambda: expected a number in [0, 1), got {lam!r}")


def check_cache_theta(theta: float) -> None:
    """θ = 0 is a uniform vote over the cache; larger θ trusts the most similar states more."""
    if not is_number(theta) or not math.isfinite(theta) or theta < 0:
        raise SeqtextError(f"cache_theta: expected a finite number ≥ 0, got {theta!r}")


def _cache_loss(scored: dict, theta_index: int, lam: float) -> float:
    """Mean NLL of the model mixed with the cache (θ number ``theta_index``) at weight λ."""
    mixed = mix_log_prob(scored["log_p"], scored["cache_p"][theta_index], scored["available"], lam)
    return float(-mixed.mean())


class LMSplit:
    """An encoded LM split: the Arrow dataset (one row of ids per input row) and ``stream``, all
    rows concatenated as one int32 token stream, memory-mapped from beside the datasets cache
    (:func:`~seqtext.data.batching.token_stream`), so memory stays flat however large the corpus."""

    def __init__(self, ds):
        self.ds = ds
        self.stream: np.ndarray = token_stream(ds, "ids")

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def num_tokens(self) -> int:
        return len(self.stream)

    def window(self, starts: np.ndarray, length: int) -> torch.Tensor:
        """Rows ``stream[s : s + length]`` for each start, as an int64 tensor [len(starts), length]
        (read with file reads from a memory-mapped stream: see :func:`~seqtext.data.batching.read_rows`)."""
        return torch.from_numpy(read_rows(self.stream, starts, length))


class LMNet(Net):
    """The shared :class:`Net` with FLOP accounting that knows the LM's output layer."""

    def head_flops_per_token(self) -> float:
        head = self.head.flops_per_token() if isinstance(self.head, AdaptiveSoftmax) else super().head_flops_per_token()
        return head * (2 if self.encoder.bidirectional else 1)  # a biLM runs the output layer once per direction


class LMTask(Task):
    """Word (or subword) language model; dev metric is perplexity (lower is better)."""

    name = "lm"
    metric = "perplexity"
    higher_is_better = False
    eval_batch_size = 10  # parallel streams when scoring a split (pytorch/examples uses 10)
    SIZE_EPOCHS = 10  # epochs whose random-BPTT window counts are averaged to size an epoch
    # Large map batches = large Arrow record batches: opening a cache file reads every batch's
    # header, and the kernel maps the file around each read (64 KB, or a whole large page-cache
    # folio), so with 1000-row batches most of the file would become resident just by opening it.
    map_batch_size = 10_000

    def __init__(self, recipe, tokenizer=None, vocab=None, meta: dict | None = None):
        super().__init__(recipe, tokenizer, vocab, meta)
        # The LM always keeps the directions apart (the forward stack must not see the future);
        # a classifier initialised from it reads this to build the same wiring.
        self.meta["joint"] = False
        self._carry: State | None = None  # forward LSTM state carried across training windows
        self._cluster_share: list[float] | None = None

    # ------------------------------------------------------------------ data
    def text_column_of(self, ds, split: str) -> str:
        if self.recipe.data.text_column not in ds.column_names and ds.column_names == ["text"]:
            # a plain-text file (always one "text" column) standing in for a hub dataset whose
            # text column has another name (PTB's "sentence"): --data-dir works with the same recipe
            return "text"
        return super().text_column_of(ds, split)

    def tokenize_split(self, ds, split: str):
        """Add a ``tokens`` column: each row's tokens followed by ``<eos>`` (also for empty rows,
        as pytorch/examples does for WikiText's blank lines)."""
        col = self.text_column_of(ds, split)
        import pyarrow as pa

        tok = self.tokenizer
        token_lists = pa.list_(pa.string())

        def fn(batch: pa.Table) -> pa.Table:
            # Python lists for TOKENIZE_ROWS rows at a time, turned into Arrow at once: a large
            # map batch (large record batches in the cache file) without a batch's worth of live
            # Python lists, which made the garbage collector's full passes dominate the map
            texts, parts = batch.column(col), []
            for start in range(0, len(texts), TOKENIZE_ROWS):
                rows = texts.slice(start, TOKENIZE_ROWS).to_pylist()
                parts.append(pa.array([t + [EOS] for t in tok.tokenize_batch([x or "" for x in rows])],
                                      type=token_lists))
            tokens = pa.concat_arrays(parts) if parts else pa.array([], type=token_lists)
            if "tokens" in batch.column_names:
                batch = batch.drop_columns(["tokens"])
            return batch.append_column("tokens", tokens)

        return self._map(ds, fn, f"tokenize {split}", tok.fingerprint(), col, "eos", arrow=True)

    def encode_split(self, ds, split: str) -> LMSplit:
        import pyarrow as pa

        vocab = self.vocab

        def fn(batch: pa.Table) -> pa.Table:
            return pa.table({"ids": vocab.encode_arrow(batch.column("tokens"))})

        # only the id stream is needed from here on; dropping the text keeps the cache file small
        ds = self._map(ds, fn, f"encode {split}", fingerprint(*vocab.itos), remove=list(ds.column_names),
                       arrow=True)
        data = LMSplit(ds)
        if split == "train":
            self._cluster_share = self._cluster_shares(data.stream)
        return data

    def setup(self, splits: dict, run_dir) -> dict:
        data = super().setup(splits, run_dir)
        if self.recipe.model.softmax == "adaptive" and not self._cutoffs() and dist.is_main():
            print(f"note: [model] softmax_cutoffs {self.recipe.model.softmax_cutoffs} are all at or above the "
                  f"vocabulary size {len(self.vocab)}; the LM uses a full softmax", file=sys.stderr)
        return data

    def _cluster_shares(self, stream: np.ndarray) -> list[float] | None:
        if self.recipe.model.softmax != "adaptive" or not len(stream):
            return None
        cutoffs = self._cutoffs()
        if not cutoffs:
            return []
        # token counts per id, chunk by chunk (bounded memory), then summed per cluster
        freq = np.zeros(len(self.vocab), dtype=np.int64)
        for chunk in iter_stream(stream):
            freq += np.bincount(chunk, minlength=len(self.vocab))[: len(self.vocab)]
        bounds = [*cutoffs, len(self.vocab)]
        return [float(freq[a:b].sum()) / len(stream) for a, b in pairwise(bounds)]

    def _cutoffs(self) -> list[int]:
        """The adaptive-softmax cutoffs (checked by the recipe) that fall inside this vocabulary."""
        return [c for c in self.recipe.model.softmax_cutoffs if c < len(self.vocab)]

    # ------------------------------------------------------------------ model
    def build_net(self) -> LMNet:
        m = self.recipe.model
        embedder = self.make_embedder()
        encoder = self.make_encoder(embedder.output_dim, joint=False)
        projection = m.projection_size
        if m.tie_weights and not projection and m.hidden_size != m.embedding_dim:
            projection = m.embedding_dim  # project down so the output matrix can be the embedding
        width = projection or m.hidden_size
        tied = embedder.words if m.tie_weights and width == m.embedding_dim else None
        if m.softmax == "adaptive" and self._cutoffs():  # no cutoff inside the vocabulary: a full softmax
            head = AdaptiveSoftmax(encoder.hidden_size, len(self.vocab), self._cutoffs(), self.output_dropout,
                                   projection, tied_to=tied)
            head.cluster_share = self._cluster_share
        else:
            head = LMHead(encoder.hidden_size, len(self.vocab), self.output_dropout, projection, tied_to=tied)
        return LMNet(embedder, encoder, head)

    @staticmethod
    def token_nll(net: Net, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood [B, T] of ``targets`` given encoder ``states`` [B, T, H]."""
        return net.head.nll(states, targets)  # AdaptiveSoftmax or LMHead (fused linear + cross-entropy)

    @staticmethod
    def log_probs(net: Net, states: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the vocabulary [..., V] (generation)."""
        if isinstance(net.head, AdaptiveSoftmax):
            return net.head.log_probs(states)
        return net.head(states).float().log_softmax(-1)

    # ------------------------------------------------------------------ training
    @staticmethod
    def _check_length(data: LMSplit, batch_size: int, world: int) -> None:
        min_tokens = 2 * batch_size * world + 1
        if data.num_tokens < min_tokens:
            fix = "lower [train] batch_size or add training text" if batch_size > 1 else "add training text"
            raise SeqtextError(f"language model training data has {data.num_tokens} tokens, fewer than the "
                               f"{min_tokens} that train.batch_size = {batch_size} needs; {fix}")

    def _windows(self, data: LMSplit, batch_size: int, epoch: int, rank: int, world: int,
                 random_bptt: bool | None = None):
        t = self.recipe.train
        self._check_length(data, batch_size, world)
        rnd = t.random_bptt if random_bptt is None else random_bptt
        return lm_stream_batches(data.stream, batch_size, t.bptt, rnd, seed=t.seed * 1000 + epoch,
                                 rank=rank, world=world)

    @staticmethod
    def _batch(x: torch.Tensor, y: torch.Tensor | None = None) -> Batch:
        B, L = x.shape
        return Batch(x, torch.full((B,), L, dtype=torch.long), torch.ones(B, L, dtype=torch.bool), y)

    def train_batches(self, data: LMSplit, epoch: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        # lm_stream_batches already gives each rank its own columns of the stream
        for x, y in self._windows(data, self.recipe.train.batch_size, epoch, rank, world):
            yield self._batch(x, y)

    def steps_per_epoch(self, data: LMSplit, world: int = 1) -> int:
        """Windows per epoch. With random BPTT the count varies a little between epochs (the
        lengths are drawn per epoch), so this is the mean over the first planned epochs (at most
        ``SIZE_EPOCHS``: a time-budgeted run may plan 100000): the LR schedule then ends where
        training does. Only the lengths are drawn; no data is read."""
        t = self.recipe.train
        self._check_length(data, t.batch_size, world)
        n = (data.num_tokens - 1) // (t.batch_size * world)
        seeds = [t.seed * 1000 + e for e in range(min(t.epochs, self.SIZE_EPOCHS) if t.random_bptt else 1)]
        counts = [sum(1 for _ in lm_window_lengths(n, t.bptt, t.random_bptt, seed)) for seed in seeds]
        return max(1, round(sum(counts) / len(counts)))

    def loss(self, net: Net, batch: Batch) -> torch.Tensor:
        """Mean next-token NLL of the window (plus, for a biLM, the previous-token NLL of the
        backward stack, averaged). The forward state is carried to the next window."""
        state = self._carry
        if state is not None and state[0][0].size(1) != batch.ids.size(0):
            state = None  # a different number of streams (should not happen within an epoch)
        (f, b), new_state = net.encode(batch, state, outputs="directions")
        self._carry = detach_state(new_state)
        loss = self.token_nll(net, f, batch.targets).mean() + self.activation_penalty(f)
        if b is not None and batch.ids.size(1) > 1:
            # the backward state at t has read tokens t..end of the window and predicts token t-1
            backward = self.token_nll(net, b[:, 1:], batch.ids[:, :-1]).mean() + self.activation_penalty(b)
            loss = 0.5 * (loss + backward)
        return loss

    def activation_penalty(self, states: torch.Tensor) -> torch.Tensor | float:
        """AR + TAR (Merity et al. 2017) on the top layer's outputs [B, T, H] (training only:
        dev and test losses are the plain NLL). AR keeps activations small; TAR keeps them from
        jumping between steps. Both act on the outputs before the output dropout; AWD-LSTM applies
        AR after it, which in expectation is its alpha / (1 - output dropout) here."""
        m = self.recipe.model
        h = states.float()
        penalty = 0.0
        if m.activation_reg > 0:
            penalty = penalty + m.activation_reg * h.pow(2).mean()
        if m.temporal_activation_reg > 0 and h.size(1) > 1:
            penalty = penalty + m.temporal_activation_reg * (h[:, 1:] - h[:, :-1]).pow(2).mean()
        return penalty

    def reset_epoch(self) -> None:
        self._carry = None

    def train_state(self) -> dict[str, torch.Tensor]:
        if self._carry is None:
            return {}
        out = {}
        for i, (h, c) in enumerate(self._carry):
            out[f"carry.{i}.h"], out[f"carry.{i}.c"] = h, c
        return out

    def load_train_state(self, tensors: dict[str, torch.Tensor]) -> None:
        layers = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("carry.")})
        self._carry = [(tensors[f"carry.{i}.h"], tensors[f"carry.{i}.c"]) for i in layers] or None

    # ------------------------------------------------------------------ evaluation
    def dev_metrics(self, net: Net, data: LMSplit, device) -> dict:
        # more parallel streams score dev faster (wider matmuls) and lose only a little context
        # at the stream starts; the reported dev/test scores use evaluate's default of 10
        return self.evaluate(net, data, device, batch_size=32)

    @torch.no_grad()
    def evaluate(self, net: Net, data: LMSplit, device, batch_size: int | None = None, cache_size: int = 0,
                 cache_theta: float | None = None, cache_lambda: float | None = None) -> dict:
        """Perplexity over the whole split with the state carried across windows.

        The stream is cut into ``batch_size`` (default 10) parallel columns as in training;
        the few tokens after the last full column are scored too, continuing the last
        column's state, so every token but the first is predicted exactly once.

        A bidirectional LM also reports ``backward_perplexity``: its backward stack predicts each
        token from the ones after it, reading every ``[train] bptt`` window from the window's end
        (no state can flow backwards across windows), so it sees less context than the forward
        stack, its figure depends on ``bptt``, and each window's last token and the tail are not
        scored backwards. ``perplexity`` is the forward stack's, exact at any ``bptt``.

        With ``cache_size`` > 0, ``cache_theta`` and ``cache_lambda``, the same pass also scores
        the model with a continuous cache (:mod:`seqtext.nn.cache`) and adds ``cache_perplexity``,
        ``cache_loss`` and ``cache`` (the settings); ``perplexity`` stays the model's own.
        """
        use_cache = cache_size > 0
        if use_cache:
            if cache_theta is None or cache_lambda is None:
                raise SeqtextError("a cache needs cache_theta and cache_lambda (seqtext evaluate picks them on "
                                   "the dev split when not given)")
            check_cache_theta(cache_theta)
            check_cache_lambda(cache_lambda)
        scored = self._score(net, data, device, batch_size, cache_size, [cache_theta] if use_cache else [])
        loss = scored["fwd_sum"] / scored["fwd_n"]
        out = {"perplexity": math.exp(loss), "loss": loss, "tokens": scored["fwd_n"]}
        if scored["bwd_n"]:
            out["backward_perplexity"] = math.exp(scored["bwd_sum"] / scored["bwd_n"])
            out["backward_loss"] = scored["bwd_sum"] / scored["bwd_n"]
        if use_cache:
            cache_loss = _cache_loss(scored, 0, cache_lambda)
            out.update(cache_perplexity=math.exp(cache_loss), cache_loss=cache_loss,
                       cache={"size": cache_size, "theta": cache_theta, "lambda": cache_lambda})
        return out

    @torch.no_grad()
    def tune_cache(self, net: Net, data: LMSplit, device, cache_size: int, thetas=CACHE_THETAS,
                   lambdas=CACHE_LAMBDAS, batch_size: int | None = None) -> dict:
        """Choose the continuous cache's θ and λ on ``data`` (the dev split) by grid search: one
        pass scores every θ, then every λ is a cheap re-mix (give one value in ``thetas`` or
        ``lambdas`` to choose the other for it). Returns ``theta``, ``lambda``, ``perplexity``
        (with the cache, on ``data``) and ``perplexity_without``."""
        for theta in thetas:
            check_cache_theta(theta)
        for lam in lambdas:
            check_cache_lambda(lam)
        scored = self._score(net, data, device, batch_size, cache_size, list(thetas))
        losses = {(th, lam): _cache_loss(scored, i, lam) for i, th in enumerate(thetas) for lam in lambdas}
        (theta, lam), best = min(losses.items(), key=lambda kv: kv[1])
        return {"theta": theta, "lambda": lam, "perplexity": math.exp(best),
                "perplexity_without": math.exp(scored["fwd_sum"] / scored["fwd_n"])}

    def _score(self, net: Net, data: LMSplit, device, batch_size: int | None, cache_size: int,
               thetas: list[float]) -> dict:
        """One pass over the split: summed forward/backward NLL and, with a cache, per-token
        model log-probabilities and cache probabilities for each θ."""
        net.eval()
        n_tokens = data.num_tokens
        if n_tokens < 2:
            raise SeqtextError(f"evaluation data has {n_tokens} token(s); need at least 2")
        B = max(1, min(batch_size or self.eval_batch_size, (n_tokens - 1) // 2))
        bptt = self.recipe.train.bptt
        out = {"fwd_sum": 0.0, "fwd_n": 0, "bwd_sum": 0.0, "bwd_n": 0, "log_p": [], "cache_p": [], "available": []}
        cache = ContinuousCache(cache_size, thetas) if cache_size > 0 else None

        def score_forward(f: torch.Tensor, targets: torch.Tensor) -> None:
            nll = self.token_nll(net, f, targets).double()
            out["fwd_sum"] += float(nll.sum())
            out["fwd_n"] += targets.numel()
            if cache is not None:
                probs, available = cache.target_probs(f, targets)
                out["log_p"].append((-nll).flatten().cpu())
                out["cache_p"].append(probs.flatten(1).double().cpu())
                out["available"].append(available.flatten().cpu())

        state = None
        for x, y in self._eval_windows(data, B, bptt):
            batch = self._batch(x, y).to(device)
            (f, b), state = net.encode(batch, state, outputs="directions")
            score_forward(f, batch.targets)
            if b is not None and x.size(1) > 1:
                out["bwd_sum"] += float(self.token_nll(net, b[:, 1:], batch.ids[:, :-1]).double().sum())
                out["bwd_n"] += batch.ids[:, 1:].numel()
        n = (n_tokens - 1) // B
        if n_tokens - n * B > 1:  # the tail after the last full column continues that column
            last = [(h[:, -1:].contiguous(), c[:, -1:].contiguous()) for h, c in state]
            t = data.window(np.array([n * B]), n_tokens - n * B)
            batch = self._batch(t[:, :-1], t[:, 1:]).to(device)
            (f, _), _ = net.encode(batch, last, outputs="directions")
            if cache is not None:
                cache.keep_streams([B - 1])
            score_forward(f, batch.targets)
        if cache is not None:
            out["log_p"] = torch.cat(out["log_p"])
            out["cache_p"] = torch.cat(out["cache_p"], 1)
            out["available"] = torch.cat(out["available"])
        return out

    @staticmethod
    def _eval_windows(data: LMSplit, columns: int, bptt: int):
        """Every position of every column, in windows of ``bptt``, read lazily from the stream
        (the training generator skips each column's last position, harmless for training but
        not for an exact perplexity)."""
        n = (data.num_tokens - 1) // columns
        starts = np.arange(columns) * n
        for i in range(0, n, bptt):
            window = data.window(starts + i, min(bptt, n - i) + 1)
            yield window[:, :-1], window[:, 1:]

    # ------------------------------------------------------------------ generation
    def _forward_lm(self, net: Net, ids: torch.Tensor, state: State | None):
        """Run only the forward stack (eval mode: no dropout) over ids [B, T]; returns the top
        states and the new state. A biLM's backward stack is of no use for generation."""
        h = net.embedder(ids)
        state = state or [None] * len(net.encoder.fwd)
        new_state = []
        for i, lstm in enumerate(net.encoder.fwd):
            if ids.size(1) == 1 and state[i] is not None:
                # One step: the fused LSTM cell. nn.LSTM's oneDNN path re-prepares its weights on
                # every call, ~10× slower than the step itself at batch 1 (9 ms vs 0.8 ms at 400 units).
                (h0, c0) = state[i]
                hx, cx = torch.lstm_cell(h[:, 0], (h0[0], c0[0]), lstm.weight_ih_l0, lstm.weight_hh_l0,
                                         lstm.bias_ih_l0, lstm.bias_hh_l0)
                h, s = hx.unsqueeze(1), (hx.unsqueeze(0), cx.unsqueeze(0))
            else:
                h, s = lstm(h, state[i])
            new_state.append(s)
            if i < len(net.encoder.fwd) - 1:
                h = net.encoder.drop(h)
        return h, new_state

    def prompt_ids(self, prompt: str) -> list[int]:
        """``<eos>`` (start of a line, as after every training line) + the prompt's ids; unknown
        words become ``<unk>``, prompt line breaks become ``<eos>``."""
        ids = [self.vocab.eos_id]
        lines = prompt.split("\n")
        for i, line in enumerate(lines):
            ids += self.vocab.encode(self.tokenizer.tokenize(line))
            if i < len(lines) - 1:
                ids.append(self.vocab.eos_id)
        return ids

    @torch.no_grad()
    def generate(self, net: Net, prompt: str, device, opts: SamplingOptions | None = None,
                 on_token: Callable[[int, str], Any] | None = None) -> list[dict]:
        """Continue ``prompt`` ``opts.num_samples`` times (:class:`~seqtext.generate.SamplingOptions`;
        default: its defaults).

        The prompt goes through the LSTM once; each sample then starts from that state and
        feeds back one token at a time. ``on_token(sample_index, text_piece)`` is called as
        each token is chosen (the CLI prints it at once). Returns one dict per sample:
        ``text`` (detokenized continuation), ``tokens``, ``seconds``, ``tokens_per_second``.
        """
        opts = opts or SamplingOptions()
        opts.validate()
        net.eval()
        ids = self.prompt_ids(prompt)
        banned = banned_ids(self.vocab, opts.allow_unk)
        generator = make_generator(opts.seed)
        head = net.head
        # pad/bos/unk sit in the head (ids < 4), which the level-by-level sampler requires
        fast = is_plain(opts) and isinstance(head, AdaptiveSoftmax) and max(banned) < head.cutoffs[0]

        def pick(h: torch.Tensor) -> int:
            if fast:  # exact, and reads only the chosen cluster's weights (batch 1 is memory-bound)
                return head.sample(h[0, -1], banned, generator)
            logits = self.log_probs(net, h[0, -1]).float().cpu()
            logits[banned] = float("-inf")
            return choose(logits, opts, generator)

        def step(token: int, state: State):
            return self._forward_lm(net, torch.tensor([[token]], device=device), state)

        results = []
        threads = torch.get_num_threads()
        if device is None or torch.device(device).type == "cpu":
            # batch-1 steps are tiny: extra intra-op threads only add synchronisation, which on a
            # busy machine made generation 100× slower in our measurements
            torch.set_num_threads(1)
        try:
            # the prompt runs through the LSTM in chunks with carried state: a huge prompt needs
            # bounded activation memory, and the final state is the same as in one pass
            hidden, prompt_state = None, None
            for start in range(0, len(ids), PROMPT_CHUNK):
                chunk = torch.tensor([ids[start: start + PROMPT_CHUNK]], device=device)
                hidden, prompt_state = self._forward_lm(net, chunk, prompt_state)
            for i in range(opts.num_samples):
                results.append(self._sample_one(i, ids, hidden, prompt_state, step, pick, opts.max_tokens,
                                                on_token, prompt[-1:].isspace()))
        finally:
            torch.set_num_threads(threads)
        return results

    def _sample_one(self, i: int, ids: list[int], hidden: torch.Tensor, state: State, step, pick,
                    max_tokens: int, on_token, typed_space: bool = False) -> dict:
        """One continuation from the shared prompt state; streams pieces to ``on_token``.
        ``typed_space``: the prompt ends with whitespace, so the first piece adds none."""
        prompt = [self.vocab.itos[t] for t in ids]
        detok = StreamDetokenizer(self.tokenizer, line_start=prompt[-1] == EOS or typed_space, prev=prompt[-1],
                                  quote_open=leaves_quote_open(prompt))
        pieces: list[str] = []

        def emit(token_id: int) -> None:
            piece = detok.piece(self.vocab.itos[token_id])
            pieces.append(piece)
            if on_token is not None:
                on_token(i, piece)

        start_time = time.perf_counter()
        tokens = sample_tokens(step, pick, hidden, state, max_tokens, emit)
        seconds = time.perf_counter() - start_time
        return {"text": "".join(pieces), "tokens": self.vocab.decode(tokens), "seconds": seconds,
                "tokens_per_second": len(tokens) / max(seconds, 1e-9)}
