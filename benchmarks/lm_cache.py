"""Continuous cache on a trained LM: test perplexity with and without it, and what it costs.

    python benchmarks/lm_cache.py runs/wikitext2_lm --data-dir ../shared/data/wikitext2
    python benchmarks/lm_cache.py runs/wikitext2_lm --sizes 100 500 2000 --threads 2

For each cache size, θ and λ are chosen on the valid split (grid search,
``LMTask.tune_cache``), then the test split is scored once with those settings, the same
protocol as Grave et al. (2017). Also times a test pass with and without the cache.
Writes benchmarks/results/lm_cache_<model dir name>.json (``--name``: another name there, or a path).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import RESULTS_HELP, run_main, save, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a trained lm model directory")
    ap.add_argument("--data-dir", default="../shared/data/wikitext2")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", help=f"{RESULTS_HELP} (default lm_cache_<model dir name>)")
    args = ap.parse_args()

    import seqtext

    torch.set_num_threads(args.threads)
    model = seqtext.load(args.model, "cpu")
    start = time.perf_counter()
    plain = model.evaluate(split="test", data_dir=args.data_dir)
    plain_seconds = time.perf_counter() - start
    result = {"model": args.model, "test_perplexity": plain["perplexity"], "test_tokens": plain["tokens"],
              "test_seconds_without_cache": round(plain_seconds, 1), "sizes": {}}
    rows = [("test perplexity, no cache", f"{plain['perplexity']:.2f}  ({plain_seconds:.0f} s)")]
    for size in args.sizes:
        tuned = model.tune_cache(size, args.data_dir)
        start = time.perf_counter()
        test = model.evaluate(split="test", data_dir=args.data_dir, cache_size=size,
                              cache_theta=tuned["theta"], cache_lambda=tuned["lambda"])
        seconds = time.perf_counter() - start
        result["sizes"][size] = {"theta": tuned["theta"], "lambda": tuned["lambda"],
                                 "valid_perplexity": tuned["perplexity"],
                                 "valid_perplexity_without": tuned["perplexity_without"],
                                 "test_perplexity": test["cache_perplexity"], "test_seconds": round(seconds, 1)}
        rows.append((f"test perplexity, cache {size}",
                     f"{test['cache_perplexity']:.2f}  (θ {tuned['theta']:g}, λ {tuned['lambda']:g} chosen on valid: "
                     f"{tuned['perplexity_without']:.2f} → {tuned['perplexity']:.2f}; {seconds:.0f} s)"))
    print(table(rows, f"Continuous cache — {args.model}, {args.threads} threads"))
    print(f"written {save(args.name or 'lm_cache_' + Path(args.model).name, result)}")


if __name__ == "__main__":
    run_main(main)
