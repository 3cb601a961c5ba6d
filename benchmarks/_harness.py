"""Timing and memory helpers shared by the benchmarks (one JSON line per figure)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any


def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and min wall time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line (the benchmark suite's only output format)."""
    print(json.dumps(record, sort_keys=True), flush=True)


def block(x):
    """Wait for an asynchronously computed backend value (JAX dispatch is async)."""
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    elif hasattr(x, "numpy"):
        try:
            x.numpy()
        except Exception:  # torch tensors that require grad
            x.detach()
    return x
