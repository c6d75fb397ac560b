"""A training step with one of its speed-ups switched off vs on, interleaved batch by batch on the
same batches (all are on by default; each is tested). The tagger's are exact up to rounding:

- ``--compare dedup``: the char CNN over every token vs over each distinct word of a batch once
  (``CharCNN.dedup``);
- ``--compare table``: the char CNN's convolution as a matrix product over each character's
  window vs as a sum of per-character table rows (``CharCNN.window_table``);
- ``--compare split``: tag scores of the concatenated BiLSTM states vs of each direction, with
  the backward direction's scores reversed instead of its states (``TaggerHead.split_directions``);
- ``--compare layout``: tag scores by ``F.linear`` on the batch-first states vs on the time-major
  tensor they are a view of (``TaggerHead.as_stored``, ``heads.linear_as_stored``).

The language model's draws its random numbers differently, from the same distribution:

- ``--compare dropconnect``: DropConnect masks of the LSTM's hidden-to-hidden weights from torch's
  ``bernoulli_`` vs from NumPy's random bytes (``Encoder.fast_drop_connect``; WikiText-2 recipe).

One that was tried and not kept, so that its measurement can be rerun (the same gradients: the tied
weight's stays dense, the lookup's rows are added into it instead of into a zero-filled matrix):

- ``--compare sparse_lookup``: the word lookup's gradient dense vs sparse (``nn.Embedding.sparse``;
  WikiText-2 recipe, whose tied embedding also gets the output layer's dense gradient).

    python benchmarks/speedups.py --compare table                    # CoNLL recipe, 1 thread
    python benchmarks/speedups.py --compare dedup --set train.batch_tokens=320 --threads 2
    python benchmarks/speedups.py --compare dropconnect --threads 2  # WikiText-2 recipe
    python benchmarks/speedups.py --compare sparse_lookup --threads 2 --batches 60

The data default to the recipe's data set in ../shared/data beside the repo, for another
``--recipe`` too (``--data-dir`` is for data kept elsewhere). A comparison that does not apply to
the recipe's model (``dropconnect`` without weight dropout, ``dedup``/``table`` without a char CNN,
``split``/``layout`` on a model that is not a tagger) is refused before any data are read.

Prints ms per step of each (and for the tagger the share of distinct words per batch); writes
benchmarks/results/<char_dedup|char_table|tag_split|tag_layout|drop_connect|sparse_lookup>[_NAME].json
(``--name NAME``), or to NAME itself where NAME is a path (it holds a /; .json is added if missing).
(This script was ``benchmarks/char_dedup.py`` when it wrote the ``char_dedup*.json`` results.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_step_options, recipe_data_dir, run_main, save, table, time_interleaved, training_step
from seqtext import SeqtextError
from seqtext.nn.chars import unique_rows
from seqtext.recipe import load_recipe

# --compare → (results name, module of the net, its switch, label when off, label when on)
COMPARISONS = {"dedup": ("char_dedup", "embedder.chars", "dedup", "every_token", "distinct_words"),
               "table": ("char_table", "embedder.chars", "window_table", "window_matmul", "window_table"),
               "split": ("tag_split", "head", "split_directions", "concatenated", "split_directions"),
               "layout": ("tag_layout", "head", "as_stored", "batch_major", "as_stored"),
               "dropconnect": ("drop_connect", "encoder", "fast_drop_connect", "bernoulli", "numpy_bits"),
               "sparse_lookup": ("sparse_lookup", "embedder.words", "sparse", "dense_lookup", "sparse_lookup")}
# the recipe each comparison runs on unless --recipe says otherwise (its data: recipe_data_dir)
RECIPES = {"dropconnect": "recipes/wikitext2_lm.toml", "sparse_lookup": "recipes/wikitext2_lm.toml"}
TAGGER = "recipes/conll2003_ner.toml"


def not_applicable(compare: str, recipe) -> str:
    """Why ``--compare`` cannot run on the model ``recipe`` builds ('' where it can)."""
    if compare in ("dedup", "table") and (recipe.task != "tag" or recipe.model.char_encoder != "cnn"):
        return 'the model is not a tagger with a char CNN ([model] char_encoder = "cnn")'
    if compare in ("split", "layout") and recipe.task != "tag":
        return "the model is not a tagger"
    if compare == "dropconnect" and not recipe.model.weight_dropout:
        return "the model has no weight dropout ([model] weight_dropout)"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="dedup")
    add_step_options(ap, None, None, warmup=5,
                     recipe_help="default: the CoNLL recipe (the WikiText-2 one for dropconnect, sparse_lookup)")
    ap.add_argument("--name", default="",
                    help="results file suffix (<results name>_NAME.json in benchmarks/results), or a path to write "
                         "(NAME holds a /; .json is added if missing)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name, module, attribute, off, on = COMPARISONS[args.compare]
    args.recipe = args.recipe or RECIPES.get(args.compare, TAGGER)
    args.data_dir = args.data_dir or recipe_data_dir(args.recipe)
    reason = not_applicable(args.compare, load_recipe(args.recipe, args.overrides))
    if reason:
        raise SeqtextError(f"--compare {args.compare}: {args.recipe}: {reason}")

    with training_step(args.recipe, args.data_dir, args.overrides, args.warmup + args.batches) as (step, batches):
        net = step.__self__.net
        switched = net.get_submodule(module)
        chars = [b.chars.flatten(0, 1) for b in batches if getattr(b, "chars", None) is not None]
        distinct = [len(unique_rows(r)[0]) / len(r) for r in chars]

        def toggled(value: bool):
            def run(b):
                setattr(switched, attribute, value)
                step(b)
            return run

        seconds, tokens = time_interleaved(batches, {off: toggled(False), on: toggled(True)}, args.warmup)
    ms = {k: 1000 * v / args.batches for k, v in seconds.items()}
    result = {"recipe": args.recipe, "overrides": args.overrides, "compare": args.compare, "batches": args.batches,
              "threads": args.threads,
              **({"distinct_share": round(float(np.mean(distinct)), 3)} if distinct else {}),
              "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
              "tokens_per_s": {k: round(tokens / v) for k, v in seconds.items()},
              "speedup": round(ms[off] / ms[on], 3)}
    rows = [("distinct words / token rows per batch", f"{result['distinct_share']:.2f}")] if distinct else []
    print(table([*rows,
                 (f"ms per step: {off} / {on}", f"{ms[off]:.2f} / {ms[on]:.2f}"),
                 ("speed-up", f"{result['speedup']:.3f}x")],
                f"{module}.{attribute} off vs on ({args.threads} thread(s), {args.batches} batches)"))
    out = args.name if "/" in args.name else name + (f"_{args.name}" if args.name else "")
    print(f"written {save(out, result)}")


if __name__ == "__main__":
    run_main(main)
