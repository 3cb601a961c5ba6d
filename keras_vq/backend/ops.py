"""Backend-specific execution helpers: compiled loops, inference without autograd, host copies."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np


def compile_function(fn: Callable) -> Callable:
    """``fn`` compiled for repeated calls: XLA on TF and JAX, eager without autograd on torch.

    Args:
        fn: a function of tensors (and lists of tensors) built from ``keras.ops``.

    Returns:
        A callable with the same signature.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return inference(fn)


def no_grad() -> contextlib.AbstractContextManager:
    """A context without gradient tracking: ``torch.no_grad()`` on torch, a no-op elsewhere.

    TensorFlow and JAX record nothing outside a tape or ``grad``; torch's autograd keeps every
    intermediate of an eager call alive unless told not to.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def inference(method: Callable) -> Callable:
    """Decorate an inference method (``encode``, ``sample``, ...) to run under :func:`no_grad`.

    Example:
        >>> class Model(keras.Model):
        ...     @inference
        ...     def encode(self, x): ...
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with no_grad():
            return method(*args, **kwargs)

    return wrapper


def to_numpy(x: Any) -> np.ndarray:
    """Any backend tensor (or array-like) as a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(keras.ops.convert_to_numpy(x))
