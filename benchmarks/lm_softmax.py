"""Full vs adaptive softmax for the WikiText-2 LM: the speed gain and its perplexity cost.

    python benchmarks/lm_softmax.py --data-dir ../shared/data/wikitext2 --steps 400

Trains recipes/wikitext2_lm.toml twice with identical settings and the same number of steps
(the LR schedule runs to completion over ``--steps``), once with ``model.softmax = "full"``
(33k-way softmax tied to the embedding) and once with ``"adaptive"`` (the recipe's cutoffs),
then reports training tokens/s, wall time and valid/test perplexity of each. Equal steps means
equal tokens seen, so the perplexity difference is the adaptive softmax's approximation cost
and the time difference its gain. Writes benchmarks/results/lm_softmax.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import save, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/wikitext2_lm.toml")
    ap.add_argument("--data-dir", default="../shared/data/wikitext2")
    ap.add_argument("--steps", type=int, default=400, help="training steps for each variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe overrides")
    args = ap.parse_args()

    import seqtext

    torch.set_num_threads(args.threads)
    base = [*args.overrides, f"train.threads={args.threads}", f"train.max_steps={args.steps}", "train.epochs=1",
            f"train.eval_every={args.steps}", f"train.checkpoint_every={args.steps}"]
    result: dict = {"recipe": args.recipe, "steps": args.steps, "overrides": base, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for softmax in ("full", "adaptive"):
            out = seqtext.train(args.recipe, [*base, f'model.softmax="{softmax}"'], output=Path(tmp) / softmax,
                                data_dir=args.data_dir, quiet=True)
            model = seqtext.load(out, "cpu")
            m = model.metrics()
            test = model.evaluate(split="test", data_dir=args.data_dir)
            result["variants"][softmax] = {
                "train_seconds": round(m["train"]["seconds"], 1),
                "train_tokens": m["train"]["tokens"],
                "tokens_per_second": round(m["train"]["tokens_per_second"]),
                "valid_perplexity": round(m["dev"]["perplexity"], 2),
                "test_perplexity": round(test["perplexity"], 2),
            }
    full, adaptive = result["variants"]["full"], result["variants"]["adaptive"]
    result["speedup"] = round(adaptive["tokens_per_second"] / full["tokens_per_second"], 2)
    result["test_perplexity_cost"] = round(adaptive["test_perplexity"] / full["test_perplexity"] - 1, 4)
    rows = [(f"{name}: tokens/s, time, valid / test ppl",
             f"{v['tokens_per_second']}, {v['train_seconds'] / 60:.1f} min, {v['valid_perplexity']} / "
             f"{v['test_perplexity']}") for name, v in result["variants"].items()]
    rows += [("adaptive speed-up", f"{result['speedup']}x"),
             ("adaptive test perplexity cost", f"{100 * result['test_perplexity_cost']:+.1f} %")]
    print(table(rows, f"Full vs adaptive softmax — {args.recipe}, {args.steps} steps, {args.threads} threads"))
    print(f"written {save('lm_softmax', result)}")


if __name__ == "__main__":
    main()
