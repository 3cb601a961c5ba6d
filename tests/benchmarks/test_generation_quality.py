"""The pieces of ``benchmarks/generation_quality.py``'s independent judges."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import generation_quality


@pytest.fixture(scope="module")
def judges():
    # A few MLP epochs suffice to check the arithmetic (the benchmark trains to convergence).
    return generation_quality.IndependentJudges(seed=0, max_iter=3)


def test_to8_inverts_a_4x4_block_upsampling_onto_the_0_to_16_scale():
    digits = np.random.default_rng(0).uniform(size=(3, 8, 8))
    upsampled = np.kron(digits, np.ones((4, 4)))[..., None].astype("float32")
    np.testing.assert_allclose(
        generation_quality.to8(upsampled), digits.reshape(3, 64) * 16.0, rtol=1e-6
    )


def test_mlp_features_are_the_layer_that_scikit_learn_classifies_from(judges):
    pixels = np.random.default_rng(1).uniform(0.0, 16.0, size=(7, 64))
    features = judges.features(pixels)
    assert features.shape == (7, generation_quality._MLP_HIDDEN[-1]) and features.min() >= 0
    logits = features @ judges.mlp.coefs_[-1] + judges.mlp.intercepts_[-1]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, judges.mlp.predict_proba(pixels / 16.0), atol=1e-12)


def test_svc_scores_count_correct_and_confident_answers(judges):
    from keras_vq.data import _digits_arrays

    images, labels, train = _digits_arrays()
    test = np.setdiff1d(np.arange(len(images)), train)[:40]
    pixels = images[test].reshape(len(test), 64).astype("float64")
    probabilities = judges.svc.predict_proba(pixels)
    predicted = judges.svc.classes_[probabilities.argmax(axis=1)]
    wrong = (labels[test] + 1) % 10
    record = judges.classify(pixels, labels[test])
    assert record["svc_accuracy"] == round(float(np.mean(predicted == labels[test])), 4) > 0.9
    assert judges.classify(pixels, wrong)["svc_accuracy"] < 0.1
    confident = round(float(np.mean(probabilities.max(axis=1) > 0.9)), 4)
    assert record["svc_confident_share"] == confident
