"""keras_vq: VAE, VQ-VAE and PixelCNN priors for Keras 3 on TensorFlow, JAX and PyTorch."""

import importlib

# Keras first: with the torch backend it imports torch before anything imports TensorFlow,
# the order that avoids a known crash when both live in one process.
import keras  # noqa: F401

from keras_vq import (
    callbacks,
    evaluation,
    layers,
    losses,
    metrics,
    models,
    saving,
    visualization,
)
from keras_vq._version import __version__

# tf.data pipelines and SavedModel export need TensorFlow; on JAX and torch it is imported
# (~5 s) only when `keras_vq.data` or `keras_vq.export` is first used.
_LAZY_MODULES = ("data", "export")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        module = importlib.import_module(f"keras_vq.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_vq' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY_MODULES])


__all__ = [
    "__version__",
    "callbacks",
    "data",
    "evaluation",
    "export",
    "layers",
    "losses",
    "metrics",
    "models",
    "saving",
    "visualization",
]
