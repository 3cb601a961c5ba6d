"""Value checks that also hold inside compiled steps (``fit``, ``evaluate``, ``predict``).

Out-of-range indices do not fail on their own everywhere: an embedding lookup gives NaN on JAX
and XLA clamps the index, so a model would train on garbage without a word. Eagerly (torch, or
any eager call) the check raises a ``ValueError`` at once. In a TensorFlow graph the values are
unknown when the check is written, so it becomes a ``tf.debugging.Assert``, whose failure
arrives as an ``InvalidArgumentError``; :func:`raising_value_errors` wraps the models' step
functions so that the user sees the ``ValueError`` instead. JAX cannot raise from a jitted step
without losing the step's donated state, so there :func:`validating_batches` checks every batch,
still concrete, before it enters the step.

A ``tf.function`` compiled with XLA (``jit_compile=True``) drops assertions; keras_vq's priors
are not XLA-compiled by ``fit`` unless asked to.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import keras

from keras_vq import _validation

# Tags the message of a runtime assertion so that it can be told apart from other errors.
_TAG = "[keras_vq invalid input] "
_TAGGED = re.compile(re.escape(_TAG) + r"(.*?)(?:\s*(?:\[\[|\n|$))")


def _range_message(name: str, size: int, size_name: str) -> str:
    return f"`{name}` must lie in [0, {size - 1}] ({size_name}={size})"


def checked_indices(name: str, indices: Any, size: int, size_name: str = "num_embeddings"):
    """``indices`` after checking their dtype is integer and values lie in ``[0, size)``.

    Args:
        name: the argument's name, used in the error.
        indices: integer tensor.
        size: exclusive upper bound.
        size_name: what ``size`` is called in the error (``num_embeddings``, ``num_classes``).

    Returns:
        ``indices`` (on TensorFlow graphs, an identity that runs after the assertion).

    Raises:
        TypeError: non-integer dtype. ValueError: values out of range (eagerly, or when the
        compiled step runs inside a model's ``fit``/``evaluate``/``predict``).
    """
    _validation.check_integer_codes(name, indices, size, size_name)
    if keras.backend.backend() != "tensorflow" or isinstance(indices, keras.KerasTensor):
        return indices
    import tensorflow as tf

    if tf.is_tensor(indices) and not tf.executing_eagerly():  # a graph: values unknown now
        message = _TAG + _range_message(name, size, size_name)

        x = tf.convert_to_tensor(indices)
        valid = tf.logical_and(tf.reduce_all(x >= 0), tf.reduce_all(x < size))
        got = [tf.strings.as_string(tf.reduce_min(x)), tf.strings.as_string(tf.reduce_max(x))]
        text = tf.strings.join([f"{message}, got values in [", got[0], ", ", got[1], "]."])
        assertion = tf.debugging.Assert(valid, [text])
        with tf.control_dependencies([assertion]):
            return tf.identity(x)
    return indices


def raising_value_errors(fn: Callable) -> Callable:
    """Wrap a compiled step function so tagged assertion failures raise ``ValueError``.

    Idempotent: wrapping a wrapped function returns it unchanged.
    """
    if fn is None or getattr(fn, "_keras_vq_checked", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError:
            raise
        except Exception as error:
            match = _TAGGED.search(str(error))
            if match is None:
                raise
            raise ValueError(_clean(match.group(1))) from None

    wrapper._keras_vq_checked = True
    return wrapper


def validating_batches(
    fn: Callable, validate: Callable[[Any], None], restore: Callable[[Any], None]
) -> Callable:
    """Wrap a JAX step function ``fn(state, iterator)`` to ``validate`` each batch first.

    Keras' JAX loops keep the model's state outside its variables while they run; when a batch
    is rejected, ``restore(state)`` puts the last good state back so the model stays usable.
    Idempotent, like :func:`raising_value_errors`.
    """
    if fn is None or getattr(fn, "_keras_vq_validated", False):
        return fn

    class _Rejected(Exception):
        pass

    def checked(iterator):
        for data in iterator:
            try:
                validate(data)
            except (TypeError, ValueError) as error:
                raise _Rejected() from error
            yield data

    @functools.wraps(fn)
    def wrapper(state, iterator, *args, **kwargs):
        try:
            return fn(state, checked(iterator), *args, **kwargs)
        except _Rejected as rejected:
            restore(state)
            raise rejected.__cause__ from None

    wrapper._keras_vq_validated = True
    return wrapper


def _clean(message: str) -> str:
    # TF wraps each item of an assertion's data in brackets: "[<text>]".
    message = message.strip()
    return message[:-1] if message.endswith(".]") else message
