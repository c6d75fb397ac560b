"""Property-based tests: recipe override parsing, tokenizer and vocab round-trips."""

import string
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from seqtext.data.tokenizers import RegexTokenizer, WhitespaceTokenizer
from seqtext.data.vocab import SPECIALS, Vocab
from seqtext.recipe import _toml_value, apply_override, dumps_toml, load_recipe

words = st.text(alphabet=string.ascii_letters + string.digits + "'-éß", min_size=1, max_size=12)


@given(st.integers(min_value=1, max_value=10**6), st.floats(min_value=1e-6, max_value=10, allow_nan=False),
       st.booleans(), st.sampled_from(["regex", "spacy", "sentencepiece", "whitespace"]))
def test_overrides_parse_typed_values(hidden, lr, bidir, kind):
    raw: dict = {"task": "classify"}
    for item in (f"model.hidden_size={hidden}", f"train.lr={lr!r}", f"model.bidirectional={str(bidir).lower()}",
                 f"tokenizer.kind={kind}"):
        apply_override(raw, item)
    r = load_recipe(raw)
    assert (r.model.hidden_size, r.train.lr, r.model.bidirectional, r.tokenizer.kind) == (hidden, lr, bidir, kind)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_string_values_survive_toml_round_trip(value):
    import tomllib

    assert tomllib.loads(f"v = {_toml_value(value)}")["v"] == value
    raw: dict = {"task": "classify"}
    apply_override(raw, f"data.text_column={_toml_value(value)}")
    assert raw["data"]["text_column"] == value


@settings(max_examples=50)
@given(st.dictionaries(st.sampled_from(["epochs", "batch_size", "patience", "seed"]),
                       st.integers(min_value=1, max_value=1000), max_size=4))
def test_resolved_recipe_reparses_identically(train_values):
    import tomllib

    r = load_recipe({"task": "classify", "train": train_values})
    again = load_recipe(tomllib.loads(dumps_toml(r.to_dict())))
    assert again.to_dict() == r.to_dict()


@given(st.lists(words, max_size=30))
def test_whitespace_tokenizer_round_trip(tokens):
    tok = WhitespaceTokenizer()
    assert tok.tokenize(tok.detokenize(tokens)) == tokens


@given(st.text(max_size=200))
def test_regex_tokens_are_substrings_in_order(text):
    tok = RegexTokenizer(lowercase=False, strip_html=False)
    pos = 0
    for t in tok.tokenize(text):
        found = text.find(t, pos)
        assert found >= 0 and not t.isspace()
        pos = found + len(t)


@given(st.lists(words, max_size=60), st.integers(min_value=1, max_value=3), st.integers(min_value=0, max_value=20))
def test_vocab_round_trip(tokens, min_freq, max_size):
    import tempfile
    from pathlib import Path

    v = Vocab.build(Counter(tokens), min_freq=min_freq, max_size=max_size)
    assert tuple(v.itos[:4]) == SPECIALS and len(set(v.itos)) == len(v.itos)
    ids = v.encode(tokens)
    assert [t if t in v else "<unk>" for t in tokens] == v.decode(ids)
    with tempfile.TemporaryDirectory() as d:
        v.save(Path(d))
        assert Vocab.load(Path(d)).itos == v.itos
