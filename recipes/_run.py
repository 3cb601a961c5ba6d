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

from _distribute import barrier, check_distribute, resolve_processes, setup_runtime, start_run
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
        barrier(run)  # several processes: none leaves before the chief wrote all
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
