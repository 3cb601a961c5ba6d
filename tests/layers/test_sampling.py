import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.layers import Sampling
from tests.backend_grads import layer_gradients
from tests.test_case import TestCase, to_numpy


class TestSampling(TestCase):
    def test_layer_battery(self, tmp_path):
        data = [np.zeros((3, 4), "float32"), np.zeros((3, 4), "float32")]
        self.run_layer_test(Sampling, {"seed": 1}, data, expected_output_shape=(3, 4))

    def test_moments_match_the_gaussian(self):
        mean = np.full((20000, 2), [1.0, -2.0], "float32")
        log_var = np.full((20000, 2), np.log([0.25, 4.0]), "float32")
        z = to_numpy(Sampling(seed=0)([mean, log_var]))
        np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.05)
        np.testing.assert_allclose(z.std(0), [0.5, 2.0], rtol=0.03)

    def test_same_seed_repeats_and_draws_differ(self):
        args = [np.zeros((4, 3), "float32"), np.zeros((4, 3), "float32")]
        a, b = Sampling(seed=7), Sampling(seed=7)
        first = to_numpy(a(args))
        np.testing.assert_array_equal(first, to_numpy(b(args)))
        assert not np.allclose(first, to_numpy(a(args)))

    def test_any_rank_and_half_precision(self):
        mean = ops.zeros((2, 3, 4, 5), dtype="float16")
        out = Sampling(seed=0)([mean, mean])
        assert tuple(out.shape) == (2, 3, 4, 5)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        bf = ops.zeros((2, 3), dtype="bfloat16")
        assert keras.backend.standardize_dtype(Sampling(seed=0)([bf, bf]).dtype) == "bfloat16"

    def test_reparameterised_gradient(self):
        # z = μ + exp(½ lv) ε: dz/dμ = 1, so Σ z has gradient 1 w.r.t. μ.
        mean = np.random.default_rng(0).normal(size=(5, 2)).astype("float32")

        class Shifted(keras.layers.Layer):
            def __init__(self):
                super().__init__()
                self.sampling = Sampling(seed=3)

            def call(self, x, training=None):
                return self.sampling([x, ops.zeros_like(x)])

        _, grad, _ = layer_gradients(Shifted(), mean, lambda out, losses: ops.sum(out))
        np.testing.assert_allclose(grad, np.ones_like(mean), atol=1e-6)

    def test_mismatched_inputs_raise(self):
        with pytest.raises(ValueError, match="z_mean"):
            Sampling()([np.zeros((2, 3), "float32"), np.zeros((2, 4), "float32")])
        with pytest.raises(ValueError, match="inputs"):
            Sampling()(np.zeros((2, 3), "float32"))
        with pytest.raises(TypeError, match="seed"):
            Sampling(seed=1.5)
