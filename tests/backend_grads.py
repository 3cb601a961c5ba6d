"""Gradients of a layer's outputs and ``add_loss`` terms on the active backend (tests only)."""

from __future__ import annotations

import keras
import numpy as np

from tests.test_case import to_numpy


def layer_gradients(layer, x: np.ndarray, objective, training: bool = False):
    """Gradients of ``objective(outputs, losses)`` w.r.t. ``x`` and the trainable weights.

    Returns:
        ``(value, grad_x, [grad per trainable variable])`` as NumPy.
    """
    backend = keras.backend.backend()
    if not layer.built:
        layer(x)
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            value = objective(layer(xt, training=training), layer.losses)
        grads = tape.gradient(value, [xt, *layer.trainable_variables])
    elif backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        for v in layer.trainable_variables:
            v.value.grad = None
        value = objective(layer(xt, training=training), layer.losses)
        value.backward()
        grads = [xt.grad] + [v.value.grad for v in layer.trainable_variables]
    else:
        import jax

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def f(trainable, xv):
            out, _, losses = layer.stateless_call(
                trainable, non_trainable, xv, training=training, return_losses=True
            )
            return objective(out, losses)

        trainable = [v.value for v in layer.trainable_variables]
        value, (g_vars, g_x) = jax.value_and_grad(f, argnums=(0, 1))(trainable, x)
        grads = [g_x, *g_vars]
    grads = [None if g is None else to_numpy(g) for g in grads]
    return float(to_numpy(value)), grads[0], grads[1:]
