"""Sampling text from a language model: temperature, top-k, nucleus (top-p) and greedy decoding.

The model side (running the prompt once, feeding back one token at a time while carrying the
LSTM state) lives in :meth:`seqtext.tasks.lm.LMTask.generate`; this module holds the parts
that do not depend on the network: option checking, logit filtering, the sampling loop and
streaming detokenization. Sampling uses its own ``torch.Generator``, so the same seed gives
the same text (on the same machine and torch build), whatever else uses the global RNG.

Special tokens: ``<pad>`` and ``<bos>`` are never sampled. ``<unk>`` is not sampled either
unless ``allow_unk`` is set: WikiText/PTB contain many ``<unk>`` tokens, and a model happily
produces them, which reads badly. ``<eos>`` is allowed and rendered as a line break.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .data.vocab import EOS, Vocab
from .errors import SeqtextError

DEFAULT_MODEL_DIR = "runs/wikitext2_lm"  # output dir of recipes/wikitext2_lm.toml
DEFAULT_RECIPE = "recipes/wikitext2_lm.toml"


def is_integer(x) -> bool:
    """An integer (NumPy's too), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A real number (NumPy's too), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass
class SamplingOptions:
    """How to pick each next token.

    Args:
        max_tokens: tokens to generate per sample (≥ 0; 0 just encodes the prompt).
        temperature: divide logits by this (> 0). 0.7–0.9 gives more fluent text, 1.0 samples
            the model's own distribution, > 1 is more random.
        top_k: keep only the k most likely tokens (0 = off; 40 is a common choice).
        top_p: nucleus sampling, keep the smallest set of tokens whose probability sums to
            at least p (in (0, 1]; 1 = off; 0.9 is a common choice).
        greedy: always take the most likely token (ignores temperature/top-k/top-p).
        num_samples: independent continuations of the same prompt (≥ 1).
        seed: seed for the sampling generator; None = fresh randomness each call.
        allow_unk: let ``<unk>`` be sampled (default off).
    """

    max_tokens: int = 50
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    num_samples: int = 1
    seed: int | None = None
    allow_unk: bool = False

    def validate(self, cli: bool = False) -> None:
        """Raise SeqtextError on the first bad option, named as a keyword argument (``top_k``)
        or, with ``cli``, as the command-line flag (``--top-k``)."""
        def name(field: str) -> str:
            return "--" + field.replace("_", "-") if cli else field

        for flag in ("greedy", "allow_unk"):  # "no" would count as true
            if not isinstance(getattr(self, flag), bool):
                raise SeqtextError(f"{name(flag)}: expected True or False, got {getattr(self, flag)!r}")
        if not is_integer(self.max_tokens) or self.max_tokens < 0:
            raise SeqtextError(f"{name('max_tokens')}: expected an integer ≥ 0, got {self.max_tokens!r}")
        if not self.greedy and not (is_number(self.temperature) and 0 < self.temperature < math.inf):
            raise SeqtextError(f"{name('temperature')}: expected a finite value > 0 (or use {name('greedy')}), "
                               f"got {self.temperature!r}")
        if not is_integer(self.top_k) or self.top_k < 0:
            raise SeqtextError(f"{name('top_k')}: expected an integer ≥ 0 (0 = off), got {self.top_k!r}")
        if not (is_number(self.top_p) and 0 < self.top_p <= 1):
            raise SeqtextError(f"{name('top_p')}: expected a value in (0, 1], got {self.top_p!r}")
        if not is_integer(self.num_samples) or self.num_samples < 1:
            raise SeqtextError(f"{name('num_samples')}: expected an integer ≥ 1, got {self.num_samples!r}")
        if self.seed is not None and not (is_integer(self.seed) and -2**63 <= self.seed < 2**64):
            raise SeqtextError(f"{name('seed')}: expected an integer in [-2^63, 2^64), got {self.seed!r}")
        # NumPy scalars become Python numbers, so what is reported and seeded is plain
        self.max_tokens, self.top_k, self.num_samples = int(self.max_tokens), int(self.top_k), int(self.num_samples)
        self.top_p = float(self.top_p)
        if is_number(self.temperature):  # greedy decoding ignores it, whatever it holds
            self.temperature = float(self.temperature)
        self.seed = None if self.seed is None else int(self.seed)


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def banned_ids(vocab: Vocab, allow_unk: bool = False) -> list[int]:
    """Ids never to sample: padding and begin-of-sequence (and <unk> unless allowed)."""
    banned = [vocab.pad_id, vocab.bos_id]
    if not allow_unk:
        banned.append(vocab.unk_id)
    return banned


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set every logit outside the top-k / the top-p nucleus to -inf (logits: [V] or [N, V]).

    Nucleus: tokens sorted by probability; keep the shortest prefix whose cumulative
    probability reaches ``top_p`` (the most likely token is always kept).
    """
    out = logits.clone()
    if top_k and top_k < out.size(-1):
        kth = torch.topk(out, top_k, dim=-1)
        keep = torch.zeros_like(out, dtype=torch.bool).scatter_(-1, kth.indices, True)
        out = out.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = out.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop_sorted = before >= top_p  # enough mass already: this token is outside the nucleus
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def categorical(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one index from unnormalised non-negative weights [V] (inverse CDF; exact, and much
    faster than ``torch.multinomial`` over a 33k vocabulary on CPU)."""
    cdf = probs.double().cumsum(0)
    if not 0 < float(cdf[-1]) < math.inf:
        raise SeqtextError(f"cannot sample: the token weights sum to {float(cdf[-1])}")
    u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    return int(torch.searchsorted(cdf, u, right=True).clamp(max=len(cdf) - 1))


def choose(logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator) -> int:
    """Pick one token id from logits or log-probabilities [V] (CPU)."""
    if opts.greedy:
        return int(logits.argmax())
    # shifted so the best is 0 before dividing: a tiny temperature sends the others to -inf, not
    # every logit (-inf - -inf would be NaN); double keeps moderate ones from underflowing
    logits = logits.double()
    scaled = filter_logits((logits - logits.max()) / opts.temperature, opts.top_k, opts.top_p)
    return categorical(scaled.exp(), generator)


def is_plain(opts: SamplingOptions) -> bool:
    """Sampling from the model's own distribution (no temperature, top-k, top-p or greedy)?
    Then a factorised (adaptive) softmax can be sampled level by level, exactly."""
    return not opts.greedy and opts.temperature == 1.0 and not opts.top_k and opts.top_p >= 1.0


def sample_tokens(step: Callable[[int, Any], tuple[torch.Tensor, Any]], pick: Callable[[torch.Tensor], int],
                  hidden: torch.Tensor, state: Any, max_tokens: int,
                  emit: Callable[[int], Any] | None = None) -> list[int]:
    """The sampling loop: pick a token from the current top LSTM output, feed it back, repeat.

    Args:
        step: ``step(token_id, state) -> (hidden, new_state)``: runs the LSTM one token further.
        pick: ``pick(hidden) -> token_id``: the output layer plus the sampling rule.
        hidden, state: top output and LSTM state after the prompt (never modified in place, so
            several samples can start from them).
        max_tokens: how many tokens to produce.
        emit: called with each chosen id as soon as it is chosen (streaming).
    """
    out: list[int] = []
    for n in range(max_tokens):
        token = pick(hidden)
        out.append(token)
        if emit is not None:
            emit(token)
        if n + 1 < max_tokens:  # no model step for a token nobody will read
            hidden, state = step(token, state)
    return out


_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "'s", "n't", "'re", "'ve", "'ll", "'d", "'m",
                    "...", "'"}
_NO_SPACE_AFTER = {"(", "[", "{", "$", "``"}
_GLUE = {"@-@": "-", "@,@": ",", "@.@": "."}  # WikiText splits 1,000 / 3.5 / well-known like this


def leaves_quote_open(tokens: list[str]) -> bool:
    """Whether the last line of ``tokens`` has opened a ``"`` that it does not close."""
    line = tokens[len(tokens) - tokens[::-1].index(EOS):] if EOS in tokens else tokens
    return line.count('"') % 2 == 1


class StreamDetokenizer:
    """Turns tokens into text piece by piece, so generation can be printed as it happens.

    Word-level tokenizers (whitespace, regex, spacy): tokens joined by spaces, except before
    closing punctuation / after opening brackets and inside a pair of ``"``; WikiText's
    ``@-@``-style splits are glued back, and so is a lone ``-`` from tokenizers that split
    hyphenated words (regex, spacy). Sentencepiece: pieces decoded with their word-boundary
    marks. ``<eos>`` → newline.
    """

    def __init__(self, tokenizer, line_start: bool = True, prev: str = "", quote_open: bool = False):
        """``line_start``: the text so far ends a line (or with typed whitespace), so the first
        piece gets no space; ``prev``: the token before the first piece (the prompt's last);
        ``quote_open``: the text so far has opened a ``"`` on this line that is not closed."""
        self.tokenizer = tokenizer
        self.sentencepiece = hasattr(tokenizer, "sp")
        self.glue_hyphens = getattr(tokenizer, "splits_hyphens", False)
        self.line_start = line_start
        self.prev = prev
        self.quote_open = quote_open
        # what the prompt's last token asks of the first piece: nothing after an opening quote,
        # a WikiText split or a split hyphen
        self.glue_next = prev in _GLUE or (prev == '"' and quote_open) or (
            prev == "-" and self.glue_hyphens)

    def piece(self, token: str) -> str:
        if token == EOS:
            self.line_start, self.glue_next, self.prev, self.quote_open = True, False, token, False
            return "\n"
        if self.sentencepiece:
            text = self.tokenizer.detokenize([token])
            space = token.startswith("\u2581") and not self.line_start
            out = (" " if space else "") + text
        elif token in _GLUE or (token == "-" and self.glue_hyphens and self.prev[-1:].isalnum()):
            out, self.glue_next = _GLUE.get(token, token), True
        else:
            closing_quote = token == '"' and self.quote_open
            space = not (self.line_start or self.glue_next or token in _NO_SPACE_BEFORE or closing_quote
                         or self.prev in _NO_SPACE_AFTER)
            out = (" " if space else "") + token
            self.glue_next = token == '"' and not closing_quote  # nothing between an opening quote and its word
            self.quote_open ^= token == '"'
        self.line_start, self.prev = False, token
        return out

    def text(self, tokens: list[str]) -> str:
        return "".join(self.piece(t) for t in tokens)
