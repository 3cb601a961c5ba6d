"""VQVAE(quantizer=...): every quantizer type trains, codes, decodes, saves, exports, generates."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_vq.export import export_generator, export_saved_model
from keras_vq.layers import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from keras_vq.models import VQVAE, PixelCNNPrior, generate
from tests.test_case import to_numpy

IMAGE_SHAPE = (8, 8, 1)
LATENT = (4, 4)
ATOL = 1e-5

# kind → (quantizer factory, num_embeddings, embedding_dim, code_shape, VQVAE kwargs)
KINDS = {
    "vq": (lambda: VectorQuantizer(8, 4, ema_decay=0.9), 8, 4, LATENT, {}),
    "rvq": (
        lambda: ResidualVectorQuantizer(3, 8, 4, quantize_dropout=True, seed=2),
        8,
        4,
        (*LATENT, 3),
        {},
    ),
    "fsq": (lambda: FiniteScalarQuantizer([3, 4]), 12, 2, LATENT, {}),
    # An unbuilt FSQ adapts to embedding_dim with a projection (6 → 2 channels → 6).
    "fsq_projected": (lambda: FiniteScalarQuantizer([3, 3]), 9, 6, LATENT, {"embedding_dim": 6}),
    "lfq": (lambda: LookupFreeQuantizer(num_bits=3), 8, 3, LATENT, {}),
}


def images(n=4, seed=0):
    """Centred pixels in [-1, 1]: sign (LFQ) and level (FSQ) codes then vary between pixels."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (n, *IMAGE_SHAPE)).astype("float32")


def randomize(model, seed=0):
    """Every trainable weight (biases too) random and non-zero, and every codebook random
    (through ``set_codebook``, which keeps EMA statistics consistent)."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        # Small enough that FSQ/LFQ channels do not all saturate at one level.
        scale = 0.2 if len(variable.shape) == 1 else 0.4
        variable.assign(rng.normal(scale=scale, size=tuple(variable.shape)).astype("float32"))
    quantizer = getattr(model, "quantizer", None)
    for layer in [quantizer, *getattr(quantizer, "quantizers", [])]:
        if hasattr(layer, "set_codebook"):
            shape = tuple(layer.codebook.shape)
            layer.set_codebook(rng.normal(size=shape).astype("float32"))


def build(kind, seed=0, **kwargs):
    factory, _, _, _, extra = KINDS[kind]
    model = VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=factory(), **extra, **kwargs)
    randomize(model, seed)
    return model


@pytest.mark.parametrize("kind", list(KINDS))
def test_sizes_come_from_the_quantizer(kind):
    _, num_embeddings, embedding_dim, code_shape, _ = KINDS[kind]
    model = build(kind)
    assert model.num_embeddings == num_embeddings == model.quantizer.codebook_size
    assert model.embedding_dim == embedding_dim
    assert tuple(model.latent_shape) == LATENT and tuple(model.code_shape) == code_shape
    assert model.encoder.output.shape[-1] == embedding_dim


@pytest.mark.parametrize("kind", list(KINDS))
def test_fit_logs_the_quantizer_loss_and_perplexity(kind):
    model = build(kind)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images(8), batch_size=4, epochs=1, verbose=0).history
    assert set(history) == {"loss", "reconstruction_loss", "vq_loss", "perplexity"}
    logs = {key: values[-1] for key, values in history.items()}
    assert all(np.isfinite(value) for value in logs.values()), logs
    assert 1.0 - 1e-4 <= logs["perplexity"] <= model.num_embeddings + 1e-4, logs
    if kind.startswith("fsq"):
        assert logs["vq_loss"] == 0.0
    else:
        assert logs["vq_loss"] != 0.0
    np.testing.assert_allclose(
        logs["loss"], logs["reconstruction_loss"] + logs["vq_loss"], rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_encode_decode_equal_the_quantizer_path_of_call(kind):
    model = build(kind)
    x = images()
    codes = model.encode(x)
    assert keras.backend.standardize_dtype(codes.dtype) == "int32"
    assert tuple(codes.shape) == (4, *model.code_shape)
    codes = to_numpy(codes)
    assert codes.min() >= 0 and codes.max() < model.num_embeddings
    # Independent path: the quantizer's call on the encoder output, asked for its indices.
    z_e = model.encoder(x, training=False)
    z_q, indices = model.quantizer(z_e, training=False, return_indices=True)
    np.testing.assert_array_equal(codes, to_numpy(indices))
    reconstruction = to_numpy(model(x, training=False))
    np.testing.assert_allclose(to_numpy(model.decode(codes)), reconstruction, atol=ATOL)
    np.testing.assert_allclose(to_numpy(model.decoder(z_q)), reconstruction, atol=ATOL)
    # Random weights spread the codes: a constant code would hide an index mix-up.
    assert len(np.unique(codes)) > 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_keras_file_round_trip_gives_identical_outputs(kind, tmp_path):
    model = build(kind)
    model.compile(optimizer="adam")
    model.fit(images(8), batch_size=4, epochs=1, verbose=0)  # EMA / k-means state moves
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.quantizer) is type(model.quantizer)
    assert loaded.num_embeddings == model.num_embeddings
    assert loaded.embedding_dim == model.embedding_dim
    # As JSON (the .keras file's form: tuples become lists).
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(
        json.dumps(model.get_config())
    )
    x = images(seed=1)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    np.testing.assert_array_equal(to_numpy(loaded.encode(x)), to_numpy(model.encode(x)))


def test_built_quantizer_fixes_embedding_dim():
    quantizer = LookupFreeQuantizer(num_bits=3)
    quantizer.build((None, 5))  # projects 5 → 3 → 5
    model = VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=quantizer)
    assert (model.num_embeddings, model.embedding_dim) == (8, 5)
    with pytest.raises(ValueError, match=r"`embedding_dim`=3 contradicts `quantizer`.*5 chan"):
        VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=quantizer, embedding_dim=3)


def test_options_of_the_default_quantizer_are_reported():
    model = build("rvq")
    assert (model.beta, model.ema_decay, model.dead_code_threshold, model.seed) == (
        0.25,
        None,
        0.0,
        2,
    )
    model = build("fsq", seed=0)
    assert (model.beta, model.ema_decay, model.dead_code_threshold, model.seed) == (None,) * 4
    # Nothing random in an FSQ: the model keeps its seed (the recipes always pass one).
    model = VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=KINDS["fsq"][0](), seed=5)
    assert model.seed == 5


@pytest.mark.parametrize(
    "quantizer, kwargs, error, match",
    [
        (FiniteScalarQuantizer([3, 4]), {"num_embeddings": 128}, ValueError, "codebook_size=12"),
        (VectorQuantizer(8, 4), {"embedding_dim": 16}, ValueError, "inputs with 4 channels"),
        (ResidualVectorQuantizer(2, 8, 4), {"embedding_dim": 2}, ValueError, "4 channels"),
        (FiniteScalarQuantizer([3, 4]), {"beta": 0.5}, ValueError, "has no beta"),
        (VectorQuantizer(8, 4, ema_decay=0.99), {"ema_decay": 0.95}, ValueError, "0.99"),
        (LookupFreeQuantizer(num_bits=3), {"dead_code_threshold": 2.0}, ValueError, "has no"),
        (VectorQuantizer(8, 4, seed=1), {"seed": 2}, ValueError, "seed=1"),
        (FiniteScalarQuantizer([3, 4]), {"num_embeddings": 0}, ValueError, "num_embeddings"),
        ("fsq", {}, TypeError, "`quantizer` must be a quantizer layer"),
        (keras.layers.Dense(4), {}, TypeError, "Dense"),
    ],
)
def test_contradicting_arguments_are_named(quantizer, kwargs, error, match):
    with pytest.raises(error, match=match):
        VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=quantizer, **kwargs)


def test_passing_the_quantizer_own_values_is_allowed():
    quantizer = VectorQuantizer(8, 4, beta=0.5, ema_decay=0.9, dead_code_threshold=1.0, seed=3)
    model = VQVAE(
        input_shape=IMAGE_SHAPE,
        filters=(4,),
        quantizer=quantizer,
        num_embeddings=8,
        embedding_dim=4,
        beta=0.5,
        ema_decay=0.9,
        dead_code_threshold=1.0,
        seed=3,
    )
    assert (model.beta, model.ema_decay, model.dead_code_threshold, model.seed) == (
        0.5,
        0.9,
        1.0,
        3,
    )


def test_decode_checks_the_code_shape_and_range():
    rvq = build("rvq")
    codes = to_numpy(rvq.encode(images()))
    with pytest.raises(ValueError, match=r"`codes` must have shape \(batch, 4, 4, 3\)"):
        rvq.decode(codes[..., 0])
    with pytest.raises(ValueError, match="indices"):
        rvq.decode(np.full_like(codes, 8))
    # Fewer stages are not a VQVAE code (the quantizer's num_stages is its own business).
    with pytest.raises(ValueError, match="must have shape"):
        rvq.decode(codes[..., :2])
    fsq = build("fsq")
    with pytest.raises(ValueError, match=r"\(batch, 4, 4\)"):
        fsq.decode(codes)
    with pytest.raises(ValueError):
        fsq.decode(np.full((1, *LATENT), 12, "int32"))
    with pytest.raises(TypeError):
        fsq.decode(np.zeros((1, *LATENT), "float32"))


def reference_perplexity(codes, k):
    """NumPy: per stage, skip -1 (dropped), exp(entropy of usage); mean over active stages."""
    values = []
    for s in range(codes.shape[-1]):
        stage = codes[..., s].ravel()
        stage = stage[stage >= 0]
        if stage.size == 0:
            continue
        p = np.bincount(stage, minlength=k) / stage.size
        p = p[p > 0]
        values.append(np.exp(-np.sum(p * np.log(p))))
    return np.mean(values)


def test_residual_perplexity_is_the_mean_over_active_stages():
    model = build("rvq")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, size=(5, *LATENT, 3)).astype("int32")
    codes[..., 1] = rng.integers(0, 3, size=(5, *LATENT))  # a stage using fewer codes
    codes[..., 2] = -1  # dropped by quantize_dropout
    got = float(to_numpy(model._perplexity(keras.ops.convert_to_tensor(codes))))
    np.testing.assert_allclose(got, reference_perplexity(codes, 8), rtol=1e-4)
    assert got < 8


def tiny_prior(num_embeddings, latent_shape=LATENT):
    prior = PixelCNNPrior(num_embeddings, latent_shape, num_layers=1, filters=4, kernel_size=3)
    randomize(prior, seed=5)
    return prior


def test_generate_decodes_the_prior_codes_of_an_fsq_vqvae():
    vqvae, prior = build("fsq"), tiny_prior(12)
    generated = to_numpy(generate(vqvae, prior, 3, temperature=1.0, seed=4))
    codes = prior.sample(3, temperature=1.0, seed=4)
    assert to_numpy(codes).max() < 12
    np.testing.assert_allclose(generated, to_numpy(vqvae.decode(codes)), atol=ATOL)


def test_generate_and_export_generator_refuse_mismatches(tmp_path):
    with pytest.raises(ValueError, match="one code per position"):
        generate(build("rvq"), tiny_prior(8), 2)
    with pytest.raises(ValueError, match="one code per stage"):
        export_generator(build("rvq"), tiny_prior(8), str(tmp_path / "g"))
    with pytest.raises(ValueError, match="num_embeddings=12"):
        generate(build("fsq"), tiny_prior(8), 2)
    with pytest.raises(ValueError, match="num_embeddings=12"):
        export_generator(build("fsq"), tiny_prior(8), str(tmp_path / "g"))
    with pytest.raises(ValueError, match="latent_shape"):
        generate(build("fsq"), tiny_prior(12, (2, 2)), 2)
    assert not (tmp_path / "g").exists()


@pytest.mark.subprocess
def test_exports_serve_what_the_keras_models_compute(tmp_path):
    """One export per quantizer family that changes the signatures (residual codes) or the
    code range (FSQ, LFQ), and the FSQ generator; loaded with plain TensorFlow."""
    import tensorflow as tf

    x = images(3, seed=7)
    for kind in ("rvq", "lfq"):
        model = build(kind)
        path = export_saved_model(model, str(tmp_path / kind))
        served = tf.saved_model.load(path)
        codes = served.signatures["encode"](images=tf.constant(x))["codes"].numpy()
        assert codes.dtype == np.int32 and codes.shape == (3, *model.code_shape)
        np.testing.assert_array_equal(codes, to_numpy(model.encode(x)))
        decoded = served.signatures["decode"](codes=tf.constant(codes))["images"].numpy()
        np.testing.assert_allclose(decoded, to_numpy(model.decode(codes)), atol=ATOL)
        served_images = served.signatures["serving_default"](images=tf.constant(x))["images"]
        np.testing.assert_allclose(served_images.numpy(), to_numpy(model(x)), atol=ATOL)
        bad = codes.copy()
        bad.flat[0] = model.num_embeddings
        with pytest.raises(tf.errors.InvalidArgumentError, match="num_embeddings=8"):
            served.signatures["decode"](codes=tf.constant(bad))
        if kind == "rvq":
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(batch, 4, 4, 3\)"):
                served.signatures["decode"](codes=tf.constant(codes[..., :2]))

    vqvae, prior = build("fsq"), tiny_prior(12)
    path = export_generator(vqvae, prior, str(tmp_path / "generator"), temperature=0.0)
    served = tf.saved_model.load(path)
    outputs = served.signatures["sample_seeded"](num_samples=tf.constant(2), seed=tf.constant(1))
    codes = outputs["codes"].numpy()
    np.testing.assert_array_equal(codes, to_numpy(prior.sample(2, temperature=0.0)))
    np.testing.assert_allclose(outputs["images"].numpy(), to_numpy(vqvae.decode(codes)), atol=ATOL)


def test_fsq_with_the_default_networks_trains_from_initialisation():
    """A fresh encoder's small outputs all round to FSQ's zero level, so the decoder first sees
    only zero vectors: its first layer must still pass a gradient back to the encoder (with
    zero biases its ReLU output was exactly 0 and the model never trained)."""
    keras.utils.set_random_seed(1)
    model = VQVAE(input_shape=(8, 8, 1), quantizer=FiniteScalarQuantizer([5, 5, 5]))
    x = np.random.default_rng(0).uniform(0.0, 1.0, (16, 8, 8, 1)).astype("float32")
    assert len(np.unique(to_numpy(model.encode(x)))) == 1  # the dead start it must escape
    before = [to_numpy(w).copy() for w in model.encoder.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.train_on_batch(x)
    changed = [
        not np.array_equal(to_numpy(w), b) for w, b in zip(model.encoder.trainable_weights, before)
    ]
    assert all(changed), [
        w.path for w, c in zip(model.encoder.trainable_weights, changed) if not c
    ]


@pytest.mark.parametrize(
    "quantizer, kwargs, match",
    [
        # An explicit value equal to the model's default still has to match the quantizer.
        (
            lambda: VectorQuantizer(8, 4, ema_decay=0.5),
            {"ema_decay": None},
            r"`ema_decay`=None contradicts `quantizer`: the VectorQuantizer has ema_decay=0\.5",
        ),
        (
            lambda: VectorQuantizer(8, 4),
            {"ema_decay": 0.7},
            r"`ema_decay`=0\.7 contradicts `quantizer`: the VectorQuantizer has ema_decay=None",
        ),
        (
            lambda: VectorQuantizer(8, 4),
            {"dead_code_threshold": 1.0},
            r"`dead_code_threshold`=1\.0 contradicts .* has dead_code_threshold=0\.0",
        ),
        (
            lambda: VectorQuantizer(8, 4),
            {"beta": 0.25, "seed": None, "ema_decay": 0.7},
            r"`ema_decay`=0\.7",
        ),
        (
            lambda: VectorQuantizer(8, 4, seed=3),
            {"seed": None},
            r"`seed`=None contradicts .* has seed=3",
        ),
        # A residual quantizer has the option (on its stages): not "has no ema_decay".
        (
            lambda: ResidualVectorQuantizer(2, 8, 4),
            {"ema_decay": 0.9},
            r"`ema_decay`=0\.9 contradicts `quantizer`: the ResidualVectorQuantizer has "
            r"ema_decay=None",
        ),
        (
            lambda: FiniteScalarQuantizer([3, 4]),
            {"beta": 0.25},
            r"`beta`=0\.25 contradicts `quantizer`: the FiniteScalarQuantizer has no beta",
        ),
    ],
)
def test_explicit_options_must_match_the_quantizer(quantizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=quantizer(), **kwargs)


def test_options_left_unset_come_from_the_quantizer_and_show_their_defaults():
    import inspect

    parameters = inspect.signature(VQVAE).parameters
    shown = {name: repr(parameters[name].default) for name, _ in vqvae_options()}
    assert shown == {
        "beta": "0.25",
        "ema_decay": "0.7",
        "dead_code_threshold": "1.0",
        "seed": "None",
    }
    quantizer = VectorQuantizer(8, 4, beta=0.5, ema_decay=0.5, seed=4)
    model = VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=quantizer)
    assert (model.beta, model.ema_decay, model.dead_code_threshold, model.seed) == (
        0.5,
        0.5,
        0.0,
        4,
    )
    # Its config passes every option explicitly, and matches: from_config rebuilds it.
    revived = VQVAE.from_config(model.get_config())
    assert revived.get_config() == model.get_config()
    # FSQ has none of them: the model reports None, and None passed back is accepted.
    fsq = VQVAE(input_shape=IMAGE_SHAPE, filters=(4,), quantizer=FiniteScalarQuantizer([3]))
    assert VQVAE.from_config(fsq.get_config()).get_config() == fsq.get_config()
    # Without a quantizer the defaults build the VectorQuantizer, as before.
    plain = VQVAE(input_shape=IMAGE_SHAPE, filters=(4,))
    assert (plain.beta, plain.ema_decay, plain.dead_code_threshold, plain.seed) == (
        0.25,
        0.7,
        1.0,
        None,
    )


def vqvae_options():
    from keras_vq.models.vqvae import QUANTIZER_OPTIONS

    return QUANTIZER_OPTIONS
