import numpy as np
import pytest
from scipy.special import logsumexp

from keras_vq import metrics
from tests.test_case import to_numpy


def test_perplexity_of_uniform_and_single_code_usage():
    np.testing.assert_allclose(to_numpy(metrics.perplexity(np.arange(8), 8)), 8.0, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(metrics.perplexity(np.zeros(10, "int32"), 8)), 1.0)


def test_perplexity_matches_entropy_formula():
    codes = np.random.default_rng(0).integers(0, 6, size=(4, 5, 5))
    p = np.bincount(codes.ravel(), minlength=6) / codes.size
    expected = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
    np.testing.assert_allclose(to_numpy(metrics.perplexity(codes, 6)), expected, rtol=1e-5)


def test_code_counts_is_a_histogram():
    codes = np.array([[0, 2], [2, 2]], "int32")
    np.testing.assert_array_equal(to_numpy(metrics.code_counts(codes, 4)), [1, 0, 3, 0])


def test_code_usage_counts_and_rejects_codes_out_of_range():
    usage = metrics.code_usage(np.array([0, 0, 1, 3], "int32"), 8)
    assert float(to_numpy(usage["used_codes"])) == 3.0
    assert float(to_numpy(usage["dead_codes"])) == 5.0
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 7\].*\[-1, 3\]"):
        metrics.code_usage(np.array([-1, 0, 3], "int32"), 8)
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 3\].*\[0, 4\]"):
        metrics.code_usage(np.array([0, 4], "int32"), 4)
    with pytest.raises(TypeError, match="integer dtype"):
        metrics.code_usage(np.array([0.0, 1.0]), 4)


def test_bits_per_dim():
    np.testing.assert_allclose(to_numpy(metrics.bits_per_dim(np.log(2.0) * 64, 64)), 1.0)


def test_iwae_log_likelihood_is_log_mean_exp():
    log_w = np.random.default_rng(1).normal(size=(10, 3)).astype("float32")
    expected = logsumexp(log_w, axis=0) - np.log(10)
    np.testing.assert_allclose(to_numpy(metrics.iwae_log_likelihood(log_w)), expected, rtol=1e-5)
