"""Per-backend training mechanics: the only module that branches on the Keras backend.

Models inherit ``TrainStepMixin`` and define the math in one backend-free method,

    step_loss(x, y=None, sample_weight=None, training=False) -> (loss, y_pred)

which runs the forward pass, updates the model's own metric trackers and returns the scalar
loss (float32) and the prediction handed to compiled metrics. The mixin supplies
``train_step``/``test_step`` for the active backend: TF ``GradientTape``, JAX ``value_and_grad``
over a stateless forward pass, torch autograd. Every one scales the loss with
``optimizer.scale_loss`` (so a ``LossScaleOptimizer`` works under ``mixed_float16``), keeps
``add_loss`` terms (JAX collects them in its stateless scope) and returns the updated state of
layers that ``assign`` during the forward pass (EMA codebooks, RNG seeds), as Keras does for its
own layers (BatchNormalization) — see ``shared/KERAS3_NOTES.md`` §1–§5 for the stock steps.
"""

import keras

if keras.backend.backend() == "jax":
    from keras_vq.backend._jax_step import TrainStepMixin
elif keras.backend.backend() == "torch":
    from keras_vq.backend._torch_step import TrainStepMixin
elif keras.backend.backend() == "tensorflow":
    from keras_vq.backend._tf_step import TrainStepMixin
else:  # pragma: no cover - numpy / openvino cannot train
    raise ImportError(
        f"keras_vq models train on the tensorflow, jax and torch backends; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}."
    )

__all__ = ["TrainStepMixin"]
