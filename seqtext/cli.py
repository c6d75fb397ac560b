"""The ``seqtext`` command line: a thin layer over the Python API.

Every user error (bad recipe, missing file, wrong model directory, bad option value) is
printed as one ``error: ...`` line and exits with status 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import traceback
from pathlib import Path

import click

from .data.sources import DATA_DIR_ENV
from .errors import Interrupted, RankError, SeqtextError, not_utf8, speaks_for_machine

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")
# how gloo reports a collective whose peer process exited (killed, crashed, or stopped by its own error)
_PEER_GONE_MARKERS = ("closed by peer", "reset by peer")


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a bad option or argument: one line, as for bad input
            command = f"seqtext {e.ctx.info_name}" if e.ctx is not None and e.ctx.parent is not None else "seqtext"
            self._fail(ctx, f"{e.format_message()} (see '{command} --help')")
        except Interrupted as e:
            if str(e):  # under torchrun only rank 0 explains
                click.echo(str(e), err=True)
            ctx.exit(130)
        except SeqtextError as e:
            if not str(e):  # under torchrun, another process failed first and said why
                ctx.exit(2)
            self._fail(ctx, str(e), every_process=isinstance(e, RankError))
        except OSError as e:  # the filesystem said no: a read-only or full disk, a file where a folder goes
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # a write or fsync names no file
                self._fail(ctx, f"{e.filename or 'writing'}: {e.strerror}; free some space (a killed or "
                                "interrupted training resumes with --resume)")
            if e.filename is None:
                raise
            # a rename's source is a temporary file of atomic_write: the target is the user's file
            self._fail(ctx, f"{e.filename2 or e.filename}: {e.strerror or e}")
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, MemoryError) or any(m in str(e).lower() for m in _OOM_MARKERS):
                self._fail(ctx, "out of memory: lower [train] batch_size or batch_tokens (e.g. --set "
                                "train.batch_size=16), the [model] sizes, or for a classifier [data] max_length",
                           every_process=True)
            if "WORLD_SIZE" in os.environ and any(m in str(e) for m in _PEER_GONE_MARKERS):
                self._fail(ctx, "another process of this torchrun job stopped (torchrun's summary below names it; "
                                "its own error, if it printed one, is above); resume from the last checkpoint "
                                "with --resume", every_process=True)
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)

    @staticmethod
    def _fail(ctx, message: str, every_process: bool = False):
        debug = ctx.obj and ctx.obj.get("debug")
        if debug:
            traceback.print_exc()
        # Under torchrun every process of a machine runs the same command on the same files, so an
        # error (a bad recipe, option or run directory) comes from all of them: the machine's first
        # process says it. Errors about a process's own state (its loss, its memory) are said by each.
        if not every_process and not debug and not speaks_for_machine():
            ctx.exit(2)
        click.echo(f"error: {message.splitlines()[0] if message else 'failed'}", err=True)
        ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="seqtext")
@click.pass_context
def main(ctx, debug):
    """seqtext: BiLSTM text classification, NER tagging and language modelling from TOML recipes.

    \b
    Typical use:
      seqtext train recipes/demo_sentiment.toml
      seqtext evaluate runs/demo_sentiment
      seqtext predict runs/demo_sentiment "A wonderful, moving film."
    """
    ctx.ensure_object(dict)["debug"] = debug
    world = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1  # as distributed.init reads it
    if ctx.invoked_subcommand not in (None, "train") and world > 1:
        # each process would do all of the work and print it again (export-spacy: all writing one directory)
        raise SeqtextError(f"seqtext {ctx.invoked_subcommand} runs in one process, and RANK/WORLD_SIZE say this is "
                           f"one of torchrun's {world}: start it without torchrun (only 'seqtext train' uses its "
                           "processes)")


# ---------------------------------------------------------------------- train
@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a recipe value (repeatable), e.g. --set train.epochs=3.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Run/model directory (default: the recipe's [output] dir, else runs/<recipe name>).")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar=DATA_DIR_ENV,
              help="Directory with local train/dev/test files used instead of the recipe's source "
                   "(env SEQTEXT_DATA_DIR).")
@click.option("--resume", is_flag=True, help="Continue the run in the output directory from its last checkpoint.")
@click.option("--force", is_flag=True, help="Overwrite an output directory that holds another run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Override train.device.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or log lines.")
def train(recipe, overrides, output, data_dir, resume, force, device, quiet):
    """Train a model from a TOML RECIPE and write its model directory.

    Prints progress (loss, tokens/s, MFU) and dev metrics; Ctrl-C saves a checkpoint that
    --resume continues from.

    Under torchrun the processes train one model (DDP; only rank 0 prints and writes files).
    [train] batch_size is per process, and --resume needs the number of processes the run
    started with.

    \b
    Examples:
      seqtext train recipes/demo_sentiment.toml
      seqtext train recipes/imdb_sentiment.toml --data-dir ../data/imdb --set model.ensemble=1 -o runs/imdb1
      seqtext train runs/imdb1/recipe.toml --resume      # continue an interrupted run
      torchrun --standalone --nproc_per_node 2 -m seqtext train recipes/demo_sentiment.toml
    """
    from .train import train as run

    out = run(recipe, list(overrides), output=output, data_dir=data_dir, resume=resume, force=force,
              device=device, quiet=quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        click.echo(str(out))


device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where to run the model: auto = CUDA when available, else CPU.")
bf16_option = click.option(
    "--bf16", is_flag=True,
    help="Run the model under bf16 autocast: 1.5-1.8x the tokens/s where bf16 is native (CUDA, CPUs with "
         "AVX512-BF16/AMX; the CoNLL tagger's test F1 was unchanged), slower on other AVX-512 CPUs; fp32 "
         "with a warning on CPUs that cannot run bf16 (AVX2 only).")


# ---------------------------------------------------------------------- evaluate
@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "dev", "test"]),
              help="Split of the recipe's data to score.")
@click.option("--data", "data_file", type=click.Path(path_type=Path), help="Score this file instead.")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar=DATA_DIR_ENV,
              help="Directory with local copies of the recipe's data (env SEQTEXT_DATA_DIR).")
@click.option("--mode", type=click.Choice(["default", "strict"]), default="default", show_default=True,
              help="tag: seqeval mode (default = conlleval-compatible).")
@click.option("--cache-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="lm: also score with a continuous cache of this many recent positions per stream "
                   "(Grave et al. 2017; try 2000). Adds cache_perplexity; perplexity stays the model's own.")
@click.option("--cache-theta", type=click.FloatRange(min=0.0), help="lm: cache flatness θ (default: chosen on dev).")
@click.option("--cache-lambda", type=click.FloatRange(min=0.0, max=1.0, max_open=True),
              help="lm: cache interpolation weight λ (default: chosen on dev).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@device_option
@bf16_option
def evaluate(model_dir, split, data_file, data_dir, mode, cache_size, cache_theta, cache_lambda, as_json, device,
             bf16):
    """Score a trained model: accuracy/F1 (classify), entity F1 (tag) or perplexity (lm).

    \b
    Examples:
      seqtext evaluate runs/demo_sentiment                 # the recipe's test split
      seqtext evaluate runs/conll2003_ner --split dev --mode strict --json
      seqtext evaluate runs/demo_sentiment --data more_reviews.jsonl
      seqtext evaluate runs/wikitext2_lm --cache-size 2000
    """
    from .model import load

    if data_file is not None and split != "test":
        raise SeqtextError("--split and --data: give one (--data scores that file instead of a split)")
    if cache_theta is not None and not math.isfinite(cache_theta):
        raise SeqtextError(f"--cache-theta: expected a finite number ≥ 0, got {cache_theta}")
    if (cache_theta is not None or cache_lambda is not None) and not cache_size:
        raise SeqtextError("--cache-theta and --cache-lambda need --cache-size N (the cache they tune)")
    model = load(model_dir, device, bf16=bf16)
    if mode != "default" and model.task.name != "tag":
        raise SeqtextError(f"--mode: only for taggers (seqeval's entity matching); {model_dir} is a "
                           f"{model.task.name} model")
    if cache_size and model.task.name != "lm":
        raise SeqtextError(f"--cache-size: only for language models; {model_dir} is a {model.task.name} model")
    kw = {"mode": mode} if model.task.name == "tag" else {}
    if cache_size:
        kw.update(cache_size=cache_size, cache_theta=cache_theta, cache_lambda=cache_lambda)
    metrics = model.evaluate(split=split, data=str(data_file) if data_file else None,
                             data_dir=str(data_dir) if data_dir else None, **kw)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    _print_metrics(metrics)


def _print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        if isinstance(v, float):
            click.echo(f"{k:>18}: {v:.4f}")
        elif isinstance(v, int):
            click.echo(f"{k:>18}: {v}")
    if "cache" in metrics:
        click.echo(f"{'cache':>18}: " + ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:g}"
                                              for k, v in metrics["cache"].items()))
    for table in ("per_class", "per_type"):
        if table in metrics:
            click.echo(f"\n{'':>18}  precision  recall      f1  support")
            for name, m in metrics[table].items():
                click.echo(f"{name:>18}  {m['precision']:9.4f} {m['recall']:7.4f} {m['f1']:7.4f} {m['support']:8d}")
    if "confusion_matrix" in metrics:
        click.echo("\nconfusion matrix (rows: gold, columns: predicted)")
        for row in metrics["confusion_matrix"]:
            click.echo("  " + " ".join(f"{x:7d}" for x in row))


# ---------------------------------------------------------------------- predict
def _read_inputs(texts, file) -> list[str] | None:
    if file is not None:
        if texts:
            raise SeqtextError("give TEXTS or --file, not both")
        return None
    if texts == ("-",):
        return None  # streamed: _stdin_chunks
    return list(texts)


def _stdin_chunks():
    """stdin's lines as _chunks gives a file's: a pipe 1,000 lines at a time, a terminal line by line
    (each answer as soon as its line is typed)."""
    empty = True
    for chunk in _chunks(sys.stdin.buffer, "stdin", 1 if sys.stdin.isatty() else 1000):
        empty = False
        yield chunk
    if empty:
        raise SeqtextError("no input: stdin ('-') was empty")


def _chunks(handle, name, size: int = 1000):
    """Yield lists of up to ``size`` decoded lines from a binary file (bounded memory)."""
    chunk = []
    for line_no, raw in enumerate(handle, 1):
        try:
            chunk.append(raw.decode("utf-8").removeprefix("\ufeff" if line_no == 1 else "").rstrip("\r\n"))  # no BOM
        except UnicodeDecodeError as e:
            raise SeqtextError(f"{name}:{line_no}: {not_utf8(raw, e)}") from None
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", "-f", type=click.Path(dir_okay=False, path_type=Path),
              help="Read inputs from a file (one text per line; CoNLL with --format conll).")
@click.option("--format", "fmt", type=click.Choice(["text", "conll"]), default="text", show_default=True,
              help="tag: input file format.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="tag + conll: write the input columns plus a predicted tag column here.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Texts per forward pass.")
@device_option
@bf16_option
def predict(model_dir, texts, file, fmt, output, as_json, batch_size, device, bf16):
    """Predict labels (classify) or entities (tag) for TEXTS, a --file, or stdin ('-').

    One output line per input line, in order (a tagger's text output adds an indented '->' line
    of entities after each; --json gives one line each). A tagger reads each line sentence by
    sentence, split as spaCy's rule-based sentencizer splits. A --file or piped stdin is read 1,000 lines
    at a time, so large inputs use bounded memory (stdin from a terminal: each line is answered as it is
    typed); --batch-size is the number of texts per forward pass.

    \b
    Examples:
      seqtext predict runs/demo_sentiment "A wonderful, moving film." "Dull."
      seqtext predict runs/demo_sentiment --file reviews.txt --json > predictions.jsonl
      cat reviews.txt | seqtext predict runs/demo_sentiment -
      seqtext predict runs/conll2003_ner --format conll --file test.txt -o tagged.txt
    """
    from .model import load

    if output is not None and fmt != "conll":
        raise SeqtextError("--output writes tagged CoNLL files (--format conll --file F); other predictions go "
                           "to stdout")
    if fmt == "conll" and texts:
        raise SeqtextError("--format conll reads --file; give no TEXTS")
    model = load(model_dir, device, bf16=bf16)
    if model.task.name == "lm":
        raise SeqtextError(f"{model_dir}: is a language model; use 'seqtext generate --model {model_dir}'")
    if fmt == "conll":
        if model.task.name != "tag" or file is None:
            raise SeqtextError("--format conll needs a tagger model and --file")
        with model.precision():
            n = model.task.predict_conll(model.net, file, output, model.device, batch_size=batch_size)
        if output:
            click.echo(f"wrote {n} sentences to {output}", err=True)
        return
    inputs = _read_inputs(texts, file)
    if inputs == []:
        raise SeqtextError("no input: give TEXTS, --file FILE, or '-' for stdin")
    if file is not None and not file.is_file():
        raise SeqtextError(f"{file}: no such file")
    with contextlib.ExitStack() as stack:
        if file is not None:
            from tqdm import tqdm

            handle = stack.enter_context(open(file, "rb"))
            # bytes read, on stderr when it is a terminal (disable=None) and the results go elsewhere
            # (on the same terminal, bar and results would garble each other)
            bar = stack.enter_context(tqdm(total=file.stat().st_size, unit="B", unit_scale=True, desc="predict",
                                           disable=True if sys.stdout.isatty() else None, leave=False))
            source = _chunks(handle, file)
        elif inputs is None:
            bar, source = None, _stdin_chunks()
        else:
            bar, source = None, [inputs]
        for chunk in source:
            for text, result in zip(chunk, model.predict(chunk, batch_size=batch_size)):
                click.echo(json.dumps({"text": text, **result}) if as_json else _format_result(text, result))
            if bar is not None:
                bar.update(handle.tell() - bar.n)


def _format_result(text: str, result: dict) -> str:
    if "label" in result:
        return f"{result['label']}\t{result['probs'][result['label']]:.4f}\t{text}"
    ents = ", ".join(f"{e['text']} [{e['label']}] {e['start']}-{e['end']}" for e in result.get("entities", []))
    return f"{text}\n  -> {ents or '(no entities)'}"


# ---------------------------------------------------------------------- generate
@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Language-model directory (default: runs/wikitext2_lm, the output of recipes/wikitext2_lm.toml).")
@click.option("--prompt", default="", help="Text to continue (empty: start a new line, i.e. after <eos>).")
@click.option("--max-tokens", default=50, show_default=True, type=int, help="Tokens to generate per sample (≥ 0).")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="Softmax temperature (> 0); 0.7–0.9 reads more fluently.")
@click.option("--top-k", default=0, show_default=True, type=int, help="Sample from the k most likely tokens (0 = off).")
@click.option("--top-p", default=1.0, show_default=True, type=float,
              help="Nucleus sampling: smallest token set with probability ≥ p, in (0, 1] (1 = off).")
@click.option("--num-samples", default=1, show_default=True, type=int, help="Independent continuations.")
@click.option("--seed", type=int, help="Sampling seed: the same seed gives the same text.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token.")
@click.option("--allow-unk", is_flag=True, help="Allow <unk> to be generated (off by default).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per sample instead of streaming text.")
@device_option
def generate(model_dir, prompt, max_tokens, temperature, top_k, top_p, num_samples, seed, greedy, allow_unk,
             as_json, device):
    """Continue --prompt with a trained language model, streaming tokens to stdout.

    The prompt is read by the LSTM once; sampling then carries the state token by token.
    Generation speed (tokens/s) is printed to stderr.

    \b
    Examples:
      seqtext generate --prompt "I like to eat pizza"          # runs/wikitext2_lm
      seqtext generate --model runs/demo_lm --prompt "the cat" --top-p 0.9 --num-samples 3 --seed 1
      seqtext generate --model runs/demo_lm --prompt "the cat" --greedy --max-tokens 20
    """
    from .generate import DEFAULT_MODEL_DIR, DEFAULT_RECIPE, SamplingOptions
    from .model import load

    options = {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
               "greedy": greedy, "num_samples": num_samples, "seed": seed, "allow_unk": allow_unk}
    SamplingOptions(**options).validate(cli=True)
    if greedy and (temperature != 1.0 or top_k != 0 or top_p != 1.0):
        raise SeqtextError("--greedy always takes the most likely token: leave out --temperature, --top-k and --top-p")
    if model_dir is None:
        model_dir = Path(DEFAULT_MODEL_DIR)
        if not model_dir.exists():
            raise SeqtextError(f"no language model at {DEFAULT_MODEL_DIR}; create it with: seqtext train "
                               f"{DEFAULT_RECIPE} --data-dir DIR (a local WikiText-2 copy; or omit --data-dir to "
                               f"download it), or pass --model DIR")
    model = load(model_dir, device, task="lm")
    state = {"current": -1, "line_open": bool(prompt) and not prompt.endswith("\n")}

    def on_token(i: int, piece: str) -> None:
        if as_json:
            return
        if i != state["current"]:  # a new sample starts: echo the prompt first
            if i > 0:  # the separator on a line of its own, whether or not the sample ended one
                click.echo(("\n" if state["line_open"] else "") + "-" * 40)
            state["current"] = i
            click.echo(prompt, nl=False)
            state["line_open"] = bool(prompt) and not prompt.endswith("\n")
        click.echo(piece, nl=False)
        if piece:
            state["line_open"] = not piece.endswith("\n")

    try:
        results = model.generate(prompt, on_token=on_token, **options)
    except KeyboardInterrupt:
        if state["line_open"] and state["current"] >= 0:  # end the text's line before 'interrupted'
            click.echo()
        raise
    if as_json:
        for r in results:
            click.echo(json.dumps({"prompt": prompt, **r}))
        return
    if state["current"] < 0:  # nothing generated (--max-tokens 0)
        click.echo(prompt, nl=False)
    if not (results[-1]["text"] or prompt).endswith("\n"):
        click.echo()
    n = sum(len(r["tokens"]) for r in results)
    seconds = sum(r["seconds"] for r in results)
    click.echo(f"[{n} tokens in {seconds:.2f}s, {n / max(seconds, 1e-9):.0f} tokens/s]", err=True)


# ---------------------------------------------------------------------- info
@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model_dir, as_json):
    """Summarise a model directory: task, recipe, size, labels and metrics."""
    from .model import load

    model = load(model_dir, "cpu")
    r = model.recipe
    metrics = model.metrics()
    summary = {
        "directory": str(model_dir), "task": r.task, "name": r.name,
        "parameters": model.num_parameters(), "vocab_size": len(model.task.vocab),
        "tokenizer": r.tokenizer.kind,
        "data": dict(r.data.files) or {"hub": r.data.hub, "config": r.data.hub_config},
        "model": {k: v for k, v in r.to_dict()["model"].items()},
        "labels": model.task.meta.get("labels"),
        "dev": {k: v for k, v in metrics.get("dev", {}).items() if isinstance(v, (int, float))},
        "test": {k: v for k, v in metrics.get("test", {}).items() if isinstance(v, (int, float))},
        "train": metrics.get("train", {}),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"{summary['directory']}: {r.task} model '{r.name}'")
    click.echo(f"  parameters: {summary['parameters']:,}   vocab: {summary['vocab_size']:,} ({r.tokenizer.kind})")
    data = summary["data"]
    click.echo("  data: " + (", ".join(f"{k} {v}" for k, v in data.items()) if r.data.files else
                             f"hub {data['hub']}" + (f" ({data['config']})" if data["config"] else "")))
    m = r.model
    click.echo(f"  encoder: {m.layers} layer(s), hidden {m.hidden_size}, "
               f"{'bi' if m.bidirectional else 'uni'}directional, embedding {m.embedding_dim}")
    if m.ensemble > 1:
        kind = "taggers" if model.task.name == "tag" else "classifiers"
        click.echo(f"  ensemble: {m.ensemble} {kind} (seeds {r.train.seed}-{r.train.seed + m.ensemble - 1}) in "
                   f"{summary['directory']}/members/")
    if summary["labels"]:
        click.echo(f"  labels: {', '.join(summary['labels'])}")
    for split in ("dev", "test"):
        if summary[split]:
            click.echo(f"  {split}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in summary[split].items()))
    if summary["train"]:
        t = summary["train"]
        click.echo(f"  training: {t.get('steps')} steps, {t.get('seconds', 0):.0f}s, "
                   f"{t.get('tokens_per_second', 0) / 1000:.1f}k tokens/s")


# ---------------------------------------------------------------------- export-spacy
@main.command("export-spacy")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--lang", help="spaCy language of the pipeline's tokenizer (default: the model's [tokenizer] lang, "
                             "usually en).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
def export_spacy(model_dir, out_dir, lang, force):
    """Write a spaCy pipeline directory that runs a tagger (seqtext_ner) or classifier (seqtext_textcat).

    \b
    spacy.load(OUT_DIR) opens it; it holds its own copy of the weights and vocabulary, so
    MODEL_DIR is not needed afterwards. Written beside OUT_DIR first, then renamed into place.
    """
    from .spacy_ext import export_pipeline

    click.echo(str(export_pipeline(model_dir, out_dir, lang=lang, force=force)))


if __name__ == "__main__":
    main()
