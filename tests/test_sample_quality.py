"""Sample quality: the Fréchet distance against SciPy's sqrtm, precision and recall against a
brute-force double loop, the bundled digits classifier on held-out digits, and
``sample_quality`` on real digits against noise."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import scipy.linalg

from keras_vq import data, evaluation, presets
from keras_vq.models import DigitClassifier
from tests.test_case import TestCase, to_numpy

# --------------------------------------------------------------------------- oracles


def scipy_frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook FID computation: tr(sqrtm(Σ_a Σ_b)), its real part."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # singular for N <= d or dead ReLU features: expected
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    mean = np.sum((a.mean(0) - b.mean(0)) ** 2)
    return float(mean + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(root).real)


def brute_force_precision_recall(real: np.ndarray, generated: np.ndarray, k: int) -> tuple:
    def radii(points):
        out = []
        for i, p in enumerate(points):
            distances = sorted(
                np.sqrt(np.sum((p - q) ** 2)) for j, q in enumerate(points) if j != i
            )
            out.append(distances[k - 1])
        return out

    def share(queries, points):
        r = radii(points)
        inside = 0
        for q in queries:
            inside += any(np.sqrt(np.sum((q - p) ** 2)) <= r[j] for j, p in enumerate(points))
        return inside / len(queries)

    return share(generated, real), share(real, generated)


def correlated(rng, n, d, scale=1.0, shift=0.0):
    mixing = rng.normal(size=(d, d)) * scale
    return rng.normal(size=(n, d)) @ mixing + shift


# --------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize(("n_a", "n_b", "d"), [(200, 150, 6), (40, 60, 1)])
def test_frechet_distance_matches_scipy_sqrtm(n_a, n_b, d):
    rng = np.random.default_rng(0)
    a = correlated(rng, n_a, d)
    b = correlated(rng, n_b, d, scale=0.7, shift=0.5)
    expected = scipy_frechet_distance(a, b)
    assert expected > 0.1
    np.testing.assert_allclose(evaluation.frechet_distance(a, b), expected, rtol=1e-9)


def test_frechet_distance_of_rank_deficient_covariances_matches_scipy():
    """N < d: both covariances are singular (rank 4 and 6 of 10)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 10)), rng.normal(size=(7, 10)) * 2.0 + 0.3
    expected = scipy_frechet_distance(a, b)
    np.testing.assert_allclose(evaluation.frechet_distance(a, b), expected, rtol=1e-6)


def test_frechet_distance_of_a_set_to_itself_is_zero_and_it_is_symmetric():
    rng = np.random.default_rng(2)
    a, b = correlated(rng, 100, 8), correlated(rng, 80, 8, shift=1.0)
    scale = np.trace(np.cov(a, rowvar=False))
    assert 0.0 <= evaluation.frechet_distance(a, a) < 1e-10 * scale
    assert evaluation.frechet_distance(a[:3], a[:3]) < 1e-10 * scale  # rank 2 of 8
    np.testing.assert_allclose(
        evaluation.frechet_distance(a, b), evaluation.frechet_distance(b, a), rtol=1e-10
    )


def test_frechet_distance_of_unit_gaussians_is_the_squared_mean_shift():
    """Large samples of N(0, I) and N(m, I): FD → ||m||² (the covariance terms vanish)."""
    rng = np.random.default_rng(3)
    shift = np.array([1.0, 0.0, 2.0, 0.0])
    a, b = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + shift
    np.testing.assert_allclose(evaluation.frechet_distance(a, b), 5.0, rtol=0.02)


def test_frechet_distance_takes_backend_tensors_and_float32():
    rng = np.random.default_rng(4)
    a, b = correlated(rng, 50, 3).astype("float32"), correlated(rng, 60, 3).astype("float32")
    expected = scipy_frechet_distance(a, b)
    got = evaluation.frechet_distance(keras.ops.convert_to_tensor(a), keras.ops.array(b))
    assert isinstance(got, float)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), r"same number of features.*\(5, 3\).*\(5, 4\)"),
        (np.zeros((1, 3)), np.zeros((5, 3)), r"`features_a`.*at least 2 rows.*\(1, 3\)"),
        (np.zeros((5, 3)), np.zeros((5, 3, 1)), r"`features_b`.*\(N, d\).*\(5, 3, 1\)"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), r"`features_a` contains 15 NaN or Inf"),
    ],
)
def test_frechet_distance_rejects_bad_features(a, b, match):
    with pytest.raises(ValueError, match=match):
        evaluation.frechet_distance(a, b)


# --------------------------------------------------------------------------- precision, recall


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_a_brute_force_double_loop(k):
    rng = np.random.default_rng(5)
    real = rng.normal(size=(40, 3))
    generated = np.concatenate([rng.normal(size=(20, 3)) * 0.5, rng.normal(size=(15, 3)) + 2.5])
    precision, recall = brute_force_precision_recall(real, generated, k)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0  # the test can tell them apart
    got = evaluation.precision_recall(real, generated, k=k)
    assert got == {"precision": precision, "recall": recall}


def test_precision_recall_blocks_give_the_same_answer(monkeypatch):
    """Distance blocks of a few rows (memory-bounded path) give the one-block answer."""
    from keras_vq import sample_quality as module

    rng = np.random.default_rng(6)
    real, generated = rng.normal(size=(50, 4)), rng.normal(size=(30, 4)) * 1.5
    whole = evaluation.precision_recall(real, generated)
    monkeypatch.setattr(module, "_DISTANCE_BLOCK_BYTES", 8 * 50 * 3)  # 3 or 5 rows a block
    assert evaluation.precision_recall(real, generated) == whole


def test_precision_recall_of_disjoint_sets_are_zero_and_of_one_set_one():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(30, 2))
    assert evaluation.precision_recall(real, real + 100.0) == {"precision": 0.0, "recall": 0.0}
    assert evaluation.precision_recall(real, real[::-1]) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_rejects_too_few_points_and_bad_k():
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match=r"`generated_features`.*at least 4 rows"):
        evaluation.precision_recall(rng.normal(size=(10, 2)), rng.normal(size=(3, 2)), k=3)
    with pytest.raises(ValueError, match="`k` must be >= 1"):
        evaluation.precision_recall(rng.normal(size=(10, 2)), rng.normal(size=(10, 2)), k=0)
    with pytest.raises(ValueError, match="same number of features"):
        evaluation.precision_recall(rng.normal(size=(10, 2)), rng.normal(size=(10, 3)))


# --------------------------------------------------------------------------- the classifier


@pytest.fixture(scope="module")
def test_digits():
    """The held-out digits (359) and their labels."""
    dataset = data.load("digits", split="test", image_size=32, shuffle=False, with_labels=True)
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def classifier():
    return DigitClassifier.from_preset("digits_classifier")


def test_bundled_classifier_reaches_its_recorded_held_out_accuracy(classifier, test_digits):
    images, labels = test_digits
    recorded = presets.metadata("digits_classifier")["metrics"]["test_accuracy"]
    assert recorded >= 0.98
    probabilities = to_numpy(classifier.predict_proba(images))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    accuracy = np.mean(probabilities.argmax(-1) == labels)
    assert abs(accuracy - recorded) < 1.5 / len(labels)  # the same images, another backend
    assert classifier.count_params() * 4 < 1e6


def test_classifier_features_are_its_penultimate_layer(classifier, test_digits):
    """logits = features @ W + b: the features feed the last layer (dropout is off)."""
    images = test_digits[0][:16]
    features = to_numpy(classifier.features(images))
    assert features.shape == (16, classifier.feature_dim) and np.all(features >= 0)
    kernel, bias = (to_numpy(w) for w in classifier.head.weights)
    logits = to_numpy(classifier(images, training=False))
    np.testing.assert_allclose(features @ kernel + bias, logits, rtol=1e-4, atol=1e-4)


def test_classifier_rejects_images_of_another_shape_and_integer_pixels(classifier):
    with pytest.raises(ValueError, match=r"`images`.*\(batch, 32, 32, 1\).*\(2, 28, 28, 1\)"):
        classifier.features(np.zeros((2, 28, 28, 1), "float32"))
    with pytest.raises(TypeError, match="floating-point"):
        classifier.predict_proba(np.zeros((2, 32, 32, 1), "uint8"))


class TestDigitClassifier(TestCase):
    def test_config_and_keras_file_round_trip_and_it_trains(self, tmp_path):
        model = DigitClassifier(
            input_shape=(12, 12, 1), num_classes=3, filters=(4, 8), feature_dim=5
        )
        rng = np.random.default_rng(10)
        for weight in model.weights:  # random biases too: zero biases hide bugs
            weight.assign(rng.normal(0.0, 0.3, tuple(weight.shape)).astype("float32"))
        revived = DigitClassifier.from_config(model.get_config())
        assert revived.get_config() == model.get_config()
        images = rng.random((6, 12, 12, 1)).astype("float32")
        revived = self.run_model_saving_test(model, images, tmp_path)
        self.assertAllClose(revived.features(images), model.features(images))
        before = to_numpy(model.head.kernel)
        model.compile(
            optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(images, np.array([0, 1, 2, 0, 1, 2]), epochs=1, batch_size=6, verbose=0)
        assert not np.allclose(to_numpy(model.head.kernel), before)
        with pytest.raises(ValueError, match="`num_classes` must be >= 2"):
            DigitClassifier(num_classes=1)


# --------------------------------------------------------------------------- sample_quality


@pytest.fixture(scope="module")
def train_digits():
    """500 training digits and their labels (unshuffled)."""
    dataset = data.load("digits", split="train[:500]", image_size=32, shuffle=False)
    labelled = data.load(
        "digits", split="train[:500]", image_size=32, shuffle=False, with_labels=True
    )
    images = np.concatenate(list(dataset.as_numpy_iterator()))
    labels = np.concatenate([y for _, y in labelled.as_numpy_iterator()])
    return images, labels


@pytest.fixture(scope="module")
def real_vs_real(train_digits, test_digits):
    images, labels = train_digits
    return evaluation.sample_quality(images, test_digits[0], labels=labels)


def test_sample_quality_of_real_digits_is_far_better_than_of_noise(
    real_vs_real, train_digits, test_digits
):
    rng = np.random.default_rng(9)
    images = train_digits[0]
    # The same pixel values, shuffled within each image: digit statistics, no digit shapes.
    flat = images.reshape(len(images), -1)
    noise = np.take_along_axis(flat, rng.permuted(np.tile(np.arange(1024), (500, 1)), axis=1), 1)
    noisy = evaluation.sample_quality(noise.reshape(images.shape), test_digits[0])
    real = real_vs_real
    assert set(real) == {
        "fd",
        "precision",
        "recall",
        "confident_share",
        "class_histogram",
        "accuracy",
    }
    assert set(noisy) == set(real) - {"accuracy"}
    assert real["fd"] * 10 < noisy["fd"]
    assert real["accuracy"] > 0.97 and real["confident_share"] > 0.85
    assert real["precision"] > 0.8 and real["recall"] > 0.7
    # k-NN precision is lenient with junk near real outliers (their radii are wide): 0.29.
    assert noisy["precision"] < 0.5 and noisy["recall"] < 0.05
    assert sum(real["class_histogram"]) == 500 and min(real["class_histogram"]) > 30
    recorded = presets.metadata("digits_classifier")["metrics"]  # the same 500 and 359 images
    for key in ("fd", "precision", "recall", "confident_share", "accuracy"):
        np.testing.assert_allclose(real[key], recorded[f"test_real_{key}"], rtol=1e-3, atol=2e-3)
    assert max(noisy["class_histogram"]) > 250  # noise lands in few classes


def test_sample_quality_matches_its_parts_on_the_classifier_features(
    real_vs_real, train_digits, test_digits, classifier
):
    images, labels = train_digits
    generated = to_numpy(classifier.features(images))
    real = to_numpy(classifier.features(test_digits[0]))
    probabilities = to_numpy(classifier.predict_proba(images))
    np.testing.assert_allclose(
        real_vs_real["fd"], scipy_frechet_distance(generated, real), rtol=1e-4
    )
    np.testing.assert_allclose(
        real_vs_real["confident_share"], np.mean(probabilities.max(-1) > 0.9), atol=0.005
    )
    np.testing.assert_allclose(
        real_vs_real["accuracy"], np.mean(probabilities.argmax(-1) == labels), atol=0.005
    )


def test_sample_quality_clips_a_decoders_small_overshoot(train_digits, test_digits):
    """Values a little outside [0, 1] are judged as clipped (as the pictures show them)."""
    images, real = train_digits[0][:40], test_digits[0][:40]
    overshoot = np.where(images > 0.5, images + 0.2, images - 0.2).astype("float32")
    np.testing.assert_equal(
        evaluation.sample_quality(overshoot, real),
        evaluation.sample_quality(np.clip(overshoot, 0.0, 1.0), real),
    )


def test_sample_quality_takes_any_keras_model_as_feature_model(train_digits, test_digits):
    """A plain model's flattened outputs are the features; no classifier entries."""
    inputs = keras.Input((32, 32, 1))
    pooled = keras.layers.AveragePooling2D(8)(inputs)  # 4×4×1: a 16-d feature
    model = keras.Model(inputs, pooled)
    generated, real = train_digits[0][:60], test_digits[0][:80]
    quality = evaluation.sample_quality(generated, keras.ops.convert_to_tensor(real), model)
    assert set(quality) == {"fd", "precision", "recall"}

    def pool(x):
        return x.reshape(len(x), 4, 8, 4, 8).mean(axis=(2, 4)).reshape(len(x), -1)

    np.testing.assert_allclose(
        quality["fd"], scipy_frechet_distance(pool(generated), pool(real)), rtol=1e-4
    )
    expected = brute_force_precision_recall(pool(real), pool(generated), 3)
    assert (quality["precision"], quality["recall"]) == pytest.approx(expected, abs=0.02)
    with pytest.raises(ValueError, match="`labels` needs a classifier"):
        evaluation.sample_quality(generated, real, model, labels=np.zeros(60, "int32"))


def test_sample_quality_rejects_bad_images_and_labels(train_digits, test_digits):
    real = test_digits[0][:20]
    good = train_digits[0][:20]
    with pytest.raises(ValueError, match=r"`generated`.*\(batch, 32, 32, 1\).*\(20, 28, 28, 1\)"):
        evaluation.sample_quality(np.zeros((20, 28, 28, 1), "float32"), real)
    with pytest.raises(ValueError, match=r"`real`.*\(batch, 32, 32, 1\).*\(20, 32, 32, 3\)"):
        evaluation.sample_quality(good, np.zeros((20, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match=r"`generated` must lie in \[0, 1\]"):
        evaluation.sample_quality(good * 255.0, real)
    with pytest.raises(ValueError, match=r"`real` must lie in \[0, 1\].*\[-1, 1\]"):
        evaluation.sample_quality(good, real * 2.0 - 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        evaluation.sample_quality((good * 255).astype("uint8"), real)
    with pytest.raises(ValueError, match="more than k=3 images"):
        evaluation.sample_quality(good[:3], real)
    with pytest.raises(ValueError, match=r"`labels` must be 20 integer class labels"):
        evaluation.sample_quality(good, real, labels=np.zeros(19, "int32"))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 10\)"):
        evaluation.sample_quality(good, real, labels=np.full(20, 10))
