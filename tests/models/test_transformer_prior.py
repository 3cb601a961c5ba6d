import math

import keras
import numpy as np
import pytest

from keras_vq.models import VQVAE, TransformerPrior, generate
from keras_vq.models._prior import _TINY
from tests.test_case import TestCase, to_numpy

K = 8
SHAPE = (3, 4)
B = 3  # one batch size everywhere: one compiled sampler per model
TINY = {
    "num_embeddings": K,
    "latent_shape": SHAPE,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 8,
}
# Two code maps that differ at every position: any visible earlier code identifies the map.
MAPS = np.array(
    [[[0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 4, 6]], [[7, 6, 5, 4], [3, 2, 1, 0], [7, 5, 3, 1]]],
    dtype="int32",
)


def randomize_weights(model, seed=0):
    """Every weight random and non-zero (biases, LayerNorm betas and gammas included): zero
    biases and unit gammas, Keras' defaults, would hide a sampler that drops or adds one.
    NumPy, so the weights are the same on every backend."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        scale = 1.5 / math.sqrt(shape[0]) if len(shape) == 2 and "kernel" in variable.path else 1.0
        values = rng.normal(scale=scale, size=shape).astype("float32")
        if "gamma" in variable.path:
            values = 1.0 + 0.3 * values
        variable.assign(values)
        assert np.all(to_numpy(variable) != 0), variable.path


def full_pass_sampler(prior, num_samples, labels=None, uniform=None, temperature=0.0, top_k=None):
    """Reference sampler: one full forward pass per position, raster order."""
    codes = np.zeros((num_samples, *prior.latent_shape), "int32")
    gumbel = None if uniform is None else -np.log(-np.log(uniform.astype("float64")))
    for i in range(prior.latent_shape[0]):
        for j in range(prior.latent_shape[1]):
            logits = to_numpy(prior(codes if labels is None else [codes, labels]))[:, i, j]
            if top_k is not None:
                kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
                logits = np.where(logits >= kth, logits, -np.inf)
            if gumbel is not None:
                logits = logits + temperature * gumbel[:, i, j]
            codes[:, i, j] = np.argmax(logits, axis=-1)
    return codes


def seeded_uniform(shape, seed):
    """The noise ``sample`` draws for ``seed``: uniform in [tiny, 1)."""
    return to_numpy(keras.random.uniform(shape, minval=_TINY, maxval=1.0, seed=seed))


# (num_classes, weight seed): seeds whose greedy paths visit 3+ codes.
@pytest.fixture(scope="module", params=[(None, 6), (3, 4)], ids=["unconditional", "3classes"])
def random_prior(request):
    num_classes, seed = request.param
    keras.utils.set_random_seed(0)
    prior = TransformerPrior(**TINY, num_classes=num_classes)
    randomize_weights(prior, seed=seed)
    labels = None if num_classes is None else np.array([0, 2, 1], "int32")
    return prior, labels


@pytest.fixture(scope="module")
def trained_conditional_prior():
    """Memorises MAPS[label]: one epoch of 60 batches of 32 (no dropout: it fights that)."""
    keras.utils.set_random_seed(0)
    prior = TransformerPrior(**TINY, num_classes=2, dropout=0.0)
    prior.compile(optimizer=keras.optimizers.Adam(2e-2))
    codes = np.tile(MAPS, (960, 1, 1))
    labels = np.tile(np.array([0, 1], "int32"), 960)
    initial = prior.evaluate((codes[:64], labels[:64]), verbose=0, return_dict=True)["loss"]
    history = prior.fit((codes, labels), batch_size=32, epochs=1, verbose=0, shuffle=False)
    return prior, initial, history


class TestTransformerPrior(TestCase):
    def test_logits_shape_dtype_and_causality(self, random_prior):
        prior, labels = random_prior
        rng = np.random.default_rng(0)
        codes = rng.integers(0, K, (B, *SHAPE)).astype("int32")
        inputs = (lambda c: c) if labels is None else (lambda c: [c, labels])
        logits = prior(inputs(codes))
        assert tuple(logits.shape) == (B, *SHAPE, K)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        base = to_numpy(logits).reshape(B, -1, K)
        length = math.prod(SHAPE)
        for s in range(length):  # perturb code s: only positions t > s may change
            changed = codes.copy().reshape(B, -1)
            changed[:, s] = (changed[:, s] + 1 + rng.integers(0, K - 1, B)) % K
            after = to_numpy(prior(inputs(changed.reshape(B, *SHAPE)))).reshape(B, -1, K)
            np.testing.assert_array_equal(after[:, : s + 1], base[:, : s + 1])
            if s + 1 < length:
                assert np.all(np.abs(after[:, s + 1 :] - base[:, s + 1 :]).max(-1) > 1e-6)

    def test_greedy_samples_are_the_argmax_of_full_passes_everywhere(self, random_prior):
        prior, labels = random_prior
        greedy = to_numpy(prior.sample(B, temperature=0.0, labels=labels))
        assert greedy.dtype == np.int32 and greedy.shape == (B, *SHAPE)
        logits = to_numpy(prior(greedy if labels is None else [greedy, labels]))
        np.testing.assert_array_equal(greedy, np.argmax(logits, axis=-1))
        assert len(np.unique(greedy)) >= 3  # the weights give a path with content

    def test_seeded_samples_equal_a_slow_reference_sampler(self, random_prior):
        prior, labels = random_prior
        seed, temperature = 11, 0.8
        fast = to_numpy(prior.sample(B, temperature=temperature, seed=seed, labels=labels))
        uniform = seeded_uniform((B, *SHAPE, K), seed)
        slow = full_pass_sampler(prior, B, labels, uniform, temperature)
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(
            fast, to_numpy(prior.sample(B, temperature=temperature, seed=seed, labels=labels))
        )
        assert np.any(fast != to_numpy(prior.sample(B, temperature=0.0, labels=labels)))
        top = to_numpy(prior.sample(B, temperature=2.0, seed=seed, labels=labels, top_k=2))
        np.testing.assert_array_equal(top, full_pass_sampler(prior, B, labels, uniform, 2.0, 2))

    def test_top_k_one_is_greedy(self, random_prior):
        prior, labels = random_prior
        np.testing.assert_array_equal(
            to_numpy(prior.sample(B, temperature=5.0, seed=1, labels=labels, top_k=1)),
            to_numpy(prior.sample(B, temperature=0.0, labels=labels)),
        )

    def test_conditioning_changes_samples(self, random_prior):
        prior, labels = random_prior
        if labels is None:
            with pytest.raises(ValueError, match="`labels` must be None"):
                prior.sample(B, labels=0)
            return
        a = to_numpy(prior.sample(B, temperature=0.0, labels=0))
        b = to_numpy(prior.sample(B, temperature=0.0, labels=2))
        assert np.any(a != b)
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 2\]"):
            prior.sample(B, labels=3)
        with pytest.raises(ValueError, match="labels"):
            prior(np.zeros((B, *SHAPE), "int32"))

    def test_fit_reduces_loss_and_learns_the_map_of_each_label(self, trained_conditional_prior):
        prior, initial, history = trained_conditional_prior
        assert set(history.history) == {"loss", "accuracy", "bits_per_code"}
        logs = prior.evaluate((MAPS, np.array([0, 1], "int32")), verbose=0, return_dict=True)
        assert logs["loss"] < 0.1 < initial
        np.testing.assert_allclose(logs["bits_per_code"], logs["loss"] / math.log(2), rtol=1e-4)
        labels = np.array([0, 1, 1], "int32")
        np.testing.assert_array_equal(
            to_numpy(prior.sample(B, temperature=0.3, seed=0, labels=labels)), MAPS[labels]
        )

    def test_out_of_range_labels_and_codes_raise_value_errors(self):
        prior = TransformerPrior(**TINY, num_classes=2)
        prior.compile(optimizer="adam")
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 1\]"):
            prior.fit((MAPS, np.array([0, 5], "int32")), batch_size=2, epochs=1, verbose=0)
        bad = MAPS.copy()
        bad[0, 0, 0] = K
        with pytest.raises(ValueError, match=r"`codes` must lie in \[0, 7\]"):
            prior([bad, np.array([0, 1], "int32")])

    def test_config_and_keras_round_trip(self, tmp_path, random_prior):
        prior, labels = random_prior
        config = prior.get_config()
        assert {k: config[k] for k in ("num_layers", "num_heads", "hidden_dim")} == {
            "num_layers": 2,
            "num_heads": 2,
            "hidden_dim": 8,
        }
        assert TransformerPrior.from_config(config).get_config() == config
        codes = np.random.default_rng(1).integers(0, K, (B, *SHAPE)).astype("int32")
        revived = self.run_model_saving_test(
            prior, codes if labels is None else [codes, labels], tmp_path
        )
        assert isinstance(revived, TransformerPrior)
        np.testing.assert_array_equal(
            to_numpy(prior.sample(B, seed=5, labels=labels)),
            to_numpy(revived.sample(B, seed=5, labels=labels)),
        )

    @pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
    def test_mixed_precision_gives_float32_logits_and_valid_samples(self, policy):
        prior = TransformerPrior(**TINY, dtype=policy)
        randomize_weights(prior, seed=1)
        codes = np.random.default_rng(1).integers(0, K, (B, *SHAPE)).astype("int32")
        logits = prior(codes)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        assert np.all(np.isfinite(to_numpy(logits)))
        samples = to_numpy(prior.sample(B, seed=0))
        assert samples.shape == (B, *SHAPE) and samples.min() >= 0 and samples.max() < K
        if policy == "mixed_bfloat16":  # one training step is enough to show it trains
            prior.compile(optimizer="adam")
            history = prior.fit(codes, batch_size=B, epochs=1, verbose=0)
            assert np.isfinite(history.history["loss"][0])

    def test_generate_accepts_a_transformer_prior(self, random_prior):
        prior, labels = random_prior
        vqvae = VQVAE(input_shape=(12, 16, 1), num_embeddings=K, embedding_dim=4, filters=(4, 4))
        images = generate(vqvae, prior, B, temperature=1.0, seed=3, labels=labels)
        codes = prior.sample(B, temperature=1.0, seed=3, labels=labels)
        self.assertAllClose(images, vqvae.decode(codes), atol=1e-5)
        with pytest.raises(TypeError, match="`prior` must be a prior"):
            generate(vqvae, vqvae, B)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"num_heads": 3}, "`hidden_dim` must be a multiple of `num_heads`"),
            ({"dropout": 1.0}, r"`dropout` must lie in \[0, 1\)"),
            ({"latent_shape": (3,)}, "`latent_shape` must be a pair"),
        ],
    )
    def test_constructor_rejects_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            TransformerPrior(**{**TINY, **kwargs})

    def test_sample_rejects_bad_arguments(self, random_prior):
        prior, labels = random_prior
        with pytest.raises(ValueError, match="`top_k` must be at most num_embeddings=8"):
            prior.sample(B, labels=labels, top_k=9)
        with pytest.raises(ValueError, match="top_k"):
            prior.sample(B, labels=labels, top_k=0)
        with pytest.raises(ValueError, match="temperature"):
            prior.sample(B, labels=labels, temperature=-1.0)
