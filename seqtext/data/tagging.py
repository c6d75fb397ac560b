"""Chunk tag schemes (IOB1, IOB2, BIOES): detection, validation, conversion, entity spans.

Tags are strings such as ``O``, ``B-PER``, ``I-PER``, ``E-PER``, ``S-PER``; the prefix is split
off at the first hyphen, so ``B-ORG-CORP`` has type ``ORG-CORP``. BILOU's ``L-``/``U-`` are read
as ``E-``/``S-``. Entity boundaries follow conlleval, which reads all three schemes the same
way and gives ill-formed input a meaning instead of failing: an ``I-X``/``E-X`` that cannot
continue the current chunk starts a new one. A tag with no known prefix (``PER``) is read as
``I-PER``, so IO-tagged data also yields entities.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from ..errors import SeqtextError

_ALIASES = {"IOB1": "IOB1", "IOB2": "IOB2", "BIO": "IOB2", "BIOES": "BIOES", "IOBES": "BIOES",
            "BILOU": "BIOES"}
_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}
# Prefixes each scheme may use; anything else is reported by validate().
_SCHEME_PREFIXES = {"IOB1": "OIB", "IOB2": "OBI", "BIOES": "OBIES"}

Entity = tuple[str, int, int]  # (type, start, end_exclusive)
_LOWER_PREFIX = re.compile(r"o$|[bieslu]-")  # "o", "b-PER": a chunk prefix in lower case


def normalize_scheme(name: str) -> str:
    """Canonical scheme name for ``name`` (case-insensitive; BIO → IOB2, IOBES/BILOU → BIOES)."""
    canonical = _ALIASES.get(name.upper())
    if canonical is None:
        raise SeqtextError(f"unknown tag scheme {name!r}; expected one of IOB1, IOB2, BIOES")
    return canonical


def split_tag(tag: str) -> tuple[str | None, str]:
    """``(prefix, type)`` of ``tag``: ``("O", "")`` for O, prefix ``None`` when it is not B/I/E/S/L/U.

    Args:
        tag: one tag string; L/U prefixes come back as E/S.
    """
    if tag == "O":
        return "O", ""
    head, sep, rest = tag.partition("-")
    if sep and head in _PREFIXES:
        return _PREFIXES[head], rest
    return None, tag


def case_problem(tag: str) -> str | None:
    """Why ``tag`` cannot be read, or None: ``o`` or a lower-case prefix (``b-PER``) would be read as
    an entity type of its own (every ``o`` token an entity), so data written so are refused."""
    if tag[:1].islower() and _LOWER_PREFIX.match(tag):
        return (f"tag {tag!r} has a lower-case prefix; write O and the B-, I-, E-, S-, L-, U- prefixes in upper "
                "case (entity types may be lower-case: B-per)")
    return None


def _reading(tag: str) -> tuple[str, str]:
    # How entities() interprets a tag: prefix-less tags act as I-<tag> (IO scheme).
    prefix, typ = split_tag(tag)
    return ("I", typ) if prefix is None else (prefix, typ)


def entities(tags: list[str], scheme: str = "IOB2") -> list[Entity]:
    """Entity spans ``(type, start, end_exclusive)`` in order of position.

    Args:
        tags: one sentence's tags.
        scheme: the scheme the tags are written in (accepted for symmetry and checked; all
            schemes share conlleval's chunk rules, so the result does not depend on it).
    """
    normalize_scheme(scheme)
    spans: list[Entity] = []
    current: tuple[str, int] | None = None  # (type, start) of the open chunk
    prev_p, prev_t = "O", ""
    for i, tag in enumerate(tags):
        p, t = _reading(tag)
        if current is not None and _ends(prev_p, prev_t, p, t):
            spans.append((current[0], current[1], i))
            current = None
        if p != "O" and (current is None or _starts(prev_p, prev_t, p, t)):
            if current is not None:
                spans.append((current[0], current[1], i))
            current = (t, i)
        prev_p, prev_t = p, t
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans


def _starts(prev_p: str, prev_t: str, p: str, t: str) -> bool:
    # conlleval's startOfChunk.
    if p in "BS":
        return True
    if p in "IE" and prev_p in "OES":
        return True
    return p != "O" and t != prev_t


def _ends(prev_p: str, prev_t: str, p: str, t: str) -> bool:
    # conlleval's endOfChunk (prev_p is never "O" here: a chunk is open).
    if prev_p in "ES":
        return True
    if prev_p in "BI" and p in "BSO":
        return True
    return t != prev_t


def render(spans: Iterable[Entity], length: int, scheme: str) -> list[str]:
    """Tags of length ``length`` for non-overlapping ``spans`` written in ``scheme``.

    Args:
        spans: ``(type, start, end_exclusive)`` triples, non-overlapping, in order.
        length: number of tokens in the sentence.
        scheme: target scheme; ``BILOU`` writes L-/U- instead of E-/S-.
    """
    canonical = normalize_scheme(scheme)
    tags = ["O"] * length
    prev_end, prev_type = -1, None
    for typ, start, end in spans:
        if canonical == "IOB1":
            # IOB1 uses B- only to separate two adjacent chunks of the same type.
            first = "B" if (start == prev_end and typ == prev_type) else "I"
            tags[start] = f"{first}-{typ}"
            for i in range(start + 1, end):
                tags[i] = f"I-{typ}"
        elif canonical == "IOB2":
            tags[start] = f"B-{typ}"
            for i in range(start + 1, end):
                tags[i] = f"I-{typ}"
        elif end - start == 1:
            tags[start] = f"S-{typ}"
        else:
            tags[start] = f"B-{typ}"
            for i in range(start + 1, end - 1):
                tags[i] = f"I-{typ}"
            tags[end - 1] = f"E-{typ}"
        prev_end, prev_type = end, typ
    if scheme.upper() == "BILOU":
        tags = ["L" + t[1:] if t[:2] == "E-" else "U" + t[1:] if t[:2] == "S-" else t for t in tags]
    return tags


def convert(tags: list[str], source: str, target: str) -> list[str]:
    """Rewrite one sentence's ``tags`` from ``source`` to ``target`` scheme, keeping its entities.

    Never fails on malformed input: it is read with the conlleval convention (see
    :func:`entities`), so the output is always well-formed in ``target``.

    Args:
        tags: one sentence's tags in ``source``.
        source: scheme of ``tags`` (IOB1, IOB2/BIO, BIOES/IOBES/BILOU).
        target: scheme to write (same names; BILOU writes L-/U-).
    """
    return render(entities(tags, source), len(tags), target)


def detect_scheme(tag_seqs: Iterable[list[str]]) -> str:
    """Guess the scheme of a corpus: ``"BIOES"``, ``"IOB1"`` or ``"IOB2"`` (the default).

    Any E-/S- (or L-/U-) tag means BIOES. Otherwise I-X opening a chunk (at the start, after
    O or after another type) means IOB1, unless some B-X is used the IOB2 way (not right
    after a chunk of the same type), which means IOB2 with malformed I- tags.

    Args:
        tag_seqs: the tag sequences of the corpus (or a large enough sample of it).
    """
    i_opens = False
    b_iob2_style = False
    for tags in tag_seqs:
        prev_p, prev_t = "O", ""
        for tag in tags:
            p, t = split_tag(tag)
            if p in ("E", "S"):
                return "BIOES"
            if p == "I" and (prev_p in ("O", None) or t != prev_t):
                i_opens = True
            elif p == "B" and (prev_p not in ("B", "I") or t != prev_t):
                b_iob2_style = True
            prev_p, prev_t = p, t
    return "IOB1" if i_opens and not b_iob2_style else "IOB2"


def transition_ok(prev: str | None, tag: str | None, scheme: str) -> bool:
    """Whether ``tag`` may follow ``prev`` in ``scheme``.

    Args:
        prev: previous tag, or ``None`` at the start of a sentence.
        tag: next tag, or ``None`` at the end of a sentence.
        scheme: IOB1, IOB2 or BIOES (aliases accepted).

    Tags with no known prefix are never constrained.
    """
    scheme = normalize_scheme(scheme)
    prev_p, prev_t = split_tag(prev) if prev is not None else ("O", "")
    p, t = split_tag(tag) if tag is not None else ("O", "")
    if prev_p is None or p is None:
        return True
    continues = prev_p in ("B", "I") and prev_t == t
    if scheme == "IOB2":
        return p != "I" or continues
    if scheme == "IOB1":
        return p != "B" or continues
    # BIOES: I/E must continue an open B/I chunk; an open chunk must be continued (or closed by E).
    if p in ("I", "E"):
        return continues
    return prev_p not in ("B", "I")


def validate(tag_seqs: Iterable[list[str]], scheme: str, first: dict[str, int] | None = None) -> Counter:
    """Count malformed tags and transitions, for warnings (never raises on bad tags).

    Keys read like ``"I-PER after O"``, ``"I-PER at sentence start"``,
    ``"sentence end after B-PER"`` (BIOES), ``"E-PER not in IOB2"`` or ``"B- has no entity type"``.

    Args:
        tag_seqs: tag sequences to check.
        scheme: the scheme they claim to follow (aliases accepted).
        first: if given, filled with each issue's first sequence (its index in ``tag_seqs``).
    """
    canonical = normalize_scheme(scheme)
    allowed_prefixes = _SCHEME_PREFIXES[canonical]
    issues: Counter = Counter()
    ok: dict[tuple, bool] = {}  # (prev, tag) → transition_ok: a corpus has few distinct pairs

    def allowed(prev, tag) -> bool:
        if (prev, tag) not in ok:
            ok[prev, tag] = transition_ok(prev, tag, canonical)
        return ok[prev, tag]

    # Each distinct sequence is checked once and its issues counted as often as it occurs.
    counts: Counter = Counter()
    first_index: dict[tuple, int] = {}
    for i, tags in enumerate(map(tuple, tag_seqs)):
        counts[tags] += 1
        first_index.setdefault(tags, i)

    for tags, times in counts.items():
        found = []
        prev: str | None = None
        checked = True  # False right after a tag already reported as foreign to the scheme
        for tag in tags:
            p, entity_type = split_tag(tag)
            if p is None or p not in allowed_prefixes or (p != "O" and not entity_type):
                # Reported once; its transitions would only repeat the same problem.
                foreign = p is None or p not in allowed_prefixes
                found.append(f"{tag} not in {canonical}" if foreign else f"{tag} has no entity type")
                prev, checked = tag, False
                continue
            if checked and not allowed(prev, tag):
                found.append(f"{tag} after {prev}" if prev is not None else f"{tag} at sentence start")
            prev, checked = tag, True
        if tags and checked and not allowed(prev, None):
            found.append(f"sentence end after {prev}")
        for issue in found:
            issues[issue] += times
            if first is not None:  # sequences come in order of first occurrence
                first.setdefault(issue, first_index[tags])
    return issues
