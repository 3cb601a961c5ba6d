"""Bits per dimension and the discretised logistic likelihood, against hand and SciPy oracles."""

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import logistic, norm

from keras_vq import losses, metrics
from tests.test_case import to_numpy


def test_bits_per_dim_of_a_discrete_nll_by_hand():
    # 3 examples of 32×32×3 = 3072 dims; 2129.3 nats = 2129.3 / ln 2 = 3071.9 bits.
    nll = np.array([2129.3, 0.0, 6000.0], "float32")
    expected = nll / 3072 / math.log(2.0)
    np.testing.assert_allclose(to_numpy(metrics.bits_per_dim(nll, 3072)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(metrics.bits_per_dim(np.float32(64 * math.log(2.0)), 64)), 1.0, rtol=1e-6
    )


def test_bits_per_dim_of_a_continuous_density_adds_the_bin_width():
    """A density on [0, 1] pixels: + log2(256) = 8 bits per dim for 8-bit images."""
    nll = np.array([-5000.0, 100.0], "float32")
    plain = to_numpy(metrics.bits_per_dim(nll, 3072))
    binned = to_numpy(metrics.bits_per_dim(nll, 3072, num_bins=256))
    np.testing.assert_allclose(binned, plain + 8.0, rtol=1e-6)
    # A uniform density on [0, 1] (NLL 0) is a uniform over 256 levels: 8 bits per dim.
    np.testing.assert_allclose(to_numpy(metrics.bits_per_dim(0.0, 10, num_bins=256)), 8.0)


def test_gaussian_density_bits_match_discretised_gaussian_bits():
    """With σ wide against a bin, a density's binned bits ≈ the discretised model's bits."""
    rng = np.random.default_rng(0)
    k = rng.integers(0, 256, size=(2, 300))
    mu, sigma = 0.5, 0.2
    y = (k + rng.random(k.shape)) / 256  # dequantised pixels
    continuous_nll = -norm.logpdf(y, mu, sigma).sum(-1)
    discrete_nll = -np.log(norm.cdf((k + 1) / 256, mu, sigma) - norm.cdf(k / 256, mu, sigma))
    bits = to_numpy(metrics.bits_per_dim(continuous_nll, 300, num_bins=256))
    np.testing.assert_allclose(bits, discrete_nll.sum(-1) / 300 / math.log(2.0), rtol=2e-3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_dims": 0}, ValueError, "num_dims"),
        ({"num_dims": 2.5}, TypeError, "num_dims"),
        ({"num_dims": 4, "num_bins": 1}, ValueError, "num_bins"),
    ],
)
def test_bits_per_dim_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        metrics.bits_per_dim(1.0, **kwargs)


def scipy_discretized_logistic(x, mean, scale, num_bins=256):
    """log P per pixel, float64: the logistic's mass on each pixel's bin, end bins open."""
    h = 0.5 / (num_bins - 1)
    upper = np.where(x > 1 - h, 1.0, logistic.cdf(x + h, mean, scale))
    lower = np.where(x < h, 0.0, logistic.cdf(x - h, mean, scale))
    return np.log(upper - lower)


def test_discretized_logistic_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(3, 4, 4, 3)) / 255.0
    x[0, 0, 0] = [0.0, 1.0, 0.5]  # both end bins
    mean = rng.normal(0.5, 0.4, size=x.shape)
    log_scale = np.float32(np.log(0.08))
    got = to_numpy(
        losses.discretized_logistic_log_likelihood(
            x.astype("float32"), mean.astype("float32"), log_scale
        )
    )
    expected = scipy_discretized_logistic(x, mean, 0.08).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("scale", [1e-4, 0.01, 0.3, 5.0])
def test_discretized_logistic_is_a_distribution_over_the_256_levels(scale):
    """Σ_k P(k/255) = 1, also where the bin masses underflow (tiny scale, far bins)."""
    levels = (np.arange(256) / 255.0).astype("float32")[:, None]
    for mean in (0.0, 0.3, 0.77, 1.2):
        log_p = to_numpy(
            losses.discretized_logistic_log_likelihood(
                levels, np.full_like(levels, mean), np.float32(np.log(scale))
            )
        )
        assert np.all(np.isfinite(log_p)) and np.all(log_p <= 1e-6)
        np.testing.assert_allclose(logsumexp(log_p.astype("float64")), 0.0, atol=2e-4)
