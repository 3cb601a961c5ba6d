"""The benchmarks' naive VQ-VAE baseline against NumPy transcriptions of the paper's equations."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from benchmarks.naive_vqvae import NaiveVQVAE
from keras_vq.models import networks
from tests.backend_grads import layer_gradients
from tests.test_case import to_numpy

BETA = 0.3


def randomize(model: keras.Model, seed: int) -> None:
    """Every weight, biases and codebook included, drawn at random (zeros hide bugs)."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(0.0, 0.5, w.shape).astype("float32") for w in model.get_weights()]
    )


def spread_codebook(model: NaiveVQVAE, z_e: np.ndarray, seed: int) -> np.ndarray:
    """Codes drawn near the encoder outputs (plus noise), so a batch uses several of them."""
    rng = np.random.default_rng(seed)
    picks = z_e[rng.choice(len(z_e), model.num_embeddings, replace=False)]
    codebook = (picks + rng.normal(0.0, 0.1, picks.shape)).astype("float32")
    model.codebook.assign(codebook)
    return codebook


def per_pixel_dense(shape, units: int, name: str) -> keras.Model:
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Dense(units)(inputs), name=name)


def nearest_codes(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Brute force: the index of the closest code of every row, distance by distance."""
    distances = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    return distances.argmin(axis=1)


def test_naive_vqvae_forward_matches_numpy_reference():
    encoder = networks.build_conv_encoder((8, 8, 1), 3, filters=(4,))
    decoder = networks.build_conv_decoder((4, 4, 3), 1, filters=(4,))
    model = NaiveVQVAE(encoder, decoder, num_embeddings=5, beta=BETA)
    randomize(model, seed=0)
    x = np.random.default_rng(1).random((3, 8, 8, 1)).astype("float32")

    z_e = to_numpy(encoder(x)).reshape(-1, 3)
    codebook = spread_codebook(model, z_e, seed=9)
    codes = nearest_codes(z_e, codebook)
    assert len(np.unique(codes)) > 1, "a one-code batch would not test the assignment"
    z_q = codebook[codes]

    np.testing.assert_array_equal(to_numpy(model.encode(x)), codes.reshape(3, 4, 4))
    out = to_numpy(model(x))
    np.testing.assert_allclose(out, to_numpy(decoder(z_q.reshape(3, 4, 4, 3))), atol=1e-5)
    # codebook term + β · commitment term; both equal mean((z_e - z_q)²) in value.
    expected_loss = (1.0 + BETA) * np.mean((z_e - z_q) ** 2)
    np.testing.assert_allclose(float(to_numpy(model.losses[0])), expected_loss, rtol=1e-5)


def test_naive_vqvae_gradients_are_straight_through_plus_vq_terms():
    """dL/dx goes through z_q as if quantisation were the identity; only the codebook term
    reaches the codebook. Per-pixel Dense networks keep the reference a few matrix products."""
    dim, k = 3, 6
    encoder = per_pixel_dense((2, 2, 2), dim, "encoder")
    decoder = per_pixel_dense((2, 2, dim), 2, "decoder")
    model = NaiveVQVAE(encoder, decoder, num_embeddings=k, beta=BETA)
    randomize(model, seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 2, 2, 2)).astype("float32")
    weight = rng.normal(size=(4, 2, 2, 2)).astype("float32")

    w_enc, b_enc, w_dec, _ = (to_numpy(v) for v in (*encoder.weights, *decoder.weights))
    z_e = x.reshape(-1, 2) @ w_enc + b_enc
    codebook = spread_codebook(model, z_e, seed=9)

    weight_tensor = keras.ops.convert_to_tensor(weight)
    _, grad_x, grads = layer_gradients(
        model, x, lambda out, losses: keras.ops.sum(out * weight_tensor) + losses[0]
    )

    codes = nearest_codes(z_e, codebook)
    z_q = codebook[codes]
    count = z_e.size
    grad_z = weight.reshape(-1, 2) @ w_dec.T + 2.0 * BETA * (z_e - z_q) / count
    np.testing.assert_allclose(grad_x, (grad_z @ w_enc.T).reshape(x.shape), atol=1e-5)
    expected_codebook_grad = np.zeros_like(codebook)
    np.add.at(expected_codebook_grad, codes, 2.0 * (z_q - z_e) / count)
    by_name = {v.path: g for v, g in zip(model.trainable_variables, grads)}
    codebook_grad = by_name[model.codebook.path]
    assert np.abs(expected_codebook_grad).max() > 1e-3
    np.testing.assert_allclose(codebook_grad, expected_codebook_grad, atol=1e-6)


def test_naive_vqvae_fit_step_moves_only_the_assigned_codes():
    encoder = networks.build_conv_encoder((8, 8, 1), 2, filters=(4,))
    decoder = networks.build_conv_decoder((4, 4, 2), 1, filters=(4,))
    model = NaiveVQVAE(encoder, decoder, num_embeddings=12)
    randomize(model, seed=4)
    x = np.random.default_rng(5).random((2, 8, 8, 1)).astype("float32")
    z_e = to_numpy(encoder(x)).reshape(-1, 2)
    before = spread_codebook(model, z_e, seed=9)
    codes = nearest_codes(z_e, before)
    unused = np.setdiff1d(np.arange(12), codes)
    assert unused.size, "some codes must stay unassigned for this test"

    learning_rate = 0.5
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    model.fit(x, x, batch_size=2, epochs=1, verbose=0, shuffle=False)

    expected = before.copy()
    np.add.at(expected, codes, -learning_rate * 2.0 * (before[codes] - z_e) / z_e.size)
    after = to_numpy(model.codebook)
    np.testing.assert_allclose(after, expected, atol=1e-5)
    np.testing.assert_array_equal(after[unused], before[unused])
    assert not np.allclose(after, before)


def test_naive_vqvae_rejects_a_bad_codebook_size():
    encoder = networks.build_conv_encoder((8, 8, 1), 2, filters=(4,))
    decoder = networks.build_conv_decoder((4, 4, 2), 1, filters=(4,))
    with pytest.raises(ValueError, match=r"num_embeddings.*got 0"):
        NaiveVQVAE(encoder, decoder, num_embeddings=0)
