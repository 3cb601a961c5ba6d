"""The lecture's equations against tensorflow-probability's distributions."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vq import losses
from tests.test_case import to_numpy

tfd = tfp.distributions
RNG = np.random.default_rng(0)


def test_kl_divergence_matches_tfp():
    mean = RNG.normal(size=(6, 4)).astype("float32")
    log_var = RNG.normal(scale=0.5, size=(6, 4)).astype("float32")
    q = tfd.MultivariateNormalDiag(mean, tf.exp(0.5 * log_var))
    p = tfd.MultivariateNormalDiag(tf.zeros(4), tf.ones(4))
    expected = tfd.kl_divergence(q, p).numpy()
    np.testing.assert_allclose(to_numpy(losses.kl_divergence(mean, log_var)), expected, rtol=1e-5)


def test_kl_divergence_is_zero_at_the_prior():
    np.testing.assert_allclose(
        to_numpy(losses.kl_divergence(np.zeros((3, 2)), np.zeros((3, 2)))), 0
    )


def test_bernoulli_log_likelihood_matches_tfp():
    logits = RNG.normal(size=(5, 4, 4, 1)).astype("float32")
    x = (RNG.uniform(size=logits.shape) > 0.5).astype("float32")
    expected = tfd.Independent(tfd.Bernoulli(logits=logits), 3).log_prob(x).numpy()
    got = to_numpy(losses.bernoulli_log_likelihood(x, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_gaussian_log_likelihood_matches_tfp():
    x = RNG.normal(size=(3, 2, 2, 3)).astype("float32")
    mean = RNG.normal(size=x.shape).astype("float32")
    log_scale = np.float32(-0.3)
    expected = tfd.Independent(tfd.Normal(mean, np.exp(log_scale)), 3).log_prob(x).numpy()
    got = to_numpy(losses.gaussian_log_likelihood(x, mean, log_scale))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_latent_log_probs_match_tfp():
    z = RNG.normal(size=(7, 3)).astype("float32")
    mean = RNG.normal(size=(7, 3)).astype("float32")
    log_var = RNG.normal(scale=0.3, size=(7, 3)).astype("float32")
    q = tfd.MultivariateNormalDiag(mean, np.exp(0.5 * log_var))
    p = tfd.MultivariateNormalDiag(np.zeros(3, "float32"), np.ones(3, "float32"))
    np.testing.assert_allclose(
        to_numpy(losses.diagonal_normal_log_prob(z, mean, log_var)),
        q.log_prob(z).numpy(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(losses.standard_normal_log_prob(z)), p.log_prob(z).numpy(), rtol=1e-5
    )


def test_categorical_cross_entropy_matches_tfp():
    logits = RNG.normal(size=(2, 3, 3, 5)).astype("float32")
    codes = RNG.integers(0, 5, size=(2, 3, 3)).astype("int32")
    expected = -tfd.Categorical(logits=logits).log_prob(codes).numpy()
    np.testing.assert_allclose(
        to_numpy(losses.categorical_cross_entropy(codes, logits)), expected, rtol=1e-5
    )


@pytest.mark.parametrize("codebook_term", [True, False])
def test_vq_loss_equals_numpy(codebook_term):
    z = RNG.normal(size=(4, 3)).astype("float32")
    e = RNG.normal(size=(4, 3)).astype("float32")
    mse = np.mean((z - e) ** 2)
    expected = (1.0 if codebook_term else 0.0) * mse + 0.4 * mse
    got = to_numpy(losses.vq_loss(z, e, 0.4, codebook_term=codebook_term))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_losses_are_float32_for_half_inputs():
    half = np.zeros((2, 3), "float16")
    for value in (
        losses.kl_divergence(half, half),
        losses.bernoulli_log_likelihood(half, half),
        losses.vq_loss(half, half),
    ):
        assert str(to_numpy(value).dtype) == "float32"
