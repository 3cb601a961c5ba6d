"""The memory-lean VectorQuantizer path against slow, obviously-correct formulas.

``row_chunk_map`` must equal one call on all rows; the fused straight-through op
(``straight_through_vq``, the plain layer's path) must give the values, loss and gradients
w.r.t. the inputs and the codebook of ``z + sg[e - z]`` and
``mean((sg[z] - e)²) + β mean((z - sg[e])²)`` written out with plain ``keras.ops``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from keras_vq import backend as vq_backend
from keras_vq.layers import VectorQuantizer
from keras_vq.layers.vector_quantizer import nearest_code
from tests.backend_grads import layer_gradients


def brute_force_codes(x, codebook):
    """argmin_k ||x - e_k||² over the full (N, K) matrix of explicit differences."""
    diff = x[:, None, :].astype("float64") - codebook[None, :, :].astype("float64")
    return np.argmin(np.sum(diff**2, axis=-1), axis=-1).astype("int32")


def gradients(fn, sources):
    """Value of ``fn(*sources)`` (a scalar) and its gradients w.r.t. every source."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        sources = [tf.convert_to_tensor(s) for s in sources]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            value = fn(*sources)
        return value, tape.gradient(value, sources)
    if backend == "jax":
        import jax

        sources = [jax.numpy.asarray(s) for s in sources]
        value, grads = jax.value_and_grad(lambda *s: fn(*s), argnums=tuple(range(len(sources))))(
            *sources
        )
        return value, list(grads)
    import torch

    sources = [torch.tensor(np.asarray(s), requires_grad=True) for s in sources]
    value = fn(*sources)
    value.backward()
    return value, [s.grad for s in sources]


def reference(z, codebook, indices, beta, codebook_term):
    """z + sg[e - z] and the VQ loss, written out term by term (float32 loss)."""
    e = ops.take(codebook, indices, axis=0)
    z32 = ops.cast(z, "float32")
    commitment = ops.mean(ops.square(z32 - ops.stop_gradient(e)))
    loss = beta * commitment
    if codebook_term:
        loss = loss + ops.mean(ops.square(ops.stop_gradient(z32) - e))
    # An empty batch has no loss (its mean is NaN).
    loss = ops.where(ops.shape(z)[0] > 0, loss, ops.zeros_like(loss))
    out = z + ops.stop_gradient(ops.cast(e, z.dtype) - z)
    return out, loss


def random_case(n, d, k, seed, dtype="float32"):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(dtype)
    codebook = rng.normal(size=(k, d)).astype("float32")
    weights = rng.normal(size=(n, d)).astype(dtype)
    return z, codebook, weights


@pytest.mark.parametrize("n, chunk", [(37, 8), (40, 8), (5, 8), (8, 8), (0, 8)])
def test_row_chunk_map_equals_one_call_on_all_rows(n, chunk):
    z, codebook, _ = random_case(n, 6, 11, seed=n)
    got = nearest_code(ops.convert_to_tensor(z), ops.convert_to_tensor(codebook), chunk)
    np.testing.assert_array_equal(vq_backend.to_numpy(got), brute_force_codes(z, codebook))
    doubled = vq_backend.row_chunk_map(
        lambda rows: ops.cast(ops.sum(rows, axis=1) * 2.0, "float32"),
        ops.convert_to_tensor(z),
        chunk,
        dtype="float32",
    )
    np.testing.assert_allclose(vq_backend.to_numpy(doubled), z.sum(axis=1) * 2.0, rtol=1e-5)


@pytest.mark.parametrize("codebook_term", [True, False])
@pytest.mark.parametrize("n", [37, 3, 0])
def test_straight_through_vq_matches_the_written_out_formulas(n, codebook_term):
    beta = 0.37
    z, codebook, weights = random_case(n, 5, 7, seed=10 + n)
    indices = ops.convert_to_tensor(brute_force_codes(z, codebook))
    w = ops.convert_to_tensor(weights)

    def objective(op):
        def fn(z, codebook):
            out, loss = op(z, codebook, indices, beta, codebook_term)
            # Non-trivial upstream gradients for both outputs.
            return ops.sum(out * w) + 1.7 * loss, (out, loss)

        return fn

    results = []
    for op in (vq_backend.straight_through_vq, reference):
        fn = objective(op)
        _, (out, loss) = fn(ops.convert_to_tensor(z), ops.convert_to_tensor(codebook))
        _, grads = gradients(lambda a, b, fn=fn: fn(a, b)[0], [z, codebook])
        results.append((out, loss, grads))
    (out, loss, grads), (ref_out, ref_loss, ref_grads) = results
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    # Exactly the codes (z + (e - z) may differ from e in the last bit).
    np.testing.assert_array_equal(vq_backend.to_numpy(out), codebook[vq_backend.to_numpy(indices)])
    np.testing.assert_allclose(
        vq_backend.to_numpy(out), vq_backend.to_numpy(ref_out), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(vq_backend.to_numpy(loss), vq_backend.to_numpy(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(
        vq_backend.to_numpy(grads[0]), vq_backend.to_numpy(ref_grads[0]), rtol=1e-5, atol=1e-6
    )
    if codebook_term:
        np.testing.assert_allclose(
            vq_backend.to_numpy(grads[1]), vq_backend.to_numpy(ref_grads[1]), rtol=1e-5, atol=1e-6
        )
    else:
        got = grads[1]
        assert got is None or not np.any(vq_backend.to_numpy(got))


@pytest.mark.parametrize("ema", [False, True])
@pytest.mark.parametrize(
    "n, chunk, dtype",
    [(37, 8, "float32"), (5, 8, "float32"), (24, 8, "float32"), (29, 8, "float16")],
)
def test_plain_layer_matches_a_numpy_oracle(n, chunk, dtype, ema):
    """Output, indices, loss and both gradients of the layer (fused path) against NumPy."""
    beta, k, d = 0.3, 6, 4
    rng = np.random.default_rng(n + 100 * ema)
    x = rng.normal(size=(n, d)).astype(dtype)
    codebook = rng.normal(size=(k, d)).astype("float32")
    w = rng.normal(size=(n, d)).astype("float32")
    layer = VectorQuantizer(k, d, beta=beta, chunk_size=chunk, ema_decay=0.9 if ema else None)
    layer.build((None, d))
    layer.set_codebook(codebook)

    z = x.astype("float64")
    codes = brute_force_codes(x.astype("float32"), codebook)
    e = codebook[codes].astype("float64")
    terms = beta + (0.0 if ema else 1.0)
    want_loss = terms * np.mean((z - e) ** 2)
    want_grad_x = w + 1.7 * 2.0 * beta * (z - e) / z.size
    want_grad_codebook = np.zeros((k, d))
    np.add.at(want_grad_codebook, codes, 1.7 * 2.0 * (e - z) / z.size)

    out, indices, loss = layer(ops.convert_to_tensor(x), return_indices=True, return_loss=True)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_array_equal(vq_backend.to_numpy(indices), codes)
    np.testing.assert_array_equal(vq_backend.to_numpy(out), codebook[codes].astype(dtype))
    np.testing.assert_allclose(float(vq_backend.to_numpy(loss)), want_loss, rtol=1e-5)

    def objective(outputs, losses):
        return ops.sum(ops.cast(outputs, "float32") * ops.convert_to_tensor(w)) + 1.7 * sum(losses)

    # training=True also runs the EMA update, which assigns the codebook after the forward.
    value, grad_x, grad_vars = layer_gradients(layer, x, objective, training=ema)
    out_values = codebook[codes].astype(dtype).astype("float64")
    np.testing.assert_allclose(value, np.sum(out_values * w) + 1.7 * want_loss, rtol=1e-5)
    tolerance = 1e-2 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(grad_x, want_grad_x, rtol=tolerance, atol=tolerance)
    if ema:
        assert grad_vars == []
    else:
        np.testing.assert_allclose(grad_vars[0], want_grad_codebook, rtol=1e-5, atol=1e-7)


def test_compiled_call_matches_the_oracle():
    """The chunk loop and the fused op under XLA (TF ``jit_compile``, ``jax.jit``)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(37, 4)).astype("float32")
    codebook = rng.normal(size=(6, 4)).astype("float32")
    layer = VectorQuantizer(6, 4, beta=0.3, chunk_size=8)
    layer.build((None, 4))
    layer.set_codebook(codebook)
    compiled = vq_backend.compile_function(
        lambda v: layer(v, return_indices=True, return_loss=True)
    )
    out, indices, loss = compiled(ops.convert_to_tensor(x))
    codes = brute_force_codes(x, codebook)
    np.testing.assert_array_equal(vq_backend.to_numpy(indices), codes)
    np.testing.assert_array_equal(vq_backend.to_numpy(out), codebook[codes])
    want = 1.3 * np.mean((x.astype("float64") - codebook[codes]) ** 2)
    np.testing.assert_allclose(float(vq_backend.to_numpy(loss)), want, rtol=1e-5)
