"""Argument checks shared by every public constructor and method.

Each check raises a ``ValueError`` or ``TypeError`` that names the argument, the value
received and what was expected, so a user mistake never surfaces as a backend traceback.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from keras import KerasTensor, ops
from keras.backend import standardize_dtype


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a Python ``bool`` or raise a ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r} ({type(value).__name__}).")
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int`` or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_interval: bool = False,
) -> float:
    """Return ``value`` as a ``float`` in ``[minimum, maximum]`` (or open) or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}.")
    low_bad = minimum is not None and (value <= minimum if open_interval else value < minimum)
    high_bad = maximum is not None and (value >= maximum if open_interval else value > maximum)
    if low_bad or high_bad:
        left, right = ("(", ")") if open_interval else ("[", "]")
        low = "-inf" if minimum is None else minimum
        high = "inf" if maximum is None else maximum
        raise ValueError(f"`{name}` must be in {left}{low}, {high}{right}, got {value}.")
    return value


def check_optional_int(name: str, value: Any, *, minimum: int | None = None) -> int | None:
    """``None``, or ``value`` checked by :func:`check_int`."""
    return None if value is None else check_int(name, value, minimum=minimum)


def check_odd_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """An odd integer (a kernel size with a centre), checked by :func:`check_int`."""
    value = check_int(name, value, minimum=minimum)
    if value % 2 == 0:
        raise ValueError(f"`{name}` must be odd, got {value}.")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices`` or raise listing them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value


# The largest seed: seeds are int32 on every backend and in exported SavedModels, so one range,
# [0, MAX_SEED], holds everywhere (larger ones would alias smaller ones on TF and torch and
# overflow on JAX).
MAX_SEED = 2**31 - 1


def check_seed(name: str, value: Any) -> int | None:
    """Seeds are ``None`` or an integer in ``[0, MAX_SEED]`` (``2**31 - 1``, int32).

    Raises:
        TypeError: a bool, float or other non-integer. ValueError: outside ``[0, MAX_SEED]``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"`{name}` must be an integer in [0, {MAX_SEED}] (int32), got {value}.")
    return int(value)


def offset_seed(seed: int | None, offset: int) -> int | None:
    """The seed ``seed + offset`` of a derived stream (a chunk, a stage), wrapped into
    ``[0, MAX_SEED]`` so that it is valid whenever ``seed`` is; ``None`` stays ``None``."""
    return None if seed is None else (seed + offset) % (MAX_SEED + 1)


def concrete_value(x: Any) -> np.ndarray | None:
    """Return ``x`` as NumPy when its values are known now, else ``None``.

    Values are unknown for symbolic tensors and inside a traced function (``tf.function``,
    ``jax.jit``); checks on values are then skipped rather than guessed.
    """
    if isinstance(x, np.ndarray | numbers.Number | list | tuple):
        return np.asarray(x)
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a tracer or a symbolic tensor: values are not known yet
        return None


def check_images(name: str, images: Any, expected_shape: tuple | None) -> None:
    """Check rank and the non-batch dimensions of an image batch ``(B, H, W, C)``.

    Args:
        name: argument name used in the error.
        images: the batch.
        expected_shape: ``(H, W, C)``; ``None`` entries are not checked.
    """
    shape = tuple(images.shape)
    if expected_shape is None:
        return
    if len(shape) != len(expected_shape) + 1:
        raise ValueError(
            f"`{name}` must have shape (batch, {', '.join(map(str, expected_shape))}), "
            f"got shape {shape}."
        )
    for got, want in zip(shape[1:], expected_shape):
        if want is not None and got is not None and got != want:
            raise ValueError(
                f"`{name}` must have shape (batch, {', '.join(map(str, expected_shape))}), "
                f"got shape {shape}."
            )


class InputDtypeError(TypeError, ValueError):
    """A user's input has the wrong dtype: a ``TypeError`` that is also a ``ValueError``.

    Keras' ``fit``/``evaluate``/``predict`` first run the model on a symbolic batch and pass a
    ``ValueError`` from it through as the user's input error, but turn any other exception into
    a ``RuntimeError`` ("Unable to automatically build the model"). Being both keeps the
    ``TypeError`` a ``TypeError`` there.
    """


def check_image_dtype(name: str, images: Any) -> None:
    """Images must be floating point: integer pixels (uint8 0-255) are a scaling mistake.

    The dtype is known statically, so this also holds inside traced training steps.

    Raises:
        InputDtypeError: (a ``TypeError``) an integer or boolean dtype, with the fix.
    """
    dtype = standardize_dtype(
        images.dtype if hasattr(images, "dtype") else np.asarray(images).dtype
    )
    if "float" in dtype:
        return
    fix = (
        "scale to [0, 1], e.g. images / 255"
        if "int" in dtype
        else "convert to floats in [0, 1], e.g. images.astype('float32')"
    )
    raise InputDtypeError(
        f"`{name}` must be floating-point pixel values in [0, 1], got dtype {dtype}; {fix}."
    )


def concrete_range(x: Any) -> tuple[float, float] | None:
    """``(min, max)`` of ``x`` when its values are known now, else ``None`` (or when empty).

    Backend tensors are reduced where they live and only the two numbers are copied to the
    host; symbolic tensors and tracers give ``None`` (see :func:`concrete_value`).
    """
    if isinstance(x, np.ndarray | numbers.Number | list | tuple):
        value = np.asarray(x)
    elif isinstance(x, KerasTensor) or 0 in tuple(getattr(x, "shape", ())):
        return None
    else:
        try:
            value = concrete_value(ops.stack([ops.min(x), ops.max(x)]))
        except Exception:  # an input keras.ops cannot reduce: leave it to the model
            return None
    if value is None or value.size == 0:
        return None
    return float(np.min(value)), float(np.max(value))


def check_unit_interval(name: str, x: Any, tolerance: float = 1e-6) -> None:
    """Raise when concrete values of ``x`` leave ``[0, 1]`` by more than ``tolerance``.

    Skipped while tracing: values are only read when they are known (no host copy is forced
    inside a compiled step). ``tolerance`` absorbs float round-off of rescaled pixels.
    """
    bounds = concrete_range(x)
    if bounds is None:
        return
    low, high = bounds
    # NaN compares false both ways: finiteness is check_finite's concern.
    if low < -tolerance or high > 1.0 + tolerance:
        raise ValueError(
            f"`{name}` must lie in [0, 1], got values in [{low:.6g}, {high:.6g}]; "
            "scale pixels to [0, 1] (e.g. images / 255 for 8-bit images)."
        )


def check_finite(name: str, x: Any) -> None:
    """Raise when a concrete tensor holds NaN or Inf (skipped while tracing)."""
    value = concrete_value(x)
    if value is not None and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        raise ValueError(f"`{name}` contains {bad} NaN or Inf values; expected finite values.")


def check_integer_codes(
    name: str, codes: Any, num_embeddings: int, size_name: str = "num_embeddings"
) -> None:
    """Values must have an integer dtype and lie in ``[0, num_embeddings)``.

    The range is checked when the values are known (skipped while tracing); a backend tensor
    is reduced where it lives, so only its minimum and maximum reach the host.
    """
    dtype = standardize_dtype(codes.dtype if hasattr(codes, "dtype") else np.asarray(codes).dtype)
    if "int" not in dtype:
        raise TypeError(f"`{name}` must have an integer dtype, got dtype {dtype}.")
    bounds = concrete_range(codes)
    if bounds is not None:
        low, high = int(bounds[0]), int(bounds[1])
        if low < 0 or high >= num_embeddings:
            raise ValueError(
                f"`{name}` must lie in [0, {num_embeddings - 1}] ({size_name}="
                f"{num_embeddings}), got values in [{low}, {high}]."
            )
