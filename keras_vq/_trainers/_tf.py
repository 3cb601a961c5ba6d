"""TensorFlow step: GradientTape around the forward pass and the scaled loss."""

import tensorflow as tf
from keras import ops

from keras_vq import _distribute
from keras_vq._trainers._base import StepMixinBase


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
        if not _distribute.has_strategy():
            ops.cond(
                self._is_finite(loss), lambda: self.optimizer.apply(grads, variables), lambda: None
            )
        else:  # the optimizer's cross-replica merge cannot sit inside a cond
            self.optimizer.apply(grads, variables)
        return self._finish_step(loss, x, y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        loss, y_pred = self.step_loss(x, y, sample_weight, training=False)
        return self._finish_step(loss, x, y, y_pred, sample_weight)
