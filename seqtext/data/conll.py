"""CoNLL-style column files: one token a line, columns split by whitespace, blank line between sentences.

``-DOCSTART-`` lines end the current sentence and start a new document (``Sentence.document``),
which taggers may use as context. Errors name the file and line, so a bad corpus can be fixed
by hand.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import SeqtextError
from ..io import atomic_write, open_data
from .tagging import case_problem

DOCSTART = "-DOCSTART-"
# Part of the key of the Arrow files parsed column files are cached in (data/sources.py): bump it
# whenever the parser's output changes, so that stale parses are not reused.
CACHE_VERSION = 2
# Column separators: ASCII whitespace only. str.split() would also split on no-break and
# other Unicode spaces, which do occur inside tokens (e.g. French "1\u00a0000").
_SEP = re.compile(r"[ \t\f\v]+")
_STRIP = " \t\f\v\r\n"
# Undecodable bytes surface as lone surrogates U+DC80..U+DCFF under errors="surrogateescape".
_BAD_BYTE = re.compile("[\udc80-\udcff]")


@dataclass(slots=True)
class Sentence:
    """One sentence of a column file.

    Attributes:
        tokens: the token column.
        tags: the tag column ([] when read without one).
        lines: every column of every token line, for writing predictions back.
        line_number: 1-based line of the first token in the file.
        document: how many ``-DOCSTART-`` lines came before it (0 in a file without them).
    """

    tokens: list[str]
    tags: list[str]
    lines: list[list[str]]
    line_number: int
    document: int = 0


def read_conll(path: str | os.PathLike, token_column: int = 0, tag_column: int | None = -1,
               encoding: str = "utf-8") -> Iterator[Sentence]:
    """Sentences of a column file, lazily. The file is opened (and checked to exist) at once.

    Args:
        path: the file to read (gzip-compressed if its name ends in ``.gz``).
        token_column: index of the token column (negative counts from the end).
        tag_column: index of the tag column, or ``None`` for unlabeled input (tags = []).
        encoding: text encoding of the file; a leading byte-order mark is ignored.

    Raises SeqtextError (naming file and line) for a missing file, undecodable bytes,
    a line whose column count differs from the file's first token line, columns out
    of range, or a tag in lower case (``o``, ``b-PER``). An empty file yields no sentences.
    """
    # Check eagerly, so a bad path fails at the call rather than at the first next().
    if not os.path.exists(path):
        raise SeqtextError(f"{path}: no such file")
    if os.path.isdir(path):
        raise SeqtextError(f"{path}: is a directory, not a file")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SeqtextError(f"unknown text encoding {encoding!r}") from None
    return _sentences(str(path), token_column, tag_column, encoding)


def _sentences(path: str, token_column: int, tag_column: int | None,
               encoding: str) -> Iterator[Sentence]:
    try:
        # newline=None: \n, \r\n and \r all end a line.
        with open_data(path, "rt", encoding=encoding, errors="surrogateescape", newline=None) as f:
            yield from _parse(f, path, token_column, tag_column, encoding)
    except (OSError, EOFError) as e:  # EOFError: a truncated .gz
        raise SeqtextError(f"{path}: cannot read ({e.strerror or e})") from None


def _parse(lines: Iterable[str], path: str, token_column: int, tag_column: int | None,
           encoding: str) -> Iterator[Sentence]:
    ncols = 0  # columns per token line, fixed by the first one
    token_i = tag_i = 0
    current: Sentence | None = None
    document = 0
    for line_no, line in enumerate(lines, 1):
        bad = _BAD_BYTE.search(line)
        if bad:
            byte = ord(bad.group()) - 0xDC00
            fix = "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)" if codecs.lookup(encoding).name == \
                "utf-8" else "convert the file or set its encoding"  # recipes read UTF-8: they have no encoding
            raise SeqtextError(f"{path}:{line_no}: not valid {encoding} (byte 0x{byte:02x} at "
                               f"character {bad.start() + 1}); {fix}")
        if line_no == 1:
            line = line.lstrip("\ufeff")
        line = line.strip(_STRIP)
        fields = _SEP.split(line) if line else []
        if not fields or fields[0] == DOCSTART:
            if current is not None:
                yield current
                current = None
            document += bool(fields)
            continue
        if not ncols:
            ncols = len(fields)
            token_i = _column_index(token_column, ncols, "token", path, line_no)
            if tag_column is not None:
                tag_i = _column_index(tag_column, ncols, "tag", path, line_no)
                if tag_i == token_i:
                    raise SeqtextError(f"{path}:{line_no}: the token and tag columns are the same "
                                       f"(the file has {ncols} column{'s' if ncols > 1 else ''}); "
                                       "is it unlabeled?")
        elif len(fields) != ncols:
            raise SeqtextError(f"{path}:{line_no}: expected {ncols} columns, found {len(fields)}")
        if current is None:
            current = Sentence([], [], [], line_no, document)
        current.tokens.append(fields[token_i])
        if tag_column is not None:
            if problem := case_problem(fields[tag_i]):
                raise SeqtextError(f"{path}:{line_no}: {problem}")
            current.tags.append(fields[tag_i])
        current.lines.append(fields)
    if current is not None:
        yield current


def _column_index(index: int, ncols: int, name: str, path: str, line_no: int) -> int:
    if not -ncols <= index < ncols:
        raise SeqtextError(f"{path}:{line_no}: {name} column {index} is out of range "
                           f"(the file has {ncols} column{'s' if ncols > 1 else ''})")
    return index % ncols


def write_conll(sentences_lines: Iterable[tuple[list[list[str]], list[str]]],
                path: str | os.PathLike) -> None:
    """Write each sentence's original columns plus a predicted tag column, atomically.

    Columns are space-separated, and each sentence is followed by a blank line.

    Args:
        sentences_lines: ``(lines, tags)`` per sentence: the columns of each token line
            (e.g. :attr:`Sentence.lines`) and one predicted tag per line.
        path: output file; replaced only once fully written.
    """
    with atomic_write(path) as f:
        for lines, tags in sentences_lines:
            if len(lines) != len(tags):
                raise ValueError(f"{len(lines)} token lines but {len(tags)} tags")
            for cols, tag in zip(lines, tags):
                f.write(" ".join([*cols, tag]))
                f.write("\n")
            f.write("\n")


def conll_to_records(path: str | os.PathLike, token_column: int = 0, tag_column: int | None = -1,
                     encoding: str = "utf-8", documents: bool = False) -> dict[str, list]:
    """Read a column file into ``{"tokens": [...], "tags": [...]}`` for ``Dataset.from_dict``.

    Args:
        path, token_column, tag_column, encoding: as for :func:`read_conll`.
        documents: keep each ``-DOCSTART-`` as a row of its own (tokens ``["-DOCSTART-"]``, tags
            ``["O"]``), the layout of hub copies of CoNLL files, so document breaks survive.
    """
    records: dict[str, list] = {"tokens": [], "tags": []}
    for row in conll_rows(path, token_column, tag_column, encoding, documents):
        records["tokens"].append(row["tokens"])
        records["tags"].append(row["tags"])
    return records


def conll_rows(path: str | os.PathLike, token_column: int = 0, tag_column: int | None = -1,
               encoding: str = "utf-8", documents: bool = False,
               names: tuple[str, str] = ("tokens", "tags")) -> Iterator[dict[str, list[str]]]:
    """The rows of :func:`conll_to_records` one at a time, as ``{names[0]: tokens, names[1]: tags}``
    (a generator for ``Dataset.from_generator``, which writes them to an Arrow file as they come)."""
    document = 0
    for sentence in read_conll(path, token_column, tag_column, encoding):
        if documents and sentence.document != document:
            yield {names[0]: [DOCSTART], names[1]: ["O"] if tag_column is not None else []}
            document = sentence.document
        yield {names[0]: sentence.tokens, names[1]: sentence.tags}
