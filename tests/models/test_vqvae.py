import keras
import numpy as np
import pytest

from keras_vq.layers import VectorQuantizer
from keras_vq.models import VQVAE
from tests.test_case import TestCase, to_numpy


def tiny_vqvae(**kwargs):
    kwargs.setdefault("num_embeddings", 16)
    kwargs.setdefault("embedding_dim", 4)
    return VQVAE(input_shape=(8, 8, 1), filters=(8, 8), **kwargs)


class TestVQVAE(TestCase):
    @pytest.mark.parametrize("ema_decay", [None, 0.9])
    def test_fit_lowers_loss_and_logs_terms(self, digits, ema_decay):
        images = digits[0][:512]
        model = tiny_vqvae(ema_decay=ema_decay, dead_code_threshold=0.01, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = model.fit(images, epochs=4, batch_size=64, verbose=0).history
        assert set(history) >= {"loss", "reconstruction_loss", "vq_loss", "perplexity"}
        assert history["loss"][-1] < 0.6 * history["loss"][0]
        assert history["perplexity"][-1] > 1.5
        logs = model.evaluate(images, batch_size=64, verbose=0, return_dict=True)
        # The VQ term added with add_loss reaches the loss on every backend (JAX included).
        assert logs["loss"] == pytest.approx(
            logs["reconstruction_loss"] + logs["vq_loss"], rel=1e-4
        )
        assert logs["vq_loss"] > 0

    def test_ema_codebook_is_updated_by_fit(self, digits):
        model = tiny_vqvae(ema_decay=0.9)
        before = to_numpy(model.quantizer.codebook).copy()
        model.compile(optimizer="adam")
        model.fit(digits[0][:128], epochs=1, batch_size=32, verbose=0)
        after = to_numpy(model.quantizer.codebook)
        assert not np.allclose(before, after)
        assert not model.quantizer.codebook.trainable
        assert np.all(np.isfinite(after))

    def test_encode_decode_contract(self, digits):
        model = tiny_vqvae()
        assert isinstance(model.quantizer, VectorQuantizer)
        codes = model.encode(digits[0][:3])
        assert tuple(codes.shape) == (3, 2, 2)
        assert keras.backend.standardize_dtype(codes.dtype) == "int32"
        images = model.decode(codes)
        assert tuple(images.shape) == (3, 8, 8, 1)
        self.assertAllClose(images, model(digits[0][:3]), atol=1e-5)

    def test_decode_rejects_bad_codes(self):
        model = tiny_vqvae()
        with pytest.raises(TypeError, match="indices"):
            model.decode(np.zeros((1, 2, 2), "float32"))
        with pytest.raises(ValueError, match="num_embeddings"):
            model.decode(np.full((1, 2, 2), 16, "int32"))
        with pytest.raises(ValueError, match="codes"):
            model.decode(np.zeros((1, 3, 3), "int32"))

    def test_wrong_input_shape_raises(self):
        model = tiny_vqvae()
        with pytest.raises(ValueError, match=r"images.*\(batch, 8, 8, 1\)"):
            model.encode(np.zeros((2, 9, 9, 1), "float32"))
        model.compile(optimizer="adam")
        with pytest.raises(ValueError, match="images"):
            model.fit(np.zeros((4, 8, 8, 3), "float32"), epochs=1, verbose=0)

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"input_shape": (10, 10, 1)}, ValueError, "divisible by 4"),
            ({"input_shape": (8, 8)}, ValueError, "input_shape"),
            ({"input_shape": (8, 8, 1), "num_embeddings": 0}, ValueError, "num_embeddings"),
            ({"input_shape": (8, 8, 1), "beta": -1.0}, ValueError, "beta"),
            ({"input_shape": (8, 8, 1), "ema_decay": 2.0}, ValueError, "ema_decay"),
            ({}, ValueError, "input_shape"),
        ],
    )
    def test_bad_arguments_raise(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            VQVAE(**kwargs)

    def test_save_load_round_trip(self, digits, tmp_path):
        model = tiny_vqvae(ema_decay=0.9)
        model.compile(optimizer="adam")
        model.fit(digits[0][:64], epochs=1, batch_size=32, verbose=0)
        revived = self.run_model_saving_test(model, digits[0][:8], tmp_path)
        assert revived.get_config() == model.get_config()
        np.testing.assert_array_equal(
            to_numpy(revived.encode(digits[0][:8])), to_numpy(model.encode(digits[0][:8]))
        )

    def test_custom_encoder_decoder(self, digits, tmp_path):
        encoder = keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 2, strides=2)], name="enc"
        )
        decoder = keras.Sequential(
            [keras.Input((4, 4, 3)), keras.layers.Conv2DTranspose(1, 2, strides=2)], name="dec"
        )
        model = VQVAE(num_embeddings=8, embedding_dim=3, encoder=encoder, decoder=decoder)
        assert model.image_shape == (8, 8, 1)
        assert tuple(model.encode(digits[0][:2]).shape) == (2, 4, 4)
        model.compile(optimizer="adam")
        model.fit(digits[0][:64], epochs=1, batch_size=32, verbose=0)
        self.run_model_saving_test(model, digits[0][:4], tmp_path)

    def test_encoder_with_wrong_channels_raises(self):
        encoder = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(5, 1)])
        decoder = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(1, 1)])
        with pytest.raises(ValueError, match="embedding_dim=4"):
            VQVAE(embedding_dim=4, encoder=encoder, decoder=decoder)

    def test_set_random_seed_makes_training_repeatable(self, digits):
        def train():
            keras.utils.set_random_seed(7)
            model = tiny_vqvae(ema_decay=0.9, dead_code_threshold=0.5, seed=1)
            model.compile(optimizer="adam")
            model.fit(digits[0][:96], epochs=1, batch_size=32, shuffle=True, verbose=0)
            return [to_numpy(w) for w in model.weights]

        for a, b in zip(train(), train()):
            np.testing.assert_array_equal(a, b)


def records_gradient(x) -> bool:
    """Whether ``x`` carries an autograd graph (only torch tensors can)."""
    return bool(getattr(x, "requires_grad", False))


class TestVQVAEInputs(TestCase):
    def test_encode_and_decode_record_no_gradients(self, digits):
        model = tiny_vqvae()
        rng = np.random.default_rng(0)
        for variable in model.weights:  # biases too: nothing starts at a special value
            variable.assign(rng.normal(scale=0.3, size=tuple(variable.shape)).astype("float32"))
        images = digits[0][:3]
        codes = model.encode(images)
        plain_encode = type(model).encode.__wrapped__
        np.testing.assert_array_equal(to_numpy(codes), to_numpy(plain_encode(model, images)))
        assert len(np.unique(to_numpy(codes))) > 1
        decoded = model.decode(codes)
        reference = type(model).decode.__wrapped__(model, codes)
        np.testing.assert_allclose(to_numpy(decoded), to_numpy(reference), atol=1e-6)
        assert not records_gradient(decoded) and not records_gradient(codes)
        if keras.backend.backend() == "torch":
            assert records_gradient(reference)  # what the decorator turns off

    @pytest.mark.parametrize("dtype", ["uint8", "int16"])
    def test_integer_images_are_rejected_everywhere(self, digits, dtype):
        model = tiny_vqvae()
        images = np.round(digits[0][:8] * 255).astype(dtype)
        match = rf"`images`.*dtype {dtype}.*scale to \[0, 1\], e\.g\. images / 255"
        for call in (model.encode, model, lambda x: model(keras.ops.convert_to_tensor(x))):
            with pytest.raises(TypeError, match=match):
                call(images)
        model.compile(optimizer="adam")
        with pytest.raises(TypeError, match=match):
            model.fit(images, batch_size=4, epochs=1, verbose=0)
        with pytest.raises(TypeError, match=match):
            model.predict(images, batch_size=4, verbose=0)

    def test_float_images_of_any_range_are_accepted(self, digits):
        # Squared error is defined on any real pixels, e.g. [-1, 1]; only dtypes are checked.
        model = tiny_vqvae()
        images = digits[0][:4] * 2.0 - 1.0
        self.assertAllClose(model(images), model.decode(model.encode(images)), atol=1e-5)
