import numpy as np
import pytest

from keras_vq import data, evaluation, metrics
from keras_vq.models import VAE, VQVAE
from tests.test_case import to_numpy

K = 8


def randomize(model, seed=0, scale=0.3):
    """Every weight random (biases included: zero biases hide bugs)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(scale=scale, size=tuple(variable.shape))
        if "cluster_size" in variable.path:  # EMA usage counts stay positive
            value = np.abs(value) + 1.0
        variable.assign(value.astype("float32"))
    return model


def tiny_vqvae():
    model = VQVAE(input_shape=(8, 8, 1), num_embeddings=K, embedding_dim=4, filters=(4,))
    return randomize(model, seed=2, scale=1.0)  # uses 4 of the 8 codes, 13 to 318 times


def tiny_vae():
    return randomize(VAE(input_shape=(8, 8, 1), latent_dim=2, filters=(4,)), seed=1)


def held_out():
    """40 digits in batches of 16, 16 and 8: a mean of batch means would differ."""
    return data.load("digits", split="test[:40]", batch_size=16, shuffle=False, with_labels=True)


def per_batch(fn):
    """``fn`` on each batch of :func:`held_out` (only batch shapes 16 and 8: on JAX every new
    shape compiles), concatenated."""
    return np.concatenate([to_numpy(fn(images)) for images, _ in held_out().as_numpy_iterator()])


def numpy_usage(codes, k, threshold=1.0):
    counts = np.bincount(np.asarray(codes).ravel(), minlength=k)
    p = counts / counts.sum()
    used = int(np.sum(counts >= threshold))
    return {
        "perplexity": float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))),
        "used_codes": used,
        "used_fraction": used / k,
        "dead_codes": k - used,
    }


def test_vqvae_reconstructions_and_code_usage_match_numpy():
    model = tiny_vqvae()
    images = data.first_images(held_out(), 40)
    codes = per_batch(model.encode)
    recon = per_batch(lambda x: model.decode(model.encode(x)))
    expected = {"reconstruction_mse": float(np.mean((recon - images) ** 2))}
    expected.update(numpy_usage(codes, K))
    assert 1 < expected["used_codes"] < K, "the check needs used and unused codes"
    for source in (held_out(), images):  # a dataset, or an array cut into batches
        got = evaluation.evaluate_reconstructions(model, source, batch_size=16)
        assert got.keys() == expected.keys()
        assert isinstance(got["used_codes"], int) and isinstance(got["dead_codes"], int)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)


def test_vae_reconstructions_use_the_mean_path():
    model = tiny_vae()
    images = data.first_images(held_out(), 40)
    recon = per_batch(lambda x: model(x, training=False))
    got = evaluation.evaluate_reconstructions(model, held_out())
    assert set(got) == {"reconstruction_mse"}
    np.testing.assert_allclose(got["reconstruction_mse"], np.mean((recon - images) ** 2), 1e-5)


def test_code_usage_threshold_counts_codes_used_often_enough():
    model = tiny_vqvae()
    codes = per_batch(model.encode)
    expected = numpy_usage(codes, K, threshold=20)
    got = evaluation.dataset_code_usage(model, held_out(), threshold=20)
    assert got == pytest.approx(expected)
    assert expected["used_codes"] < numpy_usage(codes, K)["used_codes"], "the threshold matters"


def test_likelihood_is_a_mean_over_examples_with_seed_plus_batch():
    model = tiny_vae()
    batches = [images for images, _ in held_out().as_numpy_iterator()]
    elbo = np.concatenate([to_numpy(model.elbo(x, seed=5 + b)) for b, x in enumerate(batches, 1)])
    iwae = np.concatenate(
        [
            to_numpy(model.log_likelihood(x, num_samples=3, seed=5 + b))
            for b, x in enumerate(batches, 1)
        ]
    )
    got = evaluation.evaluate_likelihood(model, held_out(), num_samples=3, seed=5)
    np.testing.assert_allclose(got["elbo_nats"], elbo.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["iwae_nll_nats"], -iwae.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        got["iwae_nll_bits_per_dim"], -iwae.mean() / (64 * np.log(2.0)), rtol=1e-5
    )
    assert got["iwae_samples"] == 3


def test_gaussian_likelihood_reports_the_bits_of_8_bit_pixels():
    """A Gaussian decoder's log-density on [0, 1] can exceed 0 (negative bits): bits/dim
    counts 256 bins per pixel, as ``metrics.bits_per_dim(..., num_bins=256)`` does."""
    model = randomize(
        VAE(input_shape=(8, 8, 1), latent_dim=2, filters=(4,), likelihood="gaussian"), seed=1
    )
    got = evaluation.evaluate_likelihood(model, held_out(), num_samples=2, seed=5)
    expected = float(to_numpy(metrics.bits_per_dim(got["iwae_nll_nats"], 64, num_bins=256)))
    np.testing.assert_allclose(got["iwae_nll_bits_per_dim"], expected, rtol=1e-5)
    assert got["iwae_nll_bits_per_dim"] > 0


def test_bad_inputs_are_named():
    model = tiny_vqvae()
    with pytest.raises(TypeError, match="vqvae"):
        evaluation.dataset_code_usage(tiny_vae(), held_out())
    with pytest.raises(TypeError, match="data"):
        evaluation.evaluate_reconstructions(model, [1, 2, 3])
    with pytest.raises(ValueError, match="data"):
        evaluation.evaluate_reconstructions(model, np.zeros((0, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="batch_size"):
        evaluation.evaluate_reconstructions(model, held_out(), batch_size=0)
    with pytest.raises(ValueError, match="seed"):
        evaluation.evaluate_likelihood(tiny_vae(), held_out(), seed=-1)
