import json
import os
import random
import tempfile
from pathlib import Path

# Keep the datasets cache inside a throwaway folder: tests must not depend on (or fill) ~/.cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="seqtext-test-hf-"))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
from hypothesis import settings

# Tests check behaviour, not speed: no per-example time limit (Hypothesis' default is 200 ms,
# which a loaded CI machine can exceed on the tests that write files).
settings.register_profile("seqtext", deadline=None)
settings.load_profile("seqtext")

REPO = Path(__file__).resolve().parent.parent


def cpu_runs_bf16() -> bool:
    """Whether this CPU can run bf16 autocast at all (AVX-512 BW/VL/DQ or AVX-NE-CONVERT). Where it
    cannot (AVX2 only), seqtext runs bf16 requests in fp32 and the bf16 tests check that instead."""
    import torch

    from seqtext.hardware import bf16_runs

    return bf16_runs(torch.device("cpu"))
DEMO = REPO / "recipes" / "data" / "demo_sentiment"

POS = ["great", "wonderful", "superb", "moving", "brilliant", "fun"]
NEG = ["awful", "boring", "dull", "terrible", "lazy", "stupid"]
FILL = ["the", "film", "was", "a", "story", "and", "cast", "really", "it", "plot", "with", "some"]


def make_reviews(n: int, seed: int = 0, labels=("neg", "pos")) -> list[dict]:
    """Tiny synthetic classification data: the label is carried by one sentiment word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % len(labels)
        cue = rng.choice(POS if label == 1 else NEG) if len(labels) == 2 else f"cue{label}"
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randint(0, len(words)), cue)
        rows.append({"text": " ".join(words) + ".", "label": labels[label]})
    return rows


def make_tagged_sentences(n: int, seed: int, templates: list[str], names: dict[str, list[str]]):
    """Synthetic IOB2-tagged sentences: ``{TYPE}`` slots in templates filled from ``names``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for part in rng.choice(templates).split():
            if part.startswith("{"):
                typ = part[1:-1]
                name = rng.choice(names[typ]).split()
                tokens += name
                tags += [f"B-{typ}"] + [f"I-{typ}"] * (len(name) - 1)
            else:
                tokens.append(part)
                tags.append("O")
        out.append((tokens, tags))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_recipe(tmp_path: Path, **sections) -> Path:
    """Write a small classify recipe over generated data; sections override defaults."""
    train = write_jsonl(tmp_path / "data" / "train.jsonl", make_reviews(160, 1))
    test = write_jsonl(tmp_path / "data" / "test.jsonl", make_reviews(60, 2))
    base = {
        "task": '"classify"',
        "data": {"files": f'{{ train = "{train}", test = "{test}" }}', "dev_fraction": "0.2"},
        "vocab": {"min_freq": "1"},
        "model": {"embedding_dim": "16", "hidden_size": "16"},
        "train": {"epochs": "3", "batch_size": "16", "lr": "0.01", "seed": "3", "checkpoint_every": "5",
                  "threads": "1"},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v) if isinstance(v, dict) else base.__setitem__(k, v)
    lines = [f"{k} = {v}" for k, v in base.items() if not isinstance(v, dict)]
    for section, table in base.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in table.items()]
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path):
    return tiny_recipe(tmp_path)


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """The shipped demo recipe, trained once for the whole session (a few seconds)."""
    import seqtext

    out = tmp_path_factory.mktemp("runs") / "demo"
    return seqtext.train(REPO / "recipes" / "demo_sentiment.toml", ["train.epochs=4", "train.threads=1"],
                         output=out, quiet=True)
