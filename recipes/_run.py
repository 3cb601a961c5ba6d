"""Running a recipe: check --out, set Keras up from the flags (quietly), check the inputs, do
the work, write metrics.json and DONE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from _flags import RecipeError, parse_args
from _inputs import dataset_not_found
from _rundir import Run, json_default, make_config


def main(
    recipe: str,
    parser: argparse.ArgumentParser,
    fn: Callable[..., dict],
    setup: Callable[[argparse.Namespace, Run], dict[str, Any]] | None = None,
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv`` with ``parser``, then :func:`run_recipe`; returns the exit status."""
    return run_recipe(recipe, parse_args(parser, argv), fn, setup)


def run_recipe(
    recipe: str,
    args: argparse.Namespace,
    fn: Callable[..., dict],
    setup: Callable[[argparse.Namespace, Run], dict[str, Any]] | None = None,
) -> int:
    """Check ``--out``, set up Keras, check the inputs, run the recipe, write metrics.json
    and DONE.

    ``setup(args, run)`` checks every input (builds the models in ``run.scope()``, opens the
    data, loads model files) and returns keyword arguments for ``fn(args, run, **inputs)``,
    which does the work. Nothing is written under ``--out`` before ``setup`` returned, so a
    failed check leaves ``--out`` as it was and the corrected command starts afresh.

    Returns the exit status: 0, or 2 after printing ``error: ...`` for a :class:`RecipeError`.
    """
    start = time.time()
    try:
        check_distribute(args.distribute, make_config(recipe, args)["backend"])
        resolve_processes(args)
        config = make_config(recipe, args)
        run = Run(args.out, config, args)
        run.check(args.overwrite, unset_later=True)
        import_keras()
        run.strategy = setup_runtime(args)
        inputs = setup(args, run) if setup is not None else {}
        # setup filled the unset model flags with the models' values: config.json records
        # them, and a resumed run must have used the same.
        run.config = make_config(recipe, args)
        run.check(args.overwrite)
        start_run(run, args.overwrite)
        metrics = fn(args, run, **inputs)
        metrics["wall_time_s"] = round(time.time() - start, 1)
        run.finish(metrics)
        if args.distribute == "multi_process":  # no process leaves before process 0 wrote all
            from keras_vq.backend import distribute

            distribute.process_allgather(0)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except Exception as error:  # DatasetNotFoundError says how to get the data: no traceback
        if type(error).__name__ == "DatasetNotFoundError":
            print(f"error: {dataset_not_found(error, args)}", file=sys.stderr, flush=True)
            return 2
        raise
    if args.verbose:
        print(json.dumps(metrics, indent=2, sort_keys=True, default=json_default))
    print(f"Finished {recipe}: outputs in {run.out}{headline(metrics)}", flush=True)
    return 0


# The numbers of metrics.json repeated on the final line: reconstruction, prior fit, samples.
HEADLINE = (
    "test_reconstruction_mse",
    "test_bits_per_code",
    "prior_test_bits_per_code",
    "sample_fd",
    "sample_precision",
    "sample_recall",
    "sample_confident_share",
    "sample_accuracy",
)


def headline(metrics: dict[str, Any]) -> str:
    """``" (name=value, ...)"`` of the :data:`HEADLINE` numbers in ``metrics``, or ``""``."""
    values = [
        f"{name}={metrics[name]:.4g}"
        for name in HEADLINE
        if isinstance(metrics.get(name), int | float) and not isinstance(metrics[name], bool)
    ]
    return f" ({', '.join(values)})" if values else ""


# --------------------------------------------------------------------------- runtime

# TensorFlow's start-up lines (and their absl banner). TF 2.21 logs them through absl while
# its libraries load, before it reads TF_CPP_MIN_LOG_LEVEL, so that variable cannot hide
# them (it does hide the runtime's later INFO and WARNING lines; recipes default it to 2).
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
)


@contextlib.contextmanager
def quiet_tensorflow_startup() -> Iterator[None]:
    """Drop TensorFlow's start-up log lines from stderr; every other line is passed on.

    The C++ libraries write to file descriptor 2 directly, so the descriptor itself is sent
    to a temporary file for the duration and the kept lines are written back afterwards.
    ``TF_CPP_MIN_LOG_LEVEL=0`` (asking for every log line) turns the filter off. oneDNN
    itself stays on: only its notice is dropped, never its numerics.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _STARTUP_NOISE.search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_keras() -> None:
    """Import Keras, TensorFlow and keras_vq and let TF find its devices, without the
    start-up log noise (see :func:`quiet_tensorflow_startup`)."""
    with quiet_tensorflow_startup():
        import keras  # noqa: F401  (first: with torch it loads torch before TensorFlow)
        import tensorflow as tf

        import keras_vq  # noqa: F401

        tf.config.list_physical_devices()  # initialises CUDA (cuInit) inside the filter


# Why --distribute multi_worker is refused (see tests/test_multiprocess.py, which checks that
# Keras still fails this way and will say when it no longer does).
MULTI_WORKER_UNSUPPORTED = (
    "--distribute multi_worker (tf.distribute.MultiWorkerMirroredStrategy) cannot train with "
    "Keras 3.15: its TensorFlow trainer fails even for a plain keras.Model.fit on two workers "
    "(building the model symbolically reduces a PerReplica batch eagerly). Train on several "
    "machines with --backend jax --distribute multi_process (keras.distribution over JAX "
    "processes), or on one machine's devices with --distribute mirrored (TensorFlow)."
)


def check_distribute(distribute: str, backend: str) -> None:
    """The backends each ``--distribute`` choice works on (checked before importing Keras)."""
    if distribute == "multi_worker":
        raise RecipeError(MULTI_WORKER_UNSUPPORTED)
    if distribute != "none" and backend == "torch":
        raise RecipeError(
            f"--distribute {distribute} is not available on the torch backend: Keras 3.15 has "
            "no torch distribution. Use --backend jax with --distribute data_parallel (one "
            "machine) or multi_process (several processes or machines), or --backend "
            "tensorflow with --distribute mirrored (one machine); or train on one device "
            "with --distribute none."
        )
    if distribute == "mirrored" and backend != "tensorflow":
        raise RecipeError(
            f"--distribute mirrored (tf.distribute.MirroredStrategy) needs the TensorFlow "
            f"backend, but the backend is {backend!r}. Use --backend tensorflow, or "
            "--distribute data_parallel on JAX."
        )
    if distribute in ("data_parallel", "multi_process") and backend != "jax":
        raise RecipeError(
            f"--distribute {distribute} (keras.distribution) needs the JAX "
            f"backend (Keras 3 supports it only there), but the backend is {backend!r}. Use "
            "--backend jax, or --distribute mirrored on TensorFlow (one machine)."
        )


def resolve_processes(args: argparse.Namespace) -> None:
    """Fill ``--coordinator-address``, ``--num-processes`` and ``--process-id`` of
    ``--distribute multi_process`` from the environment (``_flags.PROCESS_ENV``) where unset.

    Raises:
        RecipeError: one still unset or invalid, or the flags given without multi_process.
    """
    from _flags import PROCESS_ENV

    names = tuple(PROCESS_ENV)
    if args.distribute != "multi_process":
        given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None)]
        if given:
            raise RecipeError(f"{', '.join(given)} only apply to --distribute multi_process.")
        return
    for name, variable in PROCESS_ENV.items():
        flag = f"--{name.replace('_', '-')}"
        if getattr(args, name) is None and os.environ.get(variable):
            text = os.environ[variable]
            if name == "coordinator_address":
                text = text.split(",")[0]  # Keras' variable lists every job; 0 coordinates
                setattr(args, name, text)
                continue
            try:
                setattr(args, name, int(text))
            except ValueError:
                raise RecipeError(f"{variable}={text!r} (for {flag}) is not an integer.") from None
        if getattr(args, name) is None:
            raise RecipeError(
                f"--distribute multi_process needs {flag} (or the environment variable "
                f"{variable})."
            )
    host, _, port = args.coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise RecipeError(
            f"--coordinator-address must be HOST:PORT, got {args.coordinator_address!r}."
        )
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        raise RecipeError(
            f"--process-id must be in [0, --num-processes={args.num_processes}), got "
            f"{args.process_id}."
        )


def setup_runtime(args: argparse.Namespace) -> Any:
    """Seed, dtype policy and distribution, in that order, before any model is built.

    Returns:
        The ``tf.distribute.MirroredStrategy`` of ``--distribute mirrored`` (models are built
        in its scope, see ``Run.scope``), else ``None``.
    """
    import keras

    from keras_vq.backend import hide_gpus_from_tensorflow

    check_distribute(args.distribute, keras.backend.backend())
    if args.distribute == "multi_process":  # before JAX computes anything
        from keras_vq.backend import distribute

        distribute.initialize_processes(
            args.coordinator_address, args.num_processes, args.process_id
        )
    hide_gpus_from_tensorflow()  # on JAX / torch, TensorFlow only feeds the data
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)
    if args.distribute == "mirrored":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy()
        print(f"MirroredStrategy over {strategy.num_replicas_in_sync} replica(s).", flush=True)
        return strategy
    if args.distribute in ("data_parallel", "multi_process"):
        devices = keras.distribution.list_devices()  # every process's, for multi_process
        batch_size = getattr(args, "batch_size", None)
        if batch_size is not None and batch_size % len(devices):
            raise RecipeError(
                f"--batch-size {batch_size} must be divisible by the {len(devices)} devices "
                f"for --distribute {args.distribute}."
            )
        # multi_process: each process feeds its own rows of every batch (see _train.fit).
        distribution = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=args.distribute == "data_parallel"
        )
        keras.distribution.set_distribution(distribution)
        processes = f" of {args.num_processes} processes" if args.num_processes else ""
        print(f"DataParallel over {len(devices)} device(s){processes}.", flush=True)
    return None


def start_run(run: Run, overwrite: bool) -> None:
    """``run.start``; in a multi_process run only process 0 writes ``--out``: the others write
    to a private temporary directory (removed at exit) and read ``--out``'s checkpoint, and
    every process waits until process 0 has started the run."""
    if run.args.distribute != "multi_process":
        run.start(overwrite)
        return
    from keras_vq.backend import distribute

    if not distribute.is_chief():
        run.write_elsewhere(tempfile.mkdtemp(prefix=f"keras_vq_process{run.args.process_id}_"))
    run.start(overwrite)
    distribute.process_allgather(0)  # a barrier: process 0 has cleared and started --out
