"""TensorFlow step: GradientTape around the forward pass and the scaled loss.

Under ``tf.distribute.MultiWorkerMirroredStrategy`` over several workers, Keras 3.15's own
trainer (``keras/src/backend/tensorflow/trainer.py``) cannot train any model, ours included:

1. ``TensorFlowTrainer._maybe_symbolic_build`` eagerly ``strategy.reduce("MEAN", ...)``-s the
   first ``(x, y, ...)`` batch, a tuple of ``PerReplica`` values, only to read its shapes; the
   collective strategy's ``CrossDeviceOps.reduce`` cannot convert a tuple of ``PerReplica``
   to a tensor (``ValueError: Attempt to convert a value (PerReplica:{...}) with an
   unsupported type``);
2. ``reduce_per_replica`` then reduces every log with ``strategy.reduce("MEAN", v, axis=0)``,
   which fails on the scalar logs every ``train_step`` returns (``Invalid reduction dimension 0
   for input with 0 dimensions``).

This mixin sidesteps both in our own build and step, without touching Keras: the symbolic
build reads the shapes from the dataset's ``element_spec`` (all it needs; a batch drawn for it,
as Keras draws one under any strategy, would also start the data's first pass and so shift a
reshuffling dataset's order against a run without a strategy), and under several workers the
step's scalar logs get a leading axis of one, which that reduction averages over the replicas
back to a scalar. Without a strategy Keras' own paths run unchanged.
``tests/test_multiworker_tf.py`` tells when Keras fixes them.
"""

import tensorflow as tf
from keras import tree

from keras_vq.backend import distribute as _distribute
from keras_vq.backend._step_base import StepMixinBase


def _logs_for_multi_worker(logs):
    """Scalar logs as shape ``(1,)`` under several workers (see the module docstring, 2.)."""
    if not _distribute.is_multi_worker():
        return logs
    return tree.map_structure(lambda v: tf.reshape(v, (1,)) if v.shape.rank == 0 else v, logs)


class TrainStepMixin(StepMixinBase):
    def train_step(self, data):
        x, y, sample_weight = self._unpack(data)
        with tf.GradientTape() as tape:
            loss, y_pred = self.step_loss(x, y, sample_weight, training=True)
            # MirroredStrategy sums gradients over replicas: divide so the update is that of
            # the mean loss over the global batch (Keras' own losses do the same).
            scaled = self.optimizer.scale_loss(loss / _distribute.num_replicas())
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self._apply_update(loss, grads, variables)
        return _logs_for_multi_worker(self._finish_step(loss, x, y, y_pred, sample_weight))

    def _apply_update(self, loss, grads, variables):
        """The optimizer's update, skipped when :meth:`_update_is_safe` says so."""
        if _distribute.has_strategy():
            # A replica-local decision could skip the update on some replicas only and break
            # the mirrored copies: no guard here.
            self.optimizer.apply(grads, variables)
            return
        if not self.optimizer.built:  # its variables cannot be created inside the cond
            self.optimizer.build(variables)

        def apply():
            self.optimizer.apply(grads, variables)
            return tf.constant(True)

        tf.cond(self._update_is_safe(loss, grads), apply, lambda: tf.constant(False))

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        loss, y_pred = self.step_loss(x, y, sample_weight, training=False)
        return _logs_for_multi_worker(self._finish_step(loss, x, y, y_pred, sample_weight))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' symbolic build under a strategy, from the data's ``element_spec`` instead of
        a batch reduced over the replicas (see the module docstring, 1.)."""
        strategy = self._distribute_strategy
        if strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        spec = iterator.data_adapter.get_tf_dataset().element_spec  # shapes and dtypes only
        with strategy.scope():
            self._symbolic_build(data_batch=spec)
