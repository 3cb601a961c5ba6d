"""keras_vq: VAE, VQ-VAE and PixelCNN priors for Keras 3 on TensorFlow, JAX and PyTorch."""

# Keras first: with the torch backend it imports torch before anything imports TensorFlow,
# the order that avoids a known crash when both live in one process.
import keras  # noqa: F401

from keras_vq import data, export, layers, losses, metrics, models

__version__ = "0.1.0"

__all__ = ["__version__", "data", "export", "layers", "losses", "metrics", "models"]
