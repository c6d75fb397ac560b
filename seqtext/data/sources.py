"""Where a recipe's data comes from: the Hugging Face hub, local files, or a --data-dir mirror.

Everything ends up as ``datasets.Dataset`` splits named ``train``, ``dev`` and ``test``.
Local json/csv/parquet/text files go through ``datasets.load_dataset`` so they are
Arrow-backed and memory-mapped, and later ``map`` results are cached on disk.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

from ..errors import SeqtextError, not_utf8
from ..io import open_data
from ..recipe import Recipe

SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "valid", "validation"), "test": ("test",)}
EXTENSIONS = (".jsonl.gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".conll", ".txt.gz")
DATA_DIR_ENV = "SEQTEXT_DATA_DIR"
TEXT_CHUNK_BYTES = 1 << 20  # text per Arrow table in the text loader (its 10 MB default: ~75 MB of transients)
WRITER_BATCH_ROWS = 100_000  # rows per record batch of a loaded file's Arrow cache (at most)

_carved: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # dev split -> the split it was carved from


def carved_from(ds) -> str | None:
    """``"train"`` for a dev split carved from train by :func:`load_splits`, else None: its rows
    are rows of the train data, which is where a data error must send the user."""
    return _carved.get(ds)


def source_rows(ds) -> np.ndarray | None:
    """For each row of ``ds``, its 0-based row in the data it was read from, or None where the two
    agree. A carved or ``max_examples``-sampled split is a selection of rows of the loaded file:
    datasets keeps that selection as an index column (composed over repeated selections)."""
    indices = getattr(ds, "_indices", None)
    return None if indices is None else indices.column(0).to_numpy()


def find_split_files(directory: Path, require_train: bool = True) -> dict[str, Path]:
    """Files named like train.jsonl.gz / valid.txt / test.csv in ``directory``, one per split."""
    directory = directory.expanduser()  # SEQTEXT_DATA_DIR="~/data" in a config file: no shell expands it
    if directory.is_file():
        raise SeqtextError(f"--data-dir {directory}: is a file; expected the directory that holds train.*, "
                           "dev.* and test.*")
    if not directory.is_dir():
        raise SeqtextError(f"--data-dir {directory}: no such directory")
    found: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        candidates = [directory / f"{alias}{ext}" for alias in aliases for ext in EXTENSIONS]
        candidates = [p for p in candidates if p.is_file()]
        if len(candidates) > 1:
            raise SeqtextError(f"--data-dir {directory}: {len(candidates)} files for the {split} split "
                               f"({', '.join(p.name for p in candidates)}); keep one")
        if candidates:
            found[split] = candidates[0]
    if require_train and "train" not in found:
        raise SeqtextError(f"--data-dir {directory}: no train file (expected e.g. train.jsonl.gz, "
                           f"train.txt, train.csv)")
    return found


STRUCTURED = ((".jsonl.gz", "json"), (".jsonl", "json"), (".json", "json"), (".csv", "csv"), (".parquet", "parquet"))


def file_format(path: Path, fmt: str, task: str) -> str:
    """The format to read ``path`` in. A JSON, CSV or Parquet extension says it (an LM recipe's
    ``format = "text"`` must not read a JSON file as lines of text); the recipe's ``fmt`` decides
    for other files (.txt, .tsv and .conll may hold text, table or CoNLL columns), and with
    ``auto`` their extension does: a tagger's .txt and .tsv files are CoNLL columns (a table cannot
    hold its token lists)."""
    name = path.name.lower()
    structured = next((kind for ext, kind in STRUCTURED if name.endswith(ext)), None)
    if structured or fmt != "auto":
        return structured or ("json" if fmt == "jsonl" else fmt)
    if name.endswith(".conll") or (task == "tag" and name.endswith((".tsv", ".txt", ".txt.gz"))):
        return "conll"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".txt", ".txt.gz")):
        return "text"
    raise SeqtextError(f"{path}: cannot tell the file format from the extension; set [data] format")


def load_splits(recipe: Recipe, data_dir: str | Path | None = None,
                only: tuple[str, ...] | None = None) -> dict:
    """Load train/dev/test as datasets.Dataset objects (``only`` limits which are loaded): from
    ``data_dir`` when given, else the recipe's [data] files, else its hub dataset."""
    d = recipe.data
    if data_dir:
        files = find_split_files(Path(data_dir), require_train=not only or bool({"train", "dev"} & set(only)))
    elif d.files:
        files = {k: Path(v) for k, v in d.files.items()}
    elif d.hub:
        return _load_hub(recipe, only)
    else:
        raise SeqtextError(f"{recipe.source}: [data] names no source: set hub = '...' or files = {{...}}, "
                           f"or pass --data-dir")
    if only:
        files = {k: v for k, v in files.items() if _needed(k, only)}
    splits = {split: load_file(path, d.format, recipe) for split, path in files.items()}
    return _finish(recipe, splits, only)


def _needed(split: str, only: tuple[str, ...]) -> bool:
    """Whether ``split`` must be loaded to give the splits ``only``: dev may be carved from train,
    and train is what is left after carving unless there is a dev split."""
    return split in only or (split == "train" and "dev" in only) or (split == "dev" and "train" in only)


def load_file(path: Path, fmt: str, recipe: Recipe):
    """Load one local file as a Dataset with clear errors for missing/empty/undecodable files."""
    import datasets

    path = Path(path)
    if path.is_dir():
        raise SeqtextError(f"{path}: is a directory; expected a data file")
    if not path.is_file():
        raise SeqtextError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise SeqtextError(f"{path}: file is empty")
    kind = file_format(path, fmt, recipe.task)
    if kind == "conll":
        return _load_conll(path, recipe)
    # TSV fields are taken as they are: a stray quote must not swallow the rows after it (no
    # quoting, as in CoNLL-style tab files); text files may start with a byte-order mark
    builder, kwargs = {"json": ("json", {}), "csv": ("csv", {}), "tsv": ("csv", {"delimiter": "\t", "quoting": 3}),
                       "parquet": ("parquet", {}),
                       "text": ("text", {"chunksize": TEXT_CHUNK_BYTES, "encoding": "utf-8-sig"})}[kind]
    # Record batches as large as the loader's chunks: opening the Arrow cache file reads each batch's
    # header, and the kernel maps ~64 KB of file around every read, so with the default 1000-row
    # batches most of the file would be resident right after loading.
    kwargs["writer_batch_size"] = WRITER_BATCH_ROWS
    _check_utf8(path, kind)
    # datasets keys its Arrow cache by the file's path and modification time only: the content's
    # digest (in a config field datasets hashes into the key and otherwise ignores) makes a file
    # replaced by another with the same time (cp -p, rsync -t) read again
    kwargs["description"] = f"seqtext content {content_digest(path)}"
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser-failure log repeats our error
    try:
        ds = datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as e:  # noqa: BLE001 — datasets/pyarrow raise many types; summarise as one line
        if "corresponds to no data" in str(e):  # datasets' words for a file with a header and no rows
            raise SeqtextError(f"{path}: no examples") from None
        cause = e.__cause__ or e  # datasets wraps the parser's error in "An error occurred while generating"
        msg = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else type(cause).__name__
        if kind == "json" and (bad := _bad_json_line(path)):  # pyarrow's "in row N" counts within a block, from 0
            raise SeqtextError(f"{path}:{bad[0]}: not valid JSON ({bad[1]})") from None
        raise SeqtextError(f"{path}: could not read as {kind} ({msg})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    if len(ds) == 0:
        raise SeqtextError(f"{path}: no examples")
    return ds


def _conll_rows_keyed(stamp, **kwargs):
    """conll_rows with a ``stamp`` argument that only keys the cache (datasets hashes the arguments)."""
    from .conll import conll_rows

    yield from conll_rows(**kwargs)


def _load_conll(path: Path, recipe: Recipe):
    """A CoNLL column file as a memory-mapped Arrow dataset, parsed once: the Arrow file is cached
    under the file's path, size, modification time and content digest, so later runs (and their ``map`` caches)
    reuse it, and the sentences are streamed into it rather than held in Python lists."""
    import datasets

    from .conll import CACHE_VERSION

    d = recipe.data
    stat = path.stat()
    columns = (d.tokens_column, d.tags_column)
    features = datasets.Features({c: datasets.Sequence(datasets.Value("string")) for c in columns})
    try:
        ds = datasets.Dataset.from_generator(
            _conll_rows_keyed, features=features, writer_batch_size=WRITER_BATCH_ROWS,
            gen_kwargs={"path": str(path.resolve()), "token_column": d.token_index, "tag_column": d.tag_index,
                        "documents": True, "names": columns,
                        "stamp": (stat.st_size, stat.st_mtime_ns, content_digest(path), CACHE_VERSION)})
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, SeqtextError):
            raise e.__cause__ from None
        raise SeqtextError(f"{path}: could not read as CoNLL columns ({e.__cause__ or e})") from None
    except ValueError as e:  # datasets: a generator that yields nothing "corresponds to no data"
        if "no data" not in str(e):
            raise
        ds = None
    if ds is None or len(ds) == 0:
        raise SeqtextError(f"{path}: no sentences found")
    return ds


def content_digest(path: Path) -> str:
    """A digest of the file's bytes (as stored: a .gz file's compressed bytes), to key caches by."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as e:
        raise SeqtextError(f"{path}: cannot read ({e.strerror or e})") from None
    return digest.hexdigest()


def _check_utf8(path: Path, kind: str) -> None:
    """Find the first undecodable line so the error can name it (pyarrow only says 'invalid')."""
    if kind == "parquet":
        return
    try:
        with open_data(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SeqtextError(f"{path}:{line_no}: {not_utf8(line, e)}") from None
    except (OSError, EOFError) as e:
        raise SeqtextError(f"{path}: cannot read ({e})") from None


def _bad_json_line(path: Path) -> tuple[int, str] | None:
    """The first line of a JSON Lines file that is not one JSON value, and what is wrong with it
    (None for a JSON document such as an array, or when every line parses)."""
    import json

    with open_data(path, "rt", encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line_no == 1 and line.lstrip().startswith("["):
                return None
            try:
                json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                return line_no, f"{e.msg} at column {e.colno}"
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One HTTPS request with a short timeout: any HTTP answer means the hub is there.

    datasets itself retries for ~25 s before failing offline; this lets us fail in seconds.
    """
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/datasets", method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _load_hub(recipe: Recipe, only) -> dict:
    import datasets

    d = recipe.data
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not offline and not _hub_reachable():
        raise SeqtextError(
            f"cannot reach the Hugging Face hub to load {d.hub!r}: pass --data-dir DIR (or set "
            f"{DATA_DIR_ENV}) with local train/test files, or set [data] files in the recipe")
    wanted = {k: v for k, v in d.splits.items() if not only or _needed(k, only)}
    try:
        splits = {k: datasets.load_dataset(d.hub, d.hub_config, split=v) for k, v in wanted.items()}
    except Exception as e:  # noqa: BLE001 — any hub failure becomes one actionable line
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SeqtextError(f"hub dataset {d.hub!r}: {msg} (use --data-dir for local files)") from None
    return _finish(recipe, splits, only)


def carve_dev(train, fraction: float, seed: int, block_size: int = 0):
    """Split ``train`` into (train, dev) with ``fraction`` of its rows in dev, seeded.

    ``block_size = 0`` takes scattered rows. Otherwise dev is whole runs of ``block_size`` consecutive
    rows, chosen at random, so that groups of related neighbouring rows (one movie's reviews, one
    document's sentences) rarely straddle train and dev: such a dev set, like a held-out test set,
    measures how a model does on groups it has not seen.
    """
    n = len(train)
    if n < 2:
        raise SeqtextError(f"train has {n} row{'s' if n != 1 else ''}: too few to carve a dev split from "
                           "(data.dev_fraction); add a dev file or split")
    if not block_size:
        parts = train.train_test_split(test_size=fraction, seed=seed, shuffle=True)
        return parts["train"], parts["test"]
    starts = np.arange(0, n, block_size)
    picked = max(1, round(fraction * n / block_size))
    if picked >= len(starts):
        raise SeqtextError(f"data.dev_block_size = {block_size} leaves no training rows: train has {n} rows; "
                           "expected a smaller block size or dev_fraction")
    dev_starts = np.sort(np.random.default_rng(seed).choice(starts, size=picked, replace=False))
    in_dev = np.zeros(n, dtype=bool)
    for start in dev_starts:
        in_dev[start:start + block_size] = True
    return train.select(np.flatnonzero(~in_dev)), train.select(np.flatnonzero(in_dev))


def _finish(recipe: Recipe, splits: dict, only) -> dict:
    """Carve a dev split from train if needed and apply max_examples."""
    d = recipe.data
    seed = d.split_seed or recipe.train.seed
    # carved for train too: `evaluate --split train` must score the rows training used, not dev's
    carved = "dev" not in splits and "train" in splits and (not only or "dev" in only or "train" in only)
    if carved:
        if recipe.task == "lm":
            raise SeqtextError(f"{recipe.source}: the language model needs a dev/valid file or split")
        splits["train"], splits["dev"] = carve_dev(splits["train"], d.dev_fraction, seed, d.dev_block_size)
    if d.max_examples:
        for k, ds in splits.items():
            if len(ds) > d.max_examples:
                ds = ds.shuffle(seed=seed) if recipe.task != "lm" else ds
                splits[k] = ds.select(range(d.max_examples))
    if only:
        splits = {k: v for k, v in splits.items() if k in only}
    if carved and "dev" in splits:
        _carved[splits["dev"]] = "train"
    return splits
