"""Shared pytest set-up: one backend per process (KERAS_BACKEND), quiet TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# keras first: with the torch backend it imports torch before TensorFlow (avoids a crash).
import keras
import pytest


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32 policy, a fixed seed and no leftover names."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1337)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def digits():
    """The real 8×8 scikit-learn digits as float32 images in [0, 1] and int32 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    return images, data.target.astype("int32")
