import keras
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from keras_vq.models import VAE
from tests.test_case import TestCase, to_numpy

D, L, SIGMA = 5, 2, 0.5


def linear_gaussian_vae(posterior_shift: float = 0.0, posterior_log_var_shift: float = 0.0):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) with a linear encoder.

    W has orthogonal columns, so the exact posterior N(A(x - b), Σ) is diagonal:
    Σ = (I + WᵀW/σ²)⁻¹, A = Σ Wᵀ/σ². The shifts move q(z|x) away from it.
    """
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(D, L)))
    w = q * np.array([1.5, 0.7])
    b = rng.normal(size=D)
    sigma_post = np.linalg.inv(np.eye(L) + w.T @ w / SIGMA**2)
    a = sigma_post @ w.T / SIGMA**2

    enc_in = keras.Input((D,))
    z_mean = keras.layers.Dense(L, name="z_mean")(enc_in)
    z_log_var = keras.layers.Dense(L, name="z_log_var")(enc_in)
    encoder = keras.Model(enc_in, [z_mean, z_log_var])
    encoder.get_layer("z_mean").set_weights([a.T, -a @ b + posterior_shift])
    encoder.get_layer("z_log_var").set_weights(
        [np.zeros((D, L)), np.log(np.diag(sigma_post)) + posterior_log_var_shift]
    )
    dec_in = keras.Input((L,))
    decoder = keras.Model(dec_in, keras.layers.Dense(D, name="mean")(dec_in))
    decoder.get_layer("mean").set_weights([w.T, b])
    model = VAE(
        input_shape=(D,),
        latent_dim=L,
        encoder=encoder,
        decoder=decoder,
        likelihood="gaussian",
        observation_scale=SIGMA,
    )
    marginal = multivariate_normal(mean=b, cov=w @ w.T + SIGMA**2 * np.eye(D))
    x = marginal.rvs(size=6, random_state=1).astype("float32")
    return model, x, marginal.logpdf(x)


def tiny_vae(**kwargs):
    kwargs.setdefault("latent_dim", 4)
    return VAE(input_shape=(8, 8, 1), filters=(8,), **kwargs)


class TestVAE(TestCase):
    def test_elbo_is_exact_with_the_true_posterior(self):
        model, x, log_px = linear_gaussian_vae()
        self.assertAllClose(model.elbo(x, seed=0), log_px, atol=1e-3, rtol=1e-4)
        self.assertAllClose(model.log_likelihood(x, num_samples=7, seed=0), log_px, atol=1e-3)

    def test_iwae_tightens_towards_log_px(self):
        model, x, log_px = linear_gaussian_vae(posterior_shift=0.8, posterior_log_var_shift=1.0)
        repeats = {1: 300, 10: 60, 1000: 10}

        def expected_bound(num_samples):
            # Seeds far apart: Keras' torch backend derives the k-th draw of seed s from s + k,
            # so neighbouring seeds would share most of their samples.
            draws = [
                to_numpy(model.log_likelihood(x, num_samples=num_samples, seed=10007 * i))
                for i in range(repeats[num_samples])
            ]
            return np.mean(draws, axis=0)

        elbo, iwae_10, iwae_1000 = (expected_bound(s) for s in (1, 10, 1000))
        # Jensen: E[ELBO] ≤ E[IWAE_10] ≤ E[IWAE_1000] ≤ log p(x), tight as S → ∞.
        assert elbo.mean() + 0.1 < iwae_10.mean() < iwae_1000.mean() - 0.02
        # The estimator is a bound in expectation; single draws scatter by a few 0.01 nats.
        assert iwae_1000.mean() <= log_px.mean() + 0.03
        np.testing.assert_allclose(iwae_1000, log_px, atol=0.15)

    def test_fit_lowers_loss_and_logs_terms(self, digits):
        images = digits[0][:512]
        model = tiny_vae(seed=0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = model.fit(images, epochs=4, batch_size=64, verbose=0).history
        assert set(history) >= {"loss", "reconstruction_loss", "kl_loss"}
        assert history["loss"][-1] < history["loss"][0] - 1.0
        assert history["kl_loss"][-1] > 0
        logs = model.evaluate(images, batch_size=64, verbose=0, return_dict=True)
        assert logs["loss"] == pytest.approx(
            logs["reconstruction_loss"] + logs["kl_loss"], rel=1e-4
        )
        # The IWAE bound is at least the ELBO (nats per example).
        iwae = to_numpy(model.log_likelihood(images[:16], num_samples=50, seed=0)).mean()
        elbo = np.mean([to_numpy(model.elbo(images[:16], seed=s)).mean() for s in range(5)])
        assert iwae >= elbo

    def test_gaussian_likelihood_with_learnt_scale(self, digits):
        model = tiny_vae(likelihood="gaussian")
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        before = float(to_numpy(model.log_scale))
        model.fit(digits[0][:128], epochs=2, batch_size=32, verbose=0)
        assert float(to_numpy(model.log_scale)) < before  # σ shrinks as the fit improves

    def test_encode_decode_sample_contract(self, digits):
        model = tiny_vae()
        z_mean, z_log_var = model.encode(digits[0][:3])
        assert tuple(z_mean.shape) == tuple(z_log_var.shape) == (3, 4)
        images = to_numpy(model.decode(z_mean))
        assert images.shape == (3, 8, 8, 1)
        assert images.min() >= 0 and images.max() <= 1  # Bernoulli means
        self.assertAllClose(model(digits[0][:3]), images, atol=1e-5)
        first = to_numpy(model.sample(5, seed=1))
        assert first.shape == (5, 8, 8, 1)
        np.testing.assert_array_equal(first, to_numpy(model.sample(5, seed=1)))
        assert not np.allclose(first, to_numpy(model.sample(5, seed=2)))

    def test_save_load_round_trip(self, digits, tmp_path):
        model = tiny_vae(likelihood="gaussian", beta=0.5)
        model.compile(optimizer="adam")
        model.fit(digits[0][:64], epochs=1, batch_size=32, verbose=0)
        revived = self.run_model_saving_test(model, digits[0][:8], tmp_path)
        assert revived.get_config() == model.get_config()
        self.assertAllClose(revived.log_scale, model.log_scale)

    def test_custom_networks_round_trip(self, tmp_path):
        model, x, _ = linear_gaussian_vae()
        self.run_model_saving_test(model, x, tmp_path)

    def test_wrong_input_shape_raises(self):
        model = tiny_vae()
        with pytest.raises(ValueError, match=r"images.*\(batch, 8, 8, 1\)"):
            model.encode(np.zeros((2, 16, 16, 1), "float32"))
        with pytest.raises(ValueError, match="z"):
            model.decode(np.zeros((2, 5), "float32"))

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"input_shape": (8, 8, 1), "latent_dim": 0}, ValueError, "latent_dim"),
            ({"input_shape": (8, 8, 1), "likelihood": "poisson"}, ValueError, "likelihood"),
            ({"input_shape": (8, 8, 1), "beta": -1}, ValueError, "beta"),
            (
                {"input_shape": (8, 8, 1), "observation_scale": 0.0},
                ValueError,
                "observation_scale",
            ),
            ({"input_shape": (6, 6, 1)}, ValueError, "divisible"),
            ({"input_shape": (8, 8, 1), "encoder": "conv"}, TypeError, "encoder"),
        ],
    )
    def test_bad_arguments_raise(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            VAE(**kwargs)

    def test_bad_method_arguments_raise(self, digits):
        model = tiny_vae()
        with pytest.raises(ValueError, match="num_samples"):
            model.sample(0)
        with pytest.raises(ValueError, match="num_samples"):
            model.log_likelihood(digits[0][:2], num_samples=0)


def records_gradient(x) -> bool:
    """Whether ``x`` carries an autograd graph (only torch tensors can)."""
    return bool(getattr(x, "requires_grad", False))


def randomized_vae(**kwargs):
    model = tiny_vae(**kwargs)
    rng = np.random.default_rng(0)
    for variable in model.weights:  # biases too: nothing starts at a special value
        variable.assign(rng.normal(scale=0.3, size=tuple(variable.shape)).astype("float32"))
    return model


def undecorated(model, method):
    """``model.method`` without its ``inference`` decorator: autograd left on."""
    return getattr(type(model), method).__wrapped__.__get__(model)


class TestVAEInference:
    @pytest.mark.parametrize("method", ["encode", "decode", "sample", "elbo", "log_likelihood"])
    def test_inference_methods_record_no_gradients(self, digits, method):
        model = randomized_vae(likelihood="gaussian")
        images = digits[0][:3]
        latents = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
        # Each method, and the same computation built from undecorated methods only.
        calls = {
            "encode": (lambda: model.encode(images), lambda: undecorated(model, "encode")(images)),
            "decode": (
                lambda: model.decode(latents),
                lambda: undecorated(model, "decode")(latents),
            ),
            "sample": (
                lambda: model.sample(3, seed=5),
                # sample decodes z ~ N(0, I) drawn from its seed.
                lambda: undecorated(model, "decode")(keras.random.normal((3, 4), seed=5)),
            ),
            "elbo": (
                lambda: model.elbo(images, seed=5),
                lambda: undecorated(model, "log_likelihood")(images, num_samples=1, seed=5),
            ),
            "log_likelihood": (
                lambda: model.log_likelihood(images, num_samples=3, seed=5),
                lambda: undecorated(model, "log_likelihood")(images, num_samples=3, seed=5),
            ),
        }
        decorated, plain = calls[method]
        outputs, expected = keras.tree.flatten(decorated()), keras.tree.flatten(plain())
        assert len(outputs) == len(expected) > 0
        for output, reference in zip(outputs, expected):
            np.testing.assert_allclose(to_numpy(output), to_numpy(reference), atol=1e-5)
            assert not records_gradient(output)
            if keras.backend.backend() == "torch":
                assert records_gradient(reference)  # what the decorator turns off


class TestVAEImageRange:
    @pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
    @pytest.mark.parametrize("dtype", ["uint8", "int32"])
    def test_integer_images_are_rejected_everywhere(self, digits, likelihood, dtype):
        model = tiny_vae(likelihood=likelihood)
        images = np.round(digits[0][:8] * 255).astype(dtype)
        match = rf"`images`.*dtype {dtype}.*scale to \[0, 1\], e\.g\. images / 255"
        for call in (
            model.encode,
            model,
            model.log_likelihood,
            model.elbo,
            lambda x: model(keras.ops.convert_to_tensor(x)),
        ):
            with pytest.raises(TypeError, match=match):
                call(images)
        model.compile(optimizer="adam")
        with pytest.raises(TypeError, match=match):
            model.fit(images, batch_size=4, epochs=1, verbose=0)
        with pytest.raises(TypeError, match=match):
            model.evaluate(images, batch_size=4, verbose=0)

    def test_integer_images_are_rejected_symbolically(self):
        model = tiny_vae()
        with pytest.raises(TypeError, match="images"):
            model(keras.Input((8, 8, 1), dtype="uint8"))
        assert tuple(model(keras.Input((8, 8, 1))).shape) == (None, 8, 8, 1)

    @pytest.mark.parametrize("as_tensor", [False, True])
    def test_bernoulli_vae_rejects_images_outside_unit_interval(self, digits, as_tensor):
        model = tiny_vae()
        images = digits[0][:4] * 255.0  # floats, but 8-bit pixel values
        if as_tensor:  # reduced where it lives: only min and max reach the host
            images = keras.ops.convert_to_tensor(images)
        match = r"`images` must lie in \[0, 1\], got values in \[0, 255\]"
        for call in (model.encode, model, model.log_likelihood, model.elbo):
            with pytest.raises(ValueError, match=match):
                call(images)
        below = digits[0][:4] - 0.5
        with pytest.raises(ValueError, match=r"images.*\[-0\.5, 0\.5\]"):
            model.encode(below)

    def test_unit_interval_allows_float_round_off(self, digits):
        model = tiny_vae()
        images = digits[0][:4].copy()
        images[0, 0, 0, 0], images[1, 0, 0, 0] = 1.0 + 5e-7, -5e-7
        model.encode(images)
        model.log_likelihood(images, num_samples=2, seed=0)
        images[0, 0, 0, 0] = 1.0 + 1e-4
        with pytest.raises(ValueError, match="images"):
            model.encode(images)

    def test_gaussian_vae_accepts_any_float_range(self, digits):
        model = tiny_vae(likelihood="gaussian")
        images = digits[0][:4] * 2.0 - 1.0  # [-1, 1] is valid data for a Gaussian likelihood
        z_mean, _ = model.encode(images)
        assert np.all(np.isfinite(to_numpy(z_mean)))
        assert np.all(np.isfinite(to_numpy(model.log_likelihood(images, num_samples=2))))
        model(images)


class TestVAESampleBatches(TestCase):
    def test_batches_decode_the_latents_of_one_draw(self):
        model = randomized_vae()
        full = model.sample(6, seed=4)
        # One draw of all latents, however they are decoded.
        z = keras.random.normal((6, model.latent_dim), seed=4)
        self.assertAllClose(full, model.decode(z))
        for batch_size in (3, 6, 10):  # two chunks, one, one
            chunked = model.sample(6, seed=4, batch_size=batch_size)
            assert tuple(chunked.shape) == (6, 8, 8, 1)
            self.assertAllClose(chunked, full, atol=1e-6)
        assert not np.allclose(to_numpy(full[0]), to_numpy(full[1]))

    def test_bad_batch_size_is_named(self):
        model = tiny_vae()
        with pytest.raises(ValueError, match="batch_size"):
            model.sample(2, batch_size=0)
        with pytest.raises(TypeError, match="batch_size"):
            model.sample(2, batch_size="4")
