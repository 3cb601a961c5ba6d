"""``argmin_last_axis``: NumPy's argmin (first index on ties), int32, on every backend."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_vq.backend import argmin_last_axis
from tests.test_case import to_numpy


def test_argmin_last_axis_matches_numpy_with_ties_and_signed_zeros():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 7, 33)).astype("float32")
    scores[0, 0, [3, 9]] = -10.0  # a tie: the first index wins
    scores[1, 2, :] = 0.0
    scores[1, 2, [5, 8]] = -0.0  # -0.0 == +0.0: still the first index
    got = argmin_last_axis(ops.convert_to_tensor(scores))
    assert keras.backend.standardize_dtype(got.dtype) == "int32"
    np.testing.assert_array_equal(to_numpy(got), np.argmin(scores, axis=-1))
    assert to_numpy(got)[0, 0] == 3 and to_numpy(got)[1, 2] == 0


def test_argmin_last_axis_inside_a_compiled_function():
    from keras_vq.backend import compile_function

    scores = np.random.default_rng(1).normal(size=(64, 512)).astype("float32")
    got = compile_function(argmin_last_axis)(ops.convert_to_tensor(scores))
    np.testing.assert_array_equal(to_numpy(got), np.argmin(scores, axis=-1))
