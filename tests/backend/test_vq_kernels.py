"""The quantizer's backend kernels against NumPy: ``matmul_add``, ``segment_sum`` and
``compiled_state_update``."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_vq import backend as vq_backend
from keras_vq.layers import VectorQuantizer
from tests.test_case import to_numpy

BACKEND = keras.backend.backend()


def test_matmul_add_matches_numpy_eager_and_compiled():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 5)).astype("float32")
    y = rng.normal(size=(5, 11)).astype("float32")
    bias = rng.normal(size=(11,)).astype("float32")
    expected = x.astype("float64") @ y + bias
    for fn in (vq_backend.matmul_add, vq_backend.compile_function(vq_backend.matmul_add)):
        got = fn(*(ops.convert_to_tensor(t) for t in (x, y, bias)))
        assert tuple(got.shape) == (37, 11)
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5, atol=1e-5)
    row_bias = vq_backend.matmul_add(x, y, bias[None, :])
    np.testing.assert_allclose(to_numpy(row_bias), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape, dtype",
    [((50,), "float32"), ((50, 3), "float32"), ((50, 2, 2), "float16"), ((0, 3), "float32")],
)
def test_segment_sum_matches_numpy(shape, dtype):
    rng = np.random.default_rng(1)
    data = rng.normal(size=shape).astype(dtype)
    ids = rng.integers(0, 7, size=shape[0]).astype("int32")
    expected = np.zeros((7, *shape[1:]), "float64")
    np.add.at(expected, ids, data.astype("float64"))
    got = vq_backend.segment_sum(ops.convert_to_tensor(data), ops.convert_to_tensor(ids), 7)
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    assert tuple(got.shape) == (7, *shape[1:])
    tol = 2e-3 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(to_numpy(got).astype("float64"), expected, rtol=tol, atol=tol)


def _training_calls(vq, batches, compiled: bool):
    call = lambda x: vq(x, training=True)
    if compiled and BACKEND == "tensorflow":
        import tensorflow as tf

        call = tf.function(call)
    for x in batches:
        call(ops.convert_to_tensor(x))
    return {w.path: to_numpy(w.value) for w in vq.weights}


@pytest.mark.parametrize(
    "options",
    [
        dict(ema_decay=0.9, dead_code_threshold=1.0),
        dict(dead_code_threshold=2.0),
        dict(ema_decay=0.8, kmeans_init=True),
    ],
)
def test_state_update_in_a_graph_equals_the_eager_update(options):
    """On TensorFlow the update of a traced call runs as one XLA kernel
    (``compiled_state_update``); its state after several batches (EMA sums, usage,
    restarts, k-means, perplexity, seed) equals eager calls'. Elsewhere both are eager."""
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(4, 5, 5, 3)).astype("float32") for _ in range(3)]
    batches.append(np.full((4, 5, 5, 3), np.nan, "float32"))  # a non-finite batch keeps it

    def state(compiled):
        keras.utils.set_random_seed(0)
        vq = VectorQuantizer(16, 3, seed=7, name="vq", **options)
        vq.build((None, 5, 5, 3))
        # Non-trivial starting state: usage counts away from their initial ones.
        perturbed = np.random.default_rng(5)
        for w in vq.weights:
            if w.dtype == "float32" and len(w.shape) > 0:
                w.assign(
                    to_numpy(w.value) + perturbed.uniform(0.1, 0.5, w.shape).astype("float32")
                )
        return _training_calls(vq, batches, compiled)

    eager = state(False)
    graph = state(True)
    assert eager.keys() == graph.keys()
    for name in eager:
        np.testing.assert_allclose(graph[name], eager[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_compiled_state_update_calls_the_update_and_returns_nothing():
    calls = []
    assert vq_backend.compiled_state_update(lambda a, b: calls.append((a, b)), 1.0, None) is None
    assert len(calls) == 1


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA clusters in a TensorFlow graph")
def test_compiled_state_update_is_one_xla_call_inside_a_tensorflow_graph():
    import tensorflow as tf

    v = tf.Variable(1.0)

    def update(x):
        v.assign(v * x + 1.0)

    traced = tf.function(lambda x: vq_backend.compiled_state_update(update, x))
    graph = traced.get_concrete_function(tf.TensorSpec((), tf.float32)).graph
    compiled = [
        op
        for op in graph.get_operations()
        if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")
    ]
    assert len(compiled) == 1
    traced(tf.constant(3.0))
    assert float(v.numpy()) == 4.0
    # Eagerly a plain call: nothing to compile once per shape.
    vq_backend.compiled_state_update(update, tf.constant(2.0))
    assert float(v.numpy()) == 9.0


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the ordering is TensorFlow's backward pass")
@pytest.mark.parametrize("limit", [0, 2**40])
def test_straight_through_gradients_with_and_without_ordered_backward(monkeypatch, limit):
    # Below ORDERED_BACKWARD_BYTES the codebook's segment sum and the input gradient run side
    # by side; above it in order. Either way the gradients are the analytic ones:
    # ∂z = 1 + 2β(z - e)/n, ∂e_k = 2 Σ_{i: k_i = k} (e_k - z_i)/n for sum(out) + loss.
    import tensorflow as tf

    from keras_vq.backend import vq_ops

    monkeypatch.setattr(vq_ops, "ORDERED_BACKWARD_BYTES", limit)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(40, 3)).astype("float32")
    table = rng.normal(size=(6, 3)).astype("float32")
    indices = rng.integers(0, 6, size=40).astype("int32")
    beta, n = 0.25, z.size
    zt, tt = tf.constant(z), tf.Variable(table)

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            tape.watch(zt)
            out, loss = vq_ops.straight_through_vq(zt, tt, indices, beta, codebook_term=True)
            total = tf.reduce_sum(out) + loss
        return tape.gradient(total, [zt, tt])

    g_z, g_table = (to_numpy(g) for g in grads())
    e = table[indices].astype("float64")
    np.testing.assert_allclose(g_z, 1 + 2 * beta * (z - e) / n, rtol=1e-5, atol=1e-6)
    expected = np.zeros((6, 3))
    np.add.at(expected, indices, 2 * (e - z) / n)
    np.testing.assert_allclose(g_table, expected, rtol=1e-5, atol=1e-6)
