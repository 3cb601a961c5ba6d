"""The pieces of ``benchmarks/fsq_usage.py`` that its usage figures rest on."""

from __future__ import annotations

import numpy as np

from benchmarks import fsq_usage


def test_distinct_images_keeps_each_repeated_image_once_in_first_order():
    # mnist5k repeats each training digit; usage on "n distinct digits" must count each once.
    rng = np.random.default_rng(0)
    digits = rng.uniform(size=(5, 4, 4, 1)).astype("float32")
    order = np.array([3, 1, 3, 0, 1, 4, 3, 2, 0, 4, 2])
    distinct = fsq_usage.distinct_images(digits[order])
    np.testing.assert_array_equal(distinct, digits[[3, 1, 0, 4, 2]])
    # Two images that differ in one pixel are both kept.
    twin = digits[:1].copy()
    twin[0, 2, 2, 0] += 0.5
    assert len(fsq_usage.distinct_images(np.concatenate([digits, twin, digits]))) == 6
