"""Helpers the autoencoders share: shapes, custom networks, (de)serialisation, reductions."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vq import _validation
from keras_vq.models import networks


def resolve_input_shape(input_shape, encoder, filters):
    """The image shape from ``input_shape`` or, failing that, from a custom encoder."""
    if input_shape is not None:
        if encoder is not None:
            return tuple(int(d) for d in input_shape)
        return networks.check_input_shape(input_shape, filters)
    if encoder is not None:
        try:
            shape = tuple(encoder.inputs[0].shape[1:])
        except (AttributeError, IndexError, TypeError, ValueError):
            shape = ()
        if shape and all(d is not None for d in shape):
            return shape
    raise ValueError(
        "`input_shape` is required (e.g. input_shape=(32, 32, 1)) unless `encoder` is a "
        "built model with a known input shape."
    )


def check_image_batch(images, image_shape) -> None:
    """Static checks of an image batch (dtype, shape): no values read, nothing converted."""
    if not hasattr(images, "shape"):  # nested lists
        images = np.asarray(images)
    _validation.check_image_dtype("images", images)
    _validation.check_images("images", images, image_shape)


def checked_images(images, image_shape, finite: bool = False, unit_interval: bool = False):
    """``images`` as a tensor after checking its shape and dtype (and, if asked, its values).

    Integer dtypes (uint8 0-255 pixels) are always rejected: the dtype is static, so this
    holds inside traced training steps too. ``finite`` and ``unit_interval`` read values
    back, so only public eager methods ask for them; they are skipped while tracing.

    Args:
        images: the batch ``(B, *image_shape)``.
        image_shape: expected shape without the batch axis (``None`` entries unchecked).
        finite: reject NaN and Inf.
        unit_interval: reject values outside ``[0, 1]`` (up to 1e-6 of round-off).

    Returns:
        ``images`` as a backend tensor.

    Raises:
        TypeError: a non-float dtype. ValueError: wrong shape or (when asked) bad values.
    """
    check_image_batch(images, image_shape)
    tensor = ops.convert_to_tensor(images)
    # NumPy input is checked as is: no round trip through the device.
    values = images if isinstance(images, np.ndarray) else tensor
    if finite:
        _validation.check_finite("images", values)
    if unit_interval:
        _validation.check_unit_interval("images", values)
    return tensor


def check_networks(encoder, decoder) -> bool:
    """Both or neither custom network; each a ``keras.Model`` or ``Layer``."""
    for name, net in (("encoder", encoder), ("decoder", decoder)):
        if net is not None and not isinstance(net, keras.layers.Layer):
            raise TypeError(f"`{name}` must be a keras.Model or Layer, got {type(net).__name__}.")
    if (encoder is None) != (decoder is None):
        raise ValueError(
            "Pass both `encoder` and `decoder` or neither (the default networks are built as a "
            "matching pair)."
        )
    return encoder is not None


class ConfigFromAttributes:
    """``get_config`` = the constructor arguments, read from the attributes that hold them.

    A model lists ``_config_attributes`` as ``{argument: attribute}``; custom encoder and
    decoder networks are serialised with it and rebuilt by ``from_config``.
    """

    _config_attributes: dict[str, str] = {}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({arg: getattr(self, attr) for arg, attr in self._config_attributes.items()})
        config.update(serialize_networks(self))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_networks(config))


def serialize_networks(model) -> dict[str, Any]:
    if not model._custom_networks:
        return {"encoder": None, "decoder": None}
    return {
        "encoder": keras.saving.serialize_keras_object(model.encoder),
        "decoder": keras.saving.serialize_keras_object(model.decoder),
    }


def deserialize_networks(config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config)
    for key in ("encoder", "decoder"):
        if isinstance(config.get(key), dict):
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def per_example_mse(target, prediction):
    """Mean squared error over all but the batch axis, float32 ``(batch,)``."""
    err = ops.square(ops.cast(target, "float32") - ops.cast(prediction, "float32"))
    return ops.mean(ops.reshape(err, (ops.shape(err)[0], -1)), axis=-1)


def weighted_mean(per_example, sample_weight=None):
    """Batch mean, weighted by ``sample_weight`` when given."""
    if sample_weight is None:
        return ops.mean(per_example)
    weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.sum(per_example * weight) / ops.maximum(ops.sum(weight), 1e-12)


def sum_losses(losses):
    """Sum of ``add_loss`` terms as a float32 scalar (0 when there are none)."""
    if not losses:
        return ops.zeros((), dtype="float32")
    return ops.sum(ops.stack([ops.cast(ops.sum(x), "float32") for x in losses]))
