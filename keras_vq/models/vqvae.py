"""VQ-VAE: encoder → quantizer (a VectorQuantizer by default) → decoder (van den Oord 2017)."""

from __future__ import annotations

import keras
from keras import ops

from keras_vq import _validation, serving
from keras_vq import metrics as vq_metrics
from keras_vq.backend import TrainStepMixin, inference
from keras_vq.layers.residual_vector_quantizer import ResidualVectorQuantizer
from keras_vq.layers.vector_quantizer import VectorQuantizer
from keras_vq.models import _common, networks
from keras_vq.models._export import ExportMixin
from keras_vq.presets import PresetMixin

# Defaults of the VectorQuantizer options built when no `quantizer` is passed.
DEFAULT_NUM_EMBEDDINGS = 128
DEFAULT_EMBEDDING_DIM = 16
DEFAULT_BETA = 0.25
DEFAULT_EMA_DECAY = 0.7
DEFAULT_DEAD_CODE_THRESHOLD = 1.0
# VectorQuantizer options a passed quantizer holds itself: (argument, default).
QUANTIZER_OPTIONS = (
    ("beta", DEFAULT_BETA),
    ("ema_decay", DEFAULT_EMA_DECAY),
    ("dead_code_threshold", DEFAULT_DEAD_CODE_THRESHOLD),
    ("seed", None),
)


class Unset:
    """The default of a quantizer option that was not passed: it holds the default value and
    shows as that value (so the signature reads ``beta=0.25``), but tells "not passed" apart
    from an explicit ``beta=0.25`` (see :func:`check_quantizer_options`)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _passed(value) -> bool:
    return not isinstance(value, Unset)


def _value(value):
    return value.value if isinstance(value, Unset) else value


@keras.saving.register_keras_serializable(package="keras_vq")
class VQVAE(_common.ConfigFromAttributes, PresetMixin, TrainStepMixin, ExportMixin, keras.Model):
    """Vector-quantised autoencoder with its own ``train_step``/``test_step``.

    ``z_e = enc(x)``, ``z_q = e_k`` with ``k = argmin_j ||z_e - e_j||²``, ``x̂ = dec(z_q)`` and

        L = -log p(x|z_q) + ||sg[z_e] - e||² + β ||z_e - sg[e]||²,

    where ``-log p(x|z_q)`` is the mean squared error (a Gaussian decoder with fixed variance,
    up to constants) and the VQ terms are the quantizer's loss.
    ``fit`` logs ``loss``, ``reconstruction_loss``, ``vq_loss`` (the quantizer's loss: 0 for a
    ``FiniteScalarQuantizer``) and ``perplexity`` (the epoch mean of per-batch perplexities
    over ``num_embeddings`` codes; for a ``ResidualVectorQuantizer`` the mean over its stages of
    each stage's perplexity, stages dropped by ``quantize_dropout`` left out).

    ``quantizer`` replaces the default ``VectorQuantizer`` by any quantizer layer
    (``VectorQuantizer``, ``ResidualVectorQuantizer``, ``FiniteScalarQuantizer``,
    ``LookupFreeQuantizer``, or a layer with their ``call(..., return_indices, return_loss)``,
    ``encode``, ``decode`` and ``codebook_size``). The model then takes its sizes from it:
    ``num_embeddings`` becomes the quantizer's ``codebook_size`` (the vocabulary a prior models)
    and ``embedding_dim`` the channels the encoder outputs (the quantizer's input axis: its
    ``embedding_dim``, or the axis it was built for; an unbuilt quantizer that adapts to its input
    takes ``embedding_dim`` when given, else its own code size, ``len(levels)`` or ``num_bits``,
    16 for a vector quantizer without ``embedding_dim``, or a custom encoder's output channels).
    ``beta``, ``ema_decay``, ``dead_code_threshold`` and ``seed`` are the quantizer's own
    options, and the model reports the quantizer's values (``None`` where it has no such
    option). One rule: leave them unset, or pass exactly the value the model will report;
    any other value passed explicitly, a default value included (``ema_decay=0.7`` next to
    a quantizer without EMA, ``ema_decay=None`` next to one with 0.5), raises a
    ``ValueError`` naming both values. The exception is ``seed`` next to a quantizer without
    one (FSQ, LFQ): nothing there is random, and the model keeps the seed passed. Codes are int32
    ``(B, h, w)``, or ``(B, h, w, num_quantizers)`` for a residual quantizer (``code_shape``
    without the batch axis).

    Images are floating point; integer dtypes (uint8 0-255 pixels) raise a ``TypeError``
    everywhere, ``fit`` included (scale them, e.g. ``images / 255``). Their range is not
    checked: the squared error is defined for any real pixel values (e.g. ``[-1, 1]``), but
    the default networks and learning rates are tuned for ``[0, 1]``, which
    ``keras_vq.data.load`` yields. ``encode`` and ``decode`` record no gradients (no autograd
    graph on torch); differentiate through ``__call__`` or the networks instead.

    Args:
        input_shape: ``(H, W, C)``; required unless ``encoder`` has a known input shape.
        num_embeddings: K, codebook size (``None``: 128, or the ``quantizer``'s).
        embedding_dim: D, size of each code (``None``: 16, or from the ``quantizer``).
        beta: commitment weight β.
        ema_decay: EMA codebook decay γ, or ``None`` for a codebook learnt by gradients.
            The default 0.7 (an EMA codebook that follows the encoder within a few steps) gave
            the lowest held-out error, with every code used, in ``benchmarks/defaults.py``, on
            real MNIST digits and generated ones.
        encoder: optional ``keras.Model`` images → ``(B, h, w, D)``.
        decoder: optional ``keras.Model`` ``(B, h, w, D)`` → images.
        quantizer: optional quantizer layer used instead of a ``VectorQuantizer`` (see above).
        filters: widths of the default encoder's stride-2 stages (reversed for the decoder):
            a tuple, one width per stage with 3×3 convolutions (the small default, ``None``:
            ``(32, 128)`` at 4×, 32 then 128 per stage in general, see
            ``networks.vqvae_default_filters``), or one int for the VQ-VAE paper's networks
            (that width at every stage, 4×4 strided convolutions; the paper uses 256). See
            ``keras_vq.models.networks``.
        num_residual_blocks: residual blocks ``x + Conv1×1(ReLU(Conv3×3(ReLU(x))))`` after
            the encoder's strided stack and before the decoder's (the paper uses 2).
        downsample: the encoder's downsampling factor, a power of 2 (``H/downsample`` ×
            ``W/downsample`` codes); ``None``: ``2 ** len(filters)`` for a tuple, else 4.
            A tuple ``filters`` must have ``log2(downsample)`` entries.
        dead_code_threshold: restart codes used less than this (see ``VectorQuantizer``);
            on by default (1.0: less than once per batch on average), 0 disables restarts.
        seed: seed of the quantizer's dead-code restarts.

    Example:
        >>> model = VQVAE(input_shape=(32, 32, 1), num_embeddings=128, embedding_dim=16)
        >>> model.compile(optimizer="adam")
        >>> model.fit(keras_vq.data.load("digits", image_size=32), epochs=5)
        >>> codes = model.encode(images)        # int32 (B, 8, 8)
        >>> images = model.decode(codes)
        >>> # The paper's ImageNet networks: 128×128×3 → 32×32 codes, K=512.
        >>> paper = VQVAE(input_shape=(128, 128, 3), num_embeddings=512, embedding_dim=64,
        ...               filters=256, num_residual_blocks=2, downsample=4)
        >>> fsq = VQVAE(input_shape=(32, 32, 1), quantizer=FiniteScalarQuantizer([8, 5, 5, 5]))
        >>> fsq.num_embeddings, fsq.embedding_dim                 # 1000, 4
    """

    _config_attributes = {
        "input_shape": "image_shape",
        "num_embeddings": "num_embeddings",
        "embedding_dim": "embedding_dim",
        "beta": "beta",
        "ema_decay": "ema_decay",
        "filters": "filters",
        "num_residual_blocks": "num_residual_blocks",
        "downsample": "downsample",
        "dead_code_threshold": "dead_code_threshold",
        "seed": "seed",
        "quantizer": "_quantizer_config",
    }

    def __init__(
        self,
        input_shape: tuple[int, int, int] | None = None,
        num_embeddings: int | None = None,
        embedding_dim: int | None = None,
        beta: float = Unset(DEFAULT_BETA),
        ema_decay: float | None = Unset(DEFAULT_EMA_DECAY),
        encoder: keras.Model | None = None,
        decoder: keras.Model | None = None,
        quantizer: keras.layers.Layer | None = None,
        filters: int | tuple[int, ...] | None = None,
        num_residual_blocks: int = 0,
        downsample: int | None = None,
        dead_code_threshold: float = Unset(DEFAULT_DEAD_CODE_THRESHOLD),
        seed: int | None = Unset(None),
        **kwargs,
    ):
        super().__init__(**kwargs)
        network = networks.resolve_network(
            filters, downsample, num_residual_blocks, defaults=networks.vqvae_default_filters
        )
        self.filters, self.downsample = network.filters, network.downsample
        self.num_residual_blocks = network.num_residual_blocks
        self.image_shape = _common.resolve_input_shape(input_shape, encoder, network.stages)
        self._custom_networks = _common.check_networks(encoder, decoder)
        options = {
            "beta": beta,
            "ema_decay": ema_decay,
            "dead_code_threshold": dead_code_threshold,
            "seed": seed,
        }
        if quantizer is None:
            self.num_embeddings = _validation.check_int(
                "num_embeddings",
                DEFAULT_NUM_EMBEDDINGS if num_embeddings is None else num_embeddings,
                minimum=1,
            )
            self.embedding_dim = _validation.check_int(
                "embedding_dim",
                DEFAULT_EMBEDDING_DIM if embedding_dim is None else embedding_dim,
                minimum=1,
            )
            # The model's attributes are the one source of its configuration (get_config).
            quantizer = VectorQuantizer(
                self.num_embeddings,
                self.embedding_dim,
                name="quantizer",
                **{option: _value(value) for option, value in options.items()},
            )
            self._custom_quantizer = False
        else:
            self.num_embeddings, self.embedding_dim = resolve_quantizer_sizes(
                quantizer, num_embeddings, embedding_dim, encoder
            )
            check_quantizer_options(quantizer, options)
            self._custom_quantizer = True
        self.encoder = encoder or networks.build_conv_encoder(
            self.image_shape,
            self.embedding_dim,
            network.stages,
            num_residual_blocks=network.num_residual_blocks,
            kernel_size=network.kernel_size,
        )
        self.quantizer = quantizer
        # Kept as validated by the quantizer, and read back from here only.
        values = quantizer_options(quantizer)
        self.beta = values["beta"]
        self.ema_decay = values["ema_decay"]
        self.dead_code_threshold = values["dead_code_threshold"]
        # A quantizer without randomness (FSQ, LFQ) leaves the model's seed as passed.
        self.seed = (
            values["seed"]
            if hasattr(quantizer, "seed")
            else _validation.check_seed("seed", _value(seed))
        )
        if decoder is None:
            latent_shape = (
                *networks.latent_grid(self.image_shape, network.stages),
                self.embedding_dim,
            )
            decoder = networks.build_conv_decoder(
                latent_shape,
                self.image_shape[-1],
                network.stages[::-1],
                num_residual_blocks=network.num_residual_blocks,
                kernel_size=network.kernel_size,
            )
        self.decoder = decoder
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.vq_loss_tracker = keras.metrics.Mean(name="vq_loss")
        self.perplexity_tracker = keras.metrics.Mean(name="perplexity")
        self.build((None, *self.image_shape))

    def build(self, input_shape):
        z_e = self.encoder.compute_output_spec(keras.KerasTensor(input_shape))
        if z_e.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"`encoder` must output embedding_dim={self.embedding_dim} channels, got "
                f"output shape {tuple(z_e.shape)}."
            )
        self.latent_shape = tuple(z_e.shape[1:-1])
        if not self.quantizer.built:  # a passed quantizer may come built (and checked above)
            self.quantizer.build(z_e.shape)
        self.built = True

    def call(self, inputs, training=None):
        inputs = _common.checked_images(inputs, self.image_shape)
        z_q = self.quantizer(self.encoder(inputs, training=training), training=training)
        return self.decoder(z_q, training=training)

    def validate_batch(self, data) -> None:
        # Called on each batch before it enters a jitted step (JAX), where an error raised
        # while tracing would leave the model's state behind: reject integer images here.
        _common.check_image_batch(self._unpack(data)[0], self.image_shape)

    def step_loss(self, x, y=None, sample_weight=None, training=False):
        images = _common.checked_images(x, self.image_shape)
        target = images if y is None else y
        z_e = self.encoder(images, training=training)
        z_q, codes, vq_loss = self.quantizer(
            z_e, training=training, return_indices=True, return_loss=True
        )
        reconstruction = self.decoder(z_q, training=training)
        reconstruction_loss = _common.weighted_mean(
            _common.per_example_mse(target, reconstruction), sample_weight
        )
        # Other add_loss terms (a custom network's regularisers) are added as Keras would.
        total = reconstruction_loss + vq_loss + _common.sum_losses(self.losses)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.vq_loss_tracker.update_state(vq_loss)
        self.perplexity_tracker.update_state(self._perplexity(codes))
        return total, reconstruction

    @property
    def code_shape(self) -> tuple[int, ...]:
        """One image's code shape: ``latent_shape`` (+ ``num_quantizers`` for residual VQ)."""
        return (*self.latent_shape, *self._stage_axis())

    def _stage_axis(self) -> tuple[int, ...]:
        if isinstance(self.quantizer, ResidualVectorQuantizer):
            return (self.quantizer.num_quantizers,)
        return ()

    @property
    def _quantizer_config(self):
        """The passed quantizer, serialised (``None`` for the default ``VectorQuantizer``)."""
        if not self._custom_quantizer:
            return None
        return keras.saving.serialize_keras_object(self.quantizer)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("quantizer"), dict):
            config["quantizer"] = keras.saving.deserialize_keras_object(config["quantizer"])
        return super().from_config(config)

    def _perplexity(self, codes):
        """Batch perplexity; per stage and averaged over the active stages for residual codes."""
        if not self._stage_axis():
            return vq_metrics.perplexity(codes, self.num_embeddings)
        stages = ops.reshape(ops.cast(codes, "int32"), (-1, self._stage_axis()[0]))
        total = count = ops.zeros((), "float32")
        for s in range(self._stage_axis()[0]):
            stage = stages[:, s]
            # Stages dropped by quantize_dropout report -1: counted in an extra, ignored bin.
            valid = ops.greater_equal(stage, 0)
            stage = ops.where(valid, stage, self.num_embeddings)
            counts = vq_metrics.code_counts(stage, self.num_embeddings + 1)[:-1]
            active = ops.cast(ops.sum(counts) > 0, "float32")
            total = total + active * vq_metrics.perplexity_from_counts(counts)
            count = count + active
        return total / ops.maximum(count, 1.0)

    serving_formats = ("tf_saved_model", "onnx", "litert")

    def _serving_endpoints(self, format: str) -> list:
        if format == "tf_saved_model":
            return serving.vqvae_endpoints(self)
        return serving.vqvae_graph_endpoints(self)

    @inference
    def encode(self, images):
        """Images ``(B, H, W, C)`` → int32 codes ``(B, *code_shape)``: ``(B, h, w)``, or
        ``(B, h, w, num_quantizers)`` for a ``ResidualVectorQuantizer``."""
        images = _common.checked_images(images, self.image_shape, finite=True)
        return ops.cast(self.quantizer.encode(self.encoder(images, training=False)), "int32")

    @inference
    def decode(self, codes):
        """int32 codes ``(B, *code_shape)`` (as :meth:`encode` returns) → images ``(B, H, W, C)``.

        Raises:
            TypeError: non-integer codes. ValueError: codes out of range (``[0,
            num_embeddings)``) or of the wrong shape.
        """
        shape = tuple(getattr(codes, "shape", ()))
        expected = tuple(self.code_shape)
        if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected:
            raise ValueError(
                f"`codes` must have shape (batch, {', '.join(map(str, expected))}), "
                f"got shape {shape}."
            )
        return self.decoder(self.quantizer.decode(codes), training=False)


def _input_dim(quantizer) -> int | None:
    """The input axis ``quantizer`` is fixed to, or ``None`` when it adapts to its input."""
    dim = getattr(quantizer, "embedding_dim", None)
    if dim is None and quantizer.built:
        dim = getattr(quantizer, "input_dim", None)
    return None if dim is None else int(dim)


def resolve_quantizer_sizes(quantizer, num_embeddings, embedding_dim, encoder) -> tuple[int, int]:
    """``(num_embeddings, embedding_dim)`` of a VQVAE around ``quantizer``.

    Args:
        quantizer: the quantizer layer passed to the VQVAE.
        num_embeddings: the value passed (``None``: not passed).
        embedding_dim: the value passed (``None``: not passed).
        encoder: the custom encoder, or ``None``.

    Returns:
        The quantizer's ``codebook_size`` and the channels the encoder must output.

    Raises:
        TypeError: ``quantizer`` is not a quantizer layer. ValueError: a passed value
        contradicts the quantizer.
    """
    if not isinstance(quantizer, keras.layers.Layer) or not all(
        hasattr(quantizer, name) for name in ("encode", "decode", "codebook_size")
    ):
        raise TypeError(
            "`quantizer` must be a quantizer layer with `encode`, `decode` and `codebook_size` "
            "(VectorQuantizer, ResidualVectorQuantizer, FiniteScalarQuantizer, "
            f"LookupFreeQuantizer), got {quantizer!r} ({type(quantizer).__name__})."
        )
    name = type(quantizer).__name__
    size = int(quantizer.codebook_size)
    if num_embeddings is not None:
        _validation.check_int("num_embeddings", num_embeddings, minimum=1)
        if num_embeddings != size:
            raise ValueError(
                f"`num_embeddings`={num_embeddings} contradicts `quantizer`: the {name} has "
                f"codebook_size={size}. Leave num_embeddings unset (None) with a quantizer."
            )
    if embedding_dim is not None:
        embedding_dim = _validation.check_int("embedding_dim", embedding_dim, minimum=1)
    fixed = _input_dim(quantizer)
    if fixed is not None:
        if embedding_dim is not None and embedding_dim != fixed:
            raise ValueError(
                f"`embedding_dim`={embedding_dim} contradicts `quantizer`: the {name} takes "
                f"inputs with {fixed} channels. Leave embedding_dim unset (None) or pass {fixed}."
            )
        return size, fixed
    if embedding_dim is not None:
        return size, embedding_dim
    if encoder is not None:
        try:
            channels = encoder.compute_output_spec(
                keras.KerasTensor((None, *encoder.inputs[0].shape[1:]))
            ).shape[-1]
        except (AttributeError, IndexError, TypeError, ValueError):
            channels = None
        if channels is not None:
            return size, int(channels)
    return size, int(getattr(quantizer, "code_dim", None) or DEFAULT_EMBEDDING_DIM)


def _option_holder(quantizer, option: str):
    """The layer holding ``option`` for ``quantizer``: a residual quantizer's stages hold
    its VectorQuantizer options, the residual quantizer itself its ``seed``."""
    if isinstance(quantizer, ResidualVectorQuantizer) and option != "seed":
        return quantizer.quantizers[0]
    return quantizer


def quantizer_options(quantizer) -> dict:
    """The quantizer's own ``beta``, ``ema_decay``, ``dead_code_threshold``, ``seed`` (``None``
    where it has no such option; a residual quantizer's are those of its stages)."""
    return {
        option: getattr(_option_holder(quantizer, option), option, None)
        for option, _ in QUANTIZER_OPTIONS
    }


def check_quantizer_options(quantizer, passed: dict) -> None:
    """Raise unless each explicitly passed VectorQuantizer option equals the quantizer's.

    An option left at its default (an :class:`Unset`) is taken from the quantizer; one passed
    must be the value the model will report: the quantizer's own, or ``None`` for an option
    the quantizer does not have (what ``get_config`` writes, so configs round-trip). The one
    exception is ``seed`` next to a quantizer without randomness (no ``seed``): the model
    keeps it.
    """
    own = quantizer_options(quantizer)
    name = type(quantizer).__name__
    for option, _ in QUANTIZER_OPTIONS:
        value = passed[option]
        has_option = hasattr(_option_holder(quantizer, option), option)
        if not _passed(value) or (option == "seed" and not has_option):
            continue
        if value == own[option]:
            continue
        detail = f"has {option}={own[option]!r}" if has_option else f"has no {option}"
        raise ValueError(
            f"`{option}`={value!r} contradicts `quantizer`: the {name} {detail}. Leave "
            f"{option} unset (the model takes the quantizer's) or pass the quantizer's value."
        )
