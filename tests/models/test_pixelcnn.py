import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.models import VQVAE, PixelCNNPrior, generate
from keras_vq.models.pixelcnn import _TINY
from tests.test_case import TestCase, to_numpy

K = 8
SHAPE = (4, 4)
B = 4  # one batch size everywhere: one compiled sampler per model
TINY = {
    "num_embeddings": K,
    "latent_shape": SHAPE,
    "num_layers": 3,
    "filters": 8,
    "kernel_size": 3,
}
# Two code maps that differ at every position: any visible earlier code identifies the map.
MAPS = np.array(
    [
        [[0, 1, 2, 3], [4, 5, 6, 7], [0, 2, 4, 6], [1, 3, 5, 7]],
        [[7, 6, 5, 4], [3, 2, 1, 0], [7, 5, 3, 1], [6, 4, 2, 0]],
    ],
    dtype="int32",
)


def normal(shape, seed, scale=1.0):
    # NumPy, not keras.random: on JAX every new shape would compile a random kernel.
    return np.random.default_rng(seed).normal(scale=scale, size=shape).astype("float32")


def randomize_weights(model, seed=0):
    """Set every weight of ``model`` to random non-zero values (NumPy, so the same everywhere).

    Keras initialises biases to zero, which hides any bias a sampler adds or drops: here conv
    kernels ~ N(0, 9 / fan_in), biases ~ N(0, 0.25), embeddings and class biases ~ N(0, 4),
    scales at which greedy paths visit several codes rather than repeating one.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if len(shape) == 4:  # a conv kernel (kh, kw, in, out)
            scale = 3.0 / math.sqrt(math.prod(shape[:-1]))
        elif len(shape) == 1:  # a bias
            scale = 0.5
        else:  # the code embedding, the class biases
            scale = 2.0
        variable.assign(rng.normal(scale=scale, size=shape).astype("float32"))
        assert np.all(to_numpy(variable) != 0)


def random_codes(batch, shape=SHAPE, k=K, seed=0):
    return np.random.default_rng(seed).integers(0, k, (batch, *shape)).astype("int32")


def greedy_by_full_passes(prior, num_samples, labels=None, uniform=None, temperature=0.0):
    """Reference sampler: one full forward pass per position (the keras.io way)."""
    codes = np.zeros((num_samples, *prior.latent_shape), "int32")
    gumbel = None if uniform is None else -np.log(-np.log(uniform))
    for i in range(prior.latent_shape[0]):
        for j in range(prior.latent_shape[1]):
            inputs = codes if labels is None else [codes, labels]
            logits = to_numpy(prior(inputs))[:, i, j]
            if gumbel is not None:
                logits = logits + temperature * gumbel[:, i, j]
            codes[:, i, j] = np.argmax(logits, axis=-1)
    return codes


def train_on_maps(num_classes=None, steps=60):
    """Memorise MAPS: one epoch of ``steps`` batches of 32 (per-epoch overhead paid once)."""
    keras.utils.set_random_seed(0)  # module fixtures run before the per-test seed reset
    prior = PixelCNNPrior(**TINY, num_classes=num_classes)
    prior.compile(optimizer=keras.optimizers.Adam(2e-2))
    codes = np.tile(MAPS, (16 * steps, 1, 1))
    labels = np.tile(np.array([0, 1], "int32"), 16 * steps)
    data = codes if num_classes is None else (codes, labels)
    history = prior.fit(data, batch_size=32, epochs=1, verbose=0, shuffle=False)
    return prior, history


class TinyVQVAE:
    """A stand-in decoder: a random embedding of the codes, squashed; records batch sizes."""

    num_embeddings = K

    def __init__(self):
        self.codebook = keras.layers.Embedding(K, 3)
        self.codebook.build((None,))
        self.decoded_batches = []

    def decode(self, codes):
        self.decoded_batches.append(int(codes.shape[0]))
        return ops.sigmoid(self.codebook(codes))


@pytest.fixture(scope="module")
def prior():
    """An untrained prior shared by tests that leave its weights alone (one compiled sampler)."""
    keras.utils.set_random_seed(0)
    model = PixelCNNPrior(**TINY)
    randomize_weights(model, seed=3)  # biases included: zero biases hide sampler bugs
    return model


@pytest.fixture(scope="module")
def unconditional_prior():
    return train_on_maps()


@pytest.fixture(scope="module")
def conditional_prior():
    return train_on_maps(num_classes=2)


# (num_layers, kernel_size, latent_shape, num_classes): one and several blocks, k = 3 and 5
# (k = 5 wider than a 3-column map too), non-square maps, with and without classes.
SAMPLER_CASES = [
    (1, 3, (4, 5), None),
    (3, 3, (5, 3), 3),
    (2, 5, (3, 6), None),
    (3, 5, (4, 3), 2),
]


def _case_id(case):
    num_layers, kernel_size, (height, width), num_classes = case
    classes = "unconditional" if num_classes is None else f"{num_classes}classes"
    return f"{num_layers}layers-k{kernel_size}-{height}x{width}-{classes}"


@pytest.fixture(scope="module", params=SAMPLER_CASES, ids=_case_id)
def random_prior(request):
    """A prior with every weight random (one compiled sampler per case) and its labels."""
    num_layers, kernel_size, latent_shape, num_classes = request.param
    keras.utils.set_random_seed(0)
    prior = PixelCNNPrior(
        K,
        latent_shape,
        num_layers=num_layers,
        filters=8,
        kernel_size=kernel_size,
        num_classes=num_classes,
    )
    randomize_weights(prior, seed=3)  # a seed whose greedy paths visit 3+ codes in each case
    labels = None if num_classes is None else np.arange(B, dtype="int32") % num_classes
    return prior, labels


class TestPixelCNNPrior(TestCase):
    def test_logits_shape_and_dtype(self, prior):
        logits = prior(random_codes(B))
        assert tuple(logits.shape) == (B, *SHAPE, K)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"

    def test_logits_are_causal_in_raster_order_without_blind_spot(self):
        height = width = 5
        # 4 layers with k=3 (the shapes of TINY, so JAX reuses compiled initialisers) reach
        # 4 columns left/right and 5 rows up: the whole 5×5 past.
        prior = PixelCNNPrior(**{**TINY, "latent_shape": (height, width), "num_layers": 4})
        # Spread the embeddings so every dependency moves the logits well above round-off.
        prior.embedding.embeddings.assign(normal((K, 8), seed=2))
        # Several base maps: the ReLU head can be dead at one position for one input.
        num_bases, positions = 3, height * width
        batch = np.repeat(random_codes(num_bases, (height, width)), positions + 1, axis=0)
        batch = batch.reshape(num_bases, positions + 1, positions)
        for p in range(positions):
            batch[:, p + 1, p] = (batch[:, 0, p] + 1) % K
        logits = to_numpy(prior(batch.reshape(-1, height, width)))
        logits = logits.reshape(num_bases, positions + 1, positions, K)
        diff = np.abs(logits[:, 1:] - logits[:, :1]).max(axis=(0, -1))  # (perturbed p, q)
        deps = (diff > 1e-5).T  # deps[q, p]
        np.testing.assert_array_equal(deps, np.tri(height * width, k=-1, dtype=bool))
        q = 3 * width + 2  # (3, 2): (2, 3) and (1, 4) lie in the classic blind spot.
        for i, j in [(2, 3), (1, 4), (3, 1)]:
            assert deps[q, i * width + j]

    def test_sampler_equals_full_forward_passes(self, prior):
        greedy = to_numpy(prior.sample(B, temperature=0.0, seed=0))
        np.testing.assert_array_equal(greedy, greedy_by_full_passes(prior, B))
        uniform = np.random.default_rng(1).uniform(1e-6, 1.0, (B, *SHAPE, K)).astype("float32")
        zeros = np.zeros((B,), "int32")
        fast = to_numpy(prior._sample_from_uniform(uniform, 0.7, zeros))
        slow = greedy_by_full_passes(prior, B, uniform=uniform, temperature=0.7)
        np.testing.assert_array_equal(fast, slow)

    def test_sampler_follows_weight_updates(self, prior):
        prior.sample(B, temperature=0.0)  # compiled with the current weights
        saved = prior.get_weights()
        try:
            randomize_weights(prior, seed=4)
            np.testing.assert_array_equal(
                to_numpy(prior.sample(B, temperature=0.0)), greedy_by_full_passes(prior, B)
            )
        finally:
            prior.set_weights(saved)

    def test_greedy_samples_are_the_argmax_of_the_forward_pass_everywhere(self, random_prior):
        prior, labels = random_prior
        greedy = to_numpy(prior.sample(B, temperature=0.0, seed=0, labels=labels))
        # The logits at (i, j) depend only on the codes before (i, j), which are the sample's
        # own: argmax(prior(greedy)) at (i, j) is what one full forward pass per position
        # picks there, and equality everywhere means the slow greedy sampler draws `greedy`.
        logits = to_numpy(prior(greedy if labels is None else [greedy, labels]))
        np.testing.assert_array_equal(np.argmax(logits, axis=-1), greedy)
        # A path stuck on one code would not exercise the biases position by position.
        assert len(np.unique(greedy)) >= 3, greedy

    def test_seeded_samples_equal_a_slow_reference_sampler(self, random_prior):
        prior, labels = random_prior
        shape = (B, *prior.latent_shape, K)
        seed, temperature = 11, 0.8
        fast = to_numpy(prior.sample(B, temperature=temperature, seed=seed, labels=labels))
        # The noise `sample` draws: uniform in [tiny, 1) from `seed`, Gumbel = -log(-log(u)).
        uniform = to_numpy(
            keras.random.uniform(shape, minval=_TINY, maxval=1.0, dtype="float32", seed=seed)
        )
        slow = greedy_by_full_passes(
            prior, B, labels=labels, uniform=uniform, temperature=temperature
        )
        np.testing.assert_array_equal(fast, slow)
        greedy = to_numpy(prior.sample(B, temperature=0.0, labels=labels))
        assert np.any(fast != greedy)  # the noise mattered
        # Any noise, through the sampler's own entry point.
        uniform = np.random.default_rng(2).uniform(1e-6, 1.0, shape).astype("float32")
        sampler_labels = np.zeros((B,), "int32") if labels is None else labels
        fast = to_numpy(prior._sample_from_uniform(uniform, 1.5, sampler_labels))
        slow = greedy_by_full_passes(prior, B, labels=labels, uniform=uniform, temperature=1.5)
        np.testing.assert_array_equal(fast, slow)

    def test_sample_is_int32_and_seeded(self, prior):
        first = prior.sample(B, seed=7)
        assert tuple(first.shape) == (B, *SHAPE)
        assert keras.backend.standardize_dtype(first.dtype) == "int32"
        np.testing.assert_array_equal(to_numpy(first), to_numpy(prior.sample(B, seed=7)))
        assert np.any(to_numpy(first) != to_numpy(prior.sample(B, seed=8)))
        codes = to_numpy(first)
        assert codes.min() >= 0 and codes.max() < K

    def test_trained_prior_reproduces_its_two_maps(self, unconditional_prior):
        prior, _ = unconditional_prior
        logs = prior.evaluate(MAPS, verbose=0, return_dict=True)
        assert logs["loss"] < 0.1  # the optimum is ln(2)/16: a coin flip at (0, 0), then certain
        samples = to_numpy(prior.sample(B, temperature=0.1, seed=0))
        for sample in samples:
            assert any(np.array_equal(sample, m) for m in MAPS), sample
        # (0, 0) is a coin flip, a near tie for argmax: the greedy path is either map.
        greedy = to_numpy(prior.sample(B, temperature=0.0))
        assert any(np.array_equal(greedy[0], m) for m in MAPS)
        assert (greedy == greedy[:1]).all()

    def test_conditional_prior_samples_the_map_of_its_label(self, conditional_prior):
        prior, history = conditional_prior
        assert set(history.history) >= {"loss", "accuracy", "bits_per_code"}
        labels = np.array([0, 1, 1, 0], "int32")
        samples = to_numpy(prior.sample(4, temperature=0.5, seed=1, labels=labels))
        np.testing.assert_array_equal(samples, MAPS[labels])
        np.testing.assert_array_equal(to_numpy(prior.sample(B, labels=1, seed=2)), MAPS[[1] * B])
        greedy = to_numpy(prior.sample(4, temperature=0.0, labels=labels))
        np.testing.assert_array_equal(greedy, greedy_by_full_passes(prior, 4, labels=labels))

    def test_fit_logs_and_evaluate_matches_numpy(self, unconditional_prior):
        prior, history = unconditional_prior
        assert set(history.history) == {"loss", "accuracy", "bits_per_code"}
        codes = random_codes(B)
        logs = prior.evaluate(codes, batch_size=B, verbose=0, return_dict=True)
        logits = to_numpy(prior(codes)).astype("float64")
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -np.take_along_axis(log_probs, codes[..., None], -1).mean()
        accuracy = (logits.argmax(-1) == codes).mean()
        np.testing.assert_allclose(logs["loss"], nll, rtol=1e-4)
        np.testing.assert_allclose(logs["bits_per_code"], nll / math.log(2.0), rtol=1e-4)
        np.testing.assert_allclose(logs["accuracy"], accuracy, atol=1e-6)

    def test_conditional_fit_needs_labels_and_evaluates_on_pairs(self, conditional_prior):
        prior, _ = conditional_prior
        codes, labels = MAPS, np.array([0, 1], "int32")
        logs = prior.evaluate((codes, labels), verbose=0, return_dict=True)
        assert logs["loss"] < 0.1 and logs["accuracy"] == 1.0
        swapped = prior.evaluate((codes, labels[::-1]), verbose=0, return_dict=True)
        assert swapped["loss"] > 0.5  # the labels matter
        # A fresh model: an error inside JAX's fit leaves that model's variables purged.
        fresh = PixelCNNPrior(**TINY, num_classes=2)
        fresh.compile(optimizer="adam")
        with pytest.raises(ValueError, match="labels"):
            fresh.fit(codes, batch_size=2, epochs=1, verbose=0)

    def test_config_round_trip(self):
        prior = PixelCNNPrior(**TINY, num_classes=2, name="prior")
        config = prior.get_config()
        for key, value in {**TINY, "num_classes": 2}.items():
            assert config[key] == (list(value) if isinstance(value, tuple) else value)
        revived = PixelCNNPrior.from_config(config)
        assert revived.get_config() == config
        assert len(revived.weights) == len(prior.weights)

    def test_keras_save_load_gives_identical_logits_and_samples(self, tmp_path, prior):
        revived = self.run_model_saving_test(prior, random_codes(B), tmp_path)
        assert isinstance(revived, PixelCNNPrior)
        np.testing.assert_array_equal(
            to_numpy(prior.sample(B, seed=5)), to_numpy(revived.sample(B, seed=5))
        )

    def test_conditional_keras_save_load(self, tmp_path, conditional_prior):
        prior, _ = conditional_prior
        labels = np.array([0, 1, 1, 0], "int32")
        revived = self.run_model_saving_test(prior, [random_codes(B), labels], tmp_path)
        assert revived.num_classes == 2
        np.testing.assert_array_equal(
            to_numpy(revived.sample(B, seed=5, labels=labels)), MAPS[labels]
        )

    def test_sample_and_generate_record_no_gradients(self, prior):
        # Codes (4, 4) from 16×16 images: two stride-2 layers.
        vqvae = VQVAE(input_shape=(16, 16, 1), num_embeddings=K, embedding_dim=4, filters=(4, 4))
        randomize_weights(vqvae, seed=5)
        codes = prior.sample(B, temperature=1.0, seed=3)
        plain_sample = type(prior).sample.__wrapped__
        np.testing.assert_array_equal(to_numpy(codes), to_numpy(plain_sample(prior, B, 1.0, 3)))
        images = generate(vqvae, prior, B, temperature=1.0, seed=3)
        # The same decoding with autograd left on.
        reference = type(vqvae).decode.__wrapped__(vqvae, codes)
        self.assertAllClose(images, reference, atol=1e-5)
        for output in (codes, images):
            assert not bool(getattr(output, "requires_grad", False))
        if keras.backend.backend() == "torch":
            assert reference.requires_grad  # what the decorator turns off

    def test_generate_decodes_prior_samples(self, prior):
        vqvae = TinyVQVAE()
        images = generate(vqvae, prior, B, temperature=0.5, seed=3)
        expected = vqvae.decode(prior.sample(B, temperature=0.5, seed=3))
        assert tuple(images.shape) == (B, *SHAPE, 3)
        self.assertAllClose(images, expected)
        with pytest.raises(TypeError, match="vqvae"):
            generate(object(), prior, 2)
        vqvae.num_embeddings = K + 1
        with pytest.raises(ValueError, match="num_embeddings"):
            generate(vqvae, prior, 2)

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"num_embeddings": 0}, ValueError, "num_embeddings"),
            ({"latent_shape": (4,)}, ValueError, "latent_shape"),
            ({"latent_shape": (4, 0)}, ValueError, "latent_shape"),
            ({"num_layers": 0}, ValueError, "num_layers"),
            ({"filters": 2.5}, TypeError, "filters"),
            ({"kernel_size": 4}, ValueError, "kernel_size"),
            ({"num_classes": 0}, ValueError, "num_classes"),
        ],
    )
    def test_constructor_rejects_bad_arguments(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            PixelCNNPrior(**{**TINY, **kwargs})

    def test_call_rejects_bad_codes_and_labels(self, prior):
        with pytest.raises(TypeError, match="codes"):
            prior(random_codes(2).astype("float32"))
        with pytest.raises(ValueError, match=r"codes.*\[0, 7\]"):
            prior(random_codes(2) + K)
        with pytest.raises(ValueError, match=r"codes.*latent_shape"):
            prior(random_codes(2, (5, 4)))
        with pytest.raises(ValueError, match="unconditional"):
            prior([random_codes(2), np.zeros(2, "int32")])
        conditional = PixelCNNPrior(**TINY, num_classes=2)
        with pytest.raises(ValueError, match="labels"):
            conditional(random_codes(2))
        with pytest.raises(ValueError, match=r"labels.*\[0, 1\]"):
            conditional([random_codes(2), np.array([0, 2], "int32")])
        with pytest.raises(TypeError, match="labels"):
            conditional([random_codes(2), np.array([0.0, 1.0])])

    def test_sample_rejects_bad_arguments(self, prior):
        conditional = PixelCNNPrior(**TINY, num_classes=2)
        cases = [
            (prior, {"num_samples": 0}, ValueError, "num_samples"),
            (prior, {"num_samples": 2.0}, TypeError, "num_samples"),
            (prior, {"num_samples": 2, "temperature": -1.0}, ValueError, "temperature"),
            (prior, {"num_samples": 2, "temperature": "hot"}, TypeError, "temperature"),
            (prior, {"num_samples": 2, "seed": -1}, ValueError, "seed"),
            (prior, {"num_samples": 2, "labels": [0, 1]}, ValueError, "labels"),
            (conditional, {"num_samples": 2}, ValueError, "labels"),
            (conditional, {"num_samples": 2, "labels": [0, 1, 1]}, ValueError, "labels"),
            (conditional, {"num_samples": 2, "labels": 2}, ValueError, "labels"),
        ]
        for model, kwargs, error, match in cases:
            with pytest.raises(error, match=match):
                model.sample(**kwargs)


@pytest.fixture(scope="module")
def conditional_random_prior():
    """A class-conditional prior with every weight random (one compiled sampler, batch B)."""
    keras.utils.set_random_seed(0)
    model = PixelCNNPrior(**TINY, num_classes=3)
    randomize_weights(model, seed=3)
    return model


class TestChunkedSampling(TestCase):
    """``batch_size``: call i draws ``c = min(batch_size, N)`` maps with seed ``seed + i``."""

    def test_chunks_are_calls_with_seed_plus_index_and_cycled_labels(
        self, conditional_random_prior
    ):
        prior = conditional_random_prior
        labels = np.array([0, 1, 2, 2, 1, 0, 1, 2, 0, 1], "int32")  # 10 maps, 3 calls of B
        codes = to_numpy(prior.sample(10, temperature=1.0, seed=7, labels=labels, batch_size=B))
        # The last call draws B maps too (labels cycled past the end), of which 2 are kept.
        cycled = np.concatenate([labels, labels[:2]])
        calls = [
            to_numpy(prior.sample(B, temperature=1.0, seed=7 + i, labels=cycled[i * B :][:B]))
            for i in range(3)
        ]
        assert codes.dtype == np.int32 and codes.shape == (10, *SHAPE)
        np.testing.assert_array_equal(codes, np.concatenate(calls)[:10])
        assert not np.array_equal(calls[0], calls[1]), "calls draw different noise"
        again = prior.sample(10, temperature=1.0, seed=7, labels=labels, batch_size=B)
        np.testing.assert_array_equal(to_numpy(again), codes)

    def test_batch_size_of_all_maps_is_one_call(self, prior):
        one_call = to_numpy(prior.sample(B, temperature=1.0, seed=11))
        for batch_size in (B, B + 5):
            chunked = prior.sample(B, temperature=1.0, seed=11, batch_size=batch_size)
            np.testing.assert_array_equal(to_numpy(chunked), one_call)

    def test_unconditional_chunks(self, prior):
        codes = to_numpy(prior.sample(6, temperature=1.0, seed=3, batch_size=B))
        expected = np.concatenate(
            [to_numpy(prior.sample(B, temperature=1.0, seed=3 + i)) for i in range(2)]
        )
        np.testing.assert_array_equal(codes, expected[:6])

    def test_generate_decodes_each_call_at_its_full_size(self, prior):
        vqvae = TinyVQVAE()
        images = generate(vqvae, prior, 6, temperature=1.0, seed=3, batch_size=B)
        assert vqvae.decoded_batches == [B, B], "every decoder call has the same batch size"
        codes = prior.sample(6, temperature=1.0, seed=3, batch_size=B)
        assert tuple(images.shape) == (6, *SHAPE, 3)
        self.assertAllClose(images, vqvae.decode(codes), atol=1e-6)

    def test_bad_batch_size_is_named(self, prior):
        with pytest.raises(ValueError, match="batch_size"):
            prior.sample(2, batch_size=0)
        with pytest.raises(TypeError, match="batch_size"):
            prior.sample(2, batch_size=2.5)
