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
        if _distribute.has_strategy():
            # Replica-local restores would break the mirrored copies: no guard here.
            self.optimizer.apply(grads, variables)
        else:
            self._apply_if_finite(loss, grads, variables)
        return self._finish_step(loss, x, y, y_pred, sample_weight)

    def _apply_if_finite(self, loss, grads, variables):
        # Apply, then put weights and optimizer state back if the loss was not finite. A
        # tf.cond around the update would say the same but makes XLA (jit_compile, the TF
        # default) run the step ~15x slower on CPU.
        state = [*variables, *self.optimizer.variables]
        before = [tf.identity(v.value) for v in state]
        self.optimizer.apply(grads, variables)
        finite = self._is_finite(loss)
        for v, old in zip(state, before):
            v.assign(tf.where(finite, v.value, old))

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        loss, y_pred = self.step_loss(x, y, sample_weight, training=False)
        return self._finish_step(loss, x, y, y_pred, sample_weight)
