"""Mixed precision on every backend: loss scaling in our own train_step, float32 VQ state."""

import keras
import numpy as np
import pytest

from keras_vq.models import VAE, VQVAE
from tests.test_case import to_numpy


def tiny_vqvae(**kwargs):
    return VQVAE(
        input_shape=(8, 8, 1), num_embeddings=16, embedding_dim=4, filters=(8, 8), **kwargs
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_vqvae_trains_with_float32_quantizer_state(digits, policy, ema_decay):
    keras.config.set_dtype_policy(policy)
    model = tiny_vqvae(ema_decay=ema_decay, dead_code_threshold=0.01, seed=0)
    model.compile(optimizer="adam")
    is_lso = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_lso == (policy == "mixed_float16")
    history = model.fit(digits[0][:128], epochs=2, batch_size=32, verbose=0).history
    for name in ("loss", "reconstruction_loss", "vq_loss", "perplexity"):
        assert np.all(np.isfinite(history[name])), name
    quantizer = model.quantizer
    assert keras.backend.standardize_dtype(quantizer.codebook.dtype) == "float32"
    if ema_decay:
        assert keras.backend.standardize_dtype(quantizer.ema_sum.dtype) == "float32"
        assert keras.backend.standardize_dtype(quantizer.ema_cluster_size.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(quantizer.codebook)))
    # Documented dtypes: float32 reconstructions (float32 output layer), int32 codes.
    assert keras.backend.standardize_dtype(model(digits[0][:4]).dtype) == "float32"
    assert keras.backend.standardize_dtype(model.encode(digits[0][:4]).dtype) == "int32"


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_vae_trains_under_policy(digits, policy):
    keras.config.set_dtype_policy(policy)
    model = VAE(input_shape=(8, 8, 1), latent_dim=4, filters=(8,))
    model.compile(optimizer="adam")
    history = model.fit(digits[0][:128], epochs=2, batch_size=32, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    z_mean, _ = model.encode(digits[0][:2])
    assert keras.backend.standardize_dtype(z_mean.dtype) == "float32"


def _one_sgd_update(digits, policy):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = tiny_vqvae()
    before = [to_numpy(w).copy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(digits[0][:32], epochs=1, batch_size=32, shuffle=False, verbose=0)
    return [to_numpy(w) - b for w, b in zip(model.trainable_weights, before)]


def test_loss_scale_is_undone_so_updates_match_float32(digits):
    """Forgetting ``scale_loss`` (or unscaling twice) would change the update 32768-fold."""
    reference = _one_sgd_update(digits, "float32")
    mixed = _one_sgd_update(digits, "mixed_float16")
    for ref, got in zip(reference, mixed):
        scale = np.abs(ref).max()
        if scale > 1e-6:
            np.testing.assert_allclose(got, ref, atol=0.05 * scale)


def test_loss_scale_adapts_after_overflow(digits):
    keras.config.set_dtype_policy("mixed_float16")
    model = tiny_vqvae(ema_decay=0.9)
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(1e-3), initial_scale=2.0**40
    )
    model.compile(optimizer=optimizer)
    before = [to_numpy(w).copy() for w in model.trainable_weights]
    model.fit(digits[0][:32], epochs=1, batch_size=32, verbose=0)
    # The float16 gradients overflowed: the step is skipped and the scale halved.
    assert float(to_numpy(optimizer.dynamic_scale)) < 2.0**40
    for b, w in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(b, to_numpy(w))
    assert np.all(np.isfinite(to_numpy(model.quantizer.codebook)))
