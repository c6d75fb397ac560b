"""Character-level word encoder: a CNN over each word's characters, max-pooled (Ma & Hovy, 2016)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv1d_as_matmul(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv1d`` (stride 1, no padding) of one sequence ``x`` [L, C_in] with ``weight``
    [C_out, C_in, k], as one matrix product over its windows: [L - k + 1, C_out].

    Why not ``F.conv1d``: on CPU, oneDNN's convolution costs far more for an input length it has
    not seen, and the char CNN's flattened length changes with every batch (2.78 vs 0.59 ms
    forward + backward: ``python benchmarks/lstm_kernels.py --only chars``)."""
    k = weight.size(2)
    n = x.size(0) - k + 1
    windows = torch.cat([x[j: j + n] for j in range(k)], 1)  # [n, k * C_in], window o = x[o : o + k]
    return F.linear(windows, weight.permute(0, 2, 1).reshape(weight.size(0), -1), bias)


class CharCNN(nn.Module):
    """Encode words given as padded character-id rows into ``output_dim``-sized vectors.

    Args:
        num_chars: character vocabulary size (including padding and unknown ids).
        char_dim: character embedding size.
        filters: number of convolution filters, which is the output size.
        kernel_size: characters seen by each filter.
        dropout: dropout on the character embeddings (training only).
        padding_idx: character id used for padding.

    Padding never changes a word's vector: padded positions are zeroed before the
    convolution and excluded from the max. A word with no characters encodes to zeros.
    """

    def __init__(self, num_chars: int, char_dim: int = 30, filters: int = 50, kernel_size: int = 3,
                 dropout: float = 0.0, padding_idx: int = 0):
        super().__init__()
        self.padding_idx = padding_idx
        self.output_dim = filters
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        # Zero-pad so there is one output per character and the character mask applies as
        # is; done by hand because Conv1d's padding="same" warns for even kernel sizes.
        self._pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv = nn.Conv1d(char_dim, filters, kernel_size)
        self.dedup = True  # encode each distinct word of a batch once (see forward); False: every row
        self.window_table = True  # convolve by summing table rows (see encode); False: as with dropout

    def forward(self, char_ids: Tensor) -> Tensor:
        """Word vectors ``[N, filters]``.

        Args:
            char_ids: long ``[N, L]`` character ids, each row padded with ``padding_idx``.

        A batch repeats many words (a 1,280-token CoNLL batch holds about half as many distinct
        rows as tokens: ``python benchmarks/speedups.py --compare dedup``), so each distinct row is
        encoded once and copied to its occurrences; the gradient of the copy sums over them. Same
        values, and gradients up to summation order. Not with character dropout in training, where
        each occurrence draws its own mask.
        """
        if self.dedup and char_ids.size(0) > 1 and not (self.training and self.dropout.p > 0):
            distinct, inverse = unique_rows(char_ids)
            if distinct.size(0) < char_ids.size(0):
                return self.encode(distinct).index_select(0, inverse)
        return self.encode(char_ids)

    def encode(self, char_ids: Tensor) -> Tensor:
        """Word vectors ``[N, filters]`` of every row of ``char_ids`` ``[N, L]``, duplicates included.

        Identical values to convolving each zero-padded row and taking the max over its real
        characters, and the same gradients up to summation order (tested). Without character
        dropout the convolution is a sum of table rows (:meth:`_window_table`), with it a matrix
        product over each word's windows (:meth:`_encode_dropped`).
        """
        n, length = char_ids.shape
        mask = char_ids != self.padding_idx  # [N, L], left-aligned
        if n == 0 or length == 0 or not bool(mask.any()):
            return self.conv.weight.new_zeros(n, self.output_dim)
        lengths = mask.sum(1)
        if not self.window_table or (self.training and self.dropout.p > 0):
            pooled = self._encode_dropped(char_ids, mask, lengths)
        else:
            kernel = self.conv.weight.size(2)
            table = self._window_table()
            # the ids each real character's window covers (the pad id outside its word), offset
            # into the table's block for that window position
            padded = F.pad(char_ids, self._pad, value=self.padding_idx)  # [N, L + kernel - 1]
            offsets = torch.arange(kernel, device=char_ids.device) * self.embedding.num_embeddings
            windows = padded.unfold(1, kernel, 1)[mask] + offsets  # [characters, kernel]
            pooled = _WindowMax.apply(table, self.conv.bias, windows, lengths)
        # Empty words encode to zeros.
        return torch.where((lengths > 0).unsqueeze(1), pooled, pooled.new_zeros(()))

    def _window_table(self) -> Tensor:
        """What each character contributes to the convolution at each window position:
        ``[kernel × num_chars, filters]``, row ``j × num_chars + c`` = embedding(c) @ weight[:, :, j].

        The embedding is a lookup and the convolution linear, so a window's output is the sum of
        its characters' rows (plus the bias): ``kernel`` gathers of ``filters`` values per character
        instead of a ``kernel × char_dim``-deep product, and the product is taken once per
        character *type* (the vocabulary) instead of once per character of the batch. The padding
        id's rows are zero, as a zero-padded window would see them, whatever its embedding holds."""
        emb = self.embedding.weight
        real = torch.ones(emb.size(0), 1, dtype=emb.dtype, device=emb.device)
        real[self.padding_idx] = 0
        with torch.autocast(emb.device.type, enabled=False):  # a tiny product: keep it in fp32
            table = torch.einsum("cd,fdj->jcf", emb * real, self.conv.weight)
        return table.reshape(-1, self.output_dim)

    def _encode_dropped(self, char_ids: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """Max-pooled convolution, with dropout on each character's embedding. The words'
        characters are laid out as one sequence with zero gaps between words and convolved once
        (:func:`conv1d_as_matmul`), so the work follows the real character count instead of N ×
        the longest word; each word's max is then taken over its own positions."""
        length = char_ids.size(1)
        left, right = self._pad
        gap = max(left, right, 1)  # zeros between words: no window reaches a neighbour's characters
        spans = lengths + gap
        starts = left + torch.cumsum(spans, 0) - spans  # where each word begins in the sequence
        total = int(starts[-1] + lengths[-1]) + right
        pos = (starts.unsqueeze(1) + torch.arange(length, device=char_ids.device)).masked_select(mask)
        seq = char_ids.new_full((total,), self.padding_idx)
        seq[pos] = char_ids[mask]
        # Zero padded embeddings explicitly (as a zero-padded row would look to the conv).
        emb = self.dropout(self.embedding(seq)) * (seq != self.padding_idx).unsqueeze(1)
        feats = conv1d_as_matmul(emb, self.conv.weight, self.conv.bias)  # [total - kernel + 1, filters]
        # output o covers seq[o : o + kernel], so the window centred on position p is o = p - left
        per_char = feats.index_select(0, pos - left)  # [characters, filters]
        return torch.segment_reduce(per_char, "max", lengths=lengths, unsafe=True)


class _WindowMax(torch.autograd.Function):
    """Per word, the max over its characters of the sum of their windows' table rows plus the
    bias: ``(table [R, F], bias [F], windows [characters, kernel] row ids, lengths [N]) → [N, F]``
    (characters grouped by word, ``lengths[i]`` of them for word i; an empty word's row is unused).

    Backward routes each word's gradient to the characters that hold its max (split evenly
    between ties, as ``segment_reduce`` does) and adds it into the table rows of their windows
    with ``index_add_``, in place of autograd's formulas for the same ops: a gather's dense
    scatter, and ``segment_reduce``'s backward, 0.55 ms of a 1,280-token training step in
    ``benchmarks/results/profile_conll2003_ner_bt1280_1thread.json`` (``python
    benchmarks/lstm_kernels.py --only chars`` times the whole encoding both ways)."""

    @staticmethod
    def forward(ctx, table: Tensor, bias: Tensor, windows: Tensor, lengths: Tensor) -> Tensor:
        columns = windows.t().contiguous()  # [kernel, characters]
        per_char = table.index_select(0, columns[0])
        for column in columns[1:]:
            per_char += table.index_select(0, column)
        per_char += bias
        pooled = torch.segment_reduce(per_char, "max", lengths=lengths, unsafe=True)
        word = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths,
                                       output_size=per_char.size(0))  # each character's word
        ctx.save_for_backward(columns, word, per_char, pooled)
        ctx.table_rows = table.size(0)
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor):
        columns, word, per_char, pooled = ctx.saved_tensors
        hit = per_char == pooled.index_select(0, word)  # [characters, F]: holds its word's max
        ties = torch.zeros_like(pooled).index_add_(0, word, hit.to(pooled.dtype))
        grad_char = hit * (grad / ties).index_select(0, word)
        grad_table = grad_char.new_zeros(ctx.table_rows, grad_char.size(1))
        for column in columns:
            grad_table.index_add_(0, column, grad_char)
        return grad_table, grad_char.sum(0), None, None


def unique_rows(ids: Tensor, numpy: bool | None = None) -> tuple[Tensor, Tensor]:
    """``(distinct rows of ids [N, L], inverse [N])`` with ``distinct[inverse] == ids``.

    ``numpy`` (default: on CPU) finds them in NumPy, each row viewed as one opaque value:
    ``torch.unique(dim=0)`` sorts column by column there and costs more than the encoding it saves."""
    if not (ids.device.type == "cpu" if numpy is None else numpy):
        return torch.unique(ids, dim=0, return_inverse=True)
    a = np.ascontiguousarray(ids.numpy())
    rows = a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return ids[torch.from_numpy(first)], torch.from_numpy(inverse.reshape(-1))


MAX_WORD_LEN = 30  # chars per word seen by the char CNN (head + tail of longer words)


def clip_word(word: str, max_len: int = MAX_WORD_LEN) -> str:
    """Keep the first ``max_len // 2`` and last ``max_len - max_len // 2`` characters of an overlong
    word: prefix and suffix carry the most signal, and this bounds memory for junk such as URLs."""
    if len(word) <= max_len:
        return word
    head = max_len // 2
    return word[:head] + word[-(max_len - head):]


def words_to_char_ids(words: list[str], char_to_id: dict[str, int], unk_id: int = 1,
                      max_word_len: int = MAX_WORD_LEN) -> Tensor:
    """Padded character ids ``[N, min(max_word_len, longest word)]`` (at least one column).

    Args:
        words: the words to encode.
        char_to_id: character → id; id 0 is padding and must not be used for a character.
        unk_id: id for characters missing from ``char_to_id``.
        max_word_len: longer words are clipped to this many characters (:func:`clip_word`).
    """
    if max_word_len < 1:
        raise ValueError(f"max_word_len must be positive, got {max_word_len}")
    clipped = [clip_word(w, max_word_len) for w in words]
    width = max([1, *map(len, clipped)])
    if not clipped:
        return torch.zeros(0, width, dtype=torch.long)
    get = char_to_id.get
    # One tensor from a padded nested list: far faster than filling rows one by one.
    rows = [[get(c, unk_id) for c in w] + [0] * (width - len(w)) for w in clipped]
    return torch.tensor(rows, dtype=torch.long)
