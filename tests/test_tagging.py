"""Tag schemes: entity extraction, conversion round trips, detection, validation."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqtext.data.tagging import (
    convert,
    detect_scheme,
    entities,
    normalize_scheme,
    render,
    split_tag,
    transition_ok,
    validate,
)
from seqtext.errors import SeqtextError

SCHEMES = ["IOB1", "IOB2", "BIOES"]
#                 0    1        2        3        4    5        6        7
SENTENCE = {"IOB1": ["O", "I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-PER", "O"],
            "IOB2": ["O", "B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-PER", "O"],
            "BIOES": ["O", "B-PER", "E-PER", "S-PER", "O", "S-LOC", "S-PER", "O"]}
SPANS = [("PER", 1, 3), ("PER", 3, 4), ("LOC", 5, 6), ("PER", 6, 7)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_entities_and_render_by_hand(scheme):
    assert entities(SENTENCE[scheme], scheme) == SPANS
    assert render(SPANS, 8, scheme) == SENTENCE[scheme]
    assert validate([SENTENCE[scheme]], scheme) == Counter()


@pytest.mark.parametrize("source", SCHEMES)
@pytest.mark.parametrize("target", SCHEMES)
def test_convert_by_hand(source, target):
    assert convert(SENTENCE[source], source, target) == SENTENCE[target]


def test_aliases():
    assert normalize_scheme("bio") == "IOB2"
    assert normalize_scheme("IOBES") == normalize_scheme("BILOU") == "BIOES"
    assert split_tag("L-ORG") == ("E", "ORG") and split_tag("B-ORG-X") == ("B", "ORG-X")
    assert split_tag("PER") == (None, "PER")
    assert convert(["U-X", "B-Y", "I-Y", "L-Y", "O"], "BILOU", "BIOES") == ["S-X", "B-Y", "I-Y", "E-Y", "O"]
    assert convert(["B-X", "I-X", "B-X"], "BIO", "BILOU") == ["B-X", "L-X", "U-X"]
    with pytest.raises(SeqtextError, match="unknown tag scheme 'IOX'"):
        convert(["O"], "IOX", "IOB2")


def test_malformed_input_follows_conlleval():
    # I- after O or after another type opens a new entity; prefix-less tags act as I-.
    assert entities(["O", "I-X", "I-X", "I-Y", "B-X", "E-X", "E-X"], "IOB2") == \
        [("X", 1, 3), ("Y", 3, 4), ("X", 4, 6), ("X", 6, 7)]
    assert entities(["PER", "PER", "O", "LOC"], "IOB2") == [("PER", 0, 2), ("LOC", 3, 4)]
    assert convert(["O", "I-X", "I-X"], "IOB2", "IOB2") == ["O", "B-X", "I-X"]
    assert convert(["B-X", "O"], "BIOES", "BIOES") == ["S-X", "O"]
    assert convert([], "IOB1", "BIOES") == []


def test_validate_counts():
    assert validate([["O", "I-X"], ["I-X", "I-X"], ["B-Y", "I-X"]], "IOB2") == \
        Counter({"I-X after O": 1, "I-X at sentence start": 1, "I-X after B-Y": 1})
    assert validate([["O", "B-X", "O", "I-X", "B-X"]], "IOB1") == Counter({"B-X after O": 1})
    assert validate([["B-X", "O", "B-Y", "I-Y"], ["E-X"]], "BIOES") == \
        Counter({"O after B-X": 1, "sentence end after I-Y": 1, "E-X at sentence start": 1})
    # A tag foreign to the scheme is reported once, not again for its neighbours.
    assert validate([["B-X", "E-X", "I-X"]], "IOB2") == Counter({"E-X not in IOB2": 1})
    # so is a tag with a prefix and no entity type, or with no prefix
    assert validate([["O", "B-", "I-", "O"], ["Z", "O"]], "IOB2") == \
        Counter({"B- has no entity type": 1, "I- has no entity type": 1, "Z not in IOB2": 1})
    # where each kind first occurs (sequence index), for the warning
    first: dict[str, int] = {}
    validate([["B-X"], ["O", "I-X"], ["Z"], ["O", "I-X"], ["B-Y", "I-X"]], "IOB2", first)
    assert first == {"I-X after O": 1, "Z not in IOB2": 2, "I-X after B-Y": 4}
    # a sequence that occurs several times is counted each time (distinct ones are checked once)
    assert validate([["O", "I-X"], ["B-X"], ["O", "I-X"], ["O", "I-X"]], "IOB2") == Counter({"I-X after O": 3})


def test_transition_ok():
    assert not transition_ok("O", "I-X", "IOB2") and transition_ok("O", "I-X", "IOB1")
    assert not transition_ok(None, "E-X", "BIOES") and not transition_ok("I-X", None, "BIOES")
    assert transition_ok("<pad>", "I-X", "IOB2")  # labels without a prefix are unconstrained


def test_detect_scheme():
    assert detect_scheme([SENTENCE["IOB1"]]) == "IOB1"
    assert detect_scheme([SENTENCE["IOB2"]]) == "IOB2"
    assert detect_scheme([["O"], SENTENCE["BIOES"]]) == "BIOES"
    assert detect_scheme([["O", "O"], []]) == "IOB2"
    # Malformed IOB2 (an I- after O) with B- used IOB2-style is still IOB2.
    assert detect_scheme([["B-X", "O"], ["O", "I-X"]]) == "IOB2"
    assert detect_scheme(iter([["I-X", "I-X", "B-X"]])) == "IOB1"


@st.composite
def _spans(draw) -> tuple[int, list[tuple[str, int, int]]]:
    """A sentence length and non-overlapping entity spans, adjacent ones included."""
    length = draw(st.integers(0, 12))
    spans, i = [], 0
    while i < length:
        i += draw(st.integers(0, 2))  # gap of 0 makes adjacent entities
        if i >= length:
            break
        end = draw(st.integers(i + 1, min(length, i + 4)))
        spans.append((draw(st.sampled_from("XYZ")), i, end))
        i = end
    return length, spans


@settings(max_examples=150, deadline=None)
@given(_spans())
def test_all_conversions_keep_entities(case):
    length, spans = case
    for source in SCHEMES:
        tags = render(spans, length, source)
        assert entities(tags, source) == spans
        assert validate([tags], source) == Counter()
        assert convert(tags, source, source) == tags
        if spans:
            assert detect_scheme([tags]) == source
        for target in SCHEMES:
            converted = convert(tags, source, target)
            assert entities(converted, target) == spans
            assert convert(converted, target, source) == tags  # round trip is the identity


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-X", "I-X", "E-X", "S-X", "B-Y", "I-Y"]), max_size=10))
def test_convert_never_fails_and_output_is_well_formed(tags):
    for source in SCHEMES:
        spans = entities(tags, source)
        for target in SCHEMES:
            converted = convert(tags, source, target)
            assert len(converted) == len(tags)
            assert validate([converted], target) == Counter()
            assert entities(converted, target) == spans
        validate([tags], source)  # counts, never raises
    assert detect_scheme([tags]) in SCHEMES
