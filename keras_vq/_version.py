"""The package version (one place: keras_vq.__version__ and preset metadata read it)."""

__version__ = "0.1.0"
