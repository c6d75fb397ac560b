import json
import re
import shutil

import pytest
import torch
from conftest import cpu_runs_bf16

import seqtext
from seqtext.errors import SeqtextError
from seqtext.model import load_state_dict


def weights(run_dir, name="weights.safetensors"):
    return load_state_dict(run_dir / name)


def test_seed_gives_identical_results(tiny, tmp_path):
    a = seqtext.train(tiny, output=tmp_path / "a", quiet=True)
    b = seqtext.train(tiny, output=tmp_path / "b", quiet=True)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class Killed(Exception):
    pass


def patch_loss(monkeypatch, change):
    """Wrap the classifier's training loss: ``change(call_number, loss)`` returns the loss to use."""
    from seqtext.tasks.classify import ClassifyTask

    real, calls = ClassifyTask.loss, {"n": 0}

    def patched(self, net, batch):
        calls["n"] += 1
        return change(calls["n"], real(self, net, batch))

    monkeypatch.setattr(ClassifyTask, "loss", patched)


def kill_after(monkeypatch, n_calls):
    """Make the n-th training loss call die abruptly (no checkpoint is written on the way out)."""

    def die(n, loss):
        if n == n_calls:
            raise Killed
        return loss

    patch_loss(monkeypatch, die)


@pytest.mark.parametrize("kill_at,overrides", [
    (13, []), (17, []),  # mid-epoch (after checkpoint 10) and early in epoch 2
    (13, ["train.ema_decay=0.9"]),  # the weight average is part of the resume state
    (13, ["train.sparse_embeddings=true"]),  # so is the lazy-row optimizer state
    (13, ["train.eval_every=3", "train.patience=0"]),  # step 12's evaluation, after checkpoint 10, runs again
    (19, ["train.checkpoint_every=3"]),  # resumed at step 18, before the curve's point at step 20
])
def test_resume_matches_uninterrupted_run(tiny, tmp_path, monkeypatch, kill_at, overrides):
    full = seqtext.train(tiny, overrides, output=tmp_path / "full", quiet=True)
    kill_after(monkeypatch, kill_at)
    with pytest.raises(Killed):
        seqtext.train(tiny, overrides, output=tmp_path / "part", quiet=True)
    monkeypatch.undo()
    resumed = seqtext.train(tiny, overrides, output=tmp_path / "part", resume=True, quiet=True)
    a, b = weights(full, "checkpoint.safetensors"), weights(resumed, "checkpoint.safetensors")
    keys = [k for k in a if k.startswith(("model.", "optim.", "ema"))]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)
    assert any(k.startswith("ema.") for k in keys) == any("ema" in o for o in overrides)
    wa, wb = weights(full), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    test_metrics = [json.loads((d / "metrics.json").read_text())["test"] for d in (full, resumed)]
    assert test_metrics[0] == test_metrics[1]
    history = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, resumed)]
    steps = [[r["step"] for r in h] for h in history]
    assert steps[1] == steps[0]  # the history of the killed run's last steps was dropped, not duplicated
    # each record's train loss is the mean over the steps since the evaluation before, across the kill too
    assert [r["train_loss"] for r in history[1]] == pytest.approx([r["train_loss"] for r in history[0]], rel=1e-6)
    # and so is each point of the curve's loss (the mean since the point before)
    from safetensors import safe_open

    curves = []
    for d in (full, resumed):
        with safe_open(str(d / "checkpoint.safetensors"), "pt") as f:
            curves.append(json.loads(f.metadata()["loop"])["losses"])
    assert [x[0] for x in curves[1]] == [x[0] for x in curves[0]]
    assert [x[1] for x in curves[1]] == pytest.approx([x[1] for x in curves[0]], rel=1e-6)


def test_ctrl_c_while_the_final_scores_are_computed_says_how_to_resume(tiny, tmp_path, monkeypatch):
    from seqtext.errors import Interrupted
    from seqtext.tasks.classify import ClassifyTask

    def stop(*args, **kw):
        raise KeyboardInterrupt

    real = ClassifyTask.evaluate
    monkeypatch.setattr(ClassifyTask, "dev_metrics", lambda self, net, data, device: real(self, net, data, device))
    monkeypatch.setattr(ClassifyTask, "evaluate", stop)  # only the final dev/test scoring calls it now
    with pytest.raises(Interrupted, match=r"^interrupted; checkpoint saved\. Resume with: .*--resume"):
        seqtext.train(tiny, output=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r" / "metrics.json").exists()
    monkeypatch.undo()
    seqtext.train(tiny, output=tmp_path / "r", resume=True, quiet=True)  # scores the finished training
    assert "test" in json.loads((tmp_path / "r" / "metrics.json").read_text())


def test_an_evaluations_train_loss_is_the_mean_since_the_evaluation_before(tiny, tmp_path, monkeypatch):
    from seqtext.tasks.classify import ClassifyTask

    step = iter(range(1, 10_000))
    real = ClassifyTask.loss
    monkeypatch.setattr(ClassifyTask, "loss", lambda self, net, batch: real(self, net, batch) * 0 + next(step))
    out = seqtext.train(tiny, ["train.eval_every=4", "train.max_steps=8"], output=tmp_path / "r",
                        quiet=True)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records[:2]] == pytest.approx([2.5, 6.5])  # losses 1..4, then 5..8


def test_the_schedule_ends_where_training_does_when_max_steps_is_beyond_the_epochs(tiny, tmp_path):
    capped = seqtext.train(tiny, ["train.epochs=1", "train.max_steps=1000", "train.eval_every=1"],
                           output=tmp_path / "m", quiet=True)
    plain = seqtext.train(tiny, ["train.epochs=1", "train.eval_every=1"], output=tmp_path / "p", quiet=True)
    history = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (capped, plain)]
    assert [r["lr"] for r in history[0]] == [r["lr"] for r in history[1]]


def test_more_processes_than_batches_is_an_error_not_an_untrained_model(trained_demo):
    model = seqtext.load(trained_demo)
    train = model._encoded("train", None, None)
    assert model.task.steps_per_epoch(train, world=2) >= 1
    with pytest.raises(SeqtextError, match=r"^train data: \d+ batches per epoch, fewer than the 10000 processes"):
        model.task.steps_per_epoch(train, world=10_000)


def test_a_data_dir_is_recorded_so_resume_and_evaluate_use_the_same_files(tiny, tmp_path, monkeypatch):
    """--data-dir becomes the saved recipe's [data] files: a resume on other data is refused (it
    used to continue on them silently), and evaluate scores the run's own test file."""
    from conftest import make_reviews, write_jsonl

    first, other = tmp_path / "first", tmp_path / "other"
    for d, n in ((first, 40), (other, 20)):
        write_jsonl(d / "train.jsonl", make_reviews(100, 5))
        write_jsonl(d / "test.jsonl", make_reviews(n, 6))
    out = seqtext.train(tiny, ["train.max_steps=2"], output=tmp_path / "run", data_dir=str(first), quiet=True)
    saved = seqtext.load(out).recipe.data.files
    assert saved == {"train": str(first / "train.jsonl"), "test": str(first / "test.jsonl")}
    with pytest.raises(SeqtextError, match=r"different recipe \(data\.files .*other/train\.jsonl"):
        seqtext.train(out / "recipe.toml", data_dir=str(other), resume=True, quiet=True)
    # a run saved before --data-dir was recorded names no files: the data given on resume is taken
    old = tmp_path / "old"
    shutil.copytree(out, old)
    text = (old / "recipe.toml").read_text()
    (old / "recipe.toml").write_text(re.sub(r"(?m)^files = .*\n", "", text))
    assert seqtext.train(tiny, ["train.max_steps=2"], output=old, data_dir=str(first), resume=True, quiet=True)
    model = seqtext.load(out)
    assert sum(map(sum, model.evaluate()["confusion_matrix"])) == 40
    assert sum(map(sum, model.evaluate(data_dir=str(other))["confusion_matrix"])) == 20  # other data, on request
    from click.testing import CliRunner

    from seqtext.cli import main

    r = CliRunner().invoke(main, ["evaluate", str(out), "--json"], env={"SEQTEXT_DATA_DIR": str(other)})
    assert sum(map(sum, json.loads(r.output)["confusion_matrix"])) == 20  # the variable is --data-dir's


def test_an_unlabelled_test_file_is_an_error_before_training(tmp_path, monkeypatch):
    import importlib

    from conftest import make_reviews, tiny_recipe, write_jsonl

    write_jsonl(tmp_path / "d" / "train.jsonl", make_reviews(60, 1))
    write_jsonl(tmp_path / "d" / "test.jsonl", [{"text": r["text"]} for r in make_reviews(10, 2)])
    monkeypatch.setattr(importlib.import_module("seqtext.train").Trainer, "fit",
                        lambda self: pytest.fail("training started"))
    with pytest.raises(SeqtextError, match=r"d/test\.jsonl: has no label column 'label' \(\[data\] label_column\); "
                                           r"training scores every split"):
        seqtext.train(tiny_recipe(tmp_path), data_dir=str(tmp_path / "d"), output=tmp_path / "out", quiet=True)


def test_resuming_a_finished_run_says_so(tiny, tmp_path, capsys):
    out = seqtext.train(tiny, ["train.epochs=1"], output=tmp_path / "r", quiet=True)
    seqtext.train(out / "recipe.toml", resume=True)
    assert "(training had finished; scoring it again)" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_schedule_length_of_its_checkpoint(tiny, tmp_path, monkeypatch):
    """The schedule's length is saved with the loop state; a checkpoint from before it was saved
    (2026-12-07) keeps that version's length (max_steps, even beyond the epochs) when resumed."""
    import importlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    out = seqtext.train(tiny, ["train.epochs=2", "train.max_steps=1000"], output=tmp_path / "r", quiet=True)
    trainer_class = importlib.import_module("seqtext.train").Trainer
    seen = []

    def record(self):
        seen.append(self.total_steps)
        raise SeqtextError("stop here")

    monkeypatch.setattr(trainer_class, "fit", record)
    with pytest.raises(SeqtextError, match="stop here"):
        seqtext.train(out / "recipe.toml", resume=True, quiet=True)
    assert seen[-1] < 1000  # two epochs of the tiny data
    path = out / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    loop = json.loads(meta["loop"])
    del loop["total_steps"]
    save_file(tensors, str(path), {**meta, "loop": json.dumps(loop)})
    with pytest.raises(SeqtextError, match="stop here"):
        seqtext.train(out / "recipe.toml", resume=True, quiet=True)
    assert seen[-1] == 1000


def test_refuses_to_overwrite_a_different_run(tiny, tmp_path):
    out = seqtext.train(tiny, output=tmp_path / "r", quiet=True)
    with pytest.raises(SeqtextError, match=r"different recipe \(model\.hidden_size 16 → 8\); use --force"):
        seqtext.train(tiny, ["model.hidden_size=8"], output=out, quiet=True)
    hub = seqtext.train(tiny, ["data.hub_config=x", "train.max_steps=1"], output=tmp_path / "h", quiet=True)
    with pytest.raises(SeqtextError, match=r"different recipe \(data\.hub_config 'x' → None\)"):  # a key left out
        seqtext.train(tiny, ["train.max_steps=1"], output=hub, quiet=True)
    with pytest.raises(SeqtextError, match="already holds this run"):
        seqtext.train(tiny, output=out, quiet=True)
    # where and how fast it runs is not a different recipe
    with pytest.raises(SeqtextError, match="already holds this run"):
        seqtext.train(tiny, ["train.threads=2", "data.num_proc=2"], output=out, device="cpu", quiet=True)
    with pytest.raises(SeqtextError, match=r"^--resume and --force: give one"):
        seqtext.train(tiny, output=out, resume=True, force=True, quiet=True)
    assert (out / "checkpoint.safetensors").is_file()  # nothing was discarded
    seqtext.train(tiny, ["model.hidden_size=8"], output=out, force=True, quiet=True)
    assert seqtext.load(out).recipe.model.hidden_size == 8


def test_a_moved_run_resumes_from_its_new_place(tiny, tmp_path):
    """The saved recipe's output.dir records where the run was written; it does not pin the run there."""
    import shutil

    first = seqtext.train(tiny, ["train.epochs=1"], output=tmp_path / "a", quiet=True)
    moved = shutil.move(first, tmp_path / "b")
    with pytest.raises(SeqtextError, match=r"different recipe.*train\.epochs"):
        seqtext.train(moved / "recipe.toml", ["train.epochs=2"], output=moved, resume=True, quiet=True)
    assert seqtext.train(moved / "recipe.toml", output=moved, resume=True, quiet=True) == moved


def test_a_runs_own_recipe_resumes_that_run_from_any_working_directory(tiny, tmp_path, monkeypatch):
    """`seqtext train RUN/recipe.toml --resume`, as the interrupt message says, resumes RUN even
    after the run was moved and from another working directory, where the recipe's relative
    [output] dir would name another place (or another run)."""
    import shutil

    kill_after(monkeypatch, 13)
    with pytest.raises(Killed):
        seqtext.train(tiny, output=tmp_path / "a", quiet=True)
    monkeypatch.undo()
    moved = shutil.move(tmp_path / "a", tmp_path / "elsewhere" / "b")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert seqtext.train(moved / "recipe.toml", resume=True, quiet=True) == moved
    assert not (tmp_path / "cwd" / "runs").exists()
    full = seqtext.train(tiny, output=tmp_path / "full", quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(weights(full).values(), weights(moved).values()))


def test_resume_without_a_run_is_refused(tiny, tmp_path, capsys):
    """A mistyped --output with --resume must not quietly start a new run; a run killed before
    its first checkpoint starts again from the beginning, and says so."""
    with pytest.raises(SeqtextError, match=r"no run to resume there"):
        seqtext.train(tiny, output=tmp_path / "typo", resume=True, quiet=True)
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeqtextError, match=r"no run to resume there"):
        seqtext.train(tiny, output=tmp_path / "empty", resume=True, quiet=True)
    first = seqtext.train(tiny, ["train.epochs=1", "train.eval_every=2"], output=tmp_path / "r", quiet=True)
    steps = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    (first / "checkpoint.safetensors").unlink()
    seqtext.train(tiny, ["train.epochs=1", "train.eval_every=2"], output=first, resume=True)
    assert "no checkpoint yet" in capsys.readouterr().err
    again = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert again == steps  # the first attempt's history is not kept beside the new one


def test_an_ensemble_killed_in_its_first_member_resumes_from_its_own_recipe(tiny, tmp_path, monkeypatch):
    """Members that never started start when the ensemble resumes, and RUN/recipe.toml --resume finds
    an unfinished ensemble (it has members/ but no model files yet) from another working directory."""
    overrides = ["model.ensemble=2", "train.epochs=2"]
    monkeypatch.chdir(tmp_path)  # relative output directories, as `runs/<name>` is
    full = tmp_path / seqtext.train(tiny, overrides, output="full", quiet=True)
    kill_after(monkeypatch, 13)  # member 1 of 2, after its checkpoint at step 10
    with pytest.raises(Killed):
        seqtext.train(tiny, overrides, output="part", quiet=True)
    monkeypatch.undo()
    part = tmp_path / "part"
    assert not (part / "members" / "2").exists() and not (part / "weights.safetensors").exists()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert seqtext.train(part / "recipe.toml", resume=True, quiet=True) == part
    wa, wb = weights(full), weights(part)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_saved_recipe_reproduces_the_run(tiny, tmp_path):
    a = seqtext.train(tiny, output=tmp_path / "a", quiet=True)
    b = seqtext.train(a / "recipe.toml", output=tmp_path / "b", quiet=True)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tiny, tmp_path, monkeypatch):
    patch_loss(monkeypatch, lambda n, loss: loss * float("nan") if n > 6 else loss)
    with pytest.raises(SeqtextError, match=r"loss became nan at step 7.*last good checkpoint"):
        seqtext.train(tiny, output=tmp_path / "n", quiet=True)
    assert (tmp_path / "n" / "checkpoint.safetensors").is_file()


def test_bad_step_budget_skips_non_finite_steps(tiny, tmp_path, monkeypatch):
    patch_loss(monkeypatch, lambda n, loss: loss * float("inf") if n == 3 else loss)
    out = seqtext.train(tiny, ["train.max_bad_steps=2"], output=tmp_path / "s", quiet=True)
    assert all(bool(torch.isfinite(w).all()) for w in weights(out).values())
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        loop = json.loads(f.metadata()["loop"])
    assert loop["bad_steps"] == 1 and loop["done"]  # one step skipped, then training went on to the end


def test_a_finite_loss_with_non_finite_gradients_is_skipped(tiny, tmp_path, monkeypatch):
    """The 3rd loss is finite (0 added) but its gradient is NaN (0 · d sqrt(z)/dz at z = 0): the
    step is skipped, not written into the weights."""
    def nan_gradient(n, loss):
        return loss + 0 * torch.sqrt(loss - loss.detach()) if n == 3 else loss

    patch_loss(monkeypatch, nan_gradient)
    out = seqtext.train(tiny, ["train.max_bad_steps=1"], output=tmp_path / "skip", quiet=True)
    assert all(bool(torch.isfinite(w).all()) for w in weights(out).values())
    patch_loss(monkeypatch, nan_gradient)  # a fresh count (the first wrapper's is past 3)
    with pytest.raises(SeqtextError, match=r"gradients became non-finite \(local loss [0-9.]+\) at step 3"):
        seqtext.train(tiny, output=tmp_path / "stop", quiet=True)


def test_sentencepiece_and_spacy_tokenizers_train(tiny, tmp_path):
    out = seqtext.train(tiny, ["tokenizer.kind=sentencepiece", "tokenizer.vocab_size=120", "train.epochs=1"],
                        output=tmp_path / "sp", quiet=True)
    assert (out / "tokenizer.model").is_file()
    model = seqtext.load(out)  # the reloaded model tokenizes with the trained sentencepiece model
    pieces = model.task.tokenizer.tokenize("a great film")
    assert all(p in model.task.vocab.stoi for p in pieces) and pieces[0].startswith("\u2581")
    assert model.predict(["a great film"])[0]["label"] in {"neg", "pos"}
    out = seqtext.train(tiny, ["tokenizer.kind=spacy", "train.epochs=1"], output=tmp_path / "spacy", quiet=True)
    model = seqtext.load(out)
    assert model.task.tokenizer.tokenize("don't stop!") == ["do", "n't", "stop", "!"]  # spaCy's rules, not regex
    assert model.predict(["a great film"])[0]["label"] in {"neg", "pos"}


def test_pooling_options_train_and_each_takes_effect(tiny, tmp_path):
    """Every pooling trains a model that loads with that pooling; the same seed and data give
    each a different model (a pooling that silently fell back to another would not)."""
    probs = {}
    for pooling in ["max", "mean", "last", "attention", "maxmean"]:
        out = seqtext.train(tiny, [f"model.pooling={pooling}", "train.epochs=1", "model.layers=2"],
                            output=tmp_path / pooling, quiet=True)
        model = seqtext.load(out)
        assert model.net.head.pooling == pooling
        probs[pooling] = model.predict(["a great film with a dull plot"])[0]["probs"]["pos"]
    assert len(set(probs.values())) == len(probs), probs


def test_sentencepiece_model_from_vocab_folder(tmp_path):
    from conftest import REPO

    out = seqtext.train(REPO / "recipes" / "demo_sentiment.toml",
                        ["tokenizer.kind=sentencepiece", "tokenizer.lowercase=true", "train.epochs=1",
                         f"tokenizer.model_file='{REPO / 'vocab' / 'demo_unigram_300.model'}'"],
                        output=tmp_path / "spm", quiet=True)
    saved = (out / "tokenizer.model").read_bytes()
    assert saved == (REPO / "vocab" / "demo_unigram_300.model").read_bytes()
    assert seqtext.load(out).task.tokenizer.tokenize("a wonderful film")


def test_bf16_autocast_runs_training_steps_in_bf16_on_cpu(tiny, tmp_path, monkeypatch):
    """``train.bf16`` autocasts the training step on CPU too; weights and evaluation stay fp32."""
    from seqtext.tasks.classify import ClassifyTask

    seen = []
    real = ClassifyTask.loss

    def spy(self, net, batch):
        seen.append((torch.is_autocast_enabled("cpu"), net.training))
        return real(self, net, batch)

    monkeypatch.setattr(ClassifyTask, "loss", spy)
    out = seqtext.train(tiny, ["train.bf16=true", "train.epochs=1", "train.device=cpu"], output=tmp_path / "bf",
                        quiet=True)
    # on a CPU that cannot run bf16 (AVX2 only) the steps run in fp32 (the next test)
    assert seen and all(enabled == cpu_runs_bf16() for enabled, training in seen if training)
    assert all(w.dtype == torch.float32 for w in weights(out).values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.5


def test_bf16_on_a_cpu_that_cannot_run_it_trains_in_fp32_with_a_warning(tiny, tmp_path, monkeypatch, capsys):
    """oneDNN raises under bf16 autocast on AVX2-only CPUs: a recipe with bf16 = true (WikiText-2's)
    must still train there, in fp32, and say so."""

    from seqtext import hardware
    from seqtext.tasks.classify import ClassifyTask

    seen = []
    real = ClassifyTask.loss
    monkeypatch.setattr(ClassifyTask, "loss", lambda self, net, batch: seen.append(
        torch.is_autocast_enabled("cpu")) or real(self, net, batch))
    monkeypatch.setattr(hardware, "bf16_runs", lambda device: False)
    out = seqtext.train(tiny, ["train.bf16=true", "train.epochs=1", "train.device=cpu"], output=tmp_path / "fp")
    assert seen and not any(seen)
    assert "warning: [train] bf16: cpu cannot run bf16" in capsys.readouterr().err
    assert "bf16 = true" in (out / "recipe.toml").read_text()  # the request is kept for other machines
    assert not seqtext.load(out, "cpu", bf16=True).bf16
    assert capsys.readouterr().err == ("warning: bf16: cpu cannot run bf16 (oneDNN needs AVX-512 BW/VL/DQ or "
                                       "AVX-NE-CONVERT); running in fp32\n")


def test_history_records_throughput_and_mfu(tiny, tmp_path, monkeypatch):
    """MFU = tokens/s × the model's training FLOPs per token / the matmul peak. The peak is pinned
    (measuring keeps the higher of a new timing and the cached figure), so the check does not
    depend on how fast or loaded this machine is."""

    from seqtext import hardware

    peak = 1e18
    monkeypatch.setattr(hardware, "_PEAK", {f"cpu:{torch.float32}": (100.0, peak)})
    out = seqtext.train(tiny, ["train.epochs=1", "train.device=cpu"], output=tmp_path / "m", quiet=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["tokens_per_second"] > 0 for r in records)
    flops = seqtext.load(out).net.flops_per_token() * 3  # forward + backward
    assert flops > 0
    for r in records:
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * flops / peak, rel=1e-2)


def test_a_peak_measured_under_load_is_raised_at_the_next_evaluation(tiny, tmp_path, monkeypatch):
    """The matmul peak measured when training starts may be taken while other jobs load the cores;
    left as is, MFU read 219 % once that load went away. Each evaluation measures it again."""

    from seqtext import hardware

    monkeypatch.setattr(hardware, "_PEAK", {f"cpu:{torch.float32}": (10.0, 1e6)})
    out = seqtext.train(tiny, ["train.epochs=2", "train.device=cpu"], output=tmp_path / "p", quiet=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 2 and all(0 < r["mfu"] < 1 for r in records)


def test_epoch_end_does_not_evaluate_the_same_step_twice(tiny, tmp_path):
    """eval_every landing on an epoch's last step is that epoch's evaluation: one record per step,
    so a repeated score cannot count twice toward patience."""
    out = seqtext.train(tiny, ["train.eval_every=4", "train.batch_size=32", "train.patience=0"],
                        output=tmp_path / "e", quiet=True)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
    assert 4 in steps and steps[-1] % 4 == 0  # 128 train rows / 32 = 4 steps per epoch


def test_keep_freed_memory_applies_on_glibc():
    import platform
    import subprocess
    import sys

    from seqtext.hardware import keep_freed_memory, release_freed_memory

    applied = keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied is True
    else:
        assert applied is False
        assert release_freed_memory() is False
        return

    # in a fresh process: this one's heap already holds other tests' freed memory
    script = """
import os, torch
from seqtext.hardware import keep_freed_memory, release_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

keep_freed_memory()
block = torch.ones(64 * 2**20 // 4)  # 64 MB from the heap, written so it is resident
before_free = rss_mb()
del block
kept = rss_mb()
assert kept > before_free - 16, (before_free, kept)  # freed but kept for reuse
assert release_freed_memory() is True
assert rss_mb() < kept - 48, (kept, rss_mb())  # handed back to the OS
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_weight_average_follows_its_definition_and_swaps_back():
    from seqtext.train import WeightAverage

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    avg = WeightAverage(net, decay=0.9, every=2)
    expected = [p.detach().clone() for p in net.parameters()]
    n = 0
    for step in range(1, 9):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.step()
        if step % 2 == 0:
            n += 1
            d = min(0.9 ** 2, (1 + n) / (10 + n))
            expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, net.parameters())]
    raw = [p.detach().clone() for p in net.parameters()]
    with avg.swapped_in():
        for p, e in zip(net.parameters(), expected):
            torch.testing.assert_close(p.detach(), e)
    assert all(torch.equal(p, r) for p, r in zip(net.parameters(), raw))


def test_weight_average_is_what_gets_saved(tiny, tmp_path):
    # one epoch, one evaluation: the saved weights are the average at the end, not the raw weights
    out = seqtext.train(tiny, ["train.ema_decay=0.5", "train.epochs=1"], output=tmp_path / "e", quiet=True)
    ckpt, saved = weights(out, "checkpoint.safetensors"), weights(out)
    assert all(torch.equal(saved[k], ckpt[f"ema.{k}"]) for k in saved)
    assert any(not torch.equal(saved[k], ckpt[f"model.{k}"]) for k in saved)


@pytest.mark.parametrize("by_time", [False, True])
def test_schedule_can_anneal_by_the_time_budget(tiny, tmp_path, by_time):
    from seqtext.recipe import load_recipe
    from seqtext.train import Trainer

    recipe = load_recipe(tiny, ["train.schedule=cosine", "train.warmup=0", "train.max_minutes=10",
                                f"train.anneal_by_time={'true' if by_time else 'false'}"])
    task = seqtext.model.task_class("classify")(recipe)
    data = task.setup(seqtext.data.sources.load_splits(recipe), tmp_path)
    trainer = Trainer(task, task.build_net(), data, tmp_path, torch.device("cpu"), quiet=True)
    factor = trainer.scheduler.lr_lambdas[0]
    assert factor(0) == pytest.approx(1.0)
    trainer.state.seconds = 5 * 60  # half the time budget gone after one step
    assert factor(1) == pytest.approx(0.5 if by_time else 1.0, abs=0.02)
    trainer.state.seconds = 11 * 60
    assert factor(1) == pytest.approx(0.0 if by_time else 1.0, abs=0.02)


def test_matmul_peak_is_cached_and_a_longer_request_measures_again(monkeypatch):

    from seqtext import hardware

    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "_PEAK", {})
    first = hardware.matmul_peak_flops(cpu, seconds=0.01)
    assert first > 0
    key = next(iter(hardware._PEAK))
    hardware._PEAK[key] = (0.01, 1.0)  # a quick measurement spoiled by load elsewhere
    assert hardware.matmul_peak_flops(cpu, seconds=0.01) == 1.0  # cached: no new timing
    longer = hardware.matmul_peak_flops(cpu, seconds=0.02)
    assert longer > 1.0 and hardware._PEAK[key] == (0.02, longer)


def test_lazy_row_adamw_equals_adamw_on_rows_in_the_batch_and_leaves_the_rest():
    """Sparse gradients: rows a batch uses get exactly AdamW's update (weight decay included),
    other rows and their optimizer state stay as they were; dense parameters are plain AdamW."""
    from seqtext.train import AdamWLazyRows

    torch.manual_seed(0)
    dense_emb, sparse_emb = torch.nn.Embedding(6, 3), torch.nn.Embedding(6, 3, sparse=True)
    sparse_emb.load_state_dict(dense_emb.state_dict())
    dense_lin, sparse_lin = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    sparse_lin.load_state_dict(dense_lin.state_dict())
    kw = {"lr": 0.1, "weight_decay": 0.1}
    reference = torch.optim.AdamW([*dense_emb.parameters(), *dense_lin.parameters()], **kw)
    lazy = AdamWLazyRows([*sparse_emb.parameters(), *sparse_lin.parameters()], **kw)
    for ids in ([0, 1, 2, 3, 4, 5, 1], [5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5, 5, 5]):  # every row each step
        for emb, lin, opt in ((dense_emb, dense_lin, reference), (sparse_emb, sparse_lin, lazy)):
            opt.zero_grad()
            lin(emb(torch.tensor(ids))).square().sum().backward()
            opt.step()
    assert sparse_emb.weight.grad.is_sparse
    torch.testing.assert_close(sparse_emb.weight, dense_emb.weight)
    torch.testing.assert_close(sparse_lin.weight, dense_lin.weight)
    before, state = sparse_emb.weight.detach().clone(), {k: v.clone() for k, v in lazy.state[sparse_emb.weight].items()}
    lazy.zero_grad()
    sparse_lin(sparse_emb(torch.tensor([1, 1, 4]))).sum().backward()
    lazy.step()
    untouched = [0, 2, 3, 5]
    assert torch.equal(sparse_emb.weight[untouched], before[untouched])
    assert not torch.equal(sparse_emb.weight[[1, 4]], before[[1, 4]])
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(lazy.state[sparse_emb.weight][k][untouched], state[k][untouched])


def test_clip_grad_norm_counts_sparse_rows_like_their_dense_gradient():
    from seqtext.train import clip_grad_norm

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Embedding(5, 4, sparse=sparse), torch.nn.Linear(4, 2))
            for sparse in (False, True)]
    nets[1].load_state_dict(nets[0].state_dict())
    norms = []
    for net in nets:
        net(torch.tensor([1, 1, 3])).pow(3).sum().backward()  # row 1 twice: its two gradients add up
        norms.append(clip_grad_norm(net.parameters(), 0.5))
    assert nets[1][0].weight.grad.is_sparse
    torch.testing.assert_close(norms[1], norms[0])
    assert float(norms[0]) > 0.5  # so both were scaled
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(b.grad.to_dense(), a.grad)
    scaled = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in nets[0].parameters()])))
    assert scaled == pytest.approx(0.5, rel=1e-5)
    before = [p.grad.clone() for p in nets[0].parameters()]
    torch.testing.assert_close(clip_grad_norm(nets[0].parameters(), 10.0), torch.tensor(scaled))
    assert all(torch.equal(p.grad, b) for p, b in zip(nets[0].parameters(), before))  # within: untouched


def test_sparse_embeddings_train_and_refuse_a_tied_lm(tiny, tmp_path):
    out = seqtext.train(tiny, ["train.sparse_embeddings=true"], output=tmp_path / "s", quiet=True)
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] >= 0.6  # chance: 0.5
    from test_lm import lm_recipe

    from seqtext.recipe import load_recipe

    with pytest.raises(SeqtextError, match="sparse_embeddings"):
        seqtext.train(load_recipe(lm_recipe(tmp_path), ["train.sparse_embeddings=true"]), quiet=True)


def test_an_ensemble_that_fails_on_its_data_leaves_no_run_behind(tiny, tmp_path):
    """Like a single run: the corrected command must not be refused as 'already holds a run'."""
    with pytest.raises(SeqtextError, match="no label column 'stars'"):
        seqtext.train(tiny, ["model.ensemble=2", "data.label_column=stars"], output=tmp_path / "ens", quiet=True)
    assert not (tmp_path / "ens").exists()
    out = seqtext.train(tiny, ["model.ensemble=2", "train.max_steps=1"], output=tmp_path / "ens", quiet=True)
    assert (out / "weights.safetensors").is_file()


def test_classifier_ensemble_averages_member_probabilities(tiny, tmp_path):
    """[model] ensemble for a classifier: members (seeds 3, 4) share the dev split carved from
    train ([data] split_seed), hence the vocabulary, and the ensemble predicts the mean of the
    members' class probabilities."""
    out = seqtext.train(tiny, ["model.ensemble=2"], output=tmp_path / "ens", quiet=True)
    members = [seqtext.load(out / "members" / str(i), "cpu") for i in (1, 2)]
    assert [m.recipe.train.seed for m in members] == [3, 4]
    assert [m.recipe.data.split_seed for m in members] == [3, 3]
    texts = ["a wonderful film with great acting", "dull and boring", "an instant classic"]
    each = [m.predict(texts) for m in members]
    labels = list(each[0][0]["probs"])
    assert any(abs(each[0][i]["probs"][k] - each[1][i]["probs"][k]) > 1e-4 for i in range(3) for k in labels)
    for i, result in enumerate(seqtext.load(out, "cpu").predict(texts)):
        for k in labels:
            assert result["probs"][k] == pytest.approx((each[0][i]["probs"][k] + each[1][i]["probs"][k]) / 2,
                                                       abs=1e-5)
        assert result["label"] == max(result["probs"], key=result["probs"].get)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["members"] == 2 and 0.0 <= metrics["test"]["accuracy"] <= 1.0
