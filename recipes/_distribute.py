"""``--distribute``: its flags, the engines each choice works on, and the runtime it sets up
(a ``MirroredStrategy``, or ``DataParallel`` over this machine's or several processes'
devices). Nothing here imports Keras at import time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from _defaults import RecipeError, module_constant, ranged

DISTRIBUTIONS = ("none", "mirrored", "data_parallel", "multi_process", "multi_worker")
# Where --coordinator-address, --num-processes and --process-id fall back to: Keras' own
# variables (those keras.distribution.initialize reads).
PROCESS_ENV = {
    "coordinator_address": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "process_id": "KERAS_DISTRIBUTION_PROCESS_ID",
}
_PROCESSES = ranged(int, 1, invalid=("0", "1.5"))
_PROCESS_ID = ranged(int, 0, invalid=("-1",))
_SECONDS = ranged(int, 1, invalid=("0", "2.5"))


def add_distribute_args(group) -> None:
    """``--distribute`` and the flags of ``--distribute multi_process``."""
    group.add_argument(
        "--distribute",
        choices=DISTRIBUTIONS,
        default="none",
        help="'mirrored': tf.distribute.MirroredStrategy (TensorFlow); "
        "'data_parallel': keras.distribution.DataParallel over this machine's devices (JAX); "
        "'multi_process': DataParallel over the devices of --num-processes processes, each "
        "started with its --process-id, each feeding its share of every batch; process 0 "
        "writes --out (JAX); 'multi_worker': tf.distribute.MultiWorkerMirroredStrategy, "
        "which Keras 3.15 cannot train (an error that says so)",
    )
    group.add_argument(
        "--coordinator-address",
        default=None,
        help="multi_process: HOST:PORT of process 0, the same for every process (unset: "
        f"{PROCESS_ENV['coordinator_address']})",
    )
    group.add_argument(
        "--num-processes",
        type=_PROCESSES,
        default=None,
        help=f"multi_process: processes in the run (unset: {PROCESS_ENV['num_processes']})",
    )
    group.add_argument(
        "--process-id",
        type=_PROCESS_ID,
        default=None,
        help=f"multi_process: this process, 0 to N-1 (unset: {PROCESS_ENV['process_id']})",
    )
    default = module_constant("backend/distribute.py", "DEFAULT_HEARTBEAT_TIMEOUT_S")
    group.add_argument(
        "--heartbeat-timeout",
        type=_SECONDS,
        default=None,
        metavar="SECONDS",
        help="multi_process: the others fail this many seconds after a process stopped "
        "sending heartbeats (died); rerun every process to resume from the last checkpoint "
        f"(unset: keras_vq's default, currently {default})",
    )


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
        RecipeError: one still unset or invalid, or these flags (or --heartbeat-timeout)
            given without multi_process.
    """
    names = (*PROCESS_ENV, "heartbeat_timeout")
    if args.distribute != "multi_process":
        given = [
            f"--{name.replace('_', '-')}"
            for name in names
            if getattr(args, name, None) is not None
        ]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise RecipeError(f"{', '.join(given)} only {verb} to --distribute multi_process.")
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

        timeout = getattr(args, "heartbeat_timeout", None)
        distribute.initialize_processes(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            **({} if timeout is None else {"heartbeat_timeout": timeout}),
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


def start_run(run: Any, overwrite: bool) -> None:
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
