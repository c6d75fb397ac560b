"""One training loop for every task.

AdamW, gradient clipping, warmup + linear/cosine (or reduce-on-plateau) schedule, early
stopping on the task's dev metric, best weights kept, and a single-file resume checkpoint
(weights, optimizer, scheduler, RNG, loop position) written atomically every
``checkpoint_every`` steps. Because data order is a pure function of (seed, epoch) and the
RNG state is saved, a killed run resumed with ``--resume`` ends with exactly the weights of
an uninterrupted one (on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from tqdm import tqdm

from . import distributed as dist
from .data.sources import find_split_files, load_splits
from .data.vocab import VOCAB_FILE
from .errors import Interrupted, RankError, SeqtextError, warn
from .hardware import bf16_setting, freed_memory_kept, matmul_peak_flops
from .io import LOCK_FILE, append_line, atomic_write, own_temp_files, read_json, run_lock, write_json
from .model import (
    CHECKPOINT_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILES,
    RECIPE_FILE,
    WEIGHTS_FILE,
    load_state_dict,
    load_task,
    load_weights,
    refuse_ensemble,
    resolve_device,
    save_state_dict,
    set_threads,
    task_class,
    write_model_files,
)
from .recipe import Recipe, load_recipe


@dataclass
class LoopState:
    """Where training is; saved as JSON inside the checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    last_eval_step: int = -1
    bad_steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    done: bool = False
    losses: list = field(default_factory=list)  # (step, mean loss) for curves
    window_loss: float = 0.0  # summed since the last point of `losses` (kept across a resume, so the
    window_steps: int = 0  # curve's points are those of an uninterrupted run)
    loss_since_eval: float = 0.0  # summed over the steps since the last evaluation, for its record
    steps_since_eval: int = 0
    total_steps: int = 0  # the LR schedule's length (0: a checkpoint from before it was recorded)


class AdamWLazyRows(torch.optim.AdamW):
    """AdamW that also takes sparse (row) gradients, as ``nn.Embedding(sparse=True)`` gives them.

    Dense parameters get torch's AdamW step (fused where available). A sparse-gradient parameter
    gets the same update on the rows that had a gradient this step only ("lazy" Adam, as
    ``torch.optim.SparseAdam`` and TF's LazyAdam do, here with AdamW's decoupled weight decay on
    those rows); rows of words absent from the batch stay as they are. On CPU this turns the
    per-step pass over a whole 50k × 128 embedding (its gradient zero-fill, clipping norm and
    AdamW update, ~6 % of an IMDB step) into work on the rows a batch uses.
    ``SparseAdam`` itself cannot be used: it takes sparse parameters only and has no weight decay.
    State keys match AdamW's, so checkpoints save and load it unchanged."""

    @torch.no_grad()
    def step(self, closure=None):
        sparse = [(g, p, p.grad) for g in self.param_groups for p in g["params"]
                  if p.grad is not None and p.grad.is_sparse]
        for _, p, _ in sparse:
            p.grad = None  # hidden from the dense step
        try:
            super().step(closure)
        finally:
            for _, p, grad in sparse:
                p.grad = grad
        for group, p, grad in sparse:
            self._lazy_update(group, p, grad.coalesce())

    def _lazy_update(self, group: dict, p: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = float(state["step"])
        rows, g = grad.indices()[0], grad.values()
        m = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(g, alpha=1 - beta1)
        v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, m)
        state["exp_avg_sq"].index_copy_(0, rows, v)
        lr = float(group["lr"])
        denom = (v / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
        new = p.index_select(0, rows).mul_(1 - lr * group["weight_decay"])
        new.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))
        p.index_copy_(0, rows, new)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_`` that also handles sparse (row) gradients, which it rejects.
    Sparse gradients are coalesced first, so rows repeated in a batch count once, summed.

    The norms and the scaling are one ``_foreach`` call each (torch's own loops over the tensors
    on CPU), and gradients within ``max_norm`` are left alone instead of multiplied by 1."""
    params = [p for p in params if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    # a coalesced sparse gradient's values() is its storage: scaled in place
    parts = [p.grad.values() if p.grad.is_sparse else p.grad for p in params]
    if not parts:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(parts)))
    if total > max_norm:  # a host sync, which the trainer's finiteness check makes anyway
        torch._foreach_mul_(parts, max_norm / (total + 1e-6))
    return total


class WeightAverage:
    """Exponential moving average of a network's parameters (Polyak averaging over a horizon of
    ~1 / (1 - decay) steps): the average sits nearer the optimum than the noisy last iterate.

    Updated every ``every`` steps with decay ** every, so the horizon stays the same while the
    memory-bound pass over all weights runs 1/every as often. Early updates use a smaller decay,
    (1 + n) / (10 + n), so the average is not tied to the initial weights."""

    def __init__(self, net: nn.Module, decay: float, every: int = 8):
        self.decay, self.every = decay, every
        self.names = [n for n, _ in net.named_parameters()]  # tied weights appear once
        self.params = [p for _, p in net.named_parameters()]
        self.averaged = [p.detach().clone() for p in self.params]
        self.calls = 0  # optimizer steps seen; every ``every``-th one updates the average

    def step(self) -> None:
        """Call after every optimizer step."""
        self.calls += 1
        if self.calls % self.every:
            return
        n = self.calls // self.every
        decay = min(self.decay ** self.every, (1 + n) / (10 + n))
        with torch.no_grad():
            torch._foreach_lerp_(self.averaged, [p.detach() for p in self.params], 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """The network holds the averaged weights inside the block and its own ones after."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        # copies, not .data swaps: parameters keep their storage (cuDNN's flattened LSTM weights)
        with torch.no_grad():
            for p, a in zip(self.params, self.averaged):
                own = p.detach().clone()
                p.copy_(a)
                a.copy_(own)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"ema.{n}": a for n, a in zip(self.names, self.averaged)} | \
            {"ema_calls": torch.tensor(self.calls)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if "ema_calls" not in tensors:
            raise SeqtextError("the checkpoint has no weight average although [train] ema_decay is set; "
                               "resume with the recipe it was written with")
        for n, a in zip(self.names, self.averaged):
            a.copy_(tensors[f"ema.{n}"])
        self.calls = int(tensors["ema_calls"])


@contextlib.contextmanager
def signals_handled(handler, *signums: int):
    """``handler`` for ``signums`` while the block runs, the previous handlers after it. Only the
    main thread may set handlers, so elsewhere (a training run inside a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# Under DDP the ranks agree on the clock and on stop requests every this many steps: each
# agreement is one more collective, and so one more point where every rank waits for the slowest.
AGREE_EVERY = 10


class Trainer:
    def __init__(self, task, net: nn.Module, data: dict, run_dir: Path, device: torch.device,
                 quiet: bool = False):
        self.task, self.net, self.data, self.run_dir, self.device = task, net, data, run_dir, device
        self.recipe: Recipe = task.recipe
        self.cfg = self.recipe.train
        self.quiet = quiet or not dist.is_main()
        self.rank, self.world = dist.rank(), dist.world_size()
        self.steps_per_epoch = max(1, task.steps_per_epoch(data["train"], self.world))
        # the schedule ends where training does: at max_steps or after the last epoch, the earlier
        self.total_steps = min(self.cfg.max_steps or math.inf, self.cfg.epochs * self.steps_per_epoch)
        if self.cfg.sparse_embeddings:
            self._sparse_word_gradients()
        self.row_gradients = list(dist.row_gradient_params(net).values())
        # frozen layers get no gradient; every other parameter gets one in every step (the adaptive
        # softmax's clusters are slices of one weight, so a cluster without targets still counts)
        self.model = dist.wrap(net, device, find_unused=self.cfg.freeze_epochs > 0)
        self.optimizer = self._optimizer()
        self.state = LoopState(total_steps=self.total_steps)
        self.scheduler = self._scheduler()
        self.average = WeightAverage(net, self.cfg.ema_decay) if self.cfg.ema_decay else None
        self.sign = 1.0 if task.higher_is_better else -1.0
        self.flops_per_token = net.flops_per_token() * 3  # forward + backward ≈ 3× forward
        # [train] bf16 where this device can run it; train() shows the warning, if any
        self.bf16, self.bf16_warning = bf16_setting(self.cfg.bf16, device, "[train] bf16")
        self.peak = 0.0
        self._measure_peak(refresh=False)

    # ------------------------------------------------------------------ setup
    def _measure_peak(self, refresh: bool) -> None:
        """The MFU denominator: this machine's matmul peak, in the step's precision (bf16 steps
        against the bf16 peak, 2-4x the fp32 one where native), over all processes on CPU. Measured
        again at every evaluation, keeping the highest figure: one taken while other processes
        loaded the cores (the start of a run often coincides with other jobs) put MFU past 100 %."""
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        peak = matmul_peak_flops(self.device, seconds=0.1 if refresh else 0.3, dtype=dtype, refresh=refresh)
        self.peak = max(self.peak, peak * (self.world if self.device.type == "cpu" else 1))

    def _sparse_word_gradients(self) -> None:
        words = self.net.embedder.words
        if any(p is words.weight for p in self.net.head.parameters()):
            raise SeqtextError("[train] sparse_embeddings: the word embedding is tied to the output layer, so its "
                               "gradient is dense; set [model] tie_weights = false or sparse_embeddings = false")
        if self.world > 1 and self.device.type == "cuda":
            if dist.is_main():
                warn("[train] sparse_embeddings is ignored with several CUDA processes (NCCL cannot reduce "
                     "sparse gradients)")
            return
        words.sparse = True

    def _param_groups(self):
        encoder = [p for n, p in self.net.named_parameters() if n.startswith(("embedder.", "encoder."))]
        head = [p for n, p in self.net.named_parameters() if not n.startswith(("embedder.", "encoder."))]
        lr = self.cfg.lr
        return [{"params": encoder, "lr": lr * self.cfg.encoder_lr_factor}, {"params": head, "lr": lr}]

    def _optimizer(self):
        # fused: one pass over each tensor instead of ~10; on CPU the step over a large embedding
        # matrix gets ~7x faster (it was half of a tagger training step)
        try:
            return AdamWLazyRows(self._param_groups(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                 fused=True)
        except RuntimeError:  # a device without the fused kernel
            return AdamWLazyRows(self._param_groups(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _scheduler(self):
        c = self.cfg
        if c.schedule == "plateau":
            mode = "max" if self.task.higher_is_better else "min"
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode=mode, factor=0.5, patience=0)
        def factor(step: int) -> float:
            total = self.total_steps  # read at each step: a resumed run keeps its checkpoint's
            warmup = int(c.warmup * total)
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if c.anneal_by_time and c.max_minutes:
                # whichever budget runs out first ends the schedule: on a slower machine the LR
                # still reaches its end when max_minutes stops the run
                progress = max(progress, min(1.0, self.state.seconds / (60 * c.max_minutes)))
            if c.schedule == "linear":
                return max(0.0, 1.0 - progress)
            if c.schedule == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Write the checkpoint (rank 0 only). Under DDP every rank calls this at the same step: the
        random state and the task's carried state are each rank's own, so rank 0 gathers them."""
        own = {"rng.cpu": torch.get_rng_state()}
        if self.device.type == "cuda":  # this process's GPU only: touching the others would open a context on each
            own["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        own |= {f"task.{k}": v.detach().cpu() for k, v in self.task.train_state().items()}
        per_rank = dist.gather(own)
        if not dist.is_main():
            return
        tensors = {f"model.{k}": v for k, v in self.net.state_dict().items()}
        osd = self.optimizer.state_dict()
        scalars = {}
        for pid, st in osd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{pid}.{k}"] = v
                else:
                    scalars[f"{pid}.{k}"] = v
        for rank, state in enumerate(per_rank):
            prefix = f"rank{rank}." if self.world > 1 else ""
            tensors |= {prefix + k: v for k, v in state.items()}
        if self.average is not None:
            tensors |= self.average.state()
        meta = {
            "loop": json.dumps(self.state.__dict__),
            "optim_groups": json.dumps(osd["param_groups"]),
            "optim_scalars": json.dumps(scalars),
            "scheduler": json.dumps(self.scheduler.state_dict()),
            "world": str(self.world),
        }
        save_state_dict(self.run_dir / CHECKPOINT_FILE, tensors, meta)

    def load_checkpoint(self) -> bool:
        path = self.run_dir / CHECKPOINT_FILE
        if not path.is_file():
            return False
        try:
            return self._load_checkpoint(path)
        except (SafetensorError, json.JSONDecodeError, KeyError, ValueError, TypeError) as e:  # not the file written
            # (out of memory, a filesystem error or a bug are not the file's fault: they pass unchanged)
            detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise SeqtextError(f"{path}: not a readable checkpoint ({detail}); restore it, or start the run over "
                               "with --force") from None

    def _load_checkpoint(self, path: Path) -> bool:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        saved_world = int(meta.get("world", 1))
        if saved_world != self.world:
            # each rank's share of the data, random state and (LM) carried state depend on the count
            raise SeqtextError(f"{path}: written by a run of {saved_world} process(es), resumed with {self.world}; "
                               f"resume with the same number of processes (torchrun --nproc_per_node × --nnodes)")
        tensors = load_state_dict(path)
        if self.world > 1:  # this rank's own random and carried state
            own = f"rank{self.rank}."
            tensors |= {k[len(own):]: v for k, v in tensors.items() if k.startswith(own)}
        load_weights(self.net, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for k, v in json.loads(meta["optim_scalars"]).items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["optim_groups"])})
        self.scheduler.load_state_dict(json.loads(meta["scheduler"]))
        self.state = LoopState(**json.loads(meta["loop"]))
        # the schedule the run started with (one saved before 2026-12-07: that version's formula)
        self.total_steps = self.state.total_steps or (self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch)
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda":
            cuda = tensors.get("rng.cuda", tensors.get(f"rng.cuda{self.device.index or 0}"))  # or as written before
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, self.device)
        self.task.load_train_state({k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("task.")})
        if self.average is not None:
            self.average.load_state(tensors)
        self._trim_history()
        return True

    def _trim_history(self) -> None:
        """Drop metrics.jsonl lines written after the checkpoint (they will be written again)."""
        path = self.run_dir / HISTORY_FILE
        if not path.is_file() or not dist.is_main():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= self.state.global_step:
                    keep.append(line)
            except (ValueError, KeyError):
                continue  # torn last line from a kill
        with atomic_write(path) as f:
            f.write("".join(x + "\n" for x in keep))

    # ------------------------------------------------------------------ loop
    def _set_frozen(self, frozen: bool) -> None:
        for n, p in self.net.named_parameters():
            if n.startswith(("embedder.", "encoder.")):
                fixed = n == "embedder.words.weight" and self.recipe.model.freeze_embeddings
                p.requires_grad_(not frozen and not fixed)

    def fit(self) -> dict:
        s, c = self.state, self.cfg
        start_time = self._start_time = time.perf_counter() - s.seconds
        requested = False  # set by the signal handler, at any moment
        stopping = False  # acted on: under DDP only at a step where the ranks agreed on it

        def on_stop(signum, frame):
            nonlocal requested
            requested = True

        # Large step buffers stay on the heap for reuse instead of being page-faulted in every step.
        # Ctrl-C, or SIGTERM from a job scheduler or from torchrun (which forwards Ctrl-C to its
        # workers that way): finish the step, save a checkpoint, stop.
        with freed_memory_kept(self.device.type == "cpu"), signals_handled(on_stop, signal.SIGINT, signal.SIGTERM):
            while not s.done and s.epoch < c.epochs:
                self._set_frozen(s.epoch < c.freeze_epochs)
                if s.step_in_epoch == 0:
                    self.task.reset_epoch()
                self.model.train()
                batches = self.task.train_batches(self.data["train"], s.epoch, self.rank, self.world)
                bar = tqdm(total=self.steps_per_epoch, initial=s.step_in_epoch, disable=self.quiet,
                           desc=f"epoch {s.epoch + 1}/{c.epochs}", unit="step", mininterval=1.0,
                           file=sys.stderr, leave=False, dynamic_ncols=True)
                window_tokens, window_start = 0, time.perf_counter()
                for i, batch in enumerate(batches):
                    if i < s.step_in_epoch:
                        continue  # resumed mid-epoch: data order is deterministic, skip what was seen
                    loss = self._step(batch)
                    s.step_in_epoch += 1
                    s.global_step += 1
                    s.tokens += batch.num_tokens * self.world
                    window_tokens += batch.num_tokens * self.world
                    if loss is not None:
                        s.window_loss, s.window_steps = s.window_loss + loss, s.window_steps + 1
                        s.loss_since_eval, s.steps_since_eval = s.loss_since_eval + loss, s.steps_since_eval + 1
                    bar.update(1)
                    if s.global_step % 20 == 0 or i == 0:
                        dt = max(1e-9, time.perf_counter() - window_start)
                        tps = window_tokens / dt
                        mfu = tps * self.flops_per_token / self.peak
                        mean = s.window_loss / max(1, s.window_steps)
                        bar.set_postfix_str(f"loss {mean:.4f} {tps / 1000:.1f}k tok/s MFU {100 * mfu:.1f}%")
                        s.losses.append((s.global_step, mean))
                        window_tokens, window_start, s.window_loss, s.window_steps = 0, time.perf_counter(), 0.0, 0
                    if self.world == 1:
                        s.seconds, stopping = time.perf_counter() - start_time, requested
                    elif s.global_step % AGREE_EVERY == 0:
                        # the ranks must agree on when to stop and on a time-based LR; in between
                        # they keep the last agreed clock
                        s.seconds, stopping = dist.agree(time.perf_counter() - start_time, requested)
                    out_of_time = c.max_minutes and s.seconds > 60 * c.max_minutes
                    if (c.max_steps and s.global_step >= c.max_steps) or out_of_time:
                        s.done = True
                    if c.eval_every and s.global_step % c.eval_every == 0 and not s.done:
                        self._evaluate()
                    if s.global_step % c.checkpoint_every == 0 or s.done or stopping:
                        self.save_checkpoint()
                    if stopping:
                        bar.close()  # the interrupt's message then starts on a line of its own
                        raise KeyboardInterrupt
                    if s.done:
                        break
                bar.close()
                if s.step_in_epoch >= self.steps_per_epoch or not s.done:
                    s.epoch += 1
                    s.step_in_epoch = 0
                if s.last_eval_step != s.global_step:  # eval_every may have just evaluated this step
                    self._evaluate()
                if c.patience and s.bad_evals >= c.patience:
                    s.done = True
                self.save_checkpoint()
        if self.world > 1:  # the clock of the last few steps, for the summary
            s.seconds, _ = dist.agree(time.perf_counter() - start_time, False)
        s.done = True
        self.save_checkpoint()
        return {"steps": s.global_step, "seconds": s.seconds, "tokens": s.tokens,
                "tokens_per_second": s.tokens / max(1e-9, s.seconds), "best_dev": s.best, "best_step": s.best_step}

    def _step(self, batch) -> float | None:
        c = self.cfg
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(self.task.loss, batch)
        if self.world == 1 and not torch.isfinite(loss):
            return self._bad_step(f"loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.row_gradients and self.world > 1:
            dist.average_row_gradients(self.row_gradients)  # left out of DDP (see dist.wrap)
        if c.clip or self.world > 1:
            # Under DDP every rank must skip the same steps, or their gradient all-reduces fall out
            # of step (a hang, or gloo aborting on mismatched sizes). A non-finite loss on any rank
            # makes the all-reduced gradients, which all ranks share, non-finite: decide on their
            # norm. (Alone, this also keeps a finite loss with overflowing gradients out of the weights.)
            norm = clip_grad_norm(self.net.parameters(), c.clip or float("inf"))
            if not torch.isfinite(norm):
                return self._bad_step(f"the loss or its gradients became non-finite (local loss {loss.item()})")
        self.optimizer.step()
        if c.schedule != "plateau":
            self.scheduler.step()
        if self.average is not None:
            self.average.step()
        return loss.item()

    def _bad_step(self, what: str) -> None:
        """Skip a step whose loss or gradients are not finite, or stop once more than
        ``max_bad_steps`` have been skipped."""
        s = self.state
        s.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if s.bad_steps > self.cfg.max_bad_steps:
            # a RankError: under torchrun every process says it, each with its own loss
            raise RankError(f"{what} at step {s.global_step + 1}; the last good checkpoint is kept in "
                            f"{self.run_dir / CHECKPOINT_FILE}. Lower [train] lr or clip, or allow skips with "
                            "train.max_bad_steps")

    def _evaluate(self) -> None:
        s = self.state
        s.last_eval_step = s.global_step
        # with a weight average, it is what gets scored and kept as the model
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            metrics = dist.average_metrics(self.task.dev_metrics(self.net, self.data["dev"], self.device))
            value = metrics[self.task.metric]
            improved = s.best is None or self.sign * (value - s.best) > 0
            if improved and dist.is_main():
                save_state_dict(self.run_dir / WEIGHTS_FILE, self.net.state_dict())
        if self.cfg.schedule == "plateau":
            self.scheduler.step(value)
        if improved:
            s.best, s.best_step, s.bad_evals = value, s.global_step, 0
        else:
            s.bad_evals += 1
        if self.world > 1:  # every rank evaluates at this step; between agreements the clock lags
            s.seconds, _ = dist.agree(time.perf_counter() - self._start_time, False)
        tps = s.tokens / max(1e-9, s.seconds)
        self._measure_peak(refresh=True)
        record = {"step": s.global_step, "epoch": s.epoch, "seconds": round(s.seconds, 1),
                  "train_loss": s.loss_since_eval / s.steps_since_eval if s.steps_since_eval else None,
                  "tokens_per_second": round(tps),
                  "mfu": float(f"{tps * self.flops_per_token / self.peak:.3g}"),  # tiny on a GPU: 1e-6
                  "lr": self.optimizer.param_groups[-1]["lr"],
                  **{f"dev_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        s.loss_since_eval, s.steps_since_eval = 0.0, 0
        if dist.is_main():
            append_line(self.run_dir / HISTORY_FILE, json.dumps(record))
        if not self.quiet:
            mark = " *" if improved else ""
            tqdm.write(f"step {s.global_step} | epoch {s.epoch} | loss {record['train_loss'] or float('nan'):.4f} | "
                       f"dev {self.task.metric} {value:.4f}{mark} | {tps / 1000:.1f}k tok/s | "
                       f"MFU {100 * record['mfu']:.1f}% | {s.seconds:.0f}s", file=sys.stderr)
        self.net.train()


# ---------------------------------------------------------------------- entry point

def holds_files(directory: Path) -> bool:
    """Whether ``directory`` exists and is not empty (a run was started there); the lock of a
    run starting there does not count."""
    return directory.is_dir() and any(p.name != LOCK_FILE for p in directory.iterdir())


def discard_outputs(run_dir: Path) -> None:
    """Delete what training writes into a run directory (checkpoint, weights, history, metrics,
    curves), before a run starts over there."""
    for name in (CHECKPOINT_FILE, WEIGHTS_FILE, HISTORY_FILE, METRICS_FILE, CURVES_FILE):
        (run_dir / name).unlink(missing_ok=True)


# Every file training writes into a run directory (a model directory's and the run's own)
RUN_FILES = (*MODEL_FILES, CHECKPOINT_FILE, HISTORY_FILE, METRICS_FILE, CURVES_FILE)


# Recipe keys that a resumed run may change: where it is written and on what hardware, how many
# threads or processes, not the model, data or schedule (other threads or another device can
# change the last bits of the arithmetic, so such a resume is no longer bit-identical).
RUN_SETTINGS = (("output", "dir"), ("train", "device"), ("train", "threads"), ("data", "num_proc"),
                ("train", "parallel_members"))


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, force: bool) -> bool:
    """Decide whether to start fresh or resume; refuse to clobber another run. Returns resume."""
    saved = run_dir / RECIPE_FILE
    if not holds_files(run_dir):
        return False
    if not saved.is_file() and not force:
        raise SeqtextError(f"{run_dir}: exists and is not a seqtext run; choose another --output or use --force")
    for stale in own_temp_files(run_dir, RUN_FILES):  # seqtext's writes that a kill interrupted
        stale.unlink(missing_ok=True)
    if force:
        discard_outputs(run_dir)
        return False
    previous = load_recipe(saved).to_dict()
    current = recipe.to_dict()
    if not previous.get("data", {}).get("files"):
        # a run saved before --data-dir was recorded as [data] files (2026-12-07), or a hub run:
        # it names no files to compare with, so the data given now is taken, as it was then
        for d in (previous, current):
            d.get("data", {}).pop("files", None)
    for d in (previous, current):
        for section, key in RUN_SETTINGS:  # where and how fast a run goes does not change its results
            d.get(section, {}).pop(key, None)
        if d.get("init_from"):  # saved absolute since 2026-12-07, relative to the working directory before
            d["init_from"] = str(Path(d["init_from"]).expanduser().resolve())
    if previous != current:
        diff = []
        for key in sorted(previous.keys() | current.keys()):
            old, new = previous.get(key), current.get(key)
            if isinstance(old, dict) or isinstance(new, dict):
                old, new = old or {}, new or {}
                diff += [f"{key}.{k} {old.get(k)!r} → {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                         if old.get(k) != new.get(k)]
            elif old != new:
                diff.append(f"{key} {old!r} → {new!r}")
        raise SeqtextError(f"{run_dir}: holds a run of a different recipe ({'; '.join(diff[:5])}); use --force to "
                           "start it over or another --output")
    if resume:
        return (run_dir / CHECKPOINT_FILE).is_file()
    raise SeqtextError(f"{run_dir}: already holds this run; use --resume to continue it or --force to retrain")


TRANSFERRED = ("embedder.words.", "encoder.")  # what init_from copies: the word embedding and the encoder
LM_HEAD = "head."  # ... and, from one LM to another (fine-tuning it on new text), the output layer too


def init_from(net: nn.Module, source_dir: str, task: str) -> tuple[list[str], list[str]]:
    """Copy embedding and encoder weights from another run (e.g. a language model) into ``net``,
    a model for ``task``; an LM started from an LM also gets its output layer. Returns the names
    copied, and those of this model's transferable tensors that the source has no tensor for
    (more layers, or a backward direction, than the source: they keep their random init)."""
    from .model import check_model_dir

    path = check_model_dir(source_dir)
    source_recipe = load_recipe(path / RECIPE_FILE)
    refuse_ensemble(f"init_from {source_dir}", source_recipe, path)
    parts = (*TRANSFERRED, LM_HEAD) if task == source_recipe.task == "lm" else TRANSFERRED
    source = load_state_dict(path / WEIGHTS_FILE)
    own = net.state_dict()
    copied = []
    for k, v in source.items():
        if not k.startswith(parts) or k not in own:
            continue
        if own[k].shape != v.shape and k.startswith(LM_HEAD):
            continue  # another output layer (other cutoffs or projection): it starts fresh, and is named
        if own[k].shape != v.shape:
            raise SeqtextError(f"init_from {source_dir}: {k} has shape {tuple(v.shape)}, this recipe's model "
                               f"needs {tuple(own[k].shape)}; match [model] sizes to the source run")
        own[k] = v
        copied.append(k)
    if not copied:
        raise SeqtextError(f"init_from {source_dir}: no embedding/encoder weights match this model")
    net.load_state_dict(own)
    return copied, [k for k in own if k.startswith(parts) and k not in copied]


def _make_task(recipe: Recipe, run_dir: Path, resume: bool, resuming: bool):
    cls = task_class(recipe.task)
    # meta.json is written last of the model files: without it a kill interrupted their writing
    if resuming or (resume and all((run_dir / f).is_file() for f in (VOCAB_FILE, META_FILE))):
        task = load_task(run_dir)  # identical tokenizer/vocab/labels to the interrupted run
        task.recipe = recipe
        return task
    if recipe.init_from:
        source = load_task(Path(recipe.init_from))
        return cls(recipe, source.tokenizer, source.vocab, {"joint": source.meta.get("joint", True)})
    return cls(recipe)


def _adopt_source(recipe: Recipe, resume: bool, quiet: bool) -> None:
    """``init_from``: the source run, made absolute (it is relative to the working directory) so
    that the saved recipe reproduces the run from anywhere, is checked before any data is read,
    and its [tokenizer] and [vocab] replace the recipe's: the copied embedding only means something
    with the source's tokens, and the saved recipe must rebuild the tokenizer training used."""
    from .model import check_model_dir

    source = Path(recipe.init_from).expanduser().resolve()
    recipe.init_from = str(source)
    if resume and not (source / RECIPE_FILE).is_file():
        return  # a resumed run has its tokenizer and vocabulary; the source may be gone by now
    try:
        check_model_dir(source)
    except SeqtextError as e:
        raise SeqtextError(f"{recipe.source}: init_from: {e} (train that run first)") from None
    own = load_recipe(source / RECIPE_FILE)
    changed = [f"{name}.{f.name}" for name in ("tokenizer", "vocab")
               for f in dataclasses.fields(getattr(recipe, name))
               if getattr(getattr(recipe, name), f.name) != getattr(getattr(own, name), f.name)]
    if changed and not quiet:
        print(f"note: init_from {source}: its tokenizer and vocabulary are used ({', '.join(changed)} "
              "taken from its recipe)", file=sys.stderr)
    recipe.tokenizer, recipe.vocab = copy.deepcopy(own.tokenizer), copy.deepcopy(own.vocab)


def resume_command(run_dir: Path) -> str:
    """The command that resumes ``run_dir``, with the same torchrun layout when it is one (the
    path quoted for a shell, so a directory with spaces can be pasted as it is)."""
    command = f"seqtext train {shlex.quote(str(run_dir / RECIPE_FILE))} --resume"
    world = dist.world_size()
    if world == 1:
        return command
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = f" --nnodes {world // local} (and your rendezvous options)" if local != world else ""
    return f"torchrun --nproc_per_node {local}{nodes} -m {command}"


def train(recipe: str | Path | dict | Recipe, overrides: list[str] | dict | None = None,
          output: str | Path | None = None, data_dir: str | None = None, resume: bool = False,
          force: bool = False, device: str | None = None, quiet: bool = False) -> Path:
    """Train a recipe; return the model directory. The CLI's ``train`` is a thin layer over this.

    ``recipe``: a recipe file, a dict of its contents or a :class:`Recipe`; ``overrides``:
    ``["train.epochs=2", ...]`` or ``{"train.epochs": 2}`` (the CLI's --set); ``force``: retrain
    over an output directory that holds another run; ``device``: ``auto``, ``cpu`` or ``cuda``
    (overrides ``[train] device``); ``quiet``: no progress bar or log lines.

    With ``resume`` and no ``output``, a run directory's own recipe file (``RUN/recipe.toml``)
    resumes that directory wherever it now is and from any working directory; otherwise the
    run is the recipe's ``[output] dir`` (relative to the working directory). Resuming a
    directory that holds no run is an error (a mistyped ``--output`` must not start afresh).
    ``data_dir``: read train/dev/test files from this directory; they are saved in the run's
    recipe as ``[data] files`` (the CLI's --data-dir, or SEQTEXT_DATA_DIR)."""
    quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 speaks for all
    own_run = None
    if isinstance(recipe, (str, Path)):
        path = Path(recipe)
        if path.name == RECIPE_FILE and (any((path.parent / f).is_file() for f in (META_FILE, CHECKPOINT_FILE,
                                                                                     VOCAB_FILE))
                                         or (path.parent / "members").is_dir()):  # an unfinished ensemble
            own_run = path.parent
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:  # a Recipe object: the overrides apply to a copy, validated like a file's
        recipe = load_recipe(recipe.to_dict(), overrides)
    if output:
        recipe.output.dir = str(output)
    elif resume and own_run is not None:
        recipe.output.dir = str(own_run)
    if device:  # as the recipe key takes it (the saved recipe must load again)
        if not isinstance(device, str) or device.lower() not in ("auto", "cpu", "cuda"):
            raise SeqtextError(f"device {device!r}: expected auto, cpu or cuda (to train on GPU N, set "
                               "CUDA_VISIBLE_DEVICES=N)")
        recipe.train.device = device.lower()
    if data_dir:
        # the files found become the recipe's [data] files, so the saved recipe names the data the
        # run used: a resume, `seqtext evaluate` and a retrain from it read the same files
        found = find_split_files(Path(data_dir))
        recipe.data.files = {split: str(path.resolve()) for split, path in found.items()}
        if not quiet:
            print(f"data: {', '.join(f'{k} {v}' for k, v in recipe.data.files.items())}", file=sys.stderr)
    if recipe.init_from:
        _adopt_source(recipe, resume, quiet)
    if resume and force:
        raise SeqtextError("--resume and --force: give one (--resume continues the run, --force discards it)")
    if resume:
        run_dir = recipe.output_dir
        if not holds_files(run_dir):
            raise SeqtextError(f"{run_dir}: no run to resume there; check --output (or the recipe's [output] dir), "
                               "or leave out --resume to start a new run")
    with dist.process_group(resolve_device(recipe.train.device)):
        return _train(recipe, resume, force, quiet)


def _train(recipe: Recipe, resume: bool, force: bool, quiet: bool) -> Path:
    # one training per run directory at a time (rank 0 holds it for all of torchrun's processes;
    # the others stop quietly where it cannot take it)
    with contextlib.ExitStack() as lock:
        with dist.main_first():
            if dist.is_main():
                lock.enter_context(run_lock(recipe.output_dir))
        try:
            return _train_locked(recipe, resume, force, quiet)
        except KeyboardInterrupt:  # before training started (the loop and the ensemble say their own)
            run_dir = recipe.output_dir
            if not dist.is_main():
                raise Interrupted("") from None
            if (run_dir / CHECKPOINT_FILE).is_file():
                raise Interrupted(f"interrupted; the last checkpoint is kept. Resume with: "
                                  f"{resume_command(run_dir)}") from None
            raise Interrupted("interrupted before training started: there is nothing to resume yet; run the "
                              "same command again") from None


def _train_locked(recipe: Recipe, resume: bool, force: bool, quiet: bool) -> Path:
    if quiet:
        import datasets

        datasets.disable_progress_bars()
    if recipe.model.ensemble > 1:
        from .ensemble import train_ensemble

        return train_ensemble(recipe, resume, force, quiet)
    run_dir = recipe.output_dir
    dev = dist.device_for_rank(resolve_device(recipe.train.device))
    set_threads(recipe.train.threads)
    started = resume and not force and holds_files(run_dir)
    with dist.main_first():  # rank 0 decides about the run dir and fills the datasets cache
        resuming = prepare_run_dir(run_dir, recipe, resume, force) if dist.is_main() \
            else resume and (run_dir / CHECKPOINT_FILE).is_file()
        if started and not resuming and dist.is_main():  # stopped before its first checkpoint: start again
            discard_outputs(run_dir)
            if not quiet:
                print(f"{run_dir}: no checkpoint yet (the run stopped before its first): training from the start",
                      file=sys.stderr)
        splits = load_splits(recipe)
        task = _make_task(recipe, run_dir, resume, resuming)
        staging = Path(tempfile.mkdtemp(prefix="seqtext-"))  # a trained tokenizer waits here until saved
        try:
            data = task.setup(splits, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if not dist.all_equal(resuming):
        raise SeqtextError(f"{run_dir / CHECKPOINT_FILE}: some processes see it and others do not; with several "
                           "machines, --output must be on a filesystem that every node shares")
    torch.manual_seed(recipe.train.seed)
    net = task.build_net()
    if recipe.init_from and not resuming:
        copied, fresh = init_from(net, recipe.init_from, recipe.task)
        if not quiet:
            print(f"initialised {len(copied)} tensors from {recipe.init_from}", file=sys.stderr)
            if fresh:
                print(f"note: {len(fresh)} transferable tensors have no counterpart in {recipe.init_from} and "
                      f"start random: {', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''}", file=sys.stderr)
    if recipe.model.pretrained_vectors and not resuming:
        stats = net.embedder.load_vectors(recipe.model.pretrained_vectors, task.vocab.itos,
                                          recipe.model.freeze_embeddings)
        task.meta["vectors"] = stats
        if not quiet:
            print(f"pretrained vectors: {stats['vectors_found']}/{stats['vocab']} words "
                  f"({100 * stats['coverage']:.1f}%)", file=sys.stderr)
    net.to(dev)
    try:
        # before the model files are written: a recipe refused here (fewer batches than torchrun's
        # processes) leaves no run behind, so the corrected command is not refused as another run's
        trainer = Trainer(task, net, data, run_dir, dev, quiet)
        if dist.is_main():
            write_model_files(run_dir, task)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if trainer.bf16_warning and not quiet:
        warn(trainer.bf16_warning)
    if resuming and trainer.load_checkpoint() and not quiet:
        st = trainer.state
        finished = st.done or st.epoch >= recipe.train.epochs
        print(f"resumed {run_dir} at step {st.global_step} " + ("(training had finished; scoring it again)"
              if finished else f"(epoch {st.epoch + 1})"), file=sys.stderr)
    if not quiet:
        n = sum(p.numel() for p in net.parameters())
        print(f"training {recipe.name}: {recipe.task}, {n / 1e6:.2f}M parameters, {len(task.vocab)} vocab, "
              f"{trainer.steps_per_epoch} step{'s' if trainer.steps_per_epoch != 1 else ''}/epoch, device {dev}, "
              f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}",
              file=sys.stderr)
    try:
        summary = trainer.fit()
        with dist.main_first():  # the others wait while rank 0 scores and writes the model
            if dist.is_main():
                finish(run_dir, task, net, data, dev, summary, quiet)
    except KeyboardInterrupt:  # while training, or while the final scores are computed
        raise Interrupted(f"interrupted; checkpoint saved. Resume with: {resume_command(run_dir)}"
                          if dist.is_main() else "") from None
    return run_dir


def finish(run_dir: Path, task, net, data: dict, device, summary: dict, quiet: bool) -> dict:
    """Load the best weights, score dev (and test), write metrics.json and curves.png."""
    if (run_dir / WEIGHTS_FILE).is_file():
        load_weights(net, load_state_dict(run_dir / WEIGHTS_FILE), run_dir / WEIGHTS_FILE)
    else:
        save_state_dict(run_dir / WEIGHTS_FILE, net.state_dict())
    metrics = {"task": task.name, "metric": task.metric, "train": summary,
               "dev": task.evaluate(net, data["dev"], device)}
    if "test" in data:
        metrics["test"] = task.evaluate(net, data["test"], device)
    write_json(run_dir / METRICS_FILE, metrics)
    write_curves(run_dir)
    if not quiet:
        line = f"{run_dir}: dev {task.metric} {metrics['dev'][task.metric]:.4f}"
        if "test" in metrics:
            line += f", test {task.metric} {metrics['test'][task.metric]:.4f}"
        print(line + f" ({summary['seconds']:.0f}s training)", file=sys.stderr)
    return metrics


def write_curves(run_dir: Path) -> None:
    """Training loss and dev metric curves as a PNG (written atomically)."""
    import matplotlib

    if not (run_dir / HISTORY_FILE).is_file():
        return  # nothing to plot (an ensemble: each member has its own curves)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [json.loads(x) for x in (run_dir / HISTORY_FILE).read_text().splitlines() if x.strip()]
    from safetensors import safe_open

    losses = []
    if (run_dir / CHECKPOINT_FILE).is_file():
        # a damaged checkpoint costs the plot its loss curve only
        with contextlib.suppress(Exception), safe_open(str(run_dir / CHECKPOINT_FILE), "pt") as f:
            losses = json.loads(f.metadata()["loop"])["losses"]
    metric = read_json(run_dir / "meta.json").get("task")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    if losses:
        a.plot([x[0] for x in losses], [x[1] for x in losses])
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    dev_keys = [k for k in (history[0] if history else {}) if k.startswith("dev_")]
    key = next((k for k in ("dev_accuracy", "dev_f1", "dev_perplexity") if k in dev_keys), None)
    if key:
        b.plot([h["step"] for h in history], [h[key] for h in history], marker="o")
        b.set_ylabel(key.replace("_", " "))
    b.set_xlabel("step")
    fig.suptitle(f"{run_dir.name} ({metric})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    with atomic_write(run_dir / CURVES_FILE, "wb") as f:
        f.write(buf.getvalue())
