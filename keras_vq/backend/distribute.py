"""Cross-replica reductions for state that layers update themselves (EMA codebooks).

The only place that knows about ``tf.distribute``. Under ``MirroredStrategy`` each replica sees
its own slice of the batch, and a replica-local ``assign`` would let the replicas' codebooks
drift apart; summing the batch statistics first makes every replica apply the same update,
identical to one device seeing the whole batch. JAX's ``keras.distribution.DataParallel``
already computes on the global batch, and torch runs one replica, so elsewhere this is a no-op.
"""

from __future__ import annotations

import keras


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
