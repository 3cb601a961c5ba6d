"""TensorFlow step: GradientTape around the forward pass and the scaled loss."""

import tensorflow as tf

from keras_vq.backend import distribute as _distribute
from keras_vq.backend._step_base import StepMixinBase


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
        return self._finish_step(loss, x, y, y_pred, sample_weight)

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
        return self._finish_step(loss, x, y, y_pred, sample_weight)
