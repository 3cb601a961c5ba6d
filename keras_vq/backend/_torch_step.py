"""PyTorch step: autograd on the scaled loss, update under ``no_grad``."""

import torch

from keras_vq.backend._step_base import StepMixinBase


class TrainStepMixin(StepMixinBase):
    # Each step checks its batch (validate_batch) before the forward pass: an error raised
    # inside Layer.__call__ reaches the user wrapped by Keras ("Exception encountered when
    # calling ...", ANSI codes, the tensors), where TF and JAX give the bare ValueError.
    def train_step(self, data):
        self.validate_batch(data)
        x, y, sample_weight = self._unpack(data)
        self.zero_grad()
        loss, y_pred = self.step_loss(x, y, sample_weight, training=True)
        self.optimizer.scale_loss(loss).backward()
        variables = self.trainable_variables
        grads = [v.value.grad for v in variables]
        self._apply_update(loss, grads, variables)
        return self._finish_step(loss.detach(), x, y, y_pred, sample_weight)

    def _apply_update(self, loss, grads, variables):
        """The optimizer's update, skipped when :meth:`_update_is_safe` says so."""
        if bool(self._update_is_safe(loss, grads)):
            with torch.no_grad():
                self.optimizer.apply(grads, variables)

    def test_step(self, data):
        self.validate_batch(data)
        x, y, sample_weight = self._unpack(data)
        with torch.no_grad():
            loss, y_pred = self.step_loss(x, y, sample_weight, training=False)
        return self._finish_step(loss, x, y, y_pred, sample_weight)

    def predict_step(self, data):
        self.validate_batch(data)
        return super().predict_step(data)
