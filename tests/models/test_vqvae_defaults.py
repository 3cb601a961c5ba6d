"""VQVAE's constructor defaults (issue #17 §1; chosen by ``benchmarks/defaults.py``)."""

import keras
import numpy as np

from keras_vq.models import VQVAE
from tests.test_case import TestCase, to_numpy

OLD_DEFAULTS = {"ema_decay": None, "dead_code_threshold": 0.0, "beta": 0.25}


def tiny(**kwargs):
    return VQVAE(
        input_shape=(8, 8, 1), num_embeddings=32, embedding_dim=4, filters=(8, 8), **kwargs
    )


def codes_used(model, images) -> int:
    return len(np.unique(to_numpy(model.encode(images))))


class TestVQVAEDefaults(TestCase):
    def test_defaults_are_an_ema_codebook_with_restarts(self):
        model = tiny()
        assert (model.ema_decay, model.dead_code_threshold, model.beta) == (0.7, 1.0, 0.25)
        assert model.quantizer.uses_ema and not model.quantizer.codebook.trainable
        assert model.quantizer.dead_code_threshold == 1.0
        config = model.get_config()
        assert (config["ema_decay"], config["dead_code_threshold"]) == (0.7, 1.0)

    def test_config_with_the_old_defaults_keeps_the_old_model(self, digits):
        # Saved models carry explicit values: a pre-#17 config still builds a gradient
        # codebook without restarts, and computes what the original computes.
        old = tiny(seed=0, **OLD_DEFAULTS)
        rng = np.random.default_rng(0)
        for variable in old.weights:  # biases too: nothing at a special value
            variable.assign(rng.normal(scale=0.3, size=tuple(variable.shape)).astype("float32"))
        revived = VQVAE.from_config(old.get_config())
        assert revived.ema_decay is None and revived.dead_code_threshold == 0.0
        assert revived.quantizer.codebook.trainable and not revived.quantizer.tracks_usage
        revived.set_weights(old.get_weights())
        images = digits[0][:16]
        np.testing.assert_array_equal(
            to_numpy(revived.encode(images)), to_numpy(old.encode(images))
        )
        self.assertAllClose(revived(images), old(images), atol=1e-6)

    def test_defaults_keep_the_codebook_in_use(self, digits):
        # What the defaults were chosen for: the old ones leave most codes unused after a
        # short fit (the codebook starts far from the encoder's outputs); restarts from
        # encoder outputs put every code where the data is.
        images = digits[0][:512]

        def fit(**kwargs):
            keras.utils.set_random_seed(0)
            model = tiny(seed=0, **kwargs)
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
            model.fit(images, epochs=2, batch_size=64, verbose=0)
            return model

        old, new = fit(**OLD_DEFAULTS), fit()
        used_old, used_new = codes_used(old, images), codes_used(new, images)
        assert used_new >= 0.75 * 32, used_new
        assert used_new > used_old + 8, (used_old, used_new)
        assert np.all(np.isfinite(to_numpy(new.quantizer.codebook)))
