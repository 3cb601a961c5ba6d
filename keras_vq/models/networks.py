"""Default convolutional encoders and decoders shared by VAE and VQVAE.

Each stride-2 convolution halves the spatial size, so an ``(H, W, C)`` input needs H and W
divisible by ``2 ** len(filters)``. The last layer of every decoder computes in float32, so
reconstructions and likelihoods stay accurate under a mixed-precision policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from keras_vq import _validation


def check_filters(filters: Sequence[int]) -> tuple[int, ...]:
    if isinstance(filters, int) or not isinstance(filters, Sequence) or not filters:
        raise TypeError(f"`filters` must be a non-empty sequence of ints, got {filters!r}.")
    return tuple(
        _validation.check_int(f"filters[{i}]", f, minimum=1) for i, f in enumerate(filters)
    )


def check_input_shape(input_shape, filters: Sequence[int]) -> tuple[int, int, int]:
    """``(H, W, C)`` with H and W divisible by the encoder's downsampling factor."""
    if not isinstance(input_shape, Sequence) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels), got {input_shape!r}.")
    shape = tuple(
        _validation.check_int(f"input_shape[{i}]", d, minimum=1) for i, d in enumerate(input_shape)
    )
    factor = 2 ** len(filters)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(
            f"`input_shape` {shape} must have height and width divisible by {factor} "
            f"(the encoder downsamples {len(filters)} times by 2); resize the images, e.g. "
            f"`keras_vq.data.load(..., image_size=...)`, or pass fewer `filters`."
        )
    return shape


def latent_grid(input_shape, filters: Sequence[int]) -> tuple[int, int]:
    """Spatial size ``(h, w)`` of the latent map for a given input shape."""
    factor = 2 ** len(filters)
    return input_shape[0] // factor, input_shape[1] // factor


def build_conv_encoder(
    input_shape, output_channels: int, filters: Sequence[int] = (32, 64), name: str = "encoder"
) -> keras.Model:
    """``(H, W, C)`` images → ``(H/2^n, W/2^n, output_channels)`` feature map.

    ``n = len(filters)`` stride-2 3×3 ReLU convolutions, then a 1×1 projection.

    Example:
        >>> enc = build_conv_encoder((28, 28, 1), output_channels=16)  # → (7, 7, 16)
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
    outputs = layers.Conv2D(output_channels, 1, name="project")(x)
    return keras.Model(inputs, outputs, name=name)


def build_conv_decoder(
    latent_shape,
    output_channels: int,
    filters: Sequence[int] = (64, 32),
    name: str = "decoder",
) -> keras.Model:
    """``(h, w, d)`` latents → ``(h·2^n, w·2^n, output_channels)`` logits or means (float32)."""
    inputs = keras.Input(shape=tuple(latent_shape), name="latents")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", activation="relu", name=f"deconv{i}"
        )(x)
    outputs = layers.Conv2D(output_channels, 3, padding="same", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)


def build_gaussian_encoder(
    input_shape, latent_dim: int, filters: Sequence[int] = (32, 64), name: str = "encoder"
) -> keras.Model:
    """Images → ``[z_mean, z_log_var]``, each ``(latent_dim,)``: the VAE's q(z|x)."""
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(max(2 * latent_dim, 64), activation="relu", name="hidden")(x)
    z_mean = layers.Dense(latent_dim, dtype="float32", name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, dtype="float32", name="z_log_var")(x)
    return keras.Model(inputs, [z_mean, z_log_var], name=name)


def build_dense_to_conv_decoder(
    latent_dim: int,
    output_shape,
    filters: Sequence[int] = (64, 32),
    name: str = "decoder",
) -> keras.Model:
    """``(latent_dim,)`` → ``output_shape`` logits or means: the VAE's p(x|z)."""
    h, w = latent_grid(output_shape, filters)
    inputs = keras.Input(shape=(latent_dim,), name="latents")
    x = layers.Dense(h * w * filters[0], activation="relu", name="expand")(inputs)
    x = layers.Reshape((h, w, filters[0]))(x)
    for i, f in enumerate(filters):
        x = layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", activation="relu", name=f"deconv{i}"
        )(x)
    outputs = layers.Conv2D(output_shape[-1], 3, padding="same", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)
