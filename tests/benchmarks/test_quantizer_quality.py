"""The pieces of ``benchmarks/quantizer_quality.py`` that the FSQ usage figure rests on."""

from __future__ import annotations

import keras
import numpy as np

from benchmarks import defaults, quantizer_quality
from keras_vq.layers import FiniteScalarQuantizer
from tests.test_case import to_numpy


def test_fsq_target_is_read_from_the_generated_digits_model():
    results = {
        quantizer_quality.FSQ_TARGET_MODEL: {"used_fraction": 0.93},
        "fsq_8555_scaled": {"used_fraction": 0.2},
    }
    target = quantizer_quality.targets(results)["fsq_used_fraction"]
    assert target["value"] == 0.93 and target["met"]
    results[quantizer_quality.FSQ_TARGET_MODEL]["used_fraction"] = 0.85
    assert not quantizer_quality.targets(results)["fsq_used_fraction"]["met"]


def test_heldout_renders_start_with_make_data_heldout_set_a():
    train, heldout = quantizer_quality.generated_digits(seed=0, copies=3, train_images=8)
    reference_train, heldout_a, _ = defaults.make_data(seed=0, train_images=8)
    np.testing.assert_array_equal(train, reference_train)
    assert len(heldout) == 3 * len(heldout_a) // 2
    np.testing.assert_array_equal(heldout[: len(heldout_a)], heldout_a)
    assert not np.allclose(heldout[len(heldout_a) :][:10], heldout_a[:10])


def test_batchnorm_head_spreads_a_fresh_encoder_over_the_fsq_levels():
    keras.utils.set_random_seed(0)
    levels = [8, 5, 5, 5]
    images = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype("float32")
    nets = quantizer_quality.fsq_networks("fsq_8555_bn", (28, 28, 1), len(levels))
    scaled = quantizer_quality.fsq_networks("fsq_8555_scaled", (28, 28, 1), len(levels))
    z = to_numpy(nets["encoder"](images, training=True)).reshape(-1, len(levels))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-3)
    # Unit variance up to BN's ε = 1e-3, not small against a fresh encoder's variance (~0.002).
    assert np.all((z.std(axis=0) > 0.5) & (z.std(axis=0) <= 1.0))
    fsq = FiniteScalarQuantizer(levels)
    levels_used = to_numpy(fsq.level_indices(fsq.encode(z)))
    # Unit-variance channels reach at least 4 of the 5 (8) levels; a fresh encoder without
    # a head rounds (almost) everything to one level.
    assert all(len(np.unique(levels_used[:, c])) >= 4 for c in range(len(levels)))
    assert to_numpy(scaled["encoder"](images)).shape == (16, 7, 7, len(levels))
