"""CoNLL reader/writer: file-format corner cases, error messages, round trips."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqtext.data.conll import Sentence, conll_to_records, read_conll, write_conll
from seqtext.errors import SeqtextError


def _write(tmp_path, data: str | bytes, name: str = "data.conll"):
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _tokens_tags(path, **kwargs):
    return [(s.tokens, s.tags) for s in read_conll(path, **kwargs)]


def test_basic_docstart_and_blank_lines(tmp_path):
    path = _write(tmp_path, "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\n\n"
                            "Peter NNP B-PER\n-DOCSTART- -X- O O\nBlackburn NNP B-PER\n\n")
    sentences = list(read_conll(path))
    assert [(s.tokens, s.tags) for s in sentences] == [
        (["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"]), (["Blackburn"], ["B-PER"])]
    assert [s.line_number for s in sentences] == [3, 8, 10]
    assert sentences[0].lines == [["EU", "NNP", "B-ORG"], ["rejects", "VBZ", "O"]]


def test_crlf_tabs_trailing_whitespace_no_final_newline(tmp_path):
    path = _write(tmp_path, "\ufeffa\tX\tO \r\nb  Y\tB-LOC\t\r\n \t\r\nc Z I-LOC")
    assert _tokens_tags(path) == [(["a", "b"], ["O", "B-LOC"]), (["c"], ["I-LOC"])]


def test_columns_and_unlabeled_input(tmp_path):
    path = _write(tmp_path, "a X O\nb Y B-LOC\n")
    assert _tokens_tags(path, token_column=1, tag_column=0) == [(["X", "Y"], ["a", "b"])]
    assert _tokens_tags(path, tag_column=None) == [(["a", "b"], [])]
    unlabeled = _write(tmp_path, "a\nb\n\nc\n", "plain.txt")
    assert _tokens_tags(unlabeled, tag_column=None) == [(["a", "b"], []), (["c"], [])]
    with pytest.raises(SeqtextError, match=r"plain.txt:1: the token and tag columns are the same"):
        list(read_conll(unlabeled))
    with pytest.raises(SeqtextError, match=r"data.conll:1: tag column 5 is out of range"):
        list(read_conll(path, tag_column=5))


def test_lower_case_tag_prefixes_are_named_by_line(tmp_path):
    """'o' and 'b-per' would be read as entity types of their own (every 'o' token an entity)."""
    for tags in (("o", "B-PER"), ("O", "b-PER"), ("O", "i-per")):
        path = _write(tmp_path, f"a {tags[0]}\n\nAnn {tags[1]}\n")
        with pytest.raises(SeqtextError, match=rf"data.conll:{1 if tags[0] == 'o' else 3}: tag '[^O]\S*' has a "
                                               r"lower-case prefix; write O and the B-, I-, E-, S-, L-, U- prefixes"):
            list(read_conll(path))
    path = _write(tmp_path, "a O\nAnn B-per\nLee I-per\nb\tx\n")  # lower-case entity types and IO tags are fine
    assert _tokens_tags(path) == [(["a", "Ann", "Lee", "b"], ["O", "B-per", "I-per", "x"])]
    assert _tokens_tags(path, tag_column=None) == [(["a", "Ann", "Lee", "b"], [])]


def test_non_breaking_space_stays_inside_a_token(tmp_path):
    path = _write(tmp_path, "1\u00a0000 CD O\n")
    assert _tokens_tags(path) == [(["1\u00a0000"], ["O"])]


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = _write(tmp_path, "-DOCSTART- O\n\na X O\nb Y O\n\nc O\n")
    with pytest.raises(SeqtextError, match=r"data.conll:6: expected 3 columns, found 2"):
        list(read_conll(path))


def test_invalid_utf8_names_the_line(tmp_path):
    path = _write(tmp_path, b"a O\nb O\n\ncaf\xe9 O\n")
    with pytest.raises(SeqtextError, match=r"data.conll:4: not valid utf-8 \(byte 0xe9 at character 4\); convert the "
                                           r"file to UTF-8 \(e\.g\. iconv -f latin1 -t utf-8\)$"):
        list(read_conll(path))
    assert _tokens_tags(path, encoding="latin-1")[1] == (["café"], ["O"])


def test_missing_empty_and_bad_encoding(tmp_path):
    with pytest.raises(SeqtextError, match=r"nope.conll: no such file"):
        read_conll(tmp_path / "nope.conll")  # fails at the call, not at iteration
    assert list(read_conll(_write(tmp_path, ""))) == []
    assert list(read_conll(_write(tmp_path, "\n\n-DOCSTART- O\n\n"))) == []
    with pytest.raises(SeqtextError, match="unknown text encoding"):
        read_conll(_write(tmp_path, "a O\n"), encoding="utf-99")


def test_gzipped_file_is_read_decompressed(tmp_path):
    """--data-dir takes train.txt.gz and a tagger reads .txt(.gz) as CoNLL columns: the reader
    must decompress it (it read the compressed bytes and failed as 'not valid utf-8')."""
    import gzip

    path = _write(tmp_path, gzip.compress(b"EU NNP B-ORG\r\nrejects VBZ O\n\nPeter NNP B-PER\n"),
                  name="train.txt.gz")
    assert _tokens_tags(path) == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"])]
    bad = _write(tmp_path, gzip.compress(b"caf\xe9 O\n"), name="bad.txt.gz")
    with pytest.raises(SeqtextError, match=r"bad.txt.gz:1: not valid utf-8"):
        list(read_conll(bad))


def test_records(tmp_path):
    path = _write(tmp_path, "a O\nb B-X\n\nc I-X\n")
    assert conll_to_records(path) == {"tokens": [["a", "b"], ["c"]], "tags": [["O", "B-X"], ["I-X"]]}
    assert conll_to_records(_write(tmp_path, "")) == {"tokens": [], "tags": []}


def test_write_read_round_trip(tmp_path):
    src = _write(tmp_path, "EU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\n")
    sentences = list(read_conll(src))
    out = tmp_path / "pred.conll"
    write_conll(((s.lines, ["P"] * len(s.lines)) for s in sentences), out)
    assert out.read_text(encoding="utf-8") == \
        "EU NNP B-ORG P\nrejects VBZ O P\n\nPeter NNP B-PER P\n\n"
    again = list(read_conll(out, tag_column=-2))
    assert [(s.tokens, s.tags) for s in again] == [(s.tokens, s.tags) for s in sentences]
    assert [s.tags for s in read_conll(out)] == [["P", "P"], ["P"]]
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_write_is_atomic_on_failure(tmp_path):
    out = _write(tmp_path, "old content\n", "pred.conll")

    def sentences():
        yield [["a"]], ["O"]
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        write_conll(sentences(), out)
    assert out.read_text(encoding="utf-8") == "old content\n"
    assert os.listdir(tmp_path) == ["pred.conll"]
    with pytest.raises(ValueError, match="2 token lines but 1 tags"):
        write_conll([([["a"], ["b"]], ["O"])], out)


# Tokens: no whitespace or control characters (separators and line breaks), no lone
# surrogates (not encodable), no byte-order mark, not the document marker.
_chars = st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"], exclude_characters="\ufeff")
_token = st.text(_chars, min_size=1, max_size=8).filter(
    lambda t: not any(c.isspace() for c in t) and t != "-DOCSTART-")
_tag = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
_sentence = st.lists(st.tuples(_token, _tag), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(_sentence, max_size=5))
def test_random_round_trip(corpus):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gen.conll")
        write_conll((([[tok] for tok, _ in s], [tag for _, tag in s]) for s in corpus), path)
        read = list(read_conll(path))
    assert [(s.tokens, s.tags) for s in read] == [([t for t, _ in s], [g for _, g in s]) for s in corpus]
    assert all(isinstance(s, Sentence) for s in read)
