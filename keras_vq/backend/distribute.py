"""Cross-replica reductions for state that layers update themselves (EMA codebooks).

The only place that knows about ``tf.distribute``. Under ``MirroredStrategy`` each replica sees
its own slice of the batch, and a replica-local ``assign`` would let the replicas' codebooks
drift apart; summing the batch statistics first makes every replica apply the same update,
identical to one device seeing the whole batch. JAX's ``keras.distribution.DataParallel``
already computes on the global batch, and torch runs one replica, so elsewhere this is a no-op.

Random choices among batch rows (dead-code restarts, k-means) are made on the *global* batch:
the replicas' slices, in replica order, concatenated (how ``MirroredStrategy`` splits a batch).
A row is picked by its global index and reaches every replica through a cross-replica sum in
which only its owner contributes it (zeros elsewhere, so the sum is exact): the pick is then the
same whatever the replica count.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops


def num_replicas() -> int:
    """Replicas in sync in the current ``tf.distribute`` context (1 elsewhere)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def has_strategy() -> bool:
    """Whether a ``tf.distribute`` strategy (even with one replica) is in scope."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()


def is_multi_worker() -> bool:
    """Whether the ``tf.distribute`` strategy in scope spans several workers (processes): a
    ``MultiWorkerMirroredStrategy`` whose ``TF_CONFIG`` names more than one worker."""
    if not has_strategy():
        return False
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    # Replicas in sync = workers x this worker's devices: fewer local devices, several workers.
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and len(strategy.extended.worker_devices) < strategy.num_replicas_in_sync
    )


def sum_across_replicas(*tensors):
    """Sum each tensor over replicas; returns them unchanged on a single replica."""
    if num_replicas() == 1:
        return tensors
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: values are already global
        return tensors
    return tuple(context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors)))


def broadcast_from_first_replica(tensor):
    """Every replica gets replica 0's value (identity on a single replica)."""
    if num_replicas() == 1:
        return tensor
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:
        return tensor
    is_first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tensor.dtype)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor * is_first)


def _replica_context():
    """The ``tf.distribute`` replica context when there are several replicas, else ``None``."""
    if num_replicas() == 1:
        return None
    import tensorflow as tf

    return tf.distribute.get_replica_context()


def _local_span(context, num_rows):
    """``(offset, total)``: where this replica's ``num_rows`` rows start in the global batch
    and the global row count, float32 scalars (exact below 2²⁴ rows)."""
    import tensorflow as tf

    replicas = num_replicas()
    replica = tf.cast(context.replica_id_in_sync_group, "int32")
    mine = tf.one_hot(replica, replicas, dtype="float32") * tf.cast(num_rows, "float32")
    counts = context.all_reduce(tf.distribute.ReduceOp.SUM, mine)
    before = tf.cast(tf.range(replicas) < replica, "float32")
    return tf.reduce_sum(counts * before), tf.reduce_sum(counts)


def global_row_count(num_rows):
    """Rows in the global batch, float32 scalar, given this replica's ``num_rows``."""
    context = _replica_context()
    if context is None:
        return ops.cast(num_rows, "float32")
    return _local_span(context, num_rows)[1]


def gather_global_rows(rows, indices, blocks: int = 1):
    """Rows of the global batch at global ``indices``, on every replica.

    Args:
        rows: this replica's ``(blocks · n, D)`` rows: ``blocks`` consecutive groups of ``n``
            rows each (one group per residual stage of a shared codebook), each group this
            replica's slice of a global group of ``N`` rows.
        indices: int32 ``(M,)`` global indices in ``[0, blocks · N)``; index ``b · N + i`` is
            row ``i`` of global group ``b``.
        blocks: the number of groups (static).

    Returns:
        ``(M, D)`` the picked rows, identical on every replica and equal to
        ``take(global_rows, indices)`` on one device.
    """
    context = _replica_context()
    if context is None:
        return ops.take(rows, indices, axis=0)
    import tensorflow as tf

    rows = tf.convert_to_tensor(rows)
    local = tf.shape(rows)[0] // blocks
    offset, total = _local_span(context, local)
    indices = tf.cast(indices, "int32")
    total = tf.cast(total, "int32")
    block, position = indices // tf.maximum(total, 1), indices % tf.maximum(total, 1)
    position = position - tf.cast(offset, "int32")
    owned = tf.logical_and(position >= 0, position < local)
    local_index = tf.clip_by_value(block * local + position, 0, tf.maximum(blocks * local - 1, 0))
    picked = tf.gather(rows, local_index)
    # Exact: each row is summed with zeros only; a non-finite row reaches no other index.
    contribution = tf.where(owned[:, None], picked, tf.zeros_like(picked))
    return context.all_reduce(tf.distribute.ReduceOp.SUM, contribution)


def all_gather_rows(rows):
    """The global batch ``(N, D)`` on every replica (``rows`` unchanged on one replica)."""
    context = _replica_context()
    if context is None:
        return rows
    total = ops.cast(global_row_count(ops.shape(rows)[0]), "int32")
    return gather_global_rows(rows, ops.arange(total, dtype="int32"))


# --------------------------------------------------------------------------- several processes
# JAX's multi-process training, Keras' own path: ``keras.distribution.initialize`` on every
# process, then ``keras.distribution.DataParallel`` over every process's devices. Each process
# feeds its own rows of each global batch; JAX's collectives make the step (gradients, the
# VQ layers' batch statistics, restarts' picks) the one of a single device on the global batch,
# so none of the tf.distribute helpers above are involved.


# Seconds after which the others give up on a process that stopped sending heartbeats (JAX's
# own default is 100 s; Keras' ``initialize`` does not forward it). Heartbeats come from a
# background thread of JAX's runtime, so long compilations, steps or checkpoint writes do not
# count as missed ones; a minute still rides out a network hiccup or an overloaded host, and a
# dead process stops a run in about a minute instead of almost two.
DEFAULT_HEARTBEAT_TIMEOUT_S = 60


def initialize_processes(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
) -> None:
    """Join this process to a JAX multi-process run (call before any computation).

    ``keras.distribution.initialize`` with a heartbeat timeout: when a process dies (killed,
    out of memory, a lost machine), the others fail after ``heartbeat_timeout`` seconds
    instead of waiting in a collective; restart them all to resume from the last checkpoint.
    CPU devices exchange through gloo (JAX's CPU client has no collectives by default); GPUs
    and TPUs use their own.

    Args:
        coordinator_address: ``HOST:PORT`` of process 0, the same on every process.
        num_processes: processes in the run.
        process_id: this process, in ``[0, num_processes)``; 0 is the coordinator.
        heartbeat_timeout: seconds without a heartbeat after which a process counts as dead
            and the run fails (``DEFAULT_HEARTBEAT_TIMEOUT_S``, 60; JAX's own is 100). Short
            values notice a dead process sooner but may stop a run on a congested network.

    Raises:
        ValueError: a backend other than JAX (Keras 3 distributes several processes only
            there), ``process_id`` outside ``[0, num_processes)``, or a ``heartbeat_timeout``
            below 1 s.

    Example:
        >>> initialize_processes("10.0.0.1:1234", 2, 0)  # doctest: +SKIP
        >>> initialize_processes("10.0.0.1:1234", 2, 1, heartbeat_timeout=20)  # doctest: +SKIP
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"Multi-process training needs the JAX backend (Keras 3 supports "
            f"keras.distribution.initialize only there), but the backend is {backend!r}."
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id must be in [0, num_processes={num_processes}), got {process_id}."
        )
    if isinstance(heartbeat_timeout, bool) or not isinstance(heartbeat_timeout, int):
        raise TypeError(
            f"heartbeat_timeout must be an int (seconds), got {heartbeat_timeout!r} "
            f"of type {type(heartbeat_timeout).__name__}."
        )
    if heartbeat_timeout < 1:
        raise ValueError(f"heartbeat_timeout must be at least 1 second, got {heartbeat_timeout}.")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Keras calls ``jax.distributed.initialize`` (then agrees on a seed across the processes)
    # without a heartbeat timeout: it is forwarded by wrapping that call for its duration.
    initialize = jax.distributed.initialize
    forwarded = []

    def initialize_with_heartbeat(*args, **kwargs):
        forwarded.append(True)
        return initialize(*args, heartbeat_timeout_seconds=heartbeat_timeout, **kwargs)

    jax.distributed.initialize = initialize_with_heartbeat
    try:
        keras.distribution.initialize(coordinator_address, num_processes, process_id)
    finally:
        jax.distributed.initialize = initialize
    if not forwarded:
        warnings.warn(
            "keras.distribution.initialize no longer calls jax.distributed.initialize: the "
            f"heartbeat timeout ({heartbeat_timeout} s) was not applied (JAX's default is 100 s).",
            stacklevel=2,
        )


def process_index() -> int:
    """This process's index in a multi-process JAX run (0 elsewhere)."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    """Processes in a multi-process JAX run (1 elsewhere)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def is_chief() -> bool:
    """Whether this process writes the run's outputs (process 0, or the only process)."""
    return process_index() == 0


def process_allgather(value):
    """``value`` (a NumPy-convertible array) of every process, stacked on a new first axis,
    on every process; ``value[None]`` with one process."""
    import numpy as np

    if process_count() == 1:
        return np.asarray(value)[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(value), tiled=False))


def localize_variables(model) -> None:
    """Make ``model``'s variables (its own, its optimizer's and its metrics') this process's
    own, after multi-process training.

    Under a multi-process ``DataParallel`` every variable is one array spanning all the
    processes' devices, so each call of the model needs every process. The variables are
    replicated, so this process's copy is the whole value: it is assigned back with no
    distribution in scope (call ``keras.distribution.set_distribution(None)`` first), after
    which the model evaluates, saves and exports on this process alone.
    """
    import numpy as np

    optimizer = getattr(model, "optimizer", None)
    variables = [*model.variables, *getattr(model, "metrics_variables", [])]
    variables += list(optimizer.variables) if optimizer is not None else []
    seen = set()
    for variable in variables:
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        value = variable.value
        if hasattr(value, "addressable_data"):
            value = value.addressable_data(0)
        variable._layout = None  # else ``assign`` would spread it over the processes again
        variable.assign(np.asarray(value))
