"""Full vs adaptive softmax for the WikiText-2 LM: the speed gain and its perplexity cost.

    python benchmarks/lm_softmax.py --data-dir ../shared/data/wikitext2 --steps 400
    python benchmarks/lm_softmax.py --key train.bf16 --values false true --steps 300   # any recipe key

With ``--key``/``--values`` it compares any one recipe setting the same way (results in
benchmarks/results/lm_<last part of the key>.json, e.g. lm_bf16.json for train.bf16; the first
value is the baseline).

Trains recipes/wikitext2_lm.toml twice with identical settings and the same number of steps
(the LR schedule runs to completion over ``--steps``), once with ``model.softmax = "full"``
(33k-way softmax tied to the embedding) and once with ``"adaptive"`` (the recipe's cutoffs),
then reports training tokens/s, wall time and valid/test perplexity of each. Equal steps means
equal tokens seen, so the perplexity difference is the adaptive softmax's approximation cost
and the time difference its gain. Writes benchmarks/results/lm_softmax.json (``--name``: another
name there, or a path).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import RESULTS_HELP, run_main, save, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/wikitext2_lm.toml")
    ap.add_argument("--data-dir", default="../shared/data/wikitext2")
    ap.add_argument("--steps", type=int, default=400, help="training steps for each variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe overrides")
    ap.add_argument("--key", default="model.softmax", help="the recipe key compared")
    ap.add_argument("--values", nargs=2, default=['"full"', '"adaptive"'], help="baseline value, then the variant")
    ap.add_argument("--name", help=f"{RESULTS_HELP} (default lm_softmax, or lm_<last part of --key>)")
    args = ap.parse_args()

    import seqtext

    torch.set_num_threads(args.threads)
    base = [*args.overrides, f"train.threads={args.threads}", f"train.max_steps={args.steps}", "train.epochs=1",
            f"train.eval_every={args.steps}", f"train.checkpoint_every={args.steps}"]
    result: dict = {"recipe": args.recipe, "steps": args.steps, "overrides": base, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, value in enumerate(args.values):
            out = seqtext.train(args.recipe, [*base, f"{args.key}={value}"], output=Path(tmp) / str(i),
                                data_dir=args.data_dir, quiet=True)
            model = seqtext.load(out, "cpu")
            m = model.metrics()
            test = model.evaluate(split="test", data_dir=args.data_dir)
            result["variants"][value.strip('"')] = {
                "train_seconds": round(m["train"]["seconds"], 1),
                "train_tokens": m["train"]["tokens"],
                "tokens_per_second": round(m["train"]["tokens_per_second"]),
                "valid_perplexity": round(m["dev"]["perplexity"], 2),
                "test_perplexity": round(test["perplexity"], 2),
            }
    first, second = result["variants"].values()
    name = args.key.split(".")[-1]
    result["key"] = args.key
    result["speedup"] = round(second["tokens_per_second"] / first["tokens_per_second"], 2)
    result["test_perplexity_cost"] = round(second["test_perplexity"] / first["test_perplexity"] - 1, 4)
    rows = [(f"{args.key} = {v}: tokens/s, time, valid / test ppl",
             f"{r['tokens_per_second']}, {r['train_seconds'] / 60:.1f} min, {r['valid_perplexity']} / "
             f"{r['test_perplexity']}") for v, r in result["variants"].items()]
    rows += [(f"{args.values[1]} vs {args.values[0]}: speed-up", f"{result['speedup']}x"),
             (f"{args.values[1]} vs {args.values[0]}: test perplexity change",
              f"{100 * result['test_perplexity_cost']:+.1f} %")]
    print(table(rows, f"{args.key}: {' vs '.join(args.values)} — {args.recipe}, {args.steps} steps, "
                      f"{args.threads} threads"))
    print(f"written {save(args.name or ('lm_softmax' if name == 'softmax' else f'lm_{name}'), result)}")


if __name__ == "__main__":
    run_main(main)
