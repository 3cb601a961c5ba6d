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
from _multiworker import is_chief_worker, multi_worker_strategy, worker_task

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
        "writes --out (JAX); 'multi_worker': tf.distribute.MultiWorkerMirroredStrategy over "
        "the workers of the TF_CONFIG environment variable, each feeding its share of every "
        "batch; the chief (worker 0) writes --out (TensorFlow)",
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


def check_distribute(distribute: str, backend: str) -> None:
    """The backends each ``--distribute`` choice works on (checked before importing Keras)."""
    if distribute != "none" and backend == "torch":
        raise RecipeError(
            f"--distribute {distribute} is not available on the torch backend: Keras 3.15 has "
            "no torch distribution. Use --backend jax with --distribute data_parallel (one "
            "machine) or multi_process (several processes or machines), or --backend "
            "tensorflow with --distribute mirrored (one machine); or train on one device "
            "with --distribute none."
        )
    if distribute in ("mirrored", "multi_worker") and backend != "tensorflow":
        strategy = (
            "MirroredStrategy" if distribute == "mirrored" else "MultiWorkerMirroredStrategy"
        )
        alternative = "data_parallel" if distribute == "mirrored" else "multi_process"
        raise RecipeError(
            f"--distribute {distribute} (tf.distribute.{strategy}) needs the TensorFlow "
            f"backend, but the backend is {backend!r}. Use --backend tensorflow, or "
            f"--distribute {alternative} on JAX."
        )
    if distribute in ("data_parallel", "multi_process") and backend != "jax":
        raise RecipeError(
            f"--distribute {distribute} (keras.distribution) needs the JAX "
            f"backend (Keras 3 supports it only there), but the backend is {backend!r}. Use "
            "--backend jax, or --distribute mirrored on TensorFlow (one machine)."
        )


def resolve_processes(args: argparse.Namespace) -> None:
    """Fill ``--coordinator-address``, ``--num-processes`` and ``--process-id`` of
    ``--distribute multi_process`` from the environment (``_flags.PROCESS_ENV``) where unset;
    check ``TF_CONFIG`` for ``--distribute multi_worker``.

    Raises:
        RecipeError: one still unset or invalid, these flags (or --heartbeat-timeout) given
            without multi_process, or ``TF_CONFIG`` missing or invalid for multi_worker.
    """
    names = (*PROCESS_ENV, "heartbeat_timeout")
    if args.distribute == "multi_worker":
        worker_task()  # TF_CONFIG, checked before anything is written
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
    if args.distribute == "multi_worker":  # before TensorFlow initialises its devices
        return multi_worker_strategy(args)
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


def gather_processes(run: Any, value: int) -> list[int]:
    """``value`` of every process of a multi_process or multi_worker run (of every replica,
    in order), on every process; ``[value]`` otherwise. Returns once all have called it."""
    if run.args.distribute == "multi_process":
        from keras_vq.backend import distribute

        return distribute.process_allgather(value).tolist()
    if run.args.distribute == "multi_worker":
        import tensorflow as tf

        strategy = run.strategy

        @tf.function  # collectives run in a function (eagerly, TensorFlow warns of overhead)
        def gather():
            mine = strategy.run(lambda: tf.constant([value], tf.int64))
            return strategy.gather(mine, axis=0)

        return gather().numpy().tolist()
    return [value]


def barrier(run: Any) -> None:
    """Wait for every process of a multi_process or multi_worker run (no-op otherwise)."""
    gather_processes(run, 0)


def is_chief(run: Any) -> bool:
    """Whether this process writes ``--out`` (the only process, or the chief of several)."""
    if run.args.distribute == "multi_worker":
        return is_chief_worker()
    if run.args.distribute == "multi_process":
        from keras_vq.backend import distribute

        return distribute.is_chief()
    return True


def start_run(run: Any, overwrite: bool) -> None:
    """``run.start``; in a multi_process or multi_worker run only process 0 (the chief) writes
    ``--out``: the others write to a private temporary directory (removed at exit) and read
    ``--out``'s checkpoint, and every process waits until the chief has started the run."""
    if run.args.distribute not in ("multi_process", "multi_worker"):
        run.start(overwrite)
        return
    if not is_chief(run):
        if run.args.distribute == "multi_process":
            prefix = f"keras_vq_process{run.args.process_id}_"
        else:
            prefix = "keras_vq_worker{}_{}_".format(*worker_task())
        run.write_elsewhere(tempfile.mkdtemp(prefix=prefix))
    run.start(overwrite)
    barrier(run)  # the chief has cleared and started --out
