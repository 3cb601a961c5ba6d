"""Bad input gets a clear error; a NaN batch never reaches the weights or the codebook."""

import os
import re

import keras
import numpy as np
import pytest

from keras_vq import data, saving
from keras_vq.layers import VectorQuantizer
from keras_vq.models import VAE, VQVAE
from tests.test_case import to_numpy


@pytest.fixture(scope="module")
def vqvae():
    return VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(8, 8))


@pytest.fixture(scope="module")
def vae():
    return VAE(input_shape=(8, 8, 1), latent_dim=3, filters=(8,))


def _nan_images():
    images = np.zeros((2, 8, 8, 1), "float32")
    images[1, 3, 3, 0] = np.nan
    return images


def _inf_images():
    images = np.zeros((2, 8, 8, 1), "float32")
    images[0, 0, 0, 0] = np.inf
    return images


BAD_CALLS = [
    # (description, callable(vqvae, vae), error, message pattern)
    (
        "wrong channel count",
        lambda q, v: q.encode(np.zeros((2, 8, 8, 3), "float32")),
        ValueError,
        r"images.*8, 8, 1",
    ),
    ("wrong rank", lambda q, v: q.encode(np.zeros((8, 8, 1), "float32")), ValueError, "images"),
    ("vae wrong rank", lambda q, v: v.encode(np.zeros((2, 64), "float32")), ValueError, "images"),
    ("float codes", lambda q, v: q.decode(np.zeros((1, 2, 2), "float32")), TypeError, "integer"),
    (
        "out-of-range codes",
        lambda q, v: q.decode(np.full((1, 2, 2), 8, "int32")),
        ValueError,
        r"\[0, 7\]",
    ),
    (
        "negative codes",
        lambda q, v: q.decode(np.full((1, 2, 2), -1, "int32")),
        ValueError,
        "codes|indices",
    ),
    (
        "codes of the wrong shape",
        lambda q, v: q.decode(np.zeros((1, 4), "int32")),
        ValueError,
        "codes",
    ),
    ("NaN images", lambda q, v: q.encode(_nan_images()), ValueError, "NaN or Inf"),
    ("Inf images", lambda q, v: v.encode(_inf_images()), ValueError, "NaN or Inf"),
    ("NaN latents", lambda q, v: v.decode(np.full((1, 3), np.nan, "float32")), ValueError, "z"),
    ("negative sample count", lambda q, v: v.sample(-1), ValueError, "num_samples"),
    ("float sample count", lambda q, v: v.sample(2.5), TypeError, "num_samples"),
    (
        "negative IWAE samples",
        lambda q, v: v.log_likelihood(np.zeros((1, 8, 8, 1), "float32"), num_samples=-3),
        ValueError,
        "num_samples",
    ),
    ("negative seed", lambda q, v: v.sample(2, seed=-1), ValueError, "seed"),
    ("negative codebook size", lambda q, v: VectorQuantizer(-4), ValueError, "num_embeddings"),
    (
        "negative latent size",
        lambda q, v: VAE(input_shape=(8, 8, 1), latent_dim=-2),
        ValueError,
        "latent_dim",
    ),
    ("negative image size", lambda q, v: VQVAE(input_shape=(-8, 8, 1)), ValueError, "input_shape"),
    (
        "negative filters",
        lambda q, v: VQVAE(input_shape=(8, 8, 1), filters=(8, -1)),
        ValueError,
        "filters",
    ),
    ("unknown dataset", lambda q, v: data.load("not_a_dataset"), ValueError, "digits"),
    ("bad batch size", lambda q, v: data.load("digits", batch_size=0), ValueError, "batch_size"),
]


@pytest.mark.parametrize(
    "call, error, match", [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS]
)
def test_bad_input_raises_a_clear_error(vqvae, vae, call, error, match):
    with pytest.raises(error, match=match):
        call(vqvae, vae)


def test_corrupted_keras_file_raises_a_value_error_naming_it(tmp_path, vqvae):
    # keras_vq.saving.load_model (tests/test_saving.py has the other kinds of damage).
    path = tmp_path / "model.keras"
    vqvae.save(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ValueError, match=f"{re.escape(repr(str(path)))} is not a valid"):
        saving.load_model(path)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=f"{re.escape(repr(str(garbage)))} is not a valid"):
        saving.load_model(garbage)


def test_truncated_weights_file_raises(tmp_path, vqvae):
    path = tmp_path / "checkpoint.weights.h5"
    vqvae.save_weights(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    fresh = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(8, 8))
    with pytest.raises((ValueError, OSError)):
        fresh.load_weights(path)


@pytest.mark.parametrize("model_name", ["vqvae_ema", "vqvae", "vae"])
def test_nan_batch_stops_training_without_poisoning_weights(tmp_path, digits, model_name):
    if model_name == "vae":
        model = VAE(input_shape=(8, 8, 1), latent_dim=3, filters=(8,))
    else:
        ema = 0.9 if model_name == "vqvae_ema" else None
        model = VQVAE(
            input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(8, 8), ema_decay=ema
        )
    model.compile(optimizer="adam")
    images = digits[0][:96].copy()
    model.fit(images[:32], epochs=1, batch_size=32, verbose=0)  # build the optimizer
    images[40, 2, 2, 0] = np.nan  # the second batch is corrupt
    history = model.fit(
        images,
        epochs=3,
        batch_size=32,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    ).history
    assert len(history["loss"]) == 1  # stopped in the first epoch
    for w in model.weights:
        assert np.all(np.isfinite(to_numpy(w))), w.path
    path = os.path.join(tmp_path, "after_nan.keras")
    model.save(path)
    revived = keras.saving.load_model(path)
    for w in revived.weights:
        assert np.all(np.isfinite(to_numpy(w))), w.path


# XLA (TF, JAX) and plain graphs take different guard code paths; torch's is eager only.
JIT_MODES = [False] if keras.backend.backend() == "torch" else [False, True]


@pytest.mark.parametrize("jit_compile", JIT_MODES)
def test_a_skipped_step_leaves_weights_and_optimizer_state_exactly_as_they_were(
    digits, jit_compile
):
    model = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(8, 8))
    model.compile(optimizer="adam", jit_compile=jit_compile)
    images = digits[0][:64].copy()
    model.fit(images[:32], epochs=1, batch_size=32, verbose=0)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    slots = [to_numpy(v).copy() for v in model.optimizer.variables]
    images[40, 2, 2, 0] = np.nan
    model.fit(images[32:], epochs=1, batch_size=32, verbose=0)
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(b, to_numpy(v), err_msg=v.path)
    for b, v in zip(slots, model.optimizer.variables):
        np.testing.assert_array_equal(b, to_numpy(v), err_msg=v.path)
    # ... and a finite batch afterwards trains again.
    model.fit(images[:32], epochs=1, batch_size=32, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 2


def test_update_guard_reads_the_gradients_and_lets_a_loss_scale_optimizer_see_overflow():
    model = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(8, 8))
    finite, inf = keras.ops.ones((3,)), keras.ops.convert_to_tensor([1.0, np.inf, 0.0])
    loss, nan_loss = keras.ops.convert_to_tensor(0.5), keras.ops.convert_to_tensor(np.nan)

    def safe(loss, grads):
        return bool(to_numpy(model._update_is_safe(loss, grads)))

    model.compile(optimizer="adam")
    assert safe(loss, [finite, None, finite])
    assert not safe(loss, [finite, inf])  # a finite loss with an overflowing gradient
    assert not safe(nan_loss, [finite, finite])
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()))
    assert safe(loss, [finite, inf])  # the optimizer skips it and lowers its scale
    assert safe(nan_loss, [finite, inf])
    assert not safe(nan_loss, [finite, finite])


def test_all_models_load_in_safe_mode(tmp_path, vqvae, vae):
    for name, model in (("vqvae", vqvae), ("vae", vae)):
        path = tmp_path / f"{name}.keras"
        model.save(path)
        revived = keras.saving.load_model(path, safe_mode=True)
        assert type(revived) is type(model)
