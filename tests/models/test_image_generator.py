"""ImageGenerator: the two stages as one model draw what ``models.generate`` draws, and keep
doing so through ``.keras`` files, presets and the exported SavedModel."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_vq.layers import ResidualVectorQuantizer
from keras_vq.models import (
    VQVAE,
    ImageGenerator,
    PixelCNNPrior,
    TransformerPrior,
    generate,
)
from keras_vq.models._prior import _TINY
from tests.test_case import to_numpy

K = 8
IMAGE_SHAPE = (8, 8, 1)


def randomize(model, seed):
    """Every weight random and non-zero (zero biases would hide a dropped term); NumPy, so
    the same weights on every backend."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        scale = 0.5 if len(variable.shape) == 1 else 1.5
        variable.assign(rng.normal(scale=scale, size=tuple(variable.shape)).astype("float32"))


def tiny_vqvae(seed=0):
    vqvae = VQVAE(input_shape=IMAGE_SHAPE, num_embeddings=K, embedding_dim=4, filters=(4,))
    randomize(vqvae, seed)
    return vqvae


def tiny_pixelcnn(num_classes=None, label_dropout=0.0, guidance_scale=None, top_p=None, seed=1):
    prior = PixelCNNPrior(
        K,
        (4, 4),
        num_layers=2,
        filters=4,
        kernel_size=3,
        num_classes=num_classes,
        label_dropout=label_dropout,
        guidance_scale=guidance_scale,
        top_p=top_p,
    )
    randomize(prior, seed)
    return prior


def tiny_transformer(seed=3):
    prior = TransformerPrior(K, (4, 4), num_layers=2, num_heads=2, hidden_dim=8, num_classes=3)
    randomize(prior, seed)
    return prior


@pytest.fixture(scope="module")
def generators():
    vqvae = tiny_vqvae()
    return {
        "plain": ImageGenerator(vqvae, tiny_pixelcnn()),
        # label dropout gives a null label; the prior's own default guidance scale is 2 and
        # its own nucleus mass 0.8.
        "guided": ImageGenerator(
            vqvae,
            tiny_pixelcnn(num_classes=3, label_dropout=0.2, guidance_scale=2.0, top_p=0.8, seed=2),
        ),
        "transformer": ImageGenerator(vqvae, tiny_transformer()),
    }


LABELS = [0, 2, 1, 2, 0]
CASES = {
    "plain": dict(num_samples=5, temperature=1.3, top_k=6, seed=4),
    "guided": dict(labels=LABELS, top_p=0.8, seed=5, batch_size=2),
    "transformer": dict(labels=LABELS, temperature=0.9, seed=6),
}


def assert_same(a, b):
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("kind", list(CASES))
def test_draws_equal_models_generate(generators, kind):
    generator, arguments = generators[kind], dict(CASES[kind])
    images = generator.generate(**arguments)
    num_samples = arguments.pop("num_samples", len(LABELS))
    expected = generate(generator.vqvae, generator.prior, num_samples, **arguments)
    assert tuple(images.shape) == (5, *IMAGE_SHAPE)
    assert_same(images, expected)
    codes = generator.generate_codes(**CASES[kind])
    assert len(np.unique(to_numpy(codes))) > 2  # random weights: not one repeated code
    assert_same(codes, generator.prior.sample(num_samples, **arguments))
    assert_same(images, generator.vqvae.decode(codes))


def test_guidance_and_top_p_none_take_the_prior_defaults(generators):
    generator = generators["guided"]
    default = generator.generate_codes(labels=LABELS, seed=5)
    explicit = generator.prior.sample(5, labels=LABELS, seed=5, guidance_scale=2.0, top_p=0.8)
    assert_same(default, explicit)
    assert_same(generator.generate(labels=LABELS, seed=5), generator.vqvae.decode(explicit))
    # guidance_scale=1.0 turns guidance off for one call (top_p=1.0 the nucleus: see
    # test_guidance.py and the exported sampler below); the default mattered.
    plain = generator.generate_codes(labels=LABELS, seed=5, guidance_scale=1.0)
    assert not np.array_equal(to_numpy(default), to_numpy(plain))


def test_tracks_both_stages_and_reconstructs(generators):
    generator = generators["guided"]
    assert len(generator.weights) == len(generator.vqvae.weights) + len(generator.prior.weights)
    images = np.random.default_rng(0).random((2, *IMAGE_SHAPE), dtype="float32")
    assert_same(generator.reconstruct(images), generator.vqvae(images, training=False))


def test_config_round_trip(generators):
    generator = generators["transformer"]
    config = generator.get_config()
    assert config["prior"]["class_name"] == "TransformerPrior"
    rebuilt = ImageGenerator.from_config(config)
    assert isinstance(rebuilt.prior, TransformerPrior) and isinstance(rebuilt.vqvae, VQVAE)
    assert rebuilt.prior.get_config() == generator.prior.get_config()


def test_keras_file_round_trip_in_safe_mode(generators, tmp_path):
    generator = generators["guided"]
    path = tmp_path / "generator.keras"
    generator.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, ImageGenerator)
    assert (loaded.prior.guidance_scale, loaded.prior.top_p) == (2.0, 0.8)
    assert_same(loaded.generate(**CASES["guided"]), generator.generate(**CASES["guided"]))


def test_preset_round_trip(generators, tmp_path):
    generator = generators["transformer"]
    generator.save_to_preset(tmp_path / "preset")
    files = sorted(p.name for p in (tmp_path / "preset").iterdir())
    assert files == ["config.json", "metadata.json", "model.weights.h5"]
    loaded = ImageGenerator.from_preset(tmp_path / "preset")
    assert_same(
        loaded.generate(**CASES["transformer"]), generator.generate(**CASES["transformer"])
    )


def test_from_bundled_prior_preset_pairs_it_with_its_vqvae():
    # Only the names and the wiring: the bundled presets' numbers are not fixed here.
    from keras_vq import presets

    generator = ImageGenerator.from_preset("pixelcnn_digits")
    vqvae, prior = presets.load_pair("pixelcnn_digits")
    assert generator.prior.get_config() == prior.get_config()
    assert generator.vqvae.get_config() == vqvae.get_config()
    labels = list(range(prior.num_classes or 0)) or None
    arguments = dict(labels=labels, seed=0) if labels else dict(num_samples=2, seed=0)
    expected = generate(vqvae, prior, len(labels) if labels else 2, **arguments)
    assert_same(generator.generate(**arguments), expected)


def test_bad_arguments(generators, tmp_path):
    plain, guided = generators["plain"], generators["guided"]
    with pytest.raises(ValueError, match="num_samples"):
        guided.generate()
    with pytest.raises(ValueError, match="num_samples"):
        guided.generate(labels=1)
    with pytest.raises(ValueError, match="num_samples"):
        plain.generate(num_samples=0)
    with pytest.raises(ValueError, match="labels"):
        plain.generate(labels=[0, 1])  # an unconditional prior
    with pytest.raises(ValueError, match="guidance_scale"):
        plain.generate(3, guidance_scale=2.0)  # no null label
    with pytest.raises(ValueError, match="top_k"):
        plain.generate_codes(3, top_k=K + 1)
    with pytest.raises(ValueError, match="format"):
        plain.export(tmp_path / "x.onnx", format="onnx")
    with pytest.raises(ValueError, match="latent_shape"):
        ImageGenerator(plain.vqvae, PixelCNNPrior(K, (3, 4), num_layers=1, filters=4))
    with pytest.raises(ValueError, match="num_embeddings"):
        ImageGenerator(plain.vqvae, PixelCNNPrior(K + 1, (4, 4), num_layers=1, filters=4))
    with pytest.raises(TypeError, match="prior"):
        ImageGenerator(plain.vqvae, plain.vqvae)
    rvq = VQVAE(
        input_shape=IMAGE_SHAPE,
        num_embeddings=K,
        embedding_dim=4,
        filters=(4,),
        quantizer=ResidualVectorQuantizer(2, K, 4),
    )
    with pytest.raises(ValueError, match="single-index quantizer"):
        ImageGenerator(rvq, plain.prior)


@pytest.fixture(scope="module")
def exported(generators, tmp_path_factory):
    generator = generators["guided"]
    path = generator.export(tmp_path_factory.mktemp("export") / "generator", top_k=6)
    return generator, path


def test_exported_sampler_equals_in_process(exported):
    import tensorflow as tf

    generator, path = exported
    labels = np.array(LABELS, "int32")
    served = tf.saved_model.load(path).signatures["sample_seeded"](
        num_samples=tf.constant(5), seed=tf.constant(7), labels=tf.constant(labels)
    )
    codes = served["codes"].numpy()
    assert len(np.unique(codes)) > 2
    # The prior's default guidance and nucleus and the top_k were fixed into the artifact.
    options = dict(labels=LABELS, top_k=6, seed=7)
    if keras.backend.backend() == "tensorflow":  # the same RNG as prior.sample(seed=7)
        assert_same(codes, generator.generate_codes(**options))
        np.testing.assert_allclose(
            served["images"].numpy(),
            to_numpy(generator.generate(**options)),
            rtol=1e-5,
            atol=1e-5,
        )
    # Any backend: the prior's own sampler on the noise TensorFlow draws for seed 7.
    noise = tf.random.stateless_uniform((5, 4, 4, K), seed=[7, 0], minval=_TINY, maxval=1.0)

    def sampler(**options):
        return generator.prior._sample_from_uniform(noise.numpy(), 1.0, labels, **options)

    assert_same(codes, sampler(top_k=6, top_p=0.8, guidance_scale=2.0))
    # The stored nucleus mattered: without it, other codes.
    assert not np.array_equal(codes, to_numpy(sampler(top_k=6, guidance_scale=2.0)))
    np.testing.assert_allclose(
        served["images"].numpy(),
        to_numpy(generator.vqvae.decode(codes)),
        rtol=1e-5,
        atol=1e-5,
    )
