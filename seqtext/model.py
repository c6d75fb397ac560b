"""The model directory and the user-facing :class:`Model` (``seqtext.load(dir)``).

A model directory holds everything needed to predict and nothing that executes:

    recipe.toml          resolved recipe (``seqtext train DIR/recipe.toml`` reproduces the run)
    vocab.txt            one token per line, specials first
    tokenizer.model      sentencepiece model (sentencepiece tokenizers only)
    meta.json            labels and other task facts (tag scheme, char vocab, ...)
    weights.safetensors  best weights (safetensors: tensors only, no pickle)
    metrics.json(l)      final and per-evaluation metrics; curves.png
    checkpoint.safetensors  resume state (weights, optimizer, RNG; JSON in its metadata)

Only these names are ever read; stray files (a planted ``*.pt`` or ``*.bin``) are ignored.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from .data.tokenizers import SPM_FILE, build_tokenizer
from .data.vocab import VOCAB_FILE, Vocab
from .errors import SeqtextError, warn
from .io import inside, load_tensors, read_json, save_tensors, write_json, write_text
from .recipe import Recipe, load_recipe

RECIPE_FILE, META_FILE, WEIGHTS_FILE = "recipe.toml", "meta.json", "weights.safetensors"
METRICS_FILE, HISTORY_FILE, CURVES_FILE = "metrics.json", "metrics.jsonl", "curves.png"
CHECKPOINT_FILE = "checkpoint.safetensors"
# What a model directory holds (tokenizer.model for sentencepiece tokenizers only); nothing else is read.
MODEL_FILES = (RECIPE_FILE, META_FILE, VOCAB_FILE, WEIGHTS_FILE, SPM_FILE)


def task_class(name: str):
    if name == "classify":
        from .tasks.classify import ClassifyTask as cls
    elif name == "tag":
        from .tasks.tag import TagTask as cls
    elif name == "lm":
        from .tasks.lm import LMTask as cls
    else:
        raise SeqtextError(f"unknown task {name!r}")
    return cls


def is_device_name(name) -> bool:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, in any case: the devices seqtext takes."""
    return isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name.lower()) is not None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a torch device."""
    if not is_device_name(name):
        raise SeqtextError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    name = name.lower()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeqtextError(f"device {name!r}: no CUDA device is available")  # CLI, recipe, API or spaCy config
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def positive_int(value, name: str) -> int:
    """``value`` if it is an integer ≥ 1, else a one-line error naming ``name``."""
    if not is_positive_int(value):
        raise SeqtextError(f"{name}: expected an integer ≥ 1, got {value!r}")
    return value


def cpu_threads(threads: int = 0) -> int:
    """``threads``, or for 0 this process's share of the cores: all of them, shared among the
    processes torchrun started on this machine (each taking all of them would oversubscribe the
    cores: every thread waits at each step)."""
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return threads or max(1, len(os.sched_getaffinity(0)) // per_machine)


def set_threads(threads: int = 0) -> None:
    torch.set_num_threads(cpu_threads(threads))


def save_state_dict(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors refuses tensors that share storage (tied LM weights): store each once."""
    seen, tensors = {}, {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            metadata = {**(metadata or {}), f"tied:{k}": seen[key]}
            continue
        seen[key] = k
        tensors[k] = v
    save_tensors(path, tensors, metadata)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    for k, source in meta.items():
        if k.startswith("tied:"):
            tensors[k[5:]] = tensors[source]
    return tensors


def load_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """``net.load_state_dict(state)``, refusing in one line (naming ``source``) a state that does
    not fit the network built from the recipe: missing or unexpected tensors, or a tensor of
    another shape (weights of another run, or a vocab.txt changed since training)."""
    own = net.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        raise SeqtextError(f"{source}: weights do not match the recipe (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    for k, v in own.items():
        if state[k].shape != v.shape:
            raise SeqtextError(f"{source}: {k} has shape {tuple(state[k].shape)} where the recipe's model has "
                               f"{tuple(v.shape)}: weights of another run, or files changed since training")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise SeqtextError(f"{source}: {k} holds NaN or infinite values: a damaged file (training never "
                               "saves such weights)")
    net.load_state_dict(state)


def write_model_files(directory: Path, task) -> None:
    """Everything but weights and metrics: recipe, vocab, tokenizer, task facts (meta.json last:
    a resume takes the files as complete only when it is there)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_text(directory / RECIPE_FILE, task.recipe.to_toml())
    task.vocab.save(directory)
    task.tokenizer.save(directory)
    write_json(directory / META_FILE, {"task": task.name, **task.meta})


def check_model_dir(directory: str | Path, task: str | None = None, run: bool = True) -> Path:
    """``directory`` as a Path, if it holds a complete model (of ``task``, if given); ``run``: it is
    a training run's directory, where missing weights mean training has not finished."""
    path = Path(directory)
    if not path.is_dir():
        raise SeqtextError(f"{directory}: no such model directory")
    for name in (RECIPE_FILE, META_FILE, VOCAB_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            hint = " (training has not finished; resume with --resume)" if name == WEIGHTS_FILE and run else ""
            raise SeqtextError(f"{directory}: incomplete model directory, missing {name}{hint}")
    if task is not None:
        actual = read_json(path / META_FILE).get("task")
        if actual != task:
            raise SeqtextError(f"{directory}: is a {actual!r} model, this command needs a {task!r} model")
    return path


def refuse_ensemble(where: str, recipe, directory: str | Path) -> None:
    """Reusing a model's embedding and encoder needs one model, not an ensemble of them."""
    if recipe.model.ensemble > 1:
        raise SeqtextError(f"{where}: is an ensemble of {recipe.model.ensemble} models; initialise from one of "
                           f"them, e.g. {Path(directory) / 'members' / '1'}")


def load_task(directory: Path):
    recipe = load_recipe(inside(directory, RECIPE_FILE))
    meta = read_json(inside(directory, META_FILE))
    if not isinstance(meta, dict):
        raise SeqtextError(f"{directory / META_FILE}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("task") != recipe.task:
        raise SeqtextError(f"{directory}: meta.json and recipe.toml disagree about the task")
    tokenizer = build_tokenizer(recipe.tokenizer, directory, model_dir=True)
    vocab = Vocab.load(directory)
    meta = {k: v for k, v in meta.items() if k != "task"}
    return task_class(recipe.task)(recipe, tokenizer, vocab, meta)


class Model:
    """A trained seqtext model: ``predict``, ``evaluate`` and (language models) ``generate``.

    ``bf16``: run ``predict`` and ``evaluate`` under bf16 autocast (see :func:`load`)."""

    def __init__(self, directory: Path, task, net, device: torch.device, bf16: bool = False):
        self.directory, self.task, self.net, self.device = directory, task, net, device
        self.bf16 = bf16
        self.net.eval()

    def precision(self):
        """Context for this model's forward passes: bf16 autocast when loaded with ``bf16=True``
        (matmuls and LSTMs in bf16; tag scores, probabilities and losses still come out in fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def recipe(self) -> Recipe:
        """The resolved recipe the model was trained with."""
        return self.task.recipe

    def predict(self, texts: str | Iterable[str], batch_size: int = 64) -> list[dict]:
        """Predictions for raw texts (one text, or any iterable of them), ``batch_size`` texts per
        forward pass; one dict per text, in order.

        classify: ``{"label": str, "probs": {label: probability}}``.
        tag: ``{"entities": [{"text", "label", "start", "end"}], "tokens": [...], "tags": [...]}``;
        ``start``/``end`` are character offsets into the text (``end`` exclusive), tags in the
        data's scheme; each text is tagged sentence by sentence (spaCy's rule-based sentencizer)."""
        if not hasattr(self.task, "predict"):
            raise SeqtextError(f"{self.directory}: is a {self.task.name!r} model; predict needs a 'classify' or "
                               "'tag' model (use generate for a language model)")
        positive_int(batch_size, "batch_size")
        if isinstance(texts, str):
            texts = [texts]
        try:
            texts = list(texts)
        except TypeError:
            raise SeqtextError(f"texts: expected a string or an iterable of strings, got {type(texts).__name__}") \
                from None
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise SeqtextError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        with self.precision():
            return self.task.predict(self.net, texts, self.device, batch_size=batch_size)

    def evaluate(self, split: str = "test", data: str | None = None, data_dir: str | None = None,
                 **kw) -> dict:
        """Metrics on a split of the recipe's data (or ``data``, a file in the training format).

        Options by task (any other is an error): tag: ``mode`` ("default" or "strict", see
        TagTask.evaluate); lm: ``batch_size`` (parallel streams, default 10) and ``cache_size`` > 0
        to score with a continuous cache, whose ``cache_theta`` / ``cache_lambda``, when not given,
        are chosen on the dev split (:meth:`tune_cache`)."""
        options = set(inspect.signature(self.task.evaluate).parameters) - {"net", "data", "device"}
        if unknown := sorted(set(kw) - options):
            raise SeqtextError(f"evaluate: {', '.join(unknown)}: not an option for a {self.task.name!r} model "
                               f"(its options: {', '.join(sorted(options)) or 'none'})")
        if kw.get("batch_size") is not None:
            positive_int(kw["batch_size"], "batch_size")
        if kw.get("cache_size", 0) != 0:
            positive_int(kw["cache_size"], "cache_size")
        elif kw.get("cache_theta") is not None or kw.get("cache_lambda") is not None:
            raise SeqtextError("cache_theta and cache_lambda need cache_size (the cache they tune)")
        if kw.get("cache_size") and (kw.get("cache_theta") is None or kw.get("cache_lambda") is None):
            # the missing one is chosen for the given one, with the streams the score will use
            tuned = self.tune_cache(kw["cache_size"], data_dir, theta=kw.get("cache_theta"),
                                    lambda_=kw.get("cache_lambda"), batch_size=kw.get("batch_size"))
            kw["cache_theta"], kw["cache_lambda"] = tuned["theta"], tuned["lambda"]
        try:
            encoded = self._encoded(split, data, data_dir)
            with self.precision():
                return self.task.evaluate(self.net, encoded, self.device, **kw)
        except SeqtextError as e:  # a --data file's problem names the file, not the split it is scored as
            if not data or str(e).startswith(str(data)):
                raise
            msg, prefix = str(e), f"{split} data"
            if not msg.startswith(prefix):
                raise SeqtextError(f"{data}: {msg}") from None
            rest = msg[len(prefix):]  # ", row 3: ...", ": ..." or " has no ..."
            raise SeqtextError(f"{data}{rest}" if rest[:1] in ",:" else f"{data}:{rest}") from None

    def tune_cache(self, cache_size: int, data_dir: str | None = None, theta: float | None = None,
                   lambda_: float | None = None, batch_size: int | None = None) -> dict:
        """lm: pick the continuous cache's θ and λ on the recipe's dev split: ``{"theta", "lambda",
        ...}`` (see LMTask.tune_cache). A given ``theta`` or ``lambda_`` is kept and the other chosen
        for it; ``batch_size``: parallel streams, as for :meth:`evaluate` (default 10)."""
        if not hasattr(self.task, "tune_cache"):
            raise SeqtextError(f"{self.directory}: is a {self.task.name!r} model; the continuous cache is for 'lm' "
                               "models")
        positive_int(cache_size, "cache_size")
        if batch_size is not None:
            positive_int(batch_size, "batch_size")
        from .tasks.lm import CACHE_LAMBDAS, CACHE_THETAS

        dev = self._encoded("dev", None, data_dir, missing="choosing the cache's theta/lambda needs the recipe's "
                            "dev split; or pass --cache-theta and --cache-lambda")
        with self.precision():
            return self.task.tune_cache(self.net, dev, self.device, cache_size,
                                        thetas=CACHE_THETAS if theta is None else (theta,),
                                        lambdas=CACHE_LAMBDAS if lambda_ is None else (lambda_,),
                                        batch_size=batch_size)

    def _encoded(self, split: str, data: str | None, data_dir: str | None, missing: str = ""):
        """A split of the recipe's data (or the file ``data``), tokenized and numericalized."""
        from .data.sources import load_file, load_splits

        if data:
            raw = load_file(Path(data), self.recipe.data.format, self.recipe)
        else:
            splits = load_splits(self.recipe, data_dir, only=(split,))
            if split not in splits:
                raise SeqtextError(missing or f"the recipe's data has no {split!r} split; pass --data FILE")
            raw = splits[split]
        return self.task.encode_split(self.task.tokenize_split(raw, split), split)

    def generate(self, prompt: str = "", on_token=None, **options) -> list[dict]:
        """lm: continue ``prompt``; ``options`` are :class:`seqtext.generate.SamplingOptions`
        fields (``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``greedy``, ``num_samples``,
        ``seed``, ``allow_unk``); ``on_token(sample_index, text_piece)`` streams the text. Returns
        one dict per sample (see :meth:`seqtext.tasks.lm.LMTask.generate`)."""
        import dataclasses

        from .generate import SamplingOptions

        if not hasattr(self.task, "generate"):
            raise SeqtextError(f"{self.directory}: is a {self.task.name!r} model; generate needs an 'lm' model")
        if not isinstance(prompt, str):
            raise SeqtextError(f"prompt: expected a string, got {type(prompt).__name__}")
        fields = [f.name for f in dataclasses.fields(SamplingOptions)]
        if unknown := sorted(set(options) - set(fields)):
            raise SeqtextError(f"generate: {', '.join(unknown)}: not a sampling option (they are: {', '.join(fields)})")
        return self.task.generate(self.net, prompt, self.device, SamplingOptions(**options), on_token)

    def num_parameters(self) -> int:
        """Number of weights (all members of an ensemble)."""
        return sum(p.numel() for p in self.net.parameters())

    def metrics(self) -> dict:
        """The run's metrics.json: final ``dev`` / ``test`` scores and the ``train`` summary ({} if absent)."""
        path = self.directory / METRICS_FILE
        metrics = read_json(path) if path.is_file() else {}
        if not isinstance(metrics, dict) or not all(isinstance(metrics.get(k, {}), dict) for k in ("dev", "test")):
            raise SeqtextError(f"{path}: expected the JSON object training writes (dev and test scores as objects)")
        return metrics


def load(directory: str | Path, device: str = "auto", task: str | None = None, bf16: bool = False) -> Model:
    """Load a model directory (safetensors + text files only; nothing is unpickled).

    Args:
        directory: a ``seqtext train`` output directory.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        task: refuse other tasks' models (``classify``, ``tag``, ``lm``).
        bf16: predict and evaluate under bf16 autocast. Where bf16 is native (CUDA, CPUs with
            AVX512-BF16 or AMX) the CoNLL tagger ran at 1.5-1.8x the tokens/s with the same test F1
            (benchmarks/README.md, Results in full). Elsewhere it is slower and seqtext warns; on
            CPUs that cannot run bf16 at all (AVX2 only) it warns and runs in fp32. Default off: fp32.
    """
    path = check_model_dir(directory, task)
    dev = resolve_device(device)
    t = load_task(path)
    try:
        net = t.build_net()
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # an edited or foreign meta.json
        raise SeqtextError(f"{path / META_FILE}: does not describe this model ({type(e).__name__}: {e}); "
                           "expected the file training wrote") from None
    load_weights(net, load_state_dict(inside(path, WEIGHTS_FILE)), directory)
    from .hardware import bf16_setting

    bf16, bf16_warning = bf16_setting(bf16, dev, "bf16")
    if bf16_warning:
        warn(bf16_warning)
    if (path / CHECKPOINT_FILE).is_file() and not (path / METRICS_FILE).is_file():
        from .train import resume_command

        warn(f"{directory}: training has not finished (or was stopped): these are the best weights so far; "
             f"resume it with {resume_command(path)}")
    return Model(path, t, net.to(dev), dev, bf16=bf16)
