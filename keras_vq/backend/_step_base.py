"""What the three backend mixins share: argument unpacking and the end of a step."""

import keras
from keras import ops, tree


def batch_size(x) -> int:
    return next(t for t in tree.flatten(x) if t is not None).shape[0]


class StepMixinBase:
    """Logs are the model's metrics; the loss tracker exists once the model is compiled."""

    def step_loss(self, x, y=None, sample_weight=None, training=False):
        raise NotImplementedError(f"{type(self).__name__} must implement `step_loss`.")

    def _finish_step(self, loss, x, y, y_pred, sample_weight):
        if self._loss_tracker is not None:
            self._loss_tracker.update_state(loss, sample_weight=batch_size(x))
        target = x if y is None else y
        return self.compute_metrics(x, target, y_pred, sample_weight)

    @staticmethod
    def _is_finite(loss):
        """A NaN/Inf loss (a corrupt batch) skips the update instead of poisoning weights;
        ``keras.callbacks.TerminateOnNaN`` then stops training on the logged NaN."""
        return ops.all(ops.isfinite(loss))

    @staticmethod
    def _unpack(data):
        return keras.utils.unpack_x_y_sample_weight(data)
