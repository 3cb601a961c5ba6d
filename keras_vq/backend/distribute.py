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
