"""VQ-VAE: encoder → VectorQuantizer → decoder (van den Oord et al., 2017)."""

from __future__ import annotations

import keras

from keras_vq import _validation
from keras_vq import metrics as vq_metrics
from keras_vq.backend import TrainStepMixin, inference
from keras_vq.layers.vector_quantizer import VectorQuantizer
from keras_vq.models import _common, networks


@keras.saving.register_keras_serializable(package="keras_vq")
class VQVAE(_common.ConfigFromAttributes, TrainStepMixin, keras.Model):
    """Vector-quantised autoencoder with its own ``train_step``/``test_step``.

    ``z_e = enc(x)``, ``z_q = e_k`` with ``k = argmin_j ||z_e - e_j||²``, ``x̂ = dec(z_q)`` and

        L = -log p(x|z_q) + ||sg[z_e] - e||² + β ||z_e - sg[e]||²,

    where ``-log p(x|z_q)`` is the mean squared error (a Gaussian decoder with fixed variance,
    up to constants) and the VQ terms come from the ``VectorQuantizer``'s ``add_loss``.
    ``fit`` logs ``loss``, ``reconstruction_loss``, ``vq_loss`` and ``perplexity`` (the epoch
    mean of per-batch codebook perplexities).

    Images are floating point; integer dtypes (uint8 0-255 pixels) raise a ``TypeError``
    everywhere, ``fit`` included (scale them, e.g. ``images / 255``). Their range is not
    checked: the squared error is defined for any real pixel values (e.g. ``[-1, 1]``), but
    the default networks and learning rates are tuned for ``[0, 1]``, which
    ``keras_vq.data.load`` yields. ``encode`` and ``decode`` record no gradients (no autograd
    graph on torch); differentiate through ``__call__`` or the networks instead.

    Args:
        input_shape: ``(H, W, C)``; required unless ``encoder`` has a known input shape.
        num_embeddings: K, codebook size.
        embedding_dim: D, size of each code.
        beta: commitment weight β.
        ema_decay: EMA codebook decay γ, or ``None`` for a codebook learnt by gradients.
            The default 0.9 (an EMA codebook that follows the encoder within ~10 steps) gave
            the lowest held-out error and full code usage in ``benchmarks/defaults.py``.
        encoder: optional ``keras.Model`` images → ``(B, h, w, D)``.
        decoder: optional ``keras.Model`` ``(B, h, w, D)`` → images.
        filters: filters of the default encoder (reversed for the decoder).
        dead_code_threshold: restart codes used less than this (see ``VectorQuantizer``);
            on by default (1.0: less than once per batch on average), 0 disables restarts.
        seed: seed of the quantizer's dead-code restarts.

    Example:
        >>> model = VQVAE(input_shape=(32, 32, 1), num_embeddings=128, embedding_dim=16)
        >>> model.compile(optimizer="adam")
        >>> model.fit(keras_vq.data.load("digits", image_size=32), epochs=5)
        >>> codes = model.encode(images)        # int32 (B, 8, 8)
        >>> images = model.decode(codes)
    """

    _config_attributes = {
        "input_shape": "image_shape",
        "num_embeddings": "num_embeddings",
        "embedding_dim": "embedding_dim",
        "beta": "beta",
        "ema_decay": "ema_decay",
        "filters": "filters",
        "dead_code_threshold": "dead_code_threshold",
        "seed": "seed",
    }

    def __init__(
        self,
        input_shape: tuple[int, int, int] | None = None,
        num_embeddings: int = 128,
        embedding_dim: int = 16,
        beta: float = 0.25,
        ema_decay: float | None = 0.9,
        encoder: keras.Model | None = None,
        decoder: keras.Model | None = None,
        filters: tuple[int, ...] = (32, 64),
        dead_code_threshold: float = 1.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = networks.check_filters(filters)
        self.num_embeddings = _validation.check_int("num_embeddings", num_embeddings, minimum=1)
        self.embedding_dim = _validation.check_int("embedding_dim", embedding_dim, minimum=1)
        self.image_shape = _common.resolve_input_shape(input_shape, encoder, self.filters)
        self._custom_networks = _common.check_networks(encoder, decoder)
        self.encoder = encoder or networks.build_conv_encoder(
            self.image_shape, self.embedding_dim, self.filters
        )
        # The model's attributes are the one source of its configuration (get_config).
        self.quantizer = VectorQuantizer(
            self.num_embeddings,
            self.embedding_dim,
            beta=beta,
            ema_decay=ema_decay,
            dead_code_threshold=dead_code_threshold,
            seed=seed,
            name="quantizer",
        )
        # Kept as validated by the quantizer, and read back from here only.
        self.beta = self.quantizer.beta
        self.ema_decay = self.quantizer.ema_decay
        self.dead_code_threshold = self.quantizer.dead_code_threshold
        self.seed = self.quantizer.seed
        if decoder is None:
            latent_shape = (*networks.latent_grid(self.image_shape, self.filters), embedding_dim)
            decoder = networks.build_conv_decoder(
                latent_shape, self.image_shape[-1], self.filters[::-1]
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
        self.perplexity_tracker.update_state(vq_metrics.perplexity(codes, self.num_embeddings))
        return total, reconstruction

    @inference
    def encode(self, images):
        """Images ``(B, H, W, C)`` → int32 codes ``(B, h, w)``."""
        images = _common.checked_images(images, self.image_shape, finite=True)
        return self.quantizer.encode(self.encoder(images, training=False))

    @inference
    def decode(self, codes):
        """int32 codes ``(B, h, w)`` → images ``(B, H, W, C)``.

        Raises:
            TypeError: non-integer codes. ValueError: codes out of range or of the wrong shape.
        """
        shape = tuple(getattr(codes, "shape", ()))
        if len(shape) != 3 or tuple(shape[1:]) != tuple(self.latent_shape):
            raise ValueError(
                f"`codes` must have shape (batch, {', '.join(map(str, self.latent_shape))}), "
                f"got shape {shape}."
            )
        return self.decoder(self.quantizer.decode(codes), training=False)
