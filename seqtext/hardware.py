"""What this machine can do, measured or probed once: the matmul peak that MFU divides by,
whether bf16 runs (and runs natively), and glibc's allocator setting for training loops."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import torch

_PEAK: dict[str, tuple[float, float]] = {}  # device:dtype -> (seconds measured, FLOP/s)

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def libc_handle():
    """The C library (glibc's mallopt/malloc_trim, Linux's prctl), or None where it cannot be loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def stop_with_parent(parent: int) -> None:
    """(Linux) Have the kernel send this process a SIGTERM when its parent, ``parent`` (a pid read
    before the call), dies, even by SIGKILL: training then saves a checkpoint and stops, instead of
    going on, orphaned, into a run directory that a --resume may be using. Elsewhere a no-op."""
    libc = libc_handle()
    if sys.platform.startswith("linux") and libc is not None and hasattr(libc, "prctl"):
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request was in place
            os.kill(os.getpid(), signal.SIGTERM)


def keep_freed_memory() -> bool:
    """Make glibc keep freed heap memory for reuse instead of returning it to the OS.

    By default glibc serves every allocation above 32 MB with a fresh ``mmap`` and unmaps it on
    free, so each training step page-faults its large gradient buffers back in (the WikiText-2
    LM's 33k × 400 embedding gradient, zeroed by the kernel page by page every step).
    Serving them from the heap and never trimming it made that recipe's step 1.46× faster, with
    ~4 % more peak RSS (the heap keeps its high-water mark): ``benchmarks/malloc_step.py``. Returns
    whether the settings were applied (False off glibc, e.g. macOS/Windows). Undo it with
    :func:`release_freed_memory`; :func:`freed_memory_kept` does both around a block.
    """
    libc = libc_handle()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def release_freed_memory() -> bool:
    """Undo :func:`keep_freed_memory`: glibc's default thresholds again, and the kept free memory
    handed back to the OS (``malloc_trim``). Work done afterwards in heap mode fragments the heap:
    a benchmark process that prepared the IMDB data again after the settings were applied peaked at
    13.0 GB instead of 6.9 GB (benchmarks/README.md). Returns whether it applied (glibc only)."""
    libc = libc_handle()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    applied = bool(libc.mallopt(_M_MMAP_MAX, 65536)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024))
    libc.malloc_trim(0)
    return applied


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True):
    """:func:`keep_freed_memory` for the duration of a block (a training loop), released after it."""
    applied = enabled and keep_freed_memory()
    try:
        yield applied
    finally:
        if applied:
            release_freed_memory()


def matmul_peak_flops(device: torch.device, seconds: float = 0.3, dtype: torch.dtype = torch.float32,
                      refresh: bool = False) -> float:
    """Measured matmul FLOP/s of this machine in ``dtype`` (the MFU denominator), cached.

    The best of several short timings, so that a moment of load from another process does not
    lower the peak (which would inflate MFU past 100 %). A call asking for a longer measurement
    than the cached one measures again and keeps the higher figure (the trainer's quick 0.3 s
    figure must not stand in for a benchmark's 1 s one). On CPU the oneDNN matmul is timed too:
    ``torch.matmul`` in fp32 goes through MKL, which on AMD CPUs runs well below the oneDNN
    kernels the LSTM itself uses (``benchmarks/cpu_kernels.py``), and a peak below what the
    model's own kernels reach is no ceiling. ``refresh`` measures again anyway (keeping the higher
    figure): load that lasted through a whole measurement still lowers it.
    """
    key = f"{device}:{dtype}"
    if refresh or key not in _PEAK or _PEAK[key][0] < seconds:
        n = 1024 if device.type == "cpu" else 8192
        # a private generator: measuring must not shift the global RNG (seeded runs stay identical)
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, generator=gen).to(dtype)
        b = torch.randn(n, n, device=device, generator=gen).to(dtype)
        kernels = [lambda: torch.matmul(a, b)]
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
                kernels.append(lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn))
            except (RuntimeError, AttributeError):  # dtype or build without oneDNN tensors
                pass
        best = 0.0
        for kernel in kernels:
            kernel()
            deadline, timed = time.perf_counter() + seconds / len(kernels), False
            while not timed or time.perf_counter() < deadline:
                timed = True
                start = time.perf_counter()
                kernel()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = max(best, 2 * n**3 / (time.perf_counter() - start))
        cached_seconds, cached = _PEAK.get(key, (0.0, 0.0))
        _PEAK[key] = (max(seconds, cached_seconds), max(best, cached))
    return _PEAK[key][1]


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16 support; CPUs with AVX512-BF16 or AMX),
    which is where ``[train] bf16`` pays off."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def bf16_runs(device: torch.device) -> bool:
    """Whether bf16 autocast can run here at all: CUDA with bf16, or a CPU for which oneDNN has bf16
    kernels (AVX-512 BW/VL/DQ, or AVX-NE-CONVERT). On other CPUs (AVX2 only) oneDNN's LSTM and linear
    layers raise an error under bf16 autocast instead of computing."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_setting(requested: bool, device: torch.device, what: str) -> tuple[bool, str | None]:
    """The precision to run with when ``what`` asks for bf16, and a warning to show, if any: bf16
    where it runs (warning where it is not native, so slower than fp32), fp32 where it cannot run."""
    if not requested:
        return False, None
    if not bf16_runs(device):
        needs = "a GPU of compute capability 8.0+" if device.type == "cuda" else \
            "oneDNN needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT"
        return False, f"{what}: {device} cannot run bf16 ({needs}); running in fp32"
    if not native_bf16(device):
        return True, f"{what}: {device} has no native bf16 matmul; autocast will likely be slower than fp32"
    return True, None
