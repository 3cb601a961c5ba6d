"""PyTorch step: autograd on the scaled loss, update under ``no_grad``."""

import torch

from keras_vq.backend._step_base import StepMixinBase


class TrainStepMixin(StepMixinBase):
    def train_step(self, data):
        x, y, sample_weight = self._unpack(data)
        self.zero_grad()
        loss, y_pred = self.step_loss(x, y, sample_weight, training=True)
        self.optimizer.scale_loss(loss).backward()
        variables = self.trainable_variables
        grads = [v.value.grad for v in variables]
        if bool(self._is_finite(loss)):
            with torch.no_grad():
                self.optimizer.apply(grads, variables)
        return self._finish_step(loss.detach(), x, y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = self._unpack(data)
        with torch.no_grad():
            loss, y_pred = self.step_loss(x, y, sample_weight, training=False)
        return self._finish_step(loss, x, y, y_pred, sample_weight)
