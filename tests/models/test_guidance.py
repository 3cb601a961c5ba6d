"""Classifier-free guidance, label dropout, top-k and nucleus (top-p) sampling of both priors.

References are independent of the samplers: one full forward pass of the model per position
(conditional and null labels), guidance, top-k and the nucleus in float64 NumPy.
"""

import json
import zipfile

import keras
import numpy as np
import pytest

from keras_vq.models import PixelCNNPrior, TransformerPrior, generate
from keras_vq.models._prior import _TINY, nucleus_logits
from tests.models.test_pixelcnn import TinyVQVAE
from tests.models.test_pixelcnn import randomize_weights as randomize_pixelcnn
from tests.models.test_transformer_prior import randomize_weights as randomize_transformer
from tests.test_case import TestCase, to_numpy

K = 8
B = 4
NUM_CLASSES = 3
LABELS = np.array([0, 2, 1, 2], "int32")
KINDS = {
    "pixelcnn": (
        PixelCNNPrior,
        {"latent_shape": (4, 4), "num_layers": 2, "filters": 8, "kernel_size": 3},
        randomize_pixelcnn,
    ),
    "transformer": (
        TransformerPrior,
        # dropout 0: the training-mode forward differs from inference by label dropout only
        {"latent_shape": (3, 3), "num_layers": 2, "num_heads": 2, "hidden_dim": 8, "dropout": 0.0},
        randomize_transformer,
    ),
}


def make_prior(kind, label_dropout=0.25, num_classes=NUM_CLASSES, weight_seed=None, **kwargs):
    cls, tiny, randomize = KINDS[kind]
    prior = cls(K, num_classes=num_classes, label_dropout=label_dropout, **tiny, **kwargs)
    if weight_seed is not None:
        randomize(prior, seed=weight_seed)  # biases and class embeddings random and non-zero
    return prior


@pytest.fixture(scope="module", params=sorted(KINDS))
def guided(request):
    """A prior with a null label and random weights (one compiled sampler per option set)."""
    keras.utils.set_random_seed(0)
    return make_prior(request.param, weight_seed=4)


def seeded_uniform(prior, seed):
    """The noise ``sample`` draws for ``seed``: uniform in [tiny, 1)."""
    shape = (B, *prior.latent_shape, K)
    return to_numpy(keras.random.uniform(shape, minval=_TINY, maxval=1.0, seed=seed))


def nucleus_reference(logits, top_p, temperature):
    """Float64 NumPy nucleus: walk the codes by decreasing probability, keep each while the
    ones before it hold less than ``top_p``; codes tied with the last kept one are kept."""
    logits = np.asarray(logits, "float64")
    out = np.full_like(logits, -np.inf)
    for row, values in enumerate(logits):
        scaled = values / temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        kept, mass = [], 0.0
        for code in sorted(range(len(values)), key=lambda c: (-probs[c], c)):
            if mass >= top_p:
                break
            kept.append(code)
            mass += probs[code]
        keep = values >= values[kept[-1]]
        out[row, keep] = values[keep]
    return out


def reference_sample(
    prior, uniform, temperature, labels, guidance_scale=None, top_k=None, top_p=None
):
    """One full forward pass per position (and one with the null label when guided); the
    guided logits ``l_null + s·(l_label − l_null)``, top-k and nucleus in float64 NumPy."""
    batch, height, width, _ = uniform.shape
    gumbel = -np.log(-np.log(uniform.astype("float64")))
    codes = np.zeros((batch, height, width), "int32")
    null = np.full((batch,), prior.null_label or 0, "int32")
    for i in range(height):
        for j in range(width):
            logits = to_numpy(prior([codes, labels]))[:, i, j].astype("float64")
            if guidance_scale is not None:
                unconditional = to_numpy(prior([codes, null]))[:, i, j].astype("float64")
                logits = unconditional + guidance_scale * (logits - unconditional)
            if top_k is not None:
                kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
                logits = np.where(logits >= kth, logits, -np.inf)
            if top_p is not None:
                logits = nucleus_reference(logits, top_p, temperature)
            codes[:, i, j] = np.argmax(logits + temperature * gumbel[:, i, j], axis=-1)
    return codes


class TestGuidance(TestCase):
    def test_scale_one_is_plain_conditional_sampling_exactly(self, guided):
        for options in ({}, {"top_k": 5, "top_p": 0.8}):
            plain = to_numpy(guided.sample(B, temperature=1.2, seed=3, labels=LABELS, **options))
            scaled = guided.sample(
                B, temperature=1.2, seed=3, labels=LABELS, guidance_scale=1.0, **options
            )
            np.testing.assert_array_equal(to_numpy(scaled), plain)
        strong = guided.sample(B, temperature=1.2, seed=3, labels=LABELS, guidance_scale=4.0)
        assert np.any(to_numpy(strong) != plain)  # guidance changes the draw

    def test_scale_zero_is_the_null_label(self, guided):
        null = to_numpy(guided.sample(B, seed=5, labels=guided.null_label))
        zero = to_numpy(guided.sample(B, seed=5, labels=LABELS, guidance_scale=0.0))
        np.testing.assert_array_equal(zero, null)
        assert np.any(null != to_numpy(guided.sample(B, seed=5, labels=LABELS)))

    @pytest.mark.parametrize(
        "temperature, options",
        [(0.9, {}), (1.3, {"top_k": 5, "top_p": 0.7})],
        ids=["guided", "guided-top_k-top_p"],
    )
    def test_cached_guided_sampler_equals_a_slow_reference(self, guided, temperature, options):
        scale, seed = 2.5, 11
        fast = to_numpy(
            guided.sample(
                B,
                temperature=temperature,
                seed=seed,
                labels=LABELS,
                guidance_scale=scale,
                **options,
            )
        )
        uniform = seeded_uniform(guided, seed)
        slow = reference_sample(guided, uniform, temperature, LABELS, scale, **options)
        np.testing.assert_array_equal(fast, slow)
        assert len(np.unique(fast)) >= 3, fast  # the weights give paths with content
        plain = to_numpy(guided.sample(B, temperature=temperature, seed=seed, labels=LABELS))
        assert np.any(fast != plain)

    def test_unguided_top_k_and_top_p_equal_the_reference(self, guided):
        seed, temperature = 2, 1.5
        uniform = seeded_uniform(guided, seed)
        for options in ({"top_k": 5}, {"top_k": 5, "top_p": 0.6}):
            fast = guided.sample(B, temperature=temperature, seed=seed, labels=LABELS, **options)
            slow = reference_sample(guided, uniform, temperature, LABELS, **options)
            np.testing.assert_array_equal(to_numpy(fast), slow, err_msg=str(options))

    def test_tiny_top_p_is_greedy(self, guided):
        greedy = to_numpy(guided.sample(B, temperature=0.0, labels=LABELS))
        drawn = guided.sample(B, temperature=2.0, seed=1, labels=LABELS, top_p=1e-6)
        np.testing.assert_array_equal(to_numpy(drawn), greedy)
        assert np.any(greedy != to_numpy(guided.sample(B, temperature=2.0, seed=1, labels=LABELS)))

    def test_generate_decodes_the_guided_codes(self, guided):
        options = {"temperature": 1.1, "seed": 4, "labels": LABELS, "guidance_scale": 2.0}
        options.update(top_k=5, top_p=0.9)
        vqvae = TinyVQVAE()
        images = generate(vqvae, guided, B, **options)
        codes = guided.sample(B, **options)
        self.assertAllClose(images, vqvae.decode(codes), atol=1e-6)


class TestNucleus:
    @pytest.mark.parametrize("top_p", [0.05, 0.37, 0.61, 0.83, 0.999])
    @pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
    def test_mask_equals_a_numpy_reference(self, top_p, temperature):
        rng = np.random.default_rng(int(top_p * 1000 + temperature * 10))
        logits = rng.normal(scale=2.0, size=(6, K)).astype("float32")
        logits[1] = np.round(logits[1])  # ties, some straddling the cut
        logits[2, :5] = 0.5  # five equal most probable codes
        logits[3, ::2] = -np.inf  # codes already masked (top-k)
        masked = to_numpy(
            nucleus_logits(
                keras.ops.convert_to_tensor(logits),
                keras.ops.convert_to_tensor(top_p, "float32"),
                keras.ops.convert_to_tensor(temperature, "float32"),
            )
        )
        expected = nucleus_reference(logits, top_p, temperature)
        np.testing.assert_array_equal(np.isfinite(masked), np.isfinite(expected))
        np.testing.assert_array_equal(masked[np.isfinite(masked)], logits[np.isfinite(expected)])
        # The argmax always stays; the five-way tie stays or goes as one.
        assert np.all(np.isfinite(masked[np.arange(6), np.argmax(logits, axis=-1)]))
        assert len(set(np.isfinite(masked[2, :5]))) == 1


class TestLabelDropout(TestCase):
    def test_training_forward_drops_labels_at_the_rate(self, guided):
        prior, rate = guided, guided.label_dropout
        n = 1000  # one batch size throughout: one set of kernels on JAX
        codes = np.random.default_rng(0).integers(0, K, (1, *prior.latent_shape)).astype("int32")
        codes = np.repeat(codes, n, axis=0)
        labels = np.ones((n,), "int32")

        def logits(labels, training=None):
            return to_numpy(prior([codes, labels], training=training)).reshape(n, -1)

        # Every row has the same codes and label: at inference every row is the same.
        with_label = logits(labels, training=False)
        np.testing.assert_allclose(logits(labels), with_label, atol=1e-6)
        assert np.abs(with_label - with_label[:1]).max() < 1e-5
        with_null = logits(np.full((n,), prior.null_label, "int32"))
        assert np.abs(with_label[0] - with_null[0]).max() > 1e-2

        def dropped():
            out = logits(labels, training=True)
            to_label = np.abs(out - with_label).max(axis=1)
            to_null = np.abs(out - with_null).max(axis=1)
            assert np.all(np.minimum(to_label, to_null) < 1e-4)  # one or the other
            return to_null < to_label

        state = to_numpy(prior.seed_generator.state).copy()
        first, second = dropped(), dropped()
        assert abs(first.mean() - rate) < 0.05 and abs(second.mean() - rate) < 0.05
        assert np.any(first != second)  # fresh draws every call
        # Reproducible: the generator's state determines the draws.
        prior.seed_generator.state.assign(state)
        np.testing.assert_array_equal(dropped(), first)

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_compiled_fit_draws_from_the_generator(self, kind):
        rng = np.random.default_rng(0)
        codes = rng.integers(0, K, (32, *KINDS[kind][1]["latent_shape"])).astype("int32")
        labels = rng.integers(0, NUM_CLASSES, (32,)).astype("int32")
        prior = make_prior(kind, label_dropout=0.5)
        prior.compile(optimizer=keras.optimizers.Adam(1e-2))
        start = to_numpy(prior.seed_generator.state).copy()
        history = prior.fit((codes, labels), batch_size=16, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        # The compiled steps drew from the generator and kept its new state (JAX's stateless
        # step returns it), so every step drops other labels.
        assert np.any(to_numpy(prior.seed_generator.state) != start)

    def test_null_label_and_class_rows(self):
        prior = make_prior("transformer", label_dropout=0.1)
        assert prior.null_label == NUM_CLASSES
        assert tuple(prior.class_embedding.embeddings.shape) == (NUM_CLASSES + 1, 8)
        pixelcnn = make_prior("pixelcnn", label_dropout=0.1)
        assert tuple(pixelcnn.blocks[0].class_bias.embeddings.shape) == (NUM_CLASSES + 1, 16)
        for kind in KINDS:
            plain = make_prior(kind, label_dropout=0.0)
            assert plain.null_label is None and plain.seed_generator is None
            assert make_prior(kind, label_dropout=0.0, num_classes=None).null_label is None

    def test_config_round_trip_and_keras_save_load(self, guided, tmp_path):
        prior = guided
        kind = "pixelcnn" if isinstance(prior, PixelCNNPrior) else "transformer"
        config = prior.get_config()
        assert config["label_dropout"] == 0.25
        revived = type(prior).from_config(config)
        assert revived.get_config() == config and revived.null_label == NUM_CLASSES
        codes = np.zeros((B, *prior.latent_shape), "int32")
        inputs = [codes, np.array([0, 1, 2, NUM_CLASSES], "int32")]
        prior([codes, LABELS], training=True)  # advance the label-dropout draws
        loaded = self.run_model_saving_test(prior, inputs, tmp_path)  # null label included
        assert loaded.label_dropout == 0.25 and loaded.null_label == NUM_CLASSES
        # The draws' position is saved too: a resumed run drops what the first would have.
        np.testing.assert_array_equal(
            to_numpy(loaded.seed_generator.state), to_numpy(prior.seed_generator.state)
        )
        # A config saved before label dropout existed (the bundled presets) loads as before.
        old = {k: v for k, v in make_prior(kind, 0.0).get_config().items() if k != "label_dropout"}
        legacy = type(prior).from_config(old)
        assert legacy.label_dropout == 0.0 and legacy.null_label is None
        assert len(legacy.weights) == len(make_prior(kind, 0.0).weights)


class TestBadArguments:
    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_constructor(self, kind):
        with pytest.raises(ValueError, match=r"`label_dropout` must lie in \[0, 1\), got 1.0"):
            make_prior(kind, label_dropout=1.0)
        with pytest.raises(ValueError, match="label_dropout"):
            make_prior(kind, label_dropout=-0.1)
        with pytest.raises(TypeError, match="label_dropout"):
            make_prior(kind, label_dropout="0.1")
        with pytest.raises(ValueError, match="`label_dropout` needs a class-conditional"):
            make_prior(kind, label_dropout=0.1, num_classes=None)

    def test_sampling_options(self, guided):
        def sample(**kwargs):
            return guided.sample(B, labels=LABELS, **kwargs)

        for kwargs, error, match in [
            ({"top_p": 0.0}, ValueError, r"`top_p` must be in \(0, 1\], got 0.0"),
            ({"top_p": 1.5}, ValueError, "`top_p` must be in"),
            ({"top_p": "high"}, TypeError, "`top_p` must be a number"),
            ({"top_k": 0}, ValueError, "top_k"),
            ({"top_k": K + 1}, ValueError, "`top_k` must be at most num_embeddings=8"),
            ({"guidance_scale": -1.0}, ValueError, "`guidance_scale` must be in"),
            ({"guidance_scale": float("nan")}, ValueError, "`guidance_scale` must be finite"),
        ]:
            with pytest.raises(error, match=match):
                sample(**kwargs)
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\]"):
            guided.sample(B, labels=NUM_CLASSES + 1)

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_guidance_needs_a_null_label(self, kind):
        for num_classes in (NUM_CLASSES, None):
            prior = make_prior(kind, label_dropout=0.0, num_classes=num_classes)
            labels = None if num_classes is None else LABELS
            with pytest.raises(ValueError, match="`guidance_scale` needs a class-conditional"):
                prior.sample(B, labels=labels, guidance_scale=2.0)
            with pytest.raises(ValueError, match="`guidance_scale` needs"):
                generate(TinyVQVAE(), prior, B, labels=labels, guidance_scale=2.0)
        # Without a null label, the label num_classes is out of range.
        prior = make_prior(kind, label_dropout=0.0)
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 2\]"):
            prior.sample(B, labels=NUM_CLASSES)


class TestDefaultGuidance(TestCase):
    """A prior's own ``guidance_scale``: what ``sample``/``generate`` use when theirs is None."""

    def test_the_prior_default_draws_what_an_explicit_scale_draws(self, guided):
        config = guided.get_config()
        assert config["guidance_scale"] is None
        tuned = type(guided).from_config({**config, "guidance_scale": 2.5})
        tuned.set_weights(guided.get_weights())
        explicit = to_numpy(guided.sample(B, seed=7, labels=LABELS, guidance_scale=2.5))
        np.testing.assert_array_equal(to_numpy(tuned.sample(B, seed=7, labels=LABELS)), explicit)
        # An explicit scale wins; 1.0 turns guidance off (plain conditional sampling).
        plain = to_numpy(guided.sample(B, seed=7, labels=LABELS))
        off = to_numpy(tuned.sample(B, seed=7, labels=LABELS, guidance_scale=1.0))
        np.testing.assert_array_equal(off, plain)
        assert np.any(explicit != plain)
        vqvae = TinyVQVAE()
        np.testing.assert_allclose(
            to_numpy(generate(vqvae, tuned, B, seed=7, labels=LABELS)),
            to_numpy(vqvae.decode(explicit)),
        )

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_a_default_scale_round_trips_and_needs_a_null_label(self, kind, tmp_path):
        prior = make_prior(kind, guidance_scale=2.0)
        path = str(tmp_path / "prior.keras")
        prior.save(path)
        assert keras.saving.load_model(path).guidance_scale == 2.0
        with pytest.raises(ValueError, match="guidance_scale"):
            make_prior(kind, label_dropout=0.0, guidance_scale=2.0)
        with pytest.raises(ValueError, match="guidance_scale"):
            make_prior(kind, guidance_scale=-1.0)


@pytest.fixture(scope="module")
def nucleus(guided):
    """``guided`` with a stored nucleus mass 0.6 (its config plus ``top_p``, its weights)."""
    prior = type(guided).from_config({**guided.get_config(), "top_p": 0.6})
    prior.set_weights(guided.get_weights())
    return prior


class TestDefaultNucleus(TestCase):
    """A prior's own ``top_p``: what ``sample``/``generate`` use when theirs is None."""

    def test_the_prior_default_draws_what_an_explicit_top_p_draws(self, guided, nucleus):
        assert guided.get_config()["top_p"] is None and nucleus.get_config()["top_p"] == 0.6
        options = {"temperature": 1.5, "seed": 7, "labels": LABELS}
        explicit = to_numpy(guided.sample(B, top_p=0.6, **options))
        np.testing.assert_array_equal(to_numpy(nucleus.sample(B, **options)), explicit)
        assert np.any(explicit != to_numpy(guided.sample(B, **options)))  # the nucleus matters
        # An explicit top_p wins over the stored one.
        np.testing.assert_array_equal(
            to_numpy(nucleus.sample(B, top_p=0.3, **options)),
            to_numpy(guided.sample(B, top_p=0.3, **options)),
        )
        vqvae = TinyVQVAE()
        np.testing.assert_allclose(
            to_numpy(generate(vqvae, nucleus, B, **options)), to_numpy(vqvae.decode(explicit))
        )

    def test_top_p_one_in_a_call_turns_the_default_off(self, guided, nucleus):
        options = {"temperature": 1.5, "seed": 7, "labels": LABELS}
        np.testing.assert_array_equal(
            to_numpy(nucleus.sample(B, top_p=1.0, **options)),
            to_numpy(guided.sample(B, **options)),
        )
        assert nucleus.sampling_options(top_p=1.0)["top_p"] is None

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_a_default_top_p_round_trips(self, kind, tmp_path):
        prior = make_prior(kind, top_p=0.9, guidance_scale=1.25)
        assert prior.sampling_options() == {"top_k": None, "top_p": 0.9, "guidance_scale": 1.25}
        config = prior.get_config()
        assert config["top_p"] == 0.9 and type(prior).from_config(config).top_p == 0.9
        path = tmp_path / "prior.keras"
        prior.save(path)
        loaded = keras.saving.load_model(path)
        assert (loaded.top_p, loaded.guidance_scale) == (0.9, 1.25)
        # 1 keeps every code: stored as None, as sampling_options normalises it.
        assert make_prior(kind, top_p=1.0).get_config()["top_p"] is None

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_a_config_saved_before_top_p_existed_loads_without_one(self, kind, tmp_path):
        config = make_prior(kind, top_p=0.9).get_config()
        old = {k: v for k, v in config.items() if k != "top_p"}
        assert type(make_prior(kind)).from_config(old).top_p is None
        # A .keras file written without the key (as the bundled presets were).
        path = tmp_path / "old.keras"
        make_prior(kind, top_p=0.9).save(path)
        rewritten = tmp_path / "rewritten.keras"
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w") as target:
            for item in source.infolist():
                data = source.read(item)
                if item.filename == "config.json":
                    saved = json.loads(data)
                    assert saved["config"].pop("top_p") == 0.9
                    data = json.dumps(saved).encode()
                target.writestr(item, data)
        loaded = keras.saving.load_model(rewritten)
        assert loaded.top_p is None and loaded.sampling_options()["top_p"] is None

    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_a_bad_default_top_p_is_refused(self, kind):
        for value, error, match in [
            (0.0, ValueError, r"`top_p` must be in \(0, 1\], got 0.0"),
            (1.5, ValueError, r"`top_p` must be in \[0.0, 1.0\], got 1.5"),
            (float("nan"), ValueError, "`top_p` must be finite"),
            ("high", TypeError, "`top_p` must be a number"),
        ]:
            with pytest.raises(error, match=match):
                make_prior(kind, top_p=value)
