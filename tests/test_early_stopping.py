"""Early stopping and the choice of the kept weights, with the dev scores scripted: training stops
after ``patience`` evaluations without improvement, and the model directory holds the weights
of the best evaluation (highest accuracy, lowest perplexity), not the last ones."""

import json

import pytest
import torch
from test_lm import lm_recipe

import seqtext
from seqtext.model import load_state_dict
from seqtext.recipe import load_recipe
from seqtext.tasks.classify import ClassifyTask
from seqtext.tasks.lm import LMTask


def script_dev_scores(monkeypatch, task_class, values):
    """Make the n-th dev evaluation score ``values[n]``; returns the weights each one saw."""
    seen = []

    def scripted(self, net, data, device):
        seen.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        return {self.metric: values[len(seen) - 1]}

    monkeypatch.setattr(task_class, "dev_metrics", scripted)
    return seen


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accuracy_stops_after_patience_and_keeps_the_best_weights(tiny, tmp_path, monkeypatch):
    seen = script_dev_scores(monkeypatch, ClassifyTask, [0.5, 0.8, 0.6, 0.7, 0.9, 0.95])
    out = seqtext.train(tiny, ["train.epochs=6", "train.patience=2"], output=tmp_path / "c", quiet=True)
    assert [r["dev_accuracy"] for r in history(out)] == [0.5, 0.8, 0.6, 0.7]  # stopped: 2 without a gain
    assert len(seen) == 4 and not same(seen[1], seen[3])
    assert same(load_state_dict(out / "weights.safetensors"), seen[1])
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["best_dev"] == 0.8 and train["best_step"] == history(out)[1]["step"]


def test_patience_zero_runs_every_epoch(tiny, tmp_path, monkeypatch):
    script_dev_scores(monkeypatch, ClassifyTask, [0.9, 0.5, 0.5, 0.5, 0.5])
    out = seqtext.train(tiny, ["train.epochs=5", "train.patience=0"], output=tmp_path / "p", quiet=True)
    assert len(history(out)) == 5


@pytest.mark.parametrize("patience,evaluations,best", [(2, 6, 3), (0, 7, 3)])
def test_perplexity_lower_is_better(tmp_path, monkeypatch, patience, evaluations, best):
    seen = script_dev_scores(monkeypatch, LMTask, [300.0, 200.0, 250.0, 190.0, 260.0, 270.0, 280.0])
    r = lm_recipe(tmp_path)
    r["train"].update(epochs=7, patience=patience)
    out = seqtext.train(load_recipe(r), quiet=True)
    assert len(history(out)) == evaluations
    assert same(load_state_dict(out / "weights.safetensors"), seen[best])
