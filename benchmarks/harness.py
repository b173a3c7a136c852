"""Timing and memory measurement: median of timed runs after warm-up; peak memory per run.

CPU memory: a sampler thread reads the process RSS (``/proc/self/statm``) every ``MEM_POLL_S`` during
each timed run; the figure is the largest peak RSS above the RSS just before a run (taken after a ``gc``
and a ``malloc_trim``, so memory freed by earlier runs is not counted as headroom). Weights and optimizer
state, allocated before (warm-up), are therefore NOT in it: it is the step's transient memory
(activations, gradients, temporaries). GPU: ``torch.cuda.max_memory_allocated`` during a run minus the
allocation before it (the same meaning).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

MEM_POLL_S = 0.002


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    """Autocast context for ``precision`` (fp32: none; bf16/fp16: torch.autocast on ``device``'s type)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.split(":")[0], dtype=dtype)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: ru_maxrss is the best there is (a process-lifetime peak)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssPeak:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(MEM_POLL_S)

    def __enter__(self) -> "_RssPeak":
        self.base = _rss_bytes()
        self.peak = self.base
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


@dataclass
class Timing:
    times: List[float]  # seconds per timed run
    warmup_s: float  # the (first) warm-up run
    peak_mem: Optional[int]  # bytes above the pre-run baseline (None when not measured)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def runs(self) -> int:
        return len(self.times)


def measure(fn: Callable[[], object], device: str, warmup: int = 1, reps: int = 3, max_s: Optional[float] = None,
            memory: bool = True, min_reps: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times, then time ``reps`` runs (median reported).

    ``max_s``: cap on the timed runs' total expected time: reps = min(reps, max(min_reps, max_s // warm-up
    time)), so expensive configurations get fewer (and say so: ``Timing.runs``).
    """
    return measure_many([fn], device, warmup, reps, max_s, memory, min_reps)[0]


def measure_many(fns: Sequence[Callable[[], object]], device: str, warmup: int = 1, reps: int = 3,
                 max_s: Optional[float] = None, memory: bool = True, min_reps: int = 1) -> List[Timing]:
    """Like :func:`measure` for variants of one configuration (e.g. shared prefix off/on), INTERLEAVED:
    warm-ups, then rounds of one timed run of each, so that load from other processes on the machine
    hits every variant alike and their ratio stays meaningful. ``max_s`` caps a variant's timed runs."""
    warm: List[List[float]] = [[] for _ in fns]
    for _ in range(max(warmup, 0)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync(device)
            warm[i].append(time.perf_counter() - t0)
    if max_s is not None and warmup > 0:
        slowest = max(w[-1] for w in warm)
        reps = min(reps, max(min_reps, int(max_s // max(slowest, 1e-9))))
    times: List[List[float]] = [[] for _ in fns]
    peaks: List[Optional[int]] = [None for _ in fns]
    gpu = device.startswith("cuda")
    for _ in range(reps):
        for i, fn in enumerate(fns):
            if memory and gpu:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            elif memory:
                _trim()
            with (_RssPeak() if memory and not gpu else contextlib.nullcontext()) as m:
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[i].append(time.perf_counter() - t0)
            if memory:
                p = torch.cuda.max_memory_allocated() - base if gpu else m.peak - m.base
                peaks[i] = p if peaks[i] is None else max(peaks[i], p)
    return [Timing(t, w[0] if w else float("nan"), pk) for t, w, pk in zip(times, warm, peaks)]


def matmul_flops(n: int, dtype: torch.dtype, device: str, reps: int = 5) -> tuple[float, int]:
    """Measured FLOP/s of one n×n·n×n matmul (median of ``reps`` after one warm-up) and the runs used."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    t = measure(lambda: torch.mm(a, b), device, warmup=1, reps=reps, memory=False)
    return 2.0 * n ** 3 / t.median, t.runs
