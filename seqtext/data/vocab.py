"""Token ↔ id mapping with fixed special tokens, saved as plain text (one token a line)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..errors import SeqtextError
from ..io import write_text

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
VOCAB_FILE = "vocab.txt"


class Vocab:
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self._arrow = None  # (keys, ids) lookup arrays for encode_arrow, built on first use

    @classmethod
    def build(cls, counts: Counter, min_freq: int = 1, max_size: int = 0) -> Vocab:
        """Most frequent first, ties broken alphabetically so the result is deterministic."""
        items = sorted(((c, t) for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                       key=lambda x: (-x[0], x[1]))
        if max_size:
            items = items[: max(0, max_size - len(SPECIALS))]
        return cls(t for _, t in items)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: list[str]) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def encode_arrow(self, tokens):
        """:meth:`encode` for a whole Arrow list<string> column (Array or ChunkedArray) at once,
        in Arrow: a list<int64> array with the same rows, ids exactly as ``encode`` gives them."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(tokens, pa.ChunkedArray):
            tokens = tokens.combine_chunks() if tokens.num_chunks else pa.array([], type=tokens.type)
        if self._arrow is None:  # the lookup table, built once: keys and their ids (as stoi has them)
            self._arrow = (pa.array(list(self.stoi), pa.string()), pa.array(list(self.stoi.values()), pa.int64()))
        keys, ids = self._arrow
        offsets = tokens.offsets
        start = offsets[0].as_py() if len(offsets) else 0
        flat = tokens.values.slice(start, (offsets[-1].as_py() if len(offsets) else 0) - start)
        values = pc.fill_null(pc.take(ids, pc.index_in(flat.cast(pa.string()), value_set=keys)), self.unk_id)
        offsets = pc.subtract(offsets, pa.scalar(start, offsets.type)) if len(offsets) else pa.array([0], offsets.type)
        return type(tokens).from_arrays(offsets, values, mask=tokens.is_null() if tokens.null_count else None)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, directory: Path) -> None:
        for t in self.itos:
            if "\n" in t or "\r" in t:
                raise SeqtextError(f"vocabulary token {t!r} contains a line break")
        write_text(Path(directory) / VOCAB_FILE, "\n".join(self.itos) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Vocab:
        path = Path(directory) / VOCAB_FILE
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            raise SeqtextError(f"{path}: missing vocabulary file") from None
        if lines and lines[-1] == "":
            lines.pop()
        if tuple(lines[: len(SPECIALS)]) != SPECIALS:
            raise SeqtextError(f"{path}:1: expected the special tokens {', '.join(SPECIALS)} first")
        return cls(lines[len(SPECIALS):])
