"""TOML recipes: typed, validated run descriptions.

A recipe has top-level keys (``task``, ``name``, ``init_from``) and the sections
``[data] [tokenizer] [vocab] [model] [train] [output]``. Every key has a default, a type and
(where it matters) a range or a set of choices, declared once below; the validator,
``--set`` overrides, the README's recipe reference and the saved resolved recipe all come
from these declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import SeqtextError

TASKS = ("classify", "tag", "lm")


def opt(default, doc: str, *, min=None, max=None, choices=None, min_exclusive=False):
    """Declare a recipe key: its default, what it does, and the values it accepts."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "min_exclusive": min_exclusive}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    hub: str | None = opt(None, "Hugging Face hub dataset id, e.g. 'stanfordnlp/imdb'.")
    hub_config: str | None = opt(None, "Hub dataset configuration name, e.g. 'wikitext-2-v1'.")
    files: dict = opt({}, "Local files per split, e.g. {train = 'a.jsonl', test = 'b.jsonl'}; "
                      "relative paths are relative to the recipe file (given with --set: to the working "
                      "directory).")
    format: str = opt("auto", "Local file format; 'auto' decides from the extension (.conll, and for the tag task "
                      ".txt and .tsv: CoNLL columns). A .json(l), .csv or .parquet extension always says the "
                      "format; this decides for .txt, .tsv, .conll and others.",
                      choices=("auto", "jsonl", "json", "csv", "tsv", "parquet", "text", "conll"))
    splits: dict = opt({"train": "train", "test": "test"},
                       "Map seqtext split (train/dev/test) to the source's split name.")
    text_column: str = opt("text", "Column holding the input text (classify, lm).")
    label_column: str = opt("label", "Column holding the class label (classify).")
    label_names: list = opt([], "classify: names of the integer labels 0, 1, ... (e.g. ['neg', 'pos'] for IMDB's "
                            "0/1), so that files with numbers and a hub dataset with names train and score one "
                            "model alike; [] = the labels as the data writes them.")
    tokens_column: str = opt("tokens", "Column holding token lists (tag, hub/jsonl sources).")
    tags_column: str = opt("tags", "Column holding tag lists (tag, hub/jsonl sources).")
    token_index: int = opt(0, "CoNLL files: column index of the token.")
    tag_index: int = opt(-1, "CoNLL files: column index of the tag (-1 = last).")
    scheme: str = opt("auto", "Tag scheme of the data (tag): auto, IOB1, IOB2, BIOES or BILOU (predictions "
                      "are written in it).", choices=("auto", "IOB1", "IOB2", "BIOES", "BILOU"))
    context_tokens: int = opt(0, "tag: pack consecutive sentences of a document (split at CoNLL -DOCSTART- rows) "
                              "into sequences of up to this many tokens, so the encoder sees each sentence with "
                              "its neighbours; scores and outputs stay per sentence (0 = each sentence alone). Data "
                              "without -DOCSTART- rows is one document. Use with [train] batch_tokens.", min=0)
    dev_fraction: float = opt(0.1, "classify/tag: share of train carved off as dev when the data has no dev "
                              "split (an lm needs a dev file or split).", min=0.0, max=0.5, min_exclusive=True)
    dev_block_size: int = opt(0, "Carve dev from train as runs of this many consecutive rows instead of scattered "
                              "rows (0 = scattered). Use it when neighbouring rows are related: IMDB's rows come "
                              "grouped by movie (aclImdb's file order), so a scattered dev shares movies with "
                              "train while the test set does not; 100 there.", min=0)
    split_seed: int = opt(0, "Seed for carving dev from train and for max_examples sampling (0 = [train] seed). "
                          "Ensemble members all use the ensemble's, so they share train, dev and vocabulary.",
                          min=0, max=2**32 - 1)
    max_examples: int = opt(0, "Use at most this many examples per split (0 = all); for quick runs.", min=0)
    max_length: int = opt(0, "classify: truncate each text to this many tokens, keeping its head and tail "
                          "(0 = no limit).", min=0)
    num_proc: int = opt(1, "Worker processes for datasets.map tokenization.", min=1)


@dataclass
class TokenizerConfig:
    kind: str = opt("regex", "Tokenizer: regex (words and punctuation), whitespace (split on spaces only: "
                    "pre-tokenized text), spacy (spacy.blank(lang)), sentencepiece (subwords).",
                    choices=("regex", "spacy", "sentencepiece", "whitespace"))
    lowercase: bool = opt(True, "Lowercase text before tokenizing (every kind; the tagger's word lookup too).")
    strip_html: bool = opt(True, "Replace HTML tags such as <br /> with spaces.")
    lang: str = opt("en", "spaCy language code for the spacy tokenizer and NER predict.")
    vocab_size: int = opt(16000, "sentencepiece: vocabulary size when training a model.", min=100)
    model_type: str = opt("unigram", "sentencepiece: unigram or bpe.", choices=("unigram", "bpe"))
    model_file: str | None = opt(None, "sentencepiece: existing .model file (e.g. in vocab/); "
                                 "trained on the train split when absent.")


@dataclass
class VocabConfig:
    min_freq: int = opt(2, "Drop tokens seen fewer times in train.", min=1)
    max_size: int = opt(50000, "Keep at most this many tokens, the 4 special tokens (padding, unknown, "
                                 "begin, end) included, most frequent first (0 = no limit).", min=0)


@dataclass
class ModelConfig:
    embedding_dim: int = opt(128, "Word embedding size.", min=1)
    hidden_size: int = opt(256, "LSTM hidden size per direction.", min=1)
    layers: int = opt(1, "Stacked LSTM layers.", min=1, max=8)
    bidirectional: bool = opt(True, "Run a backward LSTM too (classify, tag: a BiLSTM; lm: a separate backward "
                              "LM, ELMo-style, so that init_from can start a BiLSTM from it).")
    dropout: float = opt(0.3, "Dropout between LSTM layers and on the encoder output.", min=0.0, max=0.95)
    embedding_dropout: float = opt(0.1, "Locked dropout on the token features (the word embedding, plus the "
                                   "char CNN and casing of a tagger).", min=0.0, max=0.95)
    word_dropout: float = opt(0.0, "classify/tag: probability of replacing a training token by <unk>.",
                              min=0.0, max=0.9)
    pooling: str = opt("maxmean", "classify: pooling over encoder states (max+mean concatenated was best on IMDB).",
                       choices=("max", "mean", "last", "attention", "maxmean"))
    pretrained_vectors: str | None = opt(None, "GloVe/word2vec/fastText text file to initialise embeddings.")
    freeze_embeddings: bool = opt(False, "Keep the word embedding fixed (pretrained, from init_from, or random).")
    char_encoder: str = opt("none", "tag: character-level word encoder.", choices=("none", "cnn"))
    char_dim: int = opt(30, "tag: character embedding size.", min=1)
    char_filters: int = opt(50, "tag: char-CNN filters (its output size).", min=1)
    casing: bool = opt(False, "tag: add a casing feature embedding (lower/upper/title/digit/mixed/other).")
    crf: bool = opt(True, "tag: linear-chain CRF output layer (else per-token softmax).")
    ensemble: int = opt(1, "classify/tag: train this many models (seeds seed, seed+1, ...) in <run>/members/ and "
                        "predict with all of them: class probabilities, or tag scores and CRF transitions, are "
                        "averaged. Costs N× training and inference time; [train] max_minutes applies to each "
                        "member.", min=1, max=16)
    tie_weights: bool = opt(True, "lm: share the embedding and output matrices when sizes allow.")
    projection_size: int = opt(0, "lm: project LSTM output to this size before the softmax "
                               "(0 = embedding_dim when tying, else none).", min=0)
    output_dropout: float = opt(-1.0, "lm/tag/classify: dropout before the output layer "
                                "(-1 = same as dropout).", min=-1.0, max=0.95)
    weight_dropout: float = opt(0.0, "DropConnect on the LSTM's hidden-to-hidden weights (every task; AWD-LSTM's "
                                "regulariser for LMs).", min=0.0, max=0.95)
    activation_reg: float = opt(0.0, "lm: activation regularisation (AWD-LSTM's alpha, 2 there): adds alpha × the "
                                "mean square of the top LSTM layer's outputs to the training loss.", min=0.0)
    temporal_activation_reg: float = opt(0.0, "lm: temporal activation regularisation (AWD-LSTM's beta, 1 there): "
                                         "adds beta × the mean square of the change of the top layer's output "
                                         "from one step to the next.", min=0.0)
    softmax: str = opt("full", "lm: output layer. adaptive = two-level softmax over frequency clusters of the "
                       "vocab (exact probabilities, 5-10x faster than full with 30k+ words).",
                       choices=("full", "adaptive"))
    softmax_cutoffs: list = opt([2000, 10000], "lm: adaptive softmax cluster boundaries (vocab ids; the vocab "
                                "is sorted by frequency).")


@dataclass
class TrainConfig:
    epochs: int = opt(5, "Passes over the training data.", min=1)
    batch_size: int = opt(32, "Sequences per batch (lm: parallel streams); per process under torchrun, so "
                                 "the global batch is this × the number of processes.", min=1)
    batch_tokens: int = opt(0, "classify/tag: cap padded tokens per batch instead (0 = use batch_size); per "
                                   "process under torchrun.", min=0)
    bptt: int = opt(70, "lm: tokens per truncated-BPTT segment.", min=2)
    random_bptt: bool = opt(True, "lm: vary segment length randomly around bptt (AWD-LSTM style).")
    lr: float = opt(2e-3, "Peak learning rate for AdamW.", min=0.0, min_exclusive=True)
    weight_decay: float = opt(0.01, "AdamW weight decay.", min=0.0)
    clip: float = opt(1.0, "Clip gradient norm to this value (0 = off).", min=0.0)
    schedule: str = opt("linear", "LR schedule after warmup.", choices=("constant", "linear", "cosine", "plateau"))
    anneal_by_time: bool = opt(False, "linear/cosine schedule with max_minutes: the schedule's progress is the larger "
                               "of steps done / all steps and minutes / max_minutes, so the LR anneals fully within "
                               "the time budget on any machine (results then depend on the machine's speed).")
    warmup: float = opt(0.02, "Warmup as a fraction of all steps.", min=0.0, max=0.5)
    patience: int = opt(2, "Stop after this many evaluations without dev improvement (0 = never).", min=0)
    eval_every: int = opt(0, "Evaluate on dev every N steps (0 = once per epoch).", min=0)
    checkpoint_every: int = opt(200, "Write the resume checkpoint every N steps.", min=1)
    max_steps: int = opt(0, "Stop after this many optimizer steps (0 = no limit).", min=0)
    max_minutes: float = opt(0.0, "Stop after this much training time (0 = no limit).", min=0.0)
    seed: int = opt(1, "Seed for data order, dropout and initialisation.", min=0, max=2**32 - 1)
    threads: int = opt(0, "CPU threads for torch (0 = all cores; under torchrun, shared among the machine's "
                          "processes).", min=0)
    device: str = opt("auto", "auto (CUDA when present), cpu or cuda: the first visible GPU (another: set "
                      "CUDA_VISIBLE_DEVICES=N; under torchrun, each process takes GPU LOCAL_RANK).",
                      choices=("auto", "cpu", "cuda"))
    bf16: bool = opt(False, "bf16 autocast for training steps (CUDA, or CPUs with AVX512-BF16/AMX: "
                            "faster LSTM and output-layer matmuls, see benchmarks/README.md); evaluation stays fp32. "
                            "Where the CPU cannot run bf16 (AVX2 only), training warns and runs in fp32.")
    freeze_epochs: int = opt(0, "Transfer: train only the head for this many epochs, then unfreeze.", min=0)
    encoder_lr_factor: float = opt(1.0, "Transfer: encoder/embedding LR = lr × this factor "
                                   "(discriminative fine-tuning).", min=0.0, min_exclusive=True)
    parallel_members: int = opt(1, "[model] ensemble: train this many members at once, in separate processes that "
                                "share [train] threads (2 on 2 cores: 4 CoNLL taggers trained 1.9× faster than one "
                                "at a time, benchmarks/README.md). Under torchrun the members train one after "
                                "another.", min=1)
    ema_decay: float = opt(0.0, "Keep an exponential moving average of the weights with this decay per step and "
                           "evaluate/save it instead of the raw weights (0 = off). Averaging cancels SGD noise: "
                           "0.999 (a ~1,000-step horizon) for the LM recipes.", min=0.0, max=0.99999)
    max_bad_steps: int = opt(0, "Skip up to this many steps whose loss (or gradient norm, with clip > 0 or "
                                "under torchrun) is not finite before stopping (0 = stop at once). Under torchrun "
                                "every rank skips a step whose loss is non-finite on any rank.",
                             min=0)
    sparse_embeddings: bool = opt(False, "Update only the word-embedding rows each batch uses (sparse "
                                  "gradients, lazy AdamW: rows of absent words get no momentum or weight-decay "
                                  "step). On CPU it skips a pass over the whole matrix per step (~6 % of an IMDB "
                                  "step at 50k × 128); needs an embedding not tied to an output layer.")


@dataclass
class OutputConfig:
    dir: str | None = opt(None, "Run directory (default runs/<name>).")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "vocab": VocabConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "output": OutputConfig,
}
TOP_LEVEL = {
    "task": "Which task: classify, tag or lm.",
    "name": "Run name (default: the recipe file name without .toml; for a file named recipe.toml, "
            "its folder's name; 'run' for a recipe given as a dict).",
    "init_from": "Run directory of a trained model (e.g. an LM) whose embedding and encoder "
                 "initialise this one (an LM from an LM: its output layer too, to fine-tune it on new "
                 "text); its [tokenizer] and [vocab] replace the recipe's. Relative to "
                 "the working directory; the run's saved recipe holds it absolute.",
}


@dataclass
class Recipe:
    """A validated recipe (build it with :func:`load_recipe`): ``task``, ``name``, ``init_from``
    and one dataclass per section, ``data``, ``tokenizer``, ``vocab``, ``model``, ``train`` and
    ``output``. ``to_dict`` / ``to_toml`` write it back; ``output_dir`` is its run directory."""

    task: str
    name: str
    init_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: str = "<recipe>"  # where it was read from, for error messages (not saved)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"task": self.task, "name": self.name}
        if self.init_from:
            out["init_from"] = self.init_from
        for section in SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            out[section] = {k: v for k, v in values.items() if v is not None}
        return out

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir).expanduser() if self.output.dir else Path("runs") / self.name


# --------------------------------------------------------------------------- loading

def load_recipe(source: str | Path | dict, overrides: list[str] | dict | None = None) -> Recipe:
    """Read a recipe file (or dict), apply overrides (``["section.key=value", ...]`` or
    ``{"section.key": value}``), validate; return the :class:`Recipe`.

    Relative file paths (``[data] files``, ``tokenizer.model_file``, ``model.pretrained_vectors``)
    are resolved against the recipe file's folder (a dict's, and those given by an override,
    typed on a command line, against the working directory), so the saved resolved recipe works
    from any directory.
    """
    if isinstance(source, dict):
        raw, where, base = _deepcopy(source), "<recipe>", Path.cwd()
    else:
        path = Path(source)
        where, base = str(path), path.resolve().parent
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SeqtextError(f"{path}: no such recipe file") from None
        except IsADirectoryError:
            hint = f" (a run directory's recipe is {path / 'recipe.toml'})" if (path / "recipe.toml").is_file() else ""
            raise SeqtextError(f"{path}: is a directory; expected a recipe .toml file{hint}") from None
        except UnicodeDecodeError as e:
            raise SeqtextError(f"{path}: not valid UTF-8 (byte {e.start})") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SeqtextError(f"{path}: TOML syntax error: {e}") from None
        raw.setdefault("name", path.stem if path.name != "recipe.toml" else path.parent.name)
    if isinstance(overrides, str):  # one "section.key=value", not a sequence of characters
        overrides = [overrides]
    if isinstance(overrides, dict):
        if none := [k for k, v in overrides.items() if v is None]:
            raise SeqtextError(f"override {none[0]}: None is not a recipe value (leave the key out for its default)")
        overrides = [f"{k}={_toml_value(v)}" for k, v in overrides.items()]
    overridden = {apply_override(raw, item) for item in overrides or []}
    recipe = _build(raw, where, overridden)
    _resolve_paths(recipe, base, overridden)
    return recipe


def apply_override(raw: dict, item: str) -> str:
    """Apply one ``section.key=value`` override; the value is parsed as a TOML value. Returns the
    dotted key, so that a bad value is reported as the override's, not the file's."""
    if "=" not in item:
        raise SeqtextError(f"--set {item!r}: expected section.key=value")
    dotted, value_text = item.split("=", 1)
    parts = dotted.strip().split(".")
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()  # bare words are strings: --set tokenizer.kind=spacy
    if len(parts) == 1:
        if parts[0] in SECTIONS:
            example = dataclasses.fields(SECTIONS[parts[0]])[0].name
            raise SeqtextError(f"--set {dotted}: [{dotted}] is a section; expected section.key=value, "
                               f"e.g. {dotted}.{example}=...")
        if parts[0] not in TOP_LEVEL:
            raise SeqtextError(f"--set {dotted}: unknown key{_suggest(parts[0], [*TOP_LEVEL, *SECTIONS])}")
        raw[parts[0]] = value
        return parts[0]
    if len(parts) != 2:
        raise SeqtextError(f"--set {dotted}: expected section.key")
    section, key = parts
    if section not in SECTIONS:
        raise SeqtextError(f"--set {dotted}: unknown section [{section}]{_suggest(section, SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in names:
        raise SeqtextError(f"--set {dotted}: unknown key in [{section}]{_suggest(key, names)}")
    raw.setdefault(section, {})[key] = value
    return f"{section}.{key}"


def _build(raw: dict, where: str, overridden: set[str] = frozenset()) -> Recipe:
    for key in raw:
        if key not in TOP_LEVEL and key not in SECTIONS:
            raise SeqtextError(f"{where}: unknown key '{key}'{_suggest(key, [*TOP_LEVEL, *SECTIONS])}")
    task = raw.get("task")
    if task is None:
        raise SeqtextError(f"{where}: missing required key 'task' (one of {', '.join(TASKS)})")
    if task not in TASKS:
        raise SeqtextError(f"{_key_label('task', where, overridden)}: expected one of {', '.join(TASKS)}, got {task!r}"
                           f"{_suggest(str(task), TASKS)}")
    name = raw.get("name", "run")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise SeqtextError(f"{_key_label('name', where, overridden)}: expected a plain non-empty name, got {name!r}")
    init_from = raw.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise SeqtextError(f"{_key_label('init_from', where, overridden)}: expected a directory path string")
    sections = {}
    for section, cls in SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise SeqtextError(f"{where}: '{section}' must be a table [{section}]")
        sections[section] = _build_section(cls, table, section, where, overridden)
    recipe = Recipe(task=task, name=name, init_from=init_from, source=where, **sections)
    _check_consistency(recipe, where, overridden)
    return recipe


def _key_label(dotted: str, where: str, overridden: set[str]) -> str:
    """Where a key's value (``task``, ``model.hidden_size``) came from: the --set override that
    gave it, or the recipe file."""
    if dotted in overridden:
        return f"--set {dotted}"
    section, _, key = dotted.rpartition(".")
    return f"{where}: [{section}] {key}" if section else f"{where}: key '{key}'"


def _build_section(cls, table: dict, section: str, where: str, overridden: set[str] = frozenset()):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise SeqtextError(f"{where}: unknown key '{key}' in [{section}]{_suggest(key, fields)}")
        label = _key_label(f"{section}.{key}", where, overridden)
        values[key] = _check_value(value, hints[key], fields[key].metadata, label)
    return cls(**values)


def _check_value(value, hint, meta, label: str):
    types_ = _allowed_types(hint)
    if value is None and type(None) in types_:
        return None
    if float in types_ and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in types_:
        raise SeqtextError(f"{label}: expected {_type_name(types_)}, got {value!r}")
    if not isinstance(value, tuple(t for t in types_ if t is not type(None))):
        raise SeqtextError(f"{label}: expected {_type_name(types_)}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SeqtextError(f"{label}: expected a finite number, got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        relation = "greater than" if meta.get("min_exclusive") else "at least"
        raise SeqtextError(f"{label}: expected a value {relation} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise SeqtextError(f"{label}: expected a value at most {hi}, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise SeqtextError(f"{label}: expected one of {', '.join(choices)}, got {value!r}"
                           f"{_suggest(str(value), choices)}")
    return value


def _allowed_types(hint) -> tuple:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(typing.get_origin(a) or a for a in typing.get_args(hint))
    return (origin or hint,)


def _type_name(types_) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a table", list: "a list", type(None): "nothing"}
    return " or ".join(names.get(t, t.__name__) for t in types_ if t is not type(None))


def _check_consistency(recipe: Recipe, where: str, overridden: set[str] = frozenset()) -> None:
    from .data.vocab import Vocab

    d = recipe.data
    for split in [*d.splits, *d.files]:
        if split not in ("train", "dev", "test"):
            hint = " (did you mean 'dev'?)" if split.lower() in ("valid", "validation", "val", "eval") \
                else _suggest(split, ("train", "dev", "test"))
            raise SeqtextError(f"{where}: [data] split '{split}': expected train, dev or test{hint}")
    for split, path in d.files.items():
        if not isinstance(path, str):
            raise SeqtextError(f"{where}: [data] files.{split}: expected a file path string")
    for split, name in d.splits.items():
        if not isinstance(name, str):
            raise SeqtextError(f"{where}: [data] splits.{split}: expected a split name string")
    if -1 < recipe.model.output_dropout < 0:
        raise SeqtextError(f"{_key_label('model.output_dropout', where, overridden)}: expected -1 (same as dropout) "
                           f"or a value from 0 to 0.95, got {recipe.model.output_dropout!r}")
    cutoffs, specials = recipe.model.softmax_cutoffs, len(Vocab(()).itos)
    if 0 < recipe.vocab.max_size <= specials:
        raise SeqtextError(f"{_key_label('vocab.max_size', where, overridden)}: expected 0 (no limit) or more than "
                           f"the {specials} special tokens it includes, got {recipe.vocab.max_size}")
    label = _key_label("model.softmax_cutoffs", where, overridden)
    if not cutoffs or not all(isinstance(c, int) and not isinstance(c, bool) for c in cutoffs):
        raise SeqtextError(f"{label}: expected a non-empty list of integers, got {cutoffs!r}")
    if any(b <= a for a, b in itertools.pairwise(cutoffs)) or cutoffs[0] <= specials:
        raise SeqtextError(f"{label}: expected increasing ids above the {specials} specials, got {cutoffs!r}")


def _resolve_paths(recipe: Recipe, base: Path, overridden: set[str] = frozenset()) -> None:
    def resolve(p: str, key: str) -> str:
        if "://" in p:
            return p
        path = Path(p).expanduser()
        return str(path if path.is_absolute() else ((Path.cwd() if key in overridden else base) / path).resolve())

    recipe.data.files = {k: resolve(v, "data.files") for k, v in recipe.data.files.items()}
    if recipe.tokenizer.model_file:
        recipe.tokenizer.model_file = resolve(recipe.tokenizer.model_file, "tokenizer.model_file")
    if recipe.model.pretrained_vectors:
        recipe.model.pretrained_vectors = resolve(recipe.model.pretrained_vectors, "model.pretrained_vectors")


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


# --------------------------------------------------------------------------- writing

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        escaped = "".join(
            "\\\\" if c == "\\" else '\\"' if c == '"' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
            for c in v)
        return f'"{escaped}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def dumps_toml(d: dict) -> str:
    """Serialise a recipe dict (scalars at top, one level of tables) to TOML."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for section, table in d.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """The recipe reference table for README, generated from the declarations above."""
    out = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, doc in TOP_LEVEL.items():
        out.append(f"| `{key}` | | {doc} |")
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            shown = "" if default is None else _toml_value(default)
            doc = f.metadata["doc"]
            if f.metadata.get("choices"):
                doc += " One of: " + ", ".join(f.metadata["choices"]) + "."
            out.append(f"| `{section}.{f.name}` | `{shown}` | {doc} |")
    return "\n".join(out)
