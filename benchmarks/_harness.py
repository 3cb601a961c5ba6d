"""What every benchmark shares: the subprocess runner, timing, memory and the JSON output.

A benchmark script prints one JSON line per figure (``emit``). Scripts that compare backends
or need a fresh process per configuration run themselves (or another script) through
``run_module``: one subprocess each, JSON lines collected, failures turned into a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")
# Distributions whose versions the figures depend on; the peers are benchmark-only.
FRAMEWORKS = ("keras", "tensorflow", "tf_keras", "jax", "jaxlib", "torch", "numpy")
DISTRIBUTIONS = (*FRAMEWORKS, "dm-sonnet", "vector-quantize-pytorch")


# ------------------------------------------------------------------ output
def emit(record: dict[str, Any]) -> None:
    """Print one JSON line (the benchmark suite's only output format)."""
    print(json.dumps(record, sort_keys=True), flush=True)


def error_text(error: BaseException, limit: int = 400) -> str:
    """``"TypeName: message"``, cut to ``limit`` characters, for a record's ``error`` field."""
    return f"{type(error).__name__}: {error}"[:limit]


def machine() -> dict[str, Any]:
    """The fields every record carries about the machine it ran on."""
    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def versions(distributions: Iterable[str] = FRAMEWORKS) -> dict[str, str]:
    """Installed versions of ``distributions``; those not installed are left out."""
    from importlib import metadata

    out = {}
    for dist in distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------ subprocesses
@dataclasses.dataclass
class ChildRun:
    """What ``run_command`` (or ``run_module``) collected from one subprocess.

    ``error`` is ``None`` when the process exited with 0 and printed at least the expected
    number of JSON lines; otherwise it says why not, ending with the last line of stderr.
    """

    records: list[dict[str, Any]]
    error: str | None
    seconds: float


def flags(args: argparse.Namespace, *names: str) -> list[str]:
    """Command-line flags that pass the values of ``args.<name>`` on to a child process.

    ``None`` and ``False`` are left out, ``True`` gives the bare flag, lists are spread.
    """
    out: list[str] = []
    for name in names:
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list | tuple):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def _descendants(pid: int) -> list[int]:
    """Process ids started by ``pid``, recursively (Linux ``/proc``; empty elsewhere)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process it started: a script's own children hold the pipe."""
    for target in [pid, *_descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _read_records(stream: IO[str], records: list, backend: str | None, echo: bool) -> None:
    for line in stream:
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if backend and "backend" not in record:
            record["backend"] = backend
        records.append(record)
        if echo:
            emit(record)


def run_module(
    module: str,
    argv: Sequence[str] = (),
    *,
    backend: str | None = None,
    timeout: float = 900.0,
    min_records: int = 1,
    echo: bool = False,
) -> ChildRun:
    """Run ``python -m benchmarks.<module> <argv>`` in a fresh process; collect its JSON lines.

    The scripts time things, so callers run one child at a time.

    Args:
        module: a module of the ``benchmarks`` package, e.g. ``"train_throughput"``.
        argv: its command-line arguments.
        backend, timeout, min_records, echo: see ``run_command``.

    Returns:
        A ``ChildRun``.
    """
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *map(str, argv)]
    return run_command(cmd, backend=backend, timeout=timeout, min_records=min_records, echo=echo)


def run_command(
    cmd: Sequence[str],
    *,
    backend: str | None = None,
    timeout: float = 900.0,
    min_records: int = 1,
    echo: bool = False,
) -> ChildRun:
    """Run ``cmd`` from the repository root with ``benchmarks`` importable; collect JSON lines.

    Args:
        cmd: the command line.
        backend: ``KERAS_BACKEND`` for the child (one process has one backend); records that
            do not name a backend get this one. ``None`` inherits the environment's.
        timeout: seconds before the child and everything it started are killed.
        min_records: fewer JSON lines than this from a successful exit count as a failure.
        echo: print each record as it arrives (progress while a long script runs).

    Returns:
        A ``ChildRun``. On failure the tail of the child's stderr is also printed to stderr.

    Raises:
        ValueError: ``backend`` is not one of ``BACKENDS`` or ``None``.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS} or None, got {backend!r}.")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            list(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        reader = threading.Thread(target=_read_records, args=(proc.stdout, records, backend, echo))
        reader.start()
        try:
            proc.wait(timeout=timeout)
            error = None if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            error = f"timeout after {timeout:g} s"
        reader.join()
        stderr.seek(0)
        stderr_text = stderr.read()
    if error is None and len(records) < min_records:
        error = f"{len(records)} JSON lines, expected at least {min_records}"
    if error is not None:
        print(f"# {' '.join(cmd[1:])}: {error}\n{stderr_text[-3000:]}", file=sys.stderr)
        tail = [line for line in stderr_text.splitlines() if line.strip()][-1:]
        if tail:
            error += f": {tail[0][-300:]}"
    return ChildRun(records, error, time.perf_counter() - start)


def run_configurations(
    module: str,
    configurations: Iterable[tuple[str | None, Sequence[str], dict[str, Any]]],
    *,
    timeout: float = 900.0,
    min_records: int = 1,
    echo: bool = False,
) -> list[dict[str, Any]]:
    """``run_module`` once per configuration, one after the other; all their records.

    Args:
        module: the ``benchmarks`` module to run.
        configurations: ``(backend, argv, identity)`` triples; ``identity`` holds the fields
            that name the configuration in the error record of a run that fails.
        timeout, min_records, echo: as for ``run_module``, per run.

    Returns:
        The records of every run, each failed run followed by ``{**identity, "error": ...}``
        (also printed when ``echo``).
    """
    records: list[dict[str, Any]] = []
    for backend, argv, identity in configurations:
        run = run_module(
            module, argv, backend=backend, timeout=timeout, min_records=min_records, echo=echo
        )
        records += run.records
        if run.error:
            records.append({**identity, "error": run.error})
            if echo:
                emit(records[-1])
    return records


def script_main(
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run_child: Callable[[argparse.Namespace], None],
    run_all: Callable[[argparse.Namespace], Iterable[dict[str, Any]] | None],
    argv: Sequence[str] | None = None,
) -> None:
    """Entry point of a script that runs itself in child processes.

    With the hidden ``--_child`` argument set, the process is a child: ``run_child`` measures
    and emits. Otherwise ``run_all`` starts the children (``run_configurations``); the records
    it returns, if any, are emitted here.
    """
    args = parse_args(argv)
    if args._child:
        run_child(args)
        return
    for record in run_all(args) or ():
        emit(record)


def add_training_timing_args(parser: argparse.ArgumentParser, steps: int, repeats: int) -> None:
    """The flags of a script that times ``fit`` per (backend, ``jit_compile``) in children.

    ``--backends``, ``--jit``, ``--batch-size``, ``--steps``, ``--repeats``, ``--warmup``,
    ``--threads``, ``--timeout`` and the hidden ``--_child`` (``off``/``on``: the child's
    ``jit_compile``).
    """
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=steps, help="steps per timed fit")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (TF, torch); default: theirs"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--_child", choices=["off", "on"], default=None, help=argparse.SUPPRESS)


def set_intra_op_threads(threads: int | None) -> None:
    """Limit the current backend's intra-op threads (``None``: the library's default).

    One thread is far less noisy on a shared machine: an OpenMP pool that finds a core busy
    waits for it, and a torch step then slows down many times over.
    """
    if threads is None:
        return
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
    else:  # XLA reads its thread count from the environment before JAX starts
        raise ValueError(
            f"`threads` is not settable on {backend} after start-up, got threads={threads}; "
            "set XLA_FLAGS=--xla_cpu_multi_thread_eigen=false instead."
        )


# ------------------------------------------------------------------ timing
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


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and min wall time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = [seconds(fn) for _ in range(repeats)]
    return {"median_s": statistics.median(times), "min_s": min(times)}


def paired_ratio(ours: dict, reference: dict) -> float | None:
    """Median over rounds of ours / reference images/s, from two ``compare_training``
    records of the same run (a round's two passes ran back to back, under the same load);
    the ratio of the medians when the rounds are missing or do not pair up."""
    mine, theirs = ours.get("images_per_s_rounds"), reference.get("images_per_s_rounds")
    if mine and theirs and len(mine) == len(theirs):
        return round(statistics.median(a / b for a, b in zip(mine, theirs)), 3)
    if ours.get("images_per_s") and reference.get("images_per_s"):
        return round(ours["images_per_s"] / reference["images_per_s"], 3)
    return None


def alternate(
    measures: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """Take ``rounds`` turns of every measurement, one after the other within each round.

    Alternating spreads background load on a shared machine over all sides alike, so ratios
    between them are meaningful even when absolute times are not; the order rotates from
    round to round, so that no measurement always runs first (or right after another).

    Returns:
        ``(values, errors)``: the values each measurement returned, by name, and the error
        text of those that raised (which then sit out the remaining rounds).
    """
    values: dict[str, list[Any]] = {name: [] for name in measures}
    errors: dict[str, str] = {}
    names = list(measures)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            measure = measures[name]
            if name in errors:
                continue
            try:
                values[name].append(measure())
            except Exception as error:
                errors[name] = error_text(error)
    return {k: v for k, v in values.items() if k not in errors}, errors


def fit_images_per_s(
    keras, model, x, y=None, batch_size: int = 128, max_seconds: float | None = None
) -> tuple[float, int]:
    """Images/s of one ``fit`` pass over ``x``, timed from the end of the first step.

    The first step is left out (it may trace or compile); ``max_seconds`` stops the pass early.
    Keras 3 syncs the logs of a callback that is not async-safe, so on JAX the recorded times
    follow the computation, not its dispatch.

    Returns:
        ``(images per second, number of steps timed)``.
    """

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            if (
                max_seconds
                and len(self.times) > 2
                and self.times[-1] - self.times[0] > max_seconds
            ):
                self.model.stop_training = True

    timer = StepTimes()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    timed = len(timer.times) - 1
    if timed < 1:
        raise RuntimeError(f"only {len(timer.times)} steps ran; need at least 2 to time one")
    return batch_size * timed / (timer.times[-1] - timer.times[0]), timed


def compare_training(
    keras,
    models: dict[str, tuple[Any, Any, Any]],
    batch_size: int,
    warmup_steps: int,
    repeats: int,
    max_seconds: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Training images/s of compiled models, warmed up and then timed in alternating rounds.

    Args:
        keras: the ``keras`` module.
        models: name → ``(compiled model, x, y)``; ``y`` is ``None`` for self-supervised steps.
        batch_size: the batch size of every ``fit``.
        warmup_steps: untimed steps first (tracing, compilation).
        repeats: timed rounds; each times one ``fit`` pass over ``x`` per model.
        max_seconds: cap of one timed pass.

    Returns:
        name → ``warmup_s``, ``warmup_loss`` (the last warm-up step's), ``images_per_s``
        (median over the rounds), ``images_per_s_best``, ``images_per_s_rounds`` (each
        round's, in order: paired ratios between models), ``timed_steps`` and ``repeats``; or
        ``error`` for a model that failed.
    """
    results: dict[str, dict[str, Any]] = {}
    measures = {}
    for name, (model, x, y) in models.items():
        warm = slice(0, batch_size * warmup_steps)
        try:
            start = time.perf_counter()
            history = model.fit(
                x[warm], None if y is None else y[warm], batch_size=batch_size, verbose=0
            )
            warmup_s = time.perf_counter() - start
        except Exception as error:
            results[name] = {"error": error_text(error)}
            continue
        loss = float(history.history["loss"][-1])
        results[name] = {"warmup_s": round(warmup_s, 2), "warmup_loss": round(loss, 5)}
        measures[name] = lambda m=model, x=x, y=y: fit_images_per_s(
            keras, m, x, y, batch_size, max_seconds
        )
    rates, errors = alternate(measures, repeats)
    for name, error in errors.items():
        results[name] = {"error": error}
    for name, runs in rates.items():
        per_s = [rate for rate, _ in runs]
        results[name].update(
            images_per_s=round(statistics.median(per_s), 1),
            images_per_s_best=round(max(per_s), 1),
            images_per_s_rounds=[round(rate, 1) for rate in per_s],
            timed_steps=sum(steps for _, steps in runs),
            repeats=len(runs),
        )
    return results


# ------------------------------------------------------------------ memory
def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forward_backward(layer, x, training: bool, codebook: bool = False) -> Callable[[], Any]:
    """A zero-argument step: ``sum(layer(x)) + loss`` and its gradient, compiled on TF and JAX.

    The gradient is taken with respect to ``x`` and, with ``codebook=True``, the layer's
    ``codebook`` too; the quantizer's loss comes from ``call(..., return_loss=True)``.
    """
    import keras
    from keras import ops

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        sources = [xt, layer.codebook] if codebook else [xt]

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(xt)
                out, loss = layer(xt, training=training, return_loss=True)
                total = ops.sum(out) + loss
            # An IndexedSlices gradient is made dense, as an optimizer step would see it.
            return [tf.convert_to_tensor(g) for g in tape.gradient(total, sources)]

        return lambda: [g.numpy() for g in step()]
    if backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def total(trainable, xv):
            (out, loss), _ = layer.stateless_call(
                trainable, non_trainable, xv, training=training, return_loss=True
            )
            return ops.sum(out) + loss

        step = jax.jit(jax.grad(total, argnums=(0, 1) if codebook else 1))
        xj = jax.numpy.asarray(x)
        return lambda: jax.block_until_ready(step(trainable, xj))
    import torch

    xt = torch.tensor(x, requires_grad=True)

    def step():
        xt.grad = None
        if codebook:
            layer.codebook.value.grad = None
        out, loss = layer(xt, training=training, return_loss=True)
        (out.sum() + loss).backward()
        return xt.grad

    return step
