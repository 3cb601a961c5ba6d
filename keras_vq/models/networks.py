"""Default convolutional encoders and decoders shared by VAE and VQVAE.

The encoder is a stack of stride-2 convolutions, one per *stage*, each halving the spatial
size; ``downsample = 2 ** stages``, so an ``(H, W, C)`` input needs H and W divisible by
``downsample``. Two flavours share the builders:

- the small default: ``filters`` a tuple of per-stage widths, e.g. ``(32, 64)``, with 3×3
  stride-2 convolutions (28×28 → 7×7 codes);
- the VQ-VAE paper's networks (van den Oord et al., 2017, §4.1): ``filters`` one int (e.g.
  256) used by every stage, with 4×4 stride-2 convolutions, as in the paper.

Either flavour takes ``num_residual_blocks`` residual blocks ``x + Conv1×1(ReLU(Conv3×3(
ReLU(x))))`` after the strided stack in the encoder (and before the transposed stack in the
decoder), followed by a ReLU. With no residual blocks the default networks are exactly the
original small ones (same layers, names and weight shapes), so saved models keep loading.

The last layer of every decoder computes in float32, so reconstructions and likelihoods
stay accurate under a mixed-precision policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import keras
from keras import layers

from keras_vq import _validation
from keras_vq.backend import conv_2d, conv_transpose_2d

# Kernel of the strided (transposed) convolutions: the small default and the paper's.
SMALL_KERNEL_SIZE = 3
PAPER_KERNEL_SIZE = 4


def _keras_path(layer) -> bool:
    """Whether a convolution keeps Keras' own path (layouts and options ours do not cover)."""
    return (
        layer.data_format != "channels_last"
        or getattr(layer, "output_padding", None) is not None
        or any(rate != 1 for rate in layer.dilation_rate)
        or getattr(layer, "groups", 1) != 1
    )


class _ChannelsLastCall:
    """``call`` through ``self._convolution`` (a ``keras_vq.backend`` op) where it applies."""

    def call(self, inputs):
        if _keras_path(self):
            return super().call(inputs)
        bias = self.bias if self.use_bias else None
        outputs = self._convolution(inputs, self.kernel, bias, self.strides, self.padding)
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package="keras_vq")
class Conv2D(_ChannelsLastCall, layers.Conv2D):
    """Keras' ``Conv2D`` whose channels-last convolution is ``keras_vq.backend.conv_2d``.

    Same weights, config and results; on torch stride-1 layers need no NCHW copy of their
    input.
    """

    _convolution = staticmethod(conv_2d)


@keras.saving.register_keras_serializable(package="keras_vq")
class Conv2DTranspose(_ChannelsLastCall, layers.Conv2DTranspose):
    """Keras' ``Conv2DTranspose`` whose channels-last convolution is ``conv_transpose_2d``.

    Same weights, config and results; on torch it needs no NCHW copy of its input and a
    third of the working memory (``keras_vq.backend.conv_transpose_2d``). Dilated kernels and
    ``output_padding`` keep Keras' path.
    """

    _convolution = staticmethod(conv_transpose_2d)


def check_filters(filters: int | Sequence[int]) -> int | tuple[int, ...]:
    """``filters`` validated: one positive int, or a non-empty sequence of them (a tuple)."""
    if isinstance(filters, bool):
        raise TypeError(f"`filters` must be an int or a sequence of ints, got {filters!r}.")
    if isinstance(filters, int):
        return _validation.check_int("filters", filters, minimum=1)
    if isinstance(filters, str) or not isinstance(filters, Sequence) or not filters:
        raise TypeError(
            f"`filters` must be a positive int (one width for every stage) or a non-empty "
            f"sequence of ints (one width per stride-2 stage), got {filters!r}."
        )
    return tuple(
        _validation.check_int(f"filters[{i}]", f, minimum=1) for i, f in enumerate(filters)
    )


class NetworkConfig(NamedTuple):
    """The default networks' arguments, validated and resolved (see :func:`resolve_network`)."""

    filters: int | tuple[int, ...]  # as the model's config stores it
    downsample: int
    num_residual_blocks: int
    stages: tuple[int, ...]  # encoder width of each stride-2 stage
    kernel_size: int  # of the strided (transposed) convolutions


def default_filters(downsample: int | None) -> tuple[int, ...]:
    """The small default widths (``VAE``): (32, 64) for 4×, doubling per stage (32, 64, 128
    for 8×)."""
    return tuple(min(32 * 2**i, 256) for i in range(_num_stages(downsample)))


def vqvae_default_filters(downsample: int | None) -> tuple[int, ...]:
    """``VQVAE``'s default widths: 32 at the first stride-2 stage, 128 at every later one
    ((32, 128) for 4×, (32, 128, 128) for 8×).

    The stages next to the codes are the ones the encoder fills them from and the decoder
    draws the image from: at 4×, (32, 128) lowered the held-out error of 3-epoch fits on real
    MNIST digits against (32, 64) by 9–10 % on TensorFlow and 3–16 % on torch and JAX (three
    splits each), for 1.5× the step time (``benchmarks/defaults.py --data mnist5k``,
    RESULTS.md). Other factors follow the same rule unmeasured.
    """
    return tuple(32 if i == 0 else 128 for i in range(_num_stages(downsample)))


def _num_stages(downsample: int | None) -> int:
    """Stride-2 stages of a ``downsample`` factor (``None``: the default 4×, two stages)."""
    return 2 if downsample is None else int(math.log2(downsample))


def check_downsample(downsample: int) -> int:
    """A power of 2 ≥ 2: one stride-2 stage per factor of 2."""
    downsample = _validation.check_int("downsample", downsample, minimum=2)
    if downsample & (downsample - 1):
        raise ValueError(
            f"`downsample` must be a power of 2 (2, 4, 8, ...): one stride-2 stage per factor "
            f"of 2; got {downsample}."
        )
    return downsample


def check_num_residual_blocks(num_residual_blocks: int) -> int:
    return _validation.check_int("num_residual_blocks", num_residual_blocks, minimum=0)


def resolve_network(
    filters: int | Sequence[int] | None = None,
    downsample: int | None = None,
    num_residual_blocks: int = 0,
    defaults: Callable[[int | None], tuple[int, ...]] = default_filters,
) -> NetworkConfig:
    """Validate the default networks' arguments and fill in what they imply.

    Args:
        filters: ``None`` (the model's small default widths, ``defaults(downsample)``), one
            int (the paper's networks: that width at every stage, 4×4 strided convolutions)
            or a sequence of per-stage widths (3×3 strided convolutions).
        downsample: power of 2 ≥ 2; ``None``: ``2 ** len(filters)`` for a sequence, else 4.
        num_residual_blocks: residual blocks ≥ 0.
        defaults: the widths ``filters=None`` stands for, given ``downsample``
            (:func:`default_filters` or :func:`vqvae_default_filters`).

    Returns:
        A :class:`NetworkConfig`.

    Raises:
        TypeError: non-int values. ValueError: out-of-range values, or a ``filters`` sequence
        whose length disagrees with ``downsample``.

    Example:
        >>> resolve_network(256, 8).stages   # (256, 256, 256)
    """
    if filters is not None:
        filters = check_filters(filters)
    if downsample is not None:
        downsample = check_downsample(downsample)
    num_residual_blocks = check_num_residual_blocks(num_residual_blocks)
    if filters is None:
        filters = defaults(downsample)
    if isinstance(filters, int):
        stages = (filters,) * _num_stages(downsample)
        downsample = 4 if downsample is None else downsample
    else:
        if downsample is not None and 2 ** len(filters) != downsample:
            raise ValueError(
                f"`filters` {filters} has {len(filters)} stride-2 stages, which downsample by "
                f"{2 ** len(filters)}, but `downsample` is {downsample}: pass "
                f"{_num_stages(downsample)} widths, one int width, or downsample=None."
            )
        downsample, stages = 2 ** len(filters), filters
    kernel_size = PAPER_KERNEL_SIZE if isinstance(filters, int) else SMALL_KERNEL_SIZE
    return NetworkConfig(filters, downsample, num_residual_blocks, stages, kernel_size)


def check_input_shape(input_shape, filters: Sequence[int]) -> tuple[int, int, int]:
    """``(H, W, C)`` with H and W divisible by ``downsample = 2 ** len(filters)``.

    ``filters`` are the per-stage widths (see :func:`stage_filters`).
    """
    if not isinstance(input_shape, Sequence) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels), got {input_shape!r}.")
    shape = tuple(
        _validation.check_int(f"input_shape[{i}]", d, minimum=1) for i, d in enumerate(input_shape)
    )
    factor = 2 ** len(filters)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(
            f"`input_shape` {shape} must have height and width divisible by {factor}, the "
            f"encoder's `downsample` ({len(filters)} stride-2 stages); resize the images, e.g. "
            f"`keras_vq.data.load(..., image_size=...)`, or pass a smaller `downsample` "
            f"(fewer `filters`)."
        )
    return shape


def latent_grid(input_shape, filters: Sequence[int]) -> tuple[int, int]:
    """Spatial size ``(h, w)`` of the latent map for a given input shape and stage widths."""
    factor = 2 ** len(filters)
    return input_shape[0] // factor, input_shape[1] // factor


def _residual_stack(x, num_blocks: int, width: int):
    """``num_blocks`` × (x + Conv1×1(ReLU(Conv3×3(ReLU(x))))), then a ReLU (the paper's)."""
    if not num_blocks:
        return x
    for i in range(num_blocks):
        h = layers.ReLU(name=f"residual{i}_relu0")(x)
        h = Conv2D(width, 3, padding="same", name=f"residual{i}_conv3x3")(h)
        h = layers.ReLU(name=f"residual{i}_relu1")(h)
        h = Conv2D(width, 1, name=f"residual{i}_conv1x1")(h)
        x = layers.Add(name=f"residual{i}_add")([x, h])
    # The sum is pre-activation; the next layer expects ReLU features as after a conv.
    return layers.ReLU(name="residual_relu")(x)


def _strided_stack(x, filters: Sequence[int], kernel_size: int):
    for i, f in enumerate(filters):
        x = Conv2D(f, kernel_size, strides=2, padding="same", activation="relu", name=f"conv{i}")(
            x
        )
    return x


_FIRST_DECODER_BIAS = 0.01


def _transposed_stack(x, filters: Sequence[int], kernel_size: int, first_bias="zeros"):
    for i, f in enumerate(filters):
        x = Conv2DTranspose(
            f,
            kernel_size,
            strides=2,
            padding="same",
            activation="relu",
            bias_initializer=first_bias if i == 0 else "zeros",
            name=f"deconv{i}",
        )(x)
    return x


def build_conv_encoder(
    input_shape,
    output_channels: int,
    filters: Sequence[int] = (32, 64),
    name: str = "encoder",
    num_residual_blocks: int = 0,
    kernel_size: int = SMALL_KERNEL_SIZE,
) -> keras.Model:
    """``(H, W, C)`` images → ``(H/2^n, W/2^n, output_channels)`` feature map.

    ``n = len(filters)`` stride-2 ``kernel_size`` ReLU convolutions, ``num_residual_blocks``
    residual blocks of width ``filters[-1]``, then a 1×1 projection.

    Args:
        input_shape: ``(H, W, C)``.
        output_channels: channels of the output (D for a VQ-VAE).
        filters: width of each stride-2 stage.
        name: model name.
        num_residual_blocks: residual blocks after the strided stack.
        kernel_size: kernel of the strided convolutions (3 small, 4 the paper's).

    Returns:
        A functional ``keras.Model``.

    Example:
        >>> enc = build_conv_encoder((28, 28, 1), output_channels=16)  # → (7, 7, 16)
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _strided_stack(inputs, filters, kernel_size)
    x = _residual_stack(x, num_residual_blocks, filters[-1])
    outputs = Conv2D(output_channels, 1, name="project")(x)
    return keras.Model(inputs, outputs, name=name)


def build_conv_decoder(
    latent_shape,
    output_channels: int,
    filters: Sequence[int] = (64, 32),
    name: str = "decoder",
    num_residual_blocks: int = 0,
    kernel_size: int = SMALL_KERNEL_SIZE,
) -> keras.Model:
    """``(h, w, d)`` latents → ``(h·2^n, w·2^n, output_channels)`` logits or means (float32).

    With residual blocks, a 3×3 convolution first maps the ``d`` latent channels to
    ``filters[0]`` (the blocks' width); then the blocks, ``n = len(filters)`` stride-2
    transposed convolutions and a float32 3×3 output convolution.

    Args:
        latent_shape: ``(h, w, d)``.
        output_channels: image channels.
        filters: width of each stride-2 transposed stage (the encoder's, reversed).
        name: model name.
        num_residual_blocks: residual blocks before the transposed stack.
        kernel_size: kernel of the transposed convolutions.

    Returns:
        A functional ``keras.Model``.

    Example:
        >>> dec = build_conv_decoder((7, 7, 16), output_channels=1)  # → (28, 28, 1)
    """
    inputs = keras.Input(shape=tuple(latent_shape), name="latents")
    x = inputs
    # A quantizer can map every input to the zero vector at initialisation (FSQ rounds the
    # small outputs of a fresh encoder to level 0): with zero biases the first ReLU is then
    # exactly 0 and no gradient reaches the encoder, so the model never trains. A small
    # positive bias keeps the first layer active.
    first_bias = keras.initializers.Constant(_FIRST_DECODER_BIAS)
    if num_residual_blocks:
        x = Conv2D(filters[0], 3, padding="same", bias_initializer=first_bias, name="latent_conv")(
            x
        )
        x = _residual_stack(x, num_residual_blocks, filters[0])
        first_bias = "zeros"
    x = _transposed_stack(x, filters, kernel_size, first_bias=first_bias)
    outputs = Conv2D(output_channels, 3, padding="same", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)


def build_gaussian_encoder(
    input_shape,
    latent_dim: int,
    filters: Sequence[int] = (32, 64),
    name: str = "encoder",
    num_residual_blocks: int = 0,
    kernel_size: int = SMALL_KERNEL_SIZE,
) -> keras.Model:
    """Images → ``[z_mean, z_log_var]``, each ``(latent_dim,)``: the VAE's q(z|x).

    The strided stack and residual blocks of :func:`build_conv_encoder`, then a dense ReLU
    layer and two float32 dense heads.

    Example:
        >>> enc = build_gaussian_encoder((28, 28, 1), latent_dim=8)
    """
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _strided_stack(inputs, filters, kernel_size)
    x = _residual_stack(x, num_residual_blocks, filters[-1])
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
    num_residual_blocks: int = 0,
    kernel_size: int = SMALL_KERNEL_SIZE,
) -> keras.Model:
    """``(latent_dim,)`` → ``output_shape`` logits or means: the VAE's p(x|z).

    A dense ReLU layer to an ``(h, w, filters[0])`` map, the residual blocks, the transposed
    stack and a float32 3×3 output convolution.

    Example:
        >>> dec = build_dense_to_conv_decoder(8, (28, 28, 1))
    """
    h, w = latent_grid(output_shape, filters)
    inputs = keras.Input(shape=(latent_dim,), name="latents")
    x = layers.Dense(h * w * filters[0], activation="relu", name="expand")(inputs)
    x = layers.Reshape((h, w, filters[0]))(x)
    x = _residual_stack(x, num_residual_blocks, filters[0])
    x = _transposed_stack(x, filters, kernel_size)
    outputs = Conv2D(output_shape[-1], 3, padding="same", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)
