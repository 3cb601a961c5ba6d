"""What the three backend mixins share: argument unpacking and the end of a step."""

import keras
from keras import ops, tree

from keras_vq.backend.checks import raising_value_errors


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

    def _update_is_safe(self, loss, grads):
        """Whether this step's optimizer update may run: boolean scalar tensor.

        Not when the loss (a corrupt batch) or a gradient is NaN/Inf. A
        ``LossScaleOptimizer`` is the exception for gradients: it must see overflowing
        gradients to lower its scale, and skips their update itself; it is only kept from a
        non-finite loss whose gradients came out finite.

        The gradients are tested rather than the weights restored afterwards: a test reads
        each gradient once, where a restore copies every weight and optimizer slot in every
        step. Reading the gradients also keeps them out of the skipped branch: XLA on CPU runs
        a conditional's body unfused, and a predicate of the loss alone let it move the whole
        backward pass into the branch (18x slower steps).
        """
        loss_finite = self._is_finite(loss)
        # One finite sum stands for every entry finite (NaN and ±Inf propagate through it):
        # a handful of ops, where an elementwise test per gradient is five each on eager torch.
        # A sum that overflows float32 counts as non-finite too: no sane update is that large.
        sums = [ops.sum(ops.cast(g, "float32")) for g in grads if g is not None]
        grads_finite = self._is_finite(ops.stack(sums)) if sums else ops.convert_to_tensor(True)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return ops.logical_or(loss_finite, ops.logical_not(grads_finite))
        return ops.logical_and(loss_finite, grads_finite)

    def validate_batch(self, data) -> None:
        """Check one batch of ``fit``/``evaluate``/``predict`` data (concrete values).

        The JAX and torch steps call it before the forward pass (JAX: before the batch enters
        the jitted step; torch: so that the error is not wrapped by ``Layer.__call__``); on
        TensorFlow the model's own call checks its inputs (``keras_vq.backend.checks``).
        """

    def _wrap_step_function(self, fn):
        # Input checks inside compiled steps fail as backend errors; users get the ValueError.
        return raising_value_errors(fn)

    def _wrapped_step_function(self, attribute: str):
        fn = getattr(self, attribute)
        if fn is None or getattr(fn, "_keras_vq_wrapped", False):
            return fn
        checked = self._wrap_step_function(fn)
        succeeded = False

        # A step whose first call fails (a bad first batch) is dropped, so that the next
        # fit/evaluate/predict traces a new one: a TF function whose first trace failed would
        # refuse to create the optimizer's variables on its second.
        def step(*args, **kwargs):
            nonlocal succeeded
            try:
                outputs = checked(*args, **kwargs)
            except Exception:
                if not succeeded and getattr(self, attribute) is step:
                    setattr(self, attribute, None)
                raise
            succeeded = True
            return outputs

        step._keras_vq_wrapped = True
        return step

    def make_train_function(self, force=False):
        made = super().make_train_function(force)
        self.train_function = self._wrapped_step_function("train_function")
        return None if made is None else self.train_function

    def make_test_function(self, force=False):
        made = super().make_test_function(force)
        self.test_function = self._wrapped_step_function("test_function")
        return None if made is None else self.test_function

    def make_predict_function(self, force=False):
        made = super().make_predict_function(force)
        self.predict_function = self._wrapped_step_function("predict_function")
        return None if made is None else self.predict_function

    @staticmethod
    def _unpack(data):
        return keras.utils.unpack_x_y_sample_weight(data)
