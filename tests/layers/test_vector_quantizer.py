import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.layers import VectorQuantizer
from keras_vq.layers.vector_quantizer import nearest_code, squared_distances
from tests.backend_grads import layer_gradients
from tests.test_case import TestCase, to_numpy

RNG = np.random.default_rng(0)


def brute_force_nearest(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Nearest code by explicit pairwise differences (no expansion of the square)."""
    diff = z[:, None, :].astype(np.float64) - codebook[None, :, :].astype(np.float64)
    return np.argmin(np.sum(diff**2, axis=-1), axis=1)


def make_layer(codebook: np.ndarray, **kwargs) -> VectorQuantizer:
    layer = VectorQuantizer(codebook.shape[0], codebook.shape[1], **kwargs)
    layer.build((None, codebook.shape[1]))
    layer.codebook.assign(codebook)
    if layer.uses_ema:
        layer.ema_sum.assign(codebook)
    return layer


class TestVectorQuantizer(TestCase):
    def test_layer_battery(self, tmp_path):
        x = RNG.normal(size=(2, 4, 4, 8)).astype("float32")
        self.run_layer_test(
            VectorQuantizer,
            {"num_embeddings": 16, "embedding_dim": 8, "beta": 0.5, "ema_decay": 0.9},
            x,
            expected_output_shape=(2, 4, 4, 8),
            expected_output_dtype="float32",
            tmp_path=tmp_path,
        )

    def test_squared_distances_match_numpy(self):
        z = RNG.normal(size=(50, 6)).astype("float32")
        e = RNG.normal(size=(9, 6)).astype("float32")
        expected = ((z[:, None] - e[None]) ** 2).sum(-1)
        self.assertAllClose(squared_distances(z, e), expected, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("chunk_size", [7, 64, 4096, None])
    def test_nearest_code_equals_brute_force(self, chunk_size):
        z = RNG.normal(size=(300, 5)).astype("float32")
        codebook = RNG.normal(size=(23, 5)).astype("float32")
        got = to_numpy(nearest_code(z, codebook, chunk_size=chunk_size))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, brute_force_nearest(z, codebook))

    def test_encode_decode_shapes_and_values(self):
        codebook = RNG.normal(size=(12, 3)).astype("float32")
        layer = make_layer(codebook, chunk_size=5)
        z = RNG.normal(size=(2, 3, 4, 3)).astype("float32")
        codes = layer.encode(z)
        assert tuple(codes.shape) == (2, 3, 4)
        assert keras.backend.standardize_dtype(codes.dtype) == "int32"
        expected = brute_force_nearest(z.reshape(-1, 3), codebook).reshape(2, 3, 4)
        np.testing.assert_array_equal(to_numpy(codes), expected)
        vectors = layer.decode(codes)
        assert tuple(vectors.shape) == (2, 3, 4, 3)
        self.assertAllClose(vectors, codebook[expected])

    def test_call_returns_nearest_codes_and_indices(self):
        codebook = RNG.normal(size=(10, 4)).astype("float32")
        layer = make_layer(codebook)
        z = RNG.normal(size=(6, 4)).astype("float32")
        out, idx = layer(z, return_indices=True)
        expected = brute_force_nearest(z, codebook)
        np.testing.assert_array_equal(to_numpy(idx), expected)
        self.assertAllClose(out, codebook[expected], atol=1e-6)

    @pytest.mark.parametrize("ema_decay", [None, 0.9])
    def test_loss_equals_numpy(self, ema_decay):
        beta = 0.3
        codebook = RNG.normal(size=(8, 4)).astype("float32")
        layer = make_layer(codebook, beta=beta, ema_decay=ema_decay)
        z = RNG.normal(size=(5, 3, 4)).astype("float32")
        layer(z)
        e = codebook[brute_force_nearest(z.reshape(-1, 4), codebook)].reshape(z.shape)
        mse = np.mean((z - e) ** 2)
        expected = beta * mse if ema_decay else (1.0 + beta) * mse
        assert len(layer.losses) == 1
        self.assertAllClose(layer.losses[0], expected, atol=1e-6, rtol=1e-5)

    def test_straight_through_gradient_wrt_inputs(self):
        beta = 0.25
        codebook = RNG.normal(size=(6, 3)).astype("float32")
        layer = make_layer(codebook, beta=beta)
        z = RNG.normal(size=(4, 5, 3)).astype("float32")
        weights = RNG.normal(size=z.shape).astype("float32")

        def objective(outputs, losses):
            return ops.sum(outputs * ops.convert_to_tensor(weights)) + losses[0]

        _, grad_z, _ = layer_gradients(layer, z, objective)
        e = codebook[brute_force_nearest(z.reshape(-1, 3), codebook)].reshape(z.shape)
        # d/dz [Σ w·z_q] = w (straight through) and d/dz [β mean((z - sg e)²)] = 2β(z - e)/N.
        expected = weights + 2.0 * beta * (z - e) / z.size
        np.testing.assert_allclose(grad_z, expected, atol=1e-5, rtol=1e-5)

    def test_codebook_gradient_is_analytic(self):
        beta = 0.25
        codebook = RNG.normal(size=(6, 3)).astype("float32")
        layer = make_layer(codebook, beta=beta)
        z = RNG.normal(size=(40, 3)).astype("float32")
        _, _, (grad_codebook,) = layer_gradients(layer, z, lambda out, losses: losses[0])
        k = brute_force_nearest(z, codebook)
        expected = np.zeros_like(codebook)
        # d/de_k mean((sg z - e)²) = -2 Σ_{i: k_i = k} (z_i - e_k) / N; the output's own
        # gradient to the codebook is cut by the straight-through estimator.
        np.add.at(expected, k, -2.0 * (z - codebook[k]) / z.size)
        np.testing.assert_allclose(grad_codebook, expected, atol=1e-6, rtol=1e-5)

    def test_output_gradient_does_not_reach_codebook(self):
        codebook = RNG.normal(size=(6, 3)).astype("float32")
        layer = make_layer(codebook)
        z = RNG.normal(size=(10, 3)).astype("float32")
        _, _, (grad_codebook,) = layer_gradients(layer, z, lambda out, losses: ops.sum(out))
        assert grad_codebook is None or np.allclose(grad_codebook, 0.0)

    def test_ema_update_matches_numpy(self):
        decay, eps = 0.8, 1e-5
        codebook = np.array([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]], dtype="float32")
        layer = make_layer(codebook, ema_decay=decay, epsilon=eps)
        assert not layer.codebook.trainable
        z = np.concatenate(
            [RNG.normal(1.0, 0.1, size=(30, 2)), RNG.normal(9.0, 0.1, size=(10, 2))]
        ).astype("float32")
        layer(z, training=True)
        k = brute_force_nearest(z, codebook)
        counts = np.bincount(k, minlength=3).astype("float64")
        sums = np.zeros((3, 2))
        np.add.at(sums, k, z)
        n = decay * np.ones(3) + (1 - decay) * counts
        m = decay * codebook + (1 - decay) * sums
        smoothed = (n + eps) / (n.sum() + 3 * eps) * n.sum()
        self.assertAllClose(layer.ema_cluster_size, n, atol=1e-5, rtol=1e-5)
        self.assertAllClose(layer.ema_sum, m, atol=1e-4, rtol=1e-5)
        self.assertAllClose(layer.codebook, m / smoothed[:, None], atol=1e-4, rtol=1e-5)

    def test_ema_moves_codes_towards_cluster_means(self):
        codebook = np.array([[0.0, 0.0], [5.0, 5.0]], dtype="float32")
        layer = make_layer(codebook, ema_decay=0.5)
        z = np.concatenate(
            [RNG.normal(1.0, 0.05, size=(50, 2)), RNG.normal(4.0, 0.05, size=(50, 2))]
        ).astype("float32")
        means = np.array([z[:50].mean(0), z[50:].mean(0)])
        before = np.abs(codebook - means).max()
        for _ in range(20):
            layer(z, training=True)
        after = np.abs(to_numpy(layer.codebook) - means).max()
        assert after < 1e-3 < before

    def test_inference_call_leaves_state_untouched(self):
        codebook = RNG.normal(size=(4, 2)).astype("float32")
        layer = make_layer(codebook, ema_decay=0.5, dead_code_threshold=1.0)
        layer(RNG.normal(size=(20, 2)).astype("float32"), training=False)
        self.assertAllClose(layer.codebook, codebook)
        self.assertAllClose(layer.ema_cluster_size, np.ones(4))

    def test_non_finite_batch_does_not_poison_codebook(self):
        codebook = RNG.normal(size=(4, 2)).astype("float32")
        layer = make_layer(codebook, ema_decay=0.5, dead_code_threshold=0.5)
        z = RNG.normal(size=(20, 2)).astype("float32")
        z[3, 1] = np.inf
        layer(z, training=True)
        self.assertAllClose(layer.codebook, codebook)
        assert np.all(np.isfinite(to_numpy(layer.ema_sum)))

    @pytest.mark.parametrize("ema_decay", [None, 0.9])
    def test_dead_code_restart_revives_unused_codes(self, ema_decay):
        codebook = np.array([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0]], dtype="float32")
        layer = make_layer(codebook, ema_decay=ema_decay, dead_code_threshold=0.5, seed=3)
        z = RNG.normal(size=(64, 2)).astype("float32")
        # Usage starts at 1 and decays by ema_decay (0.99 without EMA) while unused.
        steps = 10 if ema_decay else 80
        for _ in range(steps):
            layer(z, training=True)
        new = to_numpy(layer.embeddings)
        for k in (1, 2):  # never assigned: restarted onto (near) a batch vector
            assert np.min(np.abs(z - new[k]).sum(-1)) < 0.5, new
        codes = to_numpy(layer.encode(z))
        assert len(np.unique(codes)) > 1

    def test_perplexity_tracks_last_training_batch(self):
        codebook = np.eye(4, dtype="float32")
        layer = make_layer(codebook)
        layer(codebook, training=True)  # each code used once
        self.assertAllClose(layer.perplexity, 4.0, atol=1e-4)
        layer(np.repeat(codebook[:1], 5, axis=0), training=True)
        self.assertAllClose(layer.perplexity, 1.0, atol=1e-4)

    def test_codebook_stays_float32_under_mixed_precision(self):
        keras.config.set_dtype_policy("mixed_float16")
        layer = VectorQuantizer(8, 4, ema_decay=0.9)
        x = ops.cast(RNG.normal(size=(3, 4)), "float16")
        out = layer(x, training=True)
        assert keras.backend.standardize_dtype(layer.codebook.dtype) == "float32"
        assert keras.backend.standardize_dtype(layer.ema_sum.dtype) == "float32"
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert keras.backend.standardize_dtype(layer.losses[0].dtype) == "float32"

    def test_inside_functional_model_add_loss_reaches_fit(self):
        inputs = keras.Input((4, 4, 3))
        z = keras.layers.Conv2D(3, 1, name="enc")(inputs)
        z = VectorQuantizer(8, 3, name="vq")(z)
        model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="dec")(z))
        model.compile(optimizer="adam", loss="mse")
        x = RNG.normal(size=(16, 4, 4, 3)).astype("float32")
        loss = model.evaluate(x, x, verbose=0)
        mse = np.mean((to_numpy(model(x)) - x) ** 2)
        vq = to_numpy(model.get_layer("vq").losses[0])
        assert loss == pytest.approx(mse + vq, rel=1e-4)
        history = model.fit(x, x, epochs=2, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"]).all()

    def test_symbolic_call_infers_embedding_dim(self):
        layer = VectorQuantizer(8)
        out = layer(keras.Input((5, 7)))
        assert tuple(out.shape) == (None, 5, 7)
        assert layer.embedding_dim == 7
        assert tuple(layer.codebook.shape) == (8, 7)

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"num_embeddings": 0}, ValueError, "num_embeddings"),
            ({"num_embeddings": 2.5}, TypeError, "num_embeddings"),
            ({"num_embeddings": 4, "beta": -0.1}, ValueError, "beta"),
            ({"num_embeddings": 4, "ema_decay": 1.0}, ValueError, "ema_decay"),
            ({"num_embeddings": 4, "ema_decay": 0.0}, ValueError, "ema_decay"),
            ({"num_embeddings": 4, "embedding_dim": 0}, ValueError, "embedding_dim"),
            ({"num_embeddings": 4, "dead_code_threshold": -1}, ValueError, "dead_code"),
        ],
    )
    def test_bad_constructor_arguments_raise(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            VectorQuantizer(**kwargs)

    def test_wrong_last_axis_raises(self):
        layer = VectorQuantizer(4, 3)
        with pytest.raises(ValueError, match="embedding_dim=3"):
            layer(np.zeros((2, 5), "float32"))

    def test_decode_rejects_float_and_out_of_range_codes(self):
        layer = make_layer(RNG.normal(size=(4, 2)).astype("float32"))
        with pytest.raises(TypeError, match="indices"):
            layer.decode(np.zeros((2, 2), "float32"))
        with pytest.raises(ValueError, match="indices"):
            layer.decode(np.array([[0, 4]], "int32"))
        with pytest.raises(ValueError, match="indices"):
            layer.decode(np.array([[-1, 0]], "int32"))


def test_num_embeddings_beyond_int32_indices_is_rejected():
    message = (
        r"`num_embeddings` gives a codebook of 2147483648 codes; int32 indices hold at most "
        r"2147483647\."
    )
    with pytest.raises(ValueError, match=message):
        VectorQuantizer(2**31, 4)
    assert VectorQuantizer(2**31 - 1, 4).codebook_size == 2**31 - 1  # not built: no memory
