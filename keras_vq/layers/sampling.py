"""Reparameterised sample from a diagonal Gaussian."""

from __future__ import annotations

import keras
from keras import ops

from keras_vq import _validation
from keras_vq.layers._seed_state import SeedStateMixin


@keras.saving.register_keras_serializable(package="keras_vq")
class Sampling(SeedStateMixin, keras.layers.Layer):
    """``z = μ + exp(½ log σ²) · ε``, ε ~ N(0, I) (the reparameterisation trick).

    The sample is a differentiable function of μ and log σ², so the ELBO's expectation
    E_q[log p(x|z)] can be estimated by Monte Carlo and differentiated (Kingma & Welling, 2014).
    ε comes from a ``keras.random.SeedGenerator``: a seeded layer gives repeatable samples.

    Args:
        seed: seed of the noise; ``None`` draws a random one.

    Call arguments:
        inputs: ``[z_mean, z_log_var]``, two float tensors of the same shape (any rank).

    Returns:
        ``z`` with the shape and dtype of ``z_mean``.

    Example:
        >>> z = Sampling(seed=0)([ops.zeros((8, 2)), ops.zeros((8, 2))])  # ~ N(0, I)
    """

    def __init__(self, seed: int | None = None, **kwargs):
        # The sample keeps the dtype of z_mean (float16 / bfloat16 included).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.seed = _validation.check_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def _split(self, inputs):
        if not isinstance(inputs, list | tuple) or len(inputs) != 2:
            raise ValueError(
                f"`inputs` must be a list [z_mean, z_log_var], got {type(inputs).__name__}"
                + (f" of length {len(inputs)}" if isinstance(inputs, list | tuple) else "")
                + "."
            )
        z_mean, z_log_var = inputs
        if tuple(z_mean.shape) != tuple(z_log_var.shape):
            raise ValueError(
                "`z_mean` and `z_log_var` must have the same shape, got "
                f"{tuple(z_mean.shape)} and {tuple(z_log_var.shape)}."
            )
        return z_mean, z_log_var

    def call(self, inputs):
        z_mean, z_log_var = self._split(inputs)
        z_log_var = ops.cast(z_log_var, z_mean.dtype)
        eps = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(seed=self.seed)
        return config
