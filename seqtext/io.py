"""Crash-safe file writing, model-directory path checks, and reading gzipped or plain data files.

Every file seqtext writes goes through :func:`atomic_write`: a temporary file in the
same directory, flushed and fsynced, then renamed over the target. A killed process
leaves either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import SeqtextError, warn


def open_data(path: str | os.PathLike, mode: str, **kwargs) -> IO:
    """``path`` opened as ``open`` would, decompressed if its name ends in .gz (train.jsonl.gz, train.txt.gz)."""
    return (gzip.open if os.fspath(path).endswith(".gz") else open)(path, mode, **kwargs)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            # mkstemp makes the file private (0600); give it the permissions a plain open() would
            # (or keep those of the file it replaces), so shared model directories stay readable.
            os.fchmod(f.fileno(), _mode_for(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


LOCK_FILE = ".seqtext.lock"
_NO_LOCKING = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}  # filesystems without flock


def own_temp_files(directory: Path, names) -> list[Path]:
    """The temporary files :func:`atomic_write` leaves in ``directory`` when a kill interrupts a
    write of one of ``names``; never anything else that starts with a dot."""
    return [p for name in names for p in directory.glob(f".{name}.*.tmp")]


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.seqtext.lock`` while a run trains there, so a second training into the same
    directory (a duplicated command, a --resume beside a running job) is refused instead of
    interleaving two runs' files. An advisory ``flock``: the kernel drops it when the process
    ends, however it ends, so a killed run never blocks the next one. The lock file is removed
    when the run ends, and so is the directory if the lock made it and nothing else was written.
    Where the filesystem cannot lock (some NFS and Lustre mounts), training goes on with a warning."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise SeqtextError(f"{run_dir}: another seqtext process{f' (pid {holder})' if holder else ''} is "
                               "training there; wait for it to end or stop it") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_LOCKING:
                raise
            unsupported = e.strerror
            break
        unsupported = None
        try:  # the file a run that just ended unlinked is no lock: take the one now at the path
            if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if unsupported:
        warn(f"{run_dir}: this filesystem cannot lock files ({unsupported}); nothing stops a second training "
             "into the same directory")
        fd = None
    else:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still held: whoever opens the path next gets a new file
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()
        if fd is not None:
            os.close(fd)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line durably (used for metrics.jsonl; a torn last line is skipped on read)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous CPU copies, no pickle)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    with atomic_write(path, "wb") as f:
        f.write(data)


def load_tensors(path: str | os.PathLike) -> dict:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise SeqtextError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 — corrupt or not a safetensors file (several error types)
        raise SeqtextError(f"{path}: not a valid safetensors file ({e})") from None


def read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SeqtextError(f"{path}: missing file") from None
    except json.JSONDecodeError as e:
        raise SeqtextError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def inside(directory: str | os.PathLike, name: str) -> Path:
    """Resolve ``name`` inside ``directory``; refuse names that escape it (``../``, absolute)."""
    base = Path(directory).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise SeqtextError(f"{name!r} points outside the model directory {directory}")
    return target
