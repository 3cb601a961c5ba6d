"""``loop_ops``: the per-position samplers' ops compute what ``keras.ops`` computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.backend import no_grad
from keras_vq.backend.ops import loop_ops
from tests.test_case import to_numpy


def tensor(rng, shape, dtype="float32"):
    return ops.convert_to_tensor(rng.normal(size=shape).astype(dtype))


def test_loop_ops_is_keras_ops_where_the_loop_compiles():
    xops = loop_ops()
    if keras.backend.backend() == "torch":
        assert xops is not ops
    else:
        assert xops is ops


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loop_ops_match_keras_ops(dtype):
    xops, rng = loop_ops(), np.random.default_rng(0)
    x = ops.cast(tensor(rng, (3, 2, 5, 6)), dtype)
    gamma, beta = tensor(rng, (6,)), tensor(rng, (6,))
    kernel = ops.cast(tensor(rng, (2, 3, 6, 4)), dtype)
    table = tensor(rng, (7, 6))
    index = ops.convert_to_tensor(np.array([3, 0, 6], "int32"))
    mask = ops.convert_to_tensor(rng.uniform(size=(5, 6)) > 0.5)
    pairs = [
        (lambda o: o.layer_normalization(x, gamma, beta, axis=-1, epsilon=1e-3), 2e-2),
        (lambda o: o.conv(x, kernel, padding="valid"), 5e-2),
        (lambda o: o.pad(x, [[0, 0], [1, 0], [2, 1], [0, 0]]), 0),
        (lambda o: o.softmax(ops.cast(x, "float32"), axis=-1), 1e-6),
        (lambda o: o.gelu(x), 1e-2),
        (lambda o: o.tanh(x) * o.sigmoid(x) + o.relu(x), 1e-2),
        (lambda o: o.where(mask, ops.cast(x, "float32"), -1e9), 0),
        (lambda o: o.swapaxes(x, -1, -2), 0),
        (lambda o: o.transpose(x, (0, 2, 1, 3)), 0),
        (lambda o: o.reshape(x, (3, -1)), 0),
        (lambda o: o.slice(x, [1, 0, 2, 3], [2, 2, 3, 3]), 0),
        (lambda o: o.cast(x, "float32"), 0),
        (lambda o: o.argmax(ops.cast(x, "float32"), axis=-1), 0),
        (lambda o: o.take(table, index, axis=0), 0),
        (lambda o: o.top_k(ops.cast(x, "float32"), 2, sorted=True)[0], 0),
        (lambda o: o.matmul(x, ops.cast(table, dtype)[:6]), 5e-2),
    ]
    with no_grad():
        for i, (fn, atol) in enumerate(pairs):
            want, got = fn(ops), fn(xops)
            assert tuple(got.shape) == tuple(want.shape), i
            assert keras.backend.standardize_dtype(got.dtype) == (
                keras.backend.standardize_dtype(want.dtype)
            ), i
            np.testing.assert_allclose(
                to_numpy(ops.cast(got, "float32")),
                to_numpy(ops.cast(want, "float32")),
                atol=atol,
                rtol=atol,
                err_msg=str(i),
            )


def test_loop_ops_slice_update_writes_the_slice():
    xops, rng = loop_ops(), np.random.default_rng(1)
    base = rng.normal(size=(2, 4, 5)).astype("float32")
    update = rng.normal(size=(2, 1, 3)).astype("float32")
    want = base.copy()
    want[:, 2:3, 1:4] = update
    with no_grad():
        got = xops.slice_update(
            ops.convert_to_tensor(base.copy()), [0, 2, 1], ops.convert_to_tensor(update)
        )
    np.testing.assert_array_equal(to_numpy(got), want)
