"""Subprocesses of the multi-process tests: run together, never left running."""

from __future__ import annotations

import subprocess
import time

import pytest


def finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Each process's exit status and output, under one deadline shared by all; every process
    is killed on any failure (one left alone would wait for its peer forever)."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for process in processes:
            try:
                out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{len(processes)} processes did not finish in {timeout} s (a hang?)")
            results.append((process.returncode, out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results
