"""Ensembles: ``[model] ensemble`` classifiers or taggers, each an ordinary training run with its
own seed in ``<run>/members/<i>``, optionally several at once in separate processes, joined into
one model directory whose members predict together (see :class:`seqtext.tasks.base.Ensemble`)."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from . import distributed as dist
from .data.sources import load_splits
from .errors import Interrupted, SeqtextError, warn
from .hardware import stop_with_parent
from .io import read_json, write_text
from .model import (
    METRICS_FILE,
    RECIPE_FILE,
    WEIGHTS_FILE,
    cpu_threads,
    resolve_device,
    save_state_dict,
    task_class,
    write_model_files,
)
from .recipe import Recipe
from .train import finish, holds_files, prepare_run_dir, resume_command, signals_handled, train

# In a member's process (parallel_members > 1): set once the ensemble is stopping, so that a
# process that frees up starts no further member; and the process that started the ensemble.
_members_stopping = None
_members_parent = 0
_member_interrupted = False  # this member process stopped a member: it starts no other


def _member_process_init(stopping, parent: int) -> None:
    """A member process: remember the ensemble's stop flag and its parent, and stop with the parent
    (:func:`~seqtext.hardware.stop_with_parent`)."""
    global _members_stopping, _members_parent
    _members_stopping, _members_parent = stopping, parent
    # Ctrl-C reaches the whole process group. A member's training handles it (a checkpoint, then
    # stop); an idle process must not die of it inside the pool's queue, holding the queue's lock,
    # which hangs the pool's shutdown. The parent stops idle processes itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock holds a multiprocessing lock (a named semaphore, registered with the
    # ensemble's resource tracker): a member killed by the OOM killer would leave it behind, and the
    # tracker warns of a "leaked semaphore" as the ensemble exits. One process needs a thread lock.
    tqdm.set_lock(threading.RLock())
    stop_with_parent(parent)


def _orphaned() -> bool:
    """In a member process: whether the process that started the ensemble is gone."""
    return _members_stopping is not None and os.getppid() != _members_parent


def _train_member(member: Recipe, resume: bool, quiet: bool) -> dict:
    """One ensemble member, start to finish (also the entry point of a member's own process)."""
    global _member_interrupted
    if _orphaned():
        os._exit(130)  # nobody waits for this process, and its pool would keep it idle forever
    # Ctrl-C reaches the members as it reaches the parent: a process whose member it stopped may be
    # handed the next queued member before the parent has set the stop flag
    if _member_interrupted or (_members_stopping is not None and _members_stopping.is_set()):
        raise Interrupted(f"{member.output_dir}: not started, the ensemble is stopping")
    directory = member.output_dir
    if resume and (directory / METRICS_FILE).is_file():
        return read_json(directory / METRICS_FILE)["train"]
    # a member that never started starts now (resuming where there is no run is refused)
    try:
        train(member, resume=resume and holds_files(directory), quiet=quiet)
    except Interrupted:
        _member_interrupted = _members_stopping is not None  # in a member process
        if _orphaned():
            os._exit(130)  # stopped by its parent's death (the checkpoint is saved): end the process
        raise
    return read_json(directory / METRICS_FILE)["train"]


def train_ensemble(recipe: Recipe, resume: bool, force: bool, quiet: bool) -> Path:
    """Train ``[model] ensemble`` classifiers or taggers, each an ordinary run with its own seed (seed, seed + 1,
    ...) in ``<run>/members/<i>``, then write the run directory as one model holding all of them
    (``members.<i>.*`` weights) and score it on dev and test.

    ``[train] parallel_members`` > 1 trains that many at once in separate processes that split
    the threads.
    Members share train/dev split (``[data] split_seed``), vocabulary, characters and labels, because
    these come from the training data alone. ``--resume`` skips finished members and resumes interrupted ones."""
    from .model import load

    if recipe.task not in ("classify", "tag"):
        raise SeqtextError(f"{recipe.source}: [model] ensemble: only classify and tag models can be ensembles "
                           f"(this recipe's task is {recipe.task!r}); set ensemble = 1")
    run_dir = recipe.output_dir
    n, parallel = recipe.model.ensemble, min(recipe.train.parallel_members, recipe.model.ensemble)
    if parallel > 1 and dist.world_size() > 1:  # the processes train each member together
        if dist.is_main():
            warn(f"[train] parallel_members = {parallel}: under torchrun the members train one after another")
        parallel = 1
    created = dist.is_main() and not holds_files(run_dir)
    with dist.main_first():  # where rank 0 refuses the run directory, the others stop quietly
        if dist.is_main():
            prepare_run_dir(run_dir, recipe, resume, force)
            if force:
                shutil.rmtree(run_dir / "members", ignore_errors=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / RECIPE_FILE, recipe.to_toml())  # marks the directory as this run's
    threads = cpu_threads(recipe.train.threads)
    members = []
    for i in range(n):
        member = copy.deepcopy(recipe)
        member.model.ensemble = 1
        member.train.seed = recipe.train.seed + i
        member.data.split_seed = recipe.data.split_seed or recipe.train.seed  # one dev split for all
        member.name = f"{recipe.name}-{i + 1}"
        member.output.dir = str(run_dir / "members" / str(i + 1))
        if parallel > 1:
            member.train.threads = max(1, threads // parallel)
        members.append(member)
    member_dirs = [m.output_dir for m in members]
    done_before = [read_json(d / METRICS_FILE)["train"]["seconds"] for d in member_dirs
                   if resume and (d / METRICS_FILE).is_file()]
    start = time.perf_counter()
    try:
        if parallel > 1:
            summaries = _train_members_in_processes(members, parallel, resume, quiet)
        else:
            summaries = []
            for i, member in enumerate(members):
                if not quiet:
                    print(f"ensemble member {i + 1}/{n} (seed {member.train.seed}) → {member.output_dir}",
                          file=sys.stderr)
                summaries.append(_train_member(member, resume, quiet))
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(f"interrupted; finished members are kept and the others have checkpoints. Resume with: "
                          f"{resume_command(run_dir)}" if dist.is_main() else "") from None
    except BrokenProcessPool:  # a member's process was killed on its own (the kernel's OOM killer, say)
        raise SeqtextError(f"{run_dir}: a member's process died (out of memory? lower [train] parallel_members); "
                           f"finished members are kept and the others have checkpoints. Resume with: "
                           f"{resume_command(run_dir)}") from None
    except SeqtextError:
        if created and not any(holds_files(d) for d in member_dirs):
            # failed before any member wrote a file (bad data, say): leave no run behind, as a
            # single run does, so that the corrected command is not refused as "already holds this run"
            (run_dir / RECIPE_FILE).unlink(missing_ok=True)
            for empty in (run_dir / "members", run_dir):
                with contextlib.suppress(OSError):
                    empty.rmdir()
        raise
    if dist.is_main():
        device = resolve_device(recipe.train.device)
        members = [load(d, "cpu") for d in member_dirs]
        task = members[0].task
        for d, m in zip(member_dirs[1:], members[1:]):
            if m.task.vocab.itos != task.vocab.itos or m.task.meta != task.meta:
                raise SeqtextError(f"{d}: its vocabulary or labels differ from {member_dirs[0]}'s; the members "
                                   "of an ensemble must be trained on the same data (retrain with --force)")
        task.recipe = recipe
        net = task.build_net()
        for slot, m in zip(net.members, members):
            slot.load_state_dict(m.net.state_dict())
        write_model_files(run_dir, task)
        save_state_dict(run_dir / WEIGHTS_FILE, net.state_dict())
        # wall-clock training time (members in parallel overlap), plus members finished before a resume
        summary = {"members": n, "parallel_members": parallel,
                   "seconds": time.perf_counter() - start + sum(done_before),
                   "member_seconds": [x["seconds"] for x in summaries],
                   "steps": sum(x["steps"] for x in summaries), "tokens": sum(x["tokens"] for x in summaries),
                   "member_best_dev": [x["best_dev"] for x in summaries]}
        summary["tokens_per_second"] = summary["tokens"] / max(1e-9, summary["seconds"])
        splits = load_splits(recipe, only=("dev", "test"))
        data = {s: task.encode_split(task.tokenize_split(splits[s], s), s) for s in ("dev", "test") if s in splits}
        finish(run_dir, task, net.to(device), data, device, summary, quiet)
    dist.barrier()
    return run_dir


def _train_members_in_processes(members: list[Recipe], parallel: int, resume: bool, quiet: bool) -> list[dict]:
    """Train members ``parallel`` at a time in spawned processes; the first shows its progress."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fill the datasets cache once, here, so the processes only read it
    first = members[0]
    staging = Path(tempfile.mkdtemp(prefix="seqtext-"))
    try:
        task_class(first.task)(first).setup(load_splits(first), staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(f"training {len(members)} ensemble members, {parallel} at a time with {first.train.threads} "
              f"thread(s) each; member 1 shows its progress", file=sys.stderr)

    def on_term(signum, frame):
        raise KeyboardInterrupt  # handled below, as Ctrl-C is

    context = multiprocessing.get_context("spawn")
    stopping = context.Event()
    with signals_handled(on_term, signal.SIGTERM), \
            ProcessPoolExecutor(parallel, mp_context=context, initializer=_member_process_init,
                                initargs=(stopping, os.getpid())) as pool:
        futures = [pool.submit(_train_member, m, resume, quiet or i > 0) for i, m in enumerate(members)]
        summaries = []
        try:
            for i, future in enumerate(futures):
                summaries.append(future.result())
                if not quiet:
                    print(f"ensemble member {i + 1}/{len(members)} done: dev {summaries[-1]['best_dev']:.4f}",
                          file=sys.stderr)
        except BaseException:
            # Ctrl-C, a SIGTERM or a failed member: start no further member (the pool would otherwise
            # hand the queued ones to the freed processes and wait for them to finish), and stop the
            # running ones at their next step with a checkpoint. Ctrl-C has reached them already; a
            # SIGTERM (job scheduler, `kill`) reaches this process only, so pass it on.
            stopping.set()
            for future in futures:
                future.cancel()
            for child in multiprocessing.active_children():
                child.terminate()
            raise
    return summaries
