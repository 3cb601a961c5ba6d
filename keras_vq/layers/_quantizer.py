"""Small pieces every quantizer layer shares: output spec, input checks and config entries.

``VectorQuantizer``, ``ResidualVectorQuantizer``, ``FiniteScalarQuantizer`` and
``LookupFreeQuantizer`` all return ``outputs[, indices][, loss]``, check the last axis and
dtype of their inputs the same way, treat non-finite inputs the same way, refuse to decode
before they are built and list their constructor arguments in ``get_config``; the code for
that lives here once.

Non-finite inputs, one rule for every quantizer:

- ``encode`` raises a ``ValueError`` naming ``inputs`` when their values are known (an eager
  call), as ``VQVAE.encode`` does for images;
- a call (training included: a float16 overflow must not stop ``fit``) and an ``encode``
  inside a traced graph (``tf.function``, ``jax.jit``, a SavedModel), where the values are
  not known, code every vector with a NaN or ±inf entry as index 0 (every stage of a residual
  quantizer) and output NaN for the whole vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vq import _validation

INT32_MAX = int(np.iinfo(np.int32).max)


def check_codebook_size(name: str, size: int, detail: str = "") -> None:
    """Raise unless ``size`` codes have int32 indices (``size <= 2**31 - 1``).

    Args:
        name: the argument the size comes from, for the message.
        size: number of codes.
        detail: how ``size`` follows from the argument (e.g. ``" (the product of [..])"``).
    """
    if size > INT32_MAX:
        raise ValueError(
            f"`{name}` gives a codebook of {size} codes{detail}; int32 indices hold at most "
            f"{INT32_MAX}."
        )


def check_float_inputs(inputs, name: str = "inputs") -> None:
    """Raise unless ``inputs`` has a floating-point dtype (static: holds while tracing too).

    Integer inputs would be truncated codes of nothing: a ``TypeError`` (that is also a
    ``ValueError``, so Keras' ``fit`` passes it through, see ``_validation.InputDtypeError``).
    """
    dtype = keras.backend.standardize_dtype(
        inputs.dtype if hasattr(inputs, "dtype") else np.asarray(inputs).dtype
    )
    if "float" not in dtype:
        raise _validation.InputDtypeError(
            f"`{name}` must have a floating-point dtype, got dtype {dtype}; cast them, e.g. "
            f"ops.cast({name}, 'float32')."
        )


def check_finite_inputs(inputs, name: str = "inputs") -> None:
    """Raise when the values of ``inputs`` are known and hold NaN or ±inf.

    Counted where the tensor lives: only one number reaches the host. Skipped while tracing
    (see the module docstring for what a traced graph does instead).
    """
    if isinstance(inputs, keras.KerasTensor):
        return
    bad = ops.sum(ops.cast(ops.logical_not(ops.isfinite(inputs)), "int32"))
    count = _validation.concrete_value(bad)
    if count is not None and int(count) > 0:
        raise ValueError(
            f"`{name}` contains {int(count)} NaN or Inf values; expected finite values."
        )


def finite_rows(x):
    """Boolean ``(...)``: whether every entry of each vector ``x[..., :]`` is finite."""
    return ops.all(ops.isfinite(x), axis=-1)


def zero_where_not(finite, indices):
    """``indices`` with 0 where ``finite`` is false (the code of a non-finite vector)."""
    return ops.where(finite, indices, ops.zeros_like(indices))


def nan_where_not(finite, vectors):
    """``vectors`` ``(..., D)`` with every entry NaN where ``finite`` ``(...)`` is false."""
    return ops.where(finite[..., None], vectors, ops.full_like(vectors, float("nan")))


def quantizer_output_spec(
    inputs, return_indices: bool, return_loss: bool, indices_shape: Sequence | None = None
):
    """The ``compute_output_spec`` of a quantizer: outputs, int32 indices, float32 loss.

    Args:
        inputs: the ``KerasTensor`` the layer is called on.
        return_indices: whether the call returns indices.
        return_loss: whether the call returns the loss.
        indices_shape: shape of the indices; ``inputs.shape[:-1]`` when ``None``.

    Returns:
        One ``KerasTensor``, or a tuple of them when indices or the loss are returned.
    """
    check_float_inputs(inputs)
    outputs = [keras.KerasTensor(inputs.shape, dtype=inputs.dtype)]
    if return_indices:
        shape = inputs.shape[:-1] if indices_shape is None else indices_shape
        outputs.append(keras.KerasTensor(shape, dtype="int32"))
    if return_loss:
        outputs.append(keras.KerasTensor((), dtype="float32"))
    return tuple(outputs) if len(outputs) > 1 else outputs[0]


def check_last_axis(shape, expected: int | None, name: str, expected_text: str) -> None:
    """Raise unless ``shape`` has a last axis equal to ``expected`` (an unknown one passes).

    Args:
        shape: the shape to check.
        expected: the last axis the layer was built for.
        name: the argument's name, for the message.
        expected_text: how the message names the expected axis (e.g. ``"embedding_dim=8"``).
    """
    if len(shape) < 1 or (shape[-1] is not None and shape[-1] != expected):
        raise ValueError(
            f"`{name}` must have last axis {expected_text}, got shape {tuple(shape)}."
        )


class EmbeddingDimMixin:
    """``embedding_dim`` handling of ``VectorQuantizer`` and ``ResidualVectorQuantizer``.

    The layer takes ``embedding_dim`` (``None`` to take it from the first input) and checks
    every input's last axis against it.
    """

    embedding_dim: int | None

    def _build_embedding_dim(self, input_shape, class_name: str) -> None:
        """Set ``embedding_dim`` from ``input_shape`` when unset, then check the last axis."""
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"{class_name} needs a known last axis (embedding_dim) at build.")
        if self.embedding_dim is None:
            self.embedding_dim = int(dim)
        self._check_last_axis(input_shape)

    def _check_last_axis(self, shape, name: str = "inputs") -> None:
        check_last_axis(shape, self.embedding_dim, name, f"embedding_dim={self.embedding_dim}")

    def _float_inputs(self, inputs):
        """``inputs`` cast to float32, after checking their dtype and last axis (once known)."""
        check_float_inputs(inputs)
        if self.embedding_dim is not None:
            self._check_last_axis(inputs.shape)
        return ops.cast(inputs, "float32")


def built_input(layer: keras.layers.Layer, inputs):
    """``inputs`` of ``encode`` as a tensor, checked, building ``layer`` for it if needed.

    Args:
        layer: the quantizer about to encode ``inputs``.
        inputs: array-like input of the layer.

    Raises:
        TypeError: a non-float dtype. ValueError: known values with NaN or ±inf.
    """
    check_float_inputs(inputs)
    inputs = ops.convert_to_tensor(inputs)
    check_finite_inputs(inputs)
    if not layer.built:
        layer.build(inputs.shape)
    return inputs


def require_built(layer: keras.layers.Layer, method: str) -> None:
    """Raise unless ``layer`` is built: ``method`` (e.g. ``"VectorQuantizer.decode"``) needs it.

    Args:
        layer: the quantizer.
        method: the qualified method name, for the message.
    """
    if not layer.built:
        raise ValueError(f"{method} needs a built layer (call it once first).")


def check_decode_input(
    layer: keras.layers.Layer, method: str, indices: Any, size: int, size_name: str
) -> None:
    """The checks of a ``decode``: a built layer, integer ``indices`` in ``[0, size)``.

    Args:
        layer: the quantizer.
        method: the qualified method name, for the message.
        indices: the codes to decode.
        size: number of codes.
        size_name: how the message names ``size`` (e.g. ``"codebook_size"``).
    """
    require_built(layer, method)
    _validation.check_integer_codes("indices", indices, size, size_name)


def config_entries(layer: keras.layers.Layer, names: Iterable[str]) -> dict[str, Any]:
    """``{name: layer.<name>}`` for ``names``, in that order: a layer's ``get_config`` entries.

    Args:
        layer: the layer whose attributes are read.
        names: attribute names, each also the config key.
    """
    return {name: getattr(layer, name) for name in names}
