"""The pieces of ``benchmarks/defaults.py`` and ``time_to_quality.py`` that figures rest on."""

from __future__ import annotations

import numpy as np

from benchmarks import defaults, time_to_quality
from tests.test_case import to_numpy


def test_generated_digits_are_images_and_depend_on_the_seed():
    train, heldout_a, heldout_b = defaults.make_data(seed=0, train_images=40)
    assert train.shape == (40, 28, 28, 1)
    assert (
        heldout_a.shape == heldout_b.shape == (2 * len(defaults._source_digits("test")), 28, 28, 1)
    )
    for x in (train, heldout_a, heldout_b):
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        assert 0.05 < x.mean() < 0.4  # digits on a dark background, not blank or saturated
    np.testing.assert_array_equal(train, defaults.make_data(seed=0, train_images=40)[0])
    assert not np.allclose(train, defaults.make_data(seed=1, train_images=40)[0])

    # Set b's thin, steep strokes have fewer mid-grey pixels than set a's.
    def grey(x):
        return np.mean((x > 0.2) & (x < 0.8))

    assert grey(heldout_b) < grey(heldout_a)


def debiased_ema(values, gamma):
    """Sonnet's zero-start EMA divided by 1 - γᵗ, straight from its definition."""
    average = np.zeros_like(values[0])
    for value in values:
        average = gamma * average + (1 - gamma) * value
    return average / (1 - gamma ** len(values))


def test_zero_start_ema_lever_matches_the_bias_corrected_average():
    gamma, k = 0.99, 4
    vq = defaults._patched_quantizer({"_ema_start": "zero"})(
        num_embeddings=k, embedding_dim=2, ema_decay=gamma
    )
    rng = np.random.default_rng(0)
    vq.build((None, 2))
    vq.set_codebook(rng.normal(size=(k, 2)).astype("float32") * 3)
    counts, sums = [], []
    for _ in range(3):
        x = rng.normal(size=(64, 2)).astype("float32") * 3
        codebook = to_numpy(vq.codebook)
        assigned = np.argmin(((x[:, None] - codebook[None]) ** 2).sum(-1), axis=1)
        counts.append(np.bincount(assigned, minlength=k).astype("float64"))
        sums.append(np.stack([x[assigned == j].sum(0) for j in range(k)]).astype("float64"))
        vq(x, training=True)
        # Bias-corrected: after the first step a used code sits on its batch mean.
        size, total = debiased_ema(counts, gamma), debiased_ema(sums, gamma)
        used = size > 0
        np.testing.assert_allclose(to_numpy(vq.ema_cluster_size), size, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            to_numpy(vq.codebook)[used], (total / size[:, None])[used], rtol=1e-4, atol=1e-5
        )


def test_summary_ranks_by_mean_heldout_mse():
    records = [
        {"config": "x", "mse_a": 0.004, "mse_b": 0.008, "used_a": 100, "used_b": 90},
        {"config": "x", "mse_a": 0.002, "mse_b": 0.006, "used_a": 110, "used_b": 100},
        {"config": "y", "mse_a": 0.003, "mse_b": 0.005},
        {"config": "z", "error": "boom"},
    ]
    ranking = defaults.summarise(records)["ranking"]
    assert [row["config"] for row in ranking] == ["y", "x"]
    assert ranking[1] == {
        "config": "x",
        "runs": 2,
        "mse_a": 0.003,
        "mse_b": 0.007,
        "used_a": 105.0,
        "used_b": 95.0,
        "mse": 0.005,
    }


def test_first_time_at_target():
    points = [(1.0, 0.02), (2.0, 0.009), (3.0, 0.011), (4.0, 0.005)]
    assert time_to_quality.first_time_at(points, 0.01) == 2.0
    assert time_to_quality.first_time_at(points, 0.005) == 4.0
    assert time_to_quality.first_time_at(points, 0.001) is None
    # Evaluations every 10 steps: the second point is step 20.
    assert time_to_quality.first_step_at(points, 0.01, every=10) == 20
    assert time_to_quality.first_step_at(points, 0.005, every=10) == 40
    assert time_to_quality.first_step_at(points, 0.001, every=10) is None


def test_mnist5k_split_keeps_heldout_digits_out_of_training(monkeypatch):
    # Each stand-in digit is filled with its own index, so images can be traced to digits.
    digits = np.arange(50, dtype="float32")[:, None, None, None] * np.ones((1, 28, 28, 1))
    monkeypatch.setattr(defaults, "mnist5k_digits", lambda: digits.astype("float32"))
    train, held = defaults.make_mnist5k_data(seed=0, train_images=90, heldout=10)
    assert train.shape == (90, 28, 28, 1) and held.shape == (10, 28, 28, 1)
    train_ids, held_ids = set(train[:, 0, 0, 0].tolist()), set(held[:, 0, 0, 0].tolist())
    assert len(held_ids) == 10 and not train_ids & held_ids
    assert train_ids | held_ids == set(range(50))  # every training digit is used
    # 40 training digits repeated to 90 images: each twice or three times.
    counts = np.bincount(train[:, 0, 0, 0].astype(int), minlength=50)[
        sorted(int(i) for i in train_ids)
    ]
    assert counts.min() == 2 and counts.max() == 3
    again, again_held = defaults.make_mnist5k_data(seed=0, train_images=90, heldout=10)
    np.testing.assert_array_equal(train, again)
    np.testing.assert_array_equal(held, again_held)
    other = defaults.make_mnist5k_data(seed=1, train_images=90, heldout=10)[1]
    assert set(other[:, 0, 0, 0].tolist()) != held_ids
    more = np.zeros((1100, 28, 28, 1), "float32")
    monkeypatch.setattr(defaults, "mnist5k_digits", lambda: more)
    train, sets = defaults.heldout_sets("mnist5k", seed=0, train_images=90)
    assert list(sets) == ["mnist"] and sets["mnist"].shape[0] == 1000 and len(train) == 90


def test_summary_averages_whatever_heldout_sets_a_run_has():
    records = [
        {"config": "x", "mse_mnist": 0.004, "used_mnist": 120},
        {"config": "x", "mse_mnist": 0.006, "used_mnist": 128},
    ]
    (row,) = defaults.summarise(records)["ranking"]
    assert row == {"config": "x", "runs": 2, "mse_mnist": 0.005, "used_mnist": 124.0, "mse": 0.005}
