import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.layers import LookupFreeQuantizer
from keras_vq.layers.lookup_free_quantizer import (
    default_chunk_size,
    entropy_penalty,
    entropy_terms,
)
from tests.backend_grads import layer_gradients
from tests.test_case import TestCase, to_numpy

RNG = np.random.default_rng(0)
EPS = 1e-5


def all_codes(num_bits: int) -> np.ndarray:
    """``(2^k, k)`` ±1 codes; code j has bit i (most significant first) set ⇔ channel i = +1."""
    j = np.arange(2**num_bits)[:, None]
    bits = (j // 2 ** np.arange(num_bits - 1, -1, -1)[None, :]) % 2
    return np.where(bits == 1, 1.0, -1.0)


def lfq_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signs (0 → -1) and indices ``Σ_i [x_i > 0] 2^(k-1-i)``, written out per channel."""
    k = x.shape[-1]
    codes = np.where(x > 0, 1.0, -1.0).astype("float32")
    index = np.zeros(x.shape[:-1], np.int64)
    for i in range(k):
        index += (x[..., i] > 0).astype(np.int64) << (k - 1 - i)
    return codes, index


def entropy_reference(x: np.ndarray, temperature: float) -> tuple[float, float]:
    """float64 ``(mean_n H(p_n), H(mean_n p_n))``, ``p_n = softmax(-‖x_n - c‖² / T)``.

    Uses the full squared distance ``‖x‖² - 2 x·c + ‖c‖²`` (the layer drops the terms that are
    constant per row, which leaves the softmax unchanged).
    """
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    codes = all_codes(x.shape[-1])
    dist = (x**2).sum(-1, keepdims=True) - 2.0 * x @ codes.T + (codes**2).sum(-1)[None, :]
    logits = -dist / temperature
    logits -= logits.max(-1, keepdims=True)
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    def entropy(p):
        return -(p * np.log(np.maximum(p, EPS))).sum(-1)

    return float(entropy(prob).mean()), float(entropy(prob.mean(0)))


def loss_reference(x, entropy_weight, commitment_weight, gamma, temperature) -> float:
    per_sample, batch = entropy_reference(x, temperature)
    codes, _ = lfq_reference(x)
    commitment = np.mean((np.asarray(x, np.float64) - codes) ** 2)
    return entropy_weight * (per_sample - gamma * batch) + commitment_weight * commitment


def numeric_gradient(fn, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Central differences of a float64 scalar function."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        grad[i] = (fn(up) - fn(down)) / (2 * step)
    return grad


def randomize_weights(layer, rng=RNG) -> None:
    """Non-trivial projection weights, biases included (zero biases hide bugs)."""
    for w in layer.weights:
        w.assign(rng.normal(scale=0.7, size=tuple(w.shape)).astype("float32"))


class TestLookupFreeQuantizer(TestCase):
    @pytest.mark.parametrize("dim", [5, 8])
    def test_layer_battery(self, tmp_path, dim):
        x = RNG.normal(size=(2, 3, 3, dim)).astype("float32")
        self.run_layer_test(
            LookupFreeQuantizer,
            {
                "num_bits": 5,
                "codebook_size": 32,
                "entropy_loss_weight": 0.2,
                "commitment_weight": 0.25,
                "diversity_gamma": 0.5,
                "temperature": 0.1,
                "chunk_size": 7,
            },
            x,
            expected_output_shape=(2, 3, 3, dim),
            expected_output_dtype="float32",
            tmp_path=tmp_path,
        )

    def test_saving_keeps_projection_weights(self, tmp_path):
        inputs = keras.Input((5, 6))
        layer = LookupFreeQuantizer(codebook_size=16, name="lfq")
        model = keras.Model(inputs, layer(inputs, return_indices=True))
        randomize_weights(layer)
        x = RNG.normal(size=(3, 5, 6)).astype("float32")
        revived = self.run_model_saving_test(model, x, tmp_path)
        for a, b in zip(layer.weights, revived.get_layer("lfq").weights):
            self.assertAllClose(a, b, atol=0, rtol=0)

    def test_codes_and_indices_match_numpy(self):
        x = RNG.normal(size=(3, 7, 6)).astype("float32")
        x[0, 0, 2] = 0.0  # zero is negative, as in the peer
        layer = LookupFreeQuantizer(num_bits=6)
        out, indices = layer(x, return_indices=True)
        codes, expected = lfq_reference(x)
        assert keras.backend.standardize_dtype(indices.dtype) == "int32"
        assert tuple(indices.shape) == x.shape[:-1]
        np.testing.assert_array_equal(to_numpy(indices), expected)
        np.testing.assert_array_equal(to_numpy(out), codes)
        np.testing.assert_array_equal(to_numpy(layer.encode(x)), expected)
        assert layer.codebook_size == 64

    def test_index_bits_are_most_significant_first(self):
        layer = LookupFreeQuantizer(num_bits=3)
        x = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1]], "float32")
        np.testing.assert_array_equal(to_numpy(layer.encode(x)), [4, 2, 1, 7])
        layer.build((None, 3))
        np.testing.assert_array_equal(to_numpy(layer.decode(np.arange(8))), all_codes(3))

    @pytest.mark.parametrize("chunk_size", [None, 1, 7, 64])
    def test_entropy_terms_match_numpy(self, chunk_size):
        x = (0.05 * RNG.normal(size=(45, 5))).astype("float32")
        per_sample, batch, mean_prob = entropy_terms(x, 100.0, chunk_size)
        ref_per_sample, ref_batch = entropy_reference(x, 0.01)
        self.assertAllClose(per_sample, ref_per_sample, atol=1e-5, rtol=1e-4)
        self.assertAllClose(batch, ref_batch, atol=1e-5, rtol=1e-4)
        self.assertAllClose(ops.sum(mean_prob), 1.0, atol=1e-5)

    @pytest.mark.parametrize(
        "entropy_weight, commitment_weight, gamma", [(0.1, 0.0, 1.0), (0.3, 0.25, 0.5)]
    )
    def test_training_loss_matches_numpy(self, entropy_weight, commitment_weight, gamma):
        x = (0.1 * RNG.normal(size=(4, 6, 4))).astype("float32")
        layer = LookupFreeQuantizer(
            num_bits=4,
            entropy_loss_weight=entropy_weight,
            commitment_weight=commitment_weight,
            diversity_gamma=gamma,
            chunk_size=5,
        )
        layer(x, training=True)
        assert len(layer.losses) == 1
        expected = loss_reference(x, entropy_weight, commitment_weight, gamma, 0.01)
        self.assertAllClose(layer.losses[0], expected, atol=1e-5, rtol=1e-4)
        _, loss = layer(x, training=True, return_loss=True)
        self.assertAllClose(loss, expected, atol=1e-5, rtol=1e-4)
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"

    def test_inference_adds_zero_loss(self):
        layer = LookupFreeQuantizer(num_bits=4, commitment_weight=1.0)
        layer(RNG.normal(size=(5, 4)).astype("float32"))
        assert len(layer.losses) == 1 and float(to_numpy(layer.losses[0])) == 0.0

    @pytest.mark.parametrize("temperature, scale", [(1.0, 0.5), (0.01, 0.03)])
    def test_loss_gradient_matches_finite_differences(self, temperature, scale):
        # T = 0.01 puts most probabilities below the log's clamp ε, exercising that branch.
        x = (scale * RNG.normal(size=(5, 4))).astype("float32")
        kwargs = {"entropy_loss_weight": 0.7, "commitment_weight": 0.3, "diversity_gamma": 0.8}
        layer = LookupFreeQuantizer(num_bits=4, temperature=temperature, chunk_size=2, **kwargs)
        weights = RNG.normal(size=x.shape).astype("float32")

        def objective(outputs, losses):
            return ops.sum(outputs * ops.convert_to_tensor(weights)) + losses[0]

        _, grad_x, _ = layer_gradients(layer, x, objective, training=True)

        def reference(v):
            return loss_reference(v, 0.7, 0.3, 0.8, temperature)

        # Outputs pass the gradient straight through; the loss adds its own.
        expected = weights + numeric_gradient(reference, x)
        np.testing.assert_allclose(grad_x, expected, atol=2e-4, rtol=1e-3)

    def test_chunked_penalty_equals_unchunked_with_gradient(self):
        x = (0.05 * RNG.normal(size=(23, 6))).astype("float32")
        values, grads = [], []
        for chunk_size in (4, 23):
            layer = LookupFreeQuantizer(num_bits=6, diversity_gamma=0.7, chunk_size=chunk_size)
            value, grad_x, _ = layer_gradients(
                layer, x, lambda out, losses: losses[0], training=True
            )
            values.append(value)
            grads.append(grad_x)
        assert np.abs(grads[1]).max() > 1e-3
        np.testing.assert_allclose(values[0], values[1], rtol=1e-5)
        np.testing.assert_allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)

    def test_sixteen_bits_train_in_chunks(self):
        # The default block holds 2^22 soft-assignment entries: 64 rows of 2^16 codes.
        layer = LookupFreeQuantizer(num_bits=16, commitment_weight=0.25)
        assert layer.rows_per_chunk == default_chunk_size(16) == 64
        x = (0.02 * RNG.normal(size=(10, 8, 16))).astype("float32")  # 80 rows: 2 blocks
        value, grad_x, _ = layer_gradients(layer, x, lambda out, losses: losses[0], True)
        expected = loss_reference(x, 0.1, 0.25, 1.0, 0.01)
        np.testing.assert_allclose(value, expected, atol=1e-5, rtol=1e-4)
        assert grad_x.shape == x.shape and np.all(np.isfinite(grad_x))
        assert np.abs(grad_x).max() > 0

    def test_penalty_value_is_exact_and_only_it_has_gradient(self):
        x = (0.1 * RNG.normal(size=(9, 3))).astype("float32")
        penalty, per_sample, batch = entropy_penalty(x, 0.5, 100.0, 4)
        self.assertAllClose(penalty, per_sample - 0.5 * batch, atol=0, rtol=0)

    def test_straight_through_gradient_without_loss(self):
        layer = LookupFreeQuantizer(num_bits=3)
        x = RNG.normal(size=(4, 5, 3)).astype("float32")
        weights = RNG.normal(size=x.shape).astype("float32")
        _, grad_x, _ = layer_gradients(
            layer, x, lambda out, losses: ops.sum(out * ops.convert_to_tensor(weights))
        )
        np.testing.assert_allclose(grad_x, weights, atol=1e-6)

    @pytest.mark.parametrize("dim", [4, 7])
    def test_decode_of_encode_equals_call(self, dim):
        layer = LookupFreeQuantizer(num_bits=4)
        layer.build((None, dim))
        randomize_weights(layer)
        x = RNG.normal(size=(2, 3, 3, dim)).astype("float32")
        decoded = layer.decode(layer.encode(x))
        assert tuple(decoded.shape) == x.shape
        assert keras.backend.standardize_dtype(decoded.dtype) == "float32"
        self.assertAllClose(decoded, layer(x), atol=1e-6, rtol=1e-6)

    @pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
    def test_mixed_precision_indices_and_loss_equal_float32(self, policy):
        reference = LookupFreeQuantizer(num_bits=6, commitment_weight=0.5)
        reference.build((None, 9))
        randomize_weights(reference)
        x = RNG.normal(size=(4, 8, 9)).astype("float32")
        _, expected, expected_loss = reference(
            x, training=True, return_indices=True, return_loss=True
        )
        keras.config.set_dtype_policy(policy)
        layer = LookupFreeQuantizer(num_bits=6, commitment_weight=0.5)
        layer.build((None, 9))
        for a, b in zip(layer.weights, reference.weights):
            a.assign(b)
        out, indices, loss = layer(x, training=True, return_indices=True, return_loss=True)
        np.testing.assert_array_equal(to_numpy(indices), to_numpy(expected))
        self.assertAllClose(loss, expected_loss, atol=0, rtol=0)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"
        low = ops.cast(x, policy.split("_")[1])
        out_low = layer(low)
        assert keras.backend.standardize_dtype(out_low.dtype) == policy.split("_")[1]
        np.testing.assert_array_equal(
            to_numpy(layer.encode(low)), to_numpy(reference.encode(ops.cast(low, "float32")))
        )

    def test_symbolic_outputs(self):
        outputs = LookupFreeQuantizer(num_bits=4)(
            keras.Input((3, 4)), return_indices=True, return_loss=True
        )
        assert [tuple(o.shape) for o in outputs] == [(None, 3, 4), (None, 3), ()]
        assert outputs[1].dtype == "int32" and outputs[2].dtype == "float32"

    def test_inside_functional_model_fit(self):
        inputs = keras.Input((4, 4, 3))
        z = keras.layers.Conv2D(4, 1, name="enc")(inputs)
        z = LookupFreeQuantizer(num_bits=4, commitment_weight=0.25, name="lfq")(z)
        model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="dec")(z))
        model.compile(optimizer="adam", loss="mse")
        x = RNG.normal(size=(16, 4, 4, 3)).astype("float32")
        history = model.fit(x, x, epochs=1, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        # Inference adds a zero auxiliary loss; a training call adds the reference loss.
        mse = np.mean((to_numpy(model(x)) - x) ** 2)
        assert model.evaluate(x, x, verbose=0) == pytest.approx(mse, rel=1e-4)
        model(x, training=True)
        encoded = to_numpy(model.get_layer("enc")(x))
        expected = loss_reference(encoded, 0.1, 0.25, 1.0, 0.01)
        self.assertAllClose(model.losses[0], expected, atol=1e-5, rtol=1e-4)

    def test_empty_batch_has_zero_loss(self):
        layer = LookupFreeQuantizer(num_bits=4, commitment_weight=0.5, chunk_size=3)
        out, indices, loss = layer(
            np.zeros((0, 4), "float32"), training=True, return_indices=True, return_loss=True
        )
        assert tuple(out.shape) == (0, 4) and tuple(indices.shape) == (0,)
        assert float(to_numpy(loss)) == 0.0

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({}, ValueError, "num_bits"),
            ({"num_bits": 0}, ValueError, "num_bits"),
            ({"num_bits": 2.0}, TypeError, "num_bits"),
            ({"num_bits": 31, "entropy_loss_weight": 0.0}, ValueError, "num_bits"),
            ({"num_bits": 21}, ValueError, "entropy_loss_weight"),
            ({"codebook_size": 100}, ValueError, "power of 2"),
            ({"codebook_size": 1}, ValueError, "codebook_size"),
            ({"num_bits": 3, "codebook_size": 16}, ValueError, "disagree"),
            ({"num_bits": 3, "entropy_loss_weight": -1.0}, ValueError, "entropy_loss_weight"),
            ({"num_bits": 3, "commitment_weight": -1.0}, ValueError, "commitment_weight"),
            ({"num_bits": 3, "diversity_gamma": -0.5}, ValueError, "diversity_gamma"),
            ({"num_bits": 3, "temperature": 0.0}, ValueError, "temperature"),
            ({"num_bits": 3, "chunk_size": 0}, ValueError, "chunk_size"),
        ],
    )
    def test_bad_constructor_arguments_raise(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            LookupFreeQuantizer(**kwargs)

    def test_wrong_last_axis_and_bad_codes_raise(self):
        layer = LookupFreeQuantizer(num_bits=3)
        with pytest.raises(ValueError, match="built"):
            layer.decode(np.zeros((2,), "int32"))
        layer(np.zeros((2, 3), "float32"))
        with pytest.raises(ValueError, match="last axis 3"):
            layer(np.zeros((2, 4), "float32"))
        with pytest.raises(TypeError, match="indices"):
            layer.decode(np.zeros((2,), "float32"))
        with pytest.raises(ValueError, match="codebook_size=8"):
            layer.decode(np.array([0, 8], "int32"))


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the peer is torch-only; the other backends are checked against NumPy references",
)
@pytest.mark.parametrize("num_bits, dim", [(5, 5), (16, 16), (4, 6)])
def test_matches_vector_quantize_pytorch(num_bits, dim):
    """Codes, indices, entropy and commitment losses and gradients of lucidrains' ``LFQ``."""
    peer_module = pytest.importorskip("vector_quantize_pytorch")
    import torch

    x = (0.05 * RNG.normal(size=(2, 24, dim))).astype("float32")
    settings = {"entropy_loss_weight": 0.3, "commitment_weight": 0.2, "diversity_gamma": 0.7}
    peer = peer_module.LFQ(
        dim=dim,
        codebook_size=2**num_bits,
        entropy_loss_weight=0.3,
        commitment_loss_weight=0.2,
        diversity_gamma=0.7,
    )
    layer = LookupFreeQuantizer(num_bits=num_bits, chunk_size=5, **settings)
    layer.build((None, dim))
    if dim != num_bits:
        randomize_weights(layer)
        with torch.no_grad():
            pairs = [(layer.project_in, peer.project_in), (layer.project_out, peer.project_out)]
            for ours, theirs in pairs:
                theirs.weight.copy_(torch.tensor(to_numpy(ours.kernel).T))
                theirs.bias.copy_(torch.tensor(to_numpy(ours.bias)))

    with torch.no_grad():
        peer_out, peer_indices, _ = peer.eval()(torch.tensor(x))
    out, indices = layer(x, return_indices=True)
    np.testing.assert_array_equal(to_numpy(indices), peer_indices.numpy())
    if dim == num_bits:
        np.testing.assert_array_equal(to_numpy(out), peer_out.numpy())
    else:
        np.testing.assert_allclose(to_numpy(out), peer_out.numpy(), atol=1e-5, rtol=1e-5)

    x_peer = torch.tensor(x, requires_grad=True)
    (_, _, peer_loss), breakdown = peer.train()(x_peer, return_loss_breakdown=True)
    peer_loss.backward()
    x_ours = torch.tensor(x, requires_grad=True)
    _, loss = layer(x_ours, training=True, return_loss=True)
    loss.backward()
    np.testing.assert_allclose(to_numpy(loss), peer_loss.item(), atol=1e-6, rtol=1e-5)
    flat = to_numpy(layer._project_in(ops.convert_to_tensor(x))).reshape(-1, num_bits)
    per_sample, batch, _ = entropy_terms(flat, 100.0, 5)
    np.testing.assert_allclose(to_numpy(per_sample), breakdown.per_sample_entropy.item(), 1e-5)
    np.testing.assert_allclose(to_numpy(batch), breakdown.batch_entropy.item(), 1e-5)
    commitment = np.mean((flat - np.where(flat > 0, 1.0, -1.0)) ** 2)
    np.testing.assert_allclose(commitment, breakdown.commitment.item(), 1e-5)
    # Both are float32 sums over 2^k codes: each is within ~4e-6 of a float64 autodiff.
    np.testing.assert_allclose(to_numpy(x_ours.grad), x_peer.grad.numpy(), atol=1e-5, rtol=1e-3)
