"""Out-of-range codes and labels raise the same one-line ValueError from fit/evaluate/predict
on every backend (JAX once trained silently on NaN, torch wrapped the message), and the model
stays usable afterwards."""

import numpy as np
import pytest

from keras_vq.models import PixelCNNPrior

RNG = np.random.default_rng(3)


def _prior(num_classes=None) -> PixelCNNPrior:
    prior = PixelCNNPrior(
        8, (3, 4), num_layers=1, filters=4, kernel_size=3, num_classes=num_classes
    )
    prior.compile(optimizer="adam")
    return prior


def _codes(n: int = 16) -> np.ndarray:
    return RNG.integers(0, 8, size=(n, 3, 4)).astype("int32")


@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
@pytest.mark.parametrize("bad_value", [8, -1])
def test_out_of_range_codes_raise_in_compiled_loops(method, bad_value):
    prior = _prior()
    codes = _codes()
    bad = codes.copy()
    bad[11, 2, 3] = bad_value  # in the second batch, after a good one
    with pytest.raises(ValueError) as error:
        getattr(prior, method)(bad, batch_size=8, verbose=0)
    second = bad[8:]  # the rejected batch: the message is its range, one clean line
    assert str(error.value) == (
        f"`codes` must lie in [0, 7] (num_embeddings=8), got values in "
        f"[{second.min()}, {second.max()}]."
    )
    # The model still trains on good data, with a finite loss.
    history = prior.fit(codes, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_out_of_range_labels_raise_in_compiled_loops(method):
    prior = _prior(num_classes=3)
    codes, labels = _codes(), RNG.integers(0, 3, size=(16,)).astype("int32")
    bad = labels.copy()
    bad[12] = 3
    with pytest.raises(ValueError) as error:
        if method == "predict":
            prior.predict([codes, bad], batch_size=8, verbose=0)
        else:
            getattr(prior, method)(codes, bad, batch_size=8, verbose=0)
    # The same one line on every backend (torch once wrapped it: "Exception encountered when
    # calling PixelCNNPrior.call()", ANSI codes, a dump of the tensors).
    second = bad[8:]
    assert str(error.value) == (
        f"`labels` must lie in [0, 2] (num_classes=3), got values in "
        f"[{second.min()}, {second.max()}]."
    )
    history = prior.fit(codes, labels, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_eager_call_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"got values in \[0, 9\]"):
        _prior()(np.array([[[0, 1, 2, 9]] * 3], "int32"))


@pytest.mark.parametrize("first_batch", ["out_of_range", "wrong_dtype"])
def test_model_trains_after_a_rejected_first_batch(first_batch):
    """A step function whose very first call failed is rebuilt, not reused half-traced."""
    prior = _prior()
    codes = _codes()
    bad = codes.copy()
    if first_batch == "out_of_range":
        bad[0, 0, 0] = 8
        error = ValueError
    else:
        bad = bad.astype("float32")
        error = TypeError
    with pytest.raises(error):
        prior.fit(bad, batch_size=8, epochs=1, verbose=0)
    history = prior.fit(codes, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(prior.evaluate(codes, batch_size=8, verbose=0)).all()
