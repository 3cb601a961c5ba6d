"""Variational autoencoder with a diagonal-Gaussian posterior (Kingma & Welling, 2014)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_vq import _validation, serving
from keras_vq import losses as vq_losses
from keras_vq import metrics as vq_metrics
from keras_vq.backend import TrainStepMixin, inference
from keras_vq.layers.sampling import Sampling
from keras_vq.models import _common, networks
from keras_vq.models._export import ExportMixin
from keras_vq.presets import PresetMixin

LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")
# Likelihoods with a scale σ (learnt unless `observation_scale` fixes it).
_SCALED = ("gaussian", "discretized_logistic")


@keras.saving.register_keras_serializable(package="keras_vq")
class VAE(_common.ConfigFromAttributes, PresetMixin, TrainStepMixin, ExportMixin, keras.Model):
    """VAE trained by maximising the ELBO, with its own ``train_step``/``test_step``.

        log p(x) ≥ ELBO = E_q(z|x)[log p(x|z)] - KL(q(z|x) || N(0, I))

    (Jensen's inequality). q(z|x) = N(μ(x), diag σ²(x)); the expectation is a one-sample
    reparameterised Monte-Carlo estimate, the KL is in closed form. The loss is
    ``-(E_q[log p(x|z)] - β·KL)`` in nats per example; ``fit`` logs ``loss``,
    ``reconstruction_loss`` (``-log p(x|z)``) and ``kl_loss``.

    Images are floating point; integer dtypes (uint8 0-255 pixels) raise a ``TypeError``
    everywhere, ``fit`` included (scale them, e.g. ``images / 255``). With
    ``likelihood="bernoulli"`` or ``"discretized_logistic"`` pixels lie in [0, 1], so
    ``encode``, ``log_likelihood``/``elbo`` and eager calls also reject values outside
    ``[0, 1]`` (``ValueError``; values are
    read only where they are concrete, never inside a compiled training step). The Gaussian
    likelihood is defined for any real pixel values and checks none, but the default networks
    are sized for ``[0, 1]`` data, which ``keras_vq.data.load`` yields.

    The inference methods (``encode``, ``decode``, ``sample``, ``elbo``, ``log_likelihood``)
    record no gradients (no autograd graph on torch); differentiate through ``__call__`` or
    the networks instead.

    Args:
        input_shape: ``(H, W, C)`` (or any shape with custom networks).
        latent_dim: size of z.
        encoder: optional model x → ``[z_mean, z_log_var]`` (or one tensor of size
            ``2·latent_dim`` split in half).
        decoder: optional model z → logits (Bernoulli) or means (Gaussian) shaped like x.
        likelihood: ``"bernoulli"`` (pixels in [0, 1], decoder gives logits),
            ``"gaussian"`` (a density: decoder gives means) or ``"discretized_logistic"``
            (decoder gives means; 256-level pixels ``k/255`` in [0, 1], each the mass of
            its bin under a logistic, see
            ``keras_vq.losses.discretized_logistic_log_likelihood``): a proper discrete
            likelihood for 8-bit colour images, so ``keras_vq.metrics.bits_per_dim(
            -log_likelihood, H·W·C)`` is the bits/dim the literature reports (for
            ``"gaussian"`` pass ``num_bins=256`` there, see its docstring).
        beta: weight of the KL term (β-VAE); 1 gives the ELBO.
        observation_scale: σ of the Gaussian (or scale of the logistic) likelihood; ``None``
            learns log σ (one scalar).
        filters: widths of the default encoder's stride-2 stages (reversed for the decoder):
            a tuple (3×3 convolutions; ``None``: ``(32, 64)`` at 4×) or one int for the
            VQ-VAE paper's networks (4×4 strided convolutions), as in ``VQVAE``. The encoder
            ends in a dense layer over the whole feature map, so large images want a larger
            ``downsample``.
        num_residual_blocks: residual blocks after the encoder's strided stack and before
            the decoder's, as in ``VQVAE``.
        downsample: the strided stacks' factor, a power of 2; ``None``: ``2 ** len(filters)``
            for a tuple, else 4.
        seed: seed of the reparameterisation noise.

    Example:
        >>> vae = VAE(input_shape=(32, 32, 1), latent_dim=16)
        >>> vae.compile(optimizer="adam")
        >>> vae.fit(keras_vq.data.load("digits", image_size=32), epochs=5)
        >>> nll = -vae.log_likelihood(images, num_samples=100)   # IWAE, nats per example
        >>> new_images = vae.sample(16, seed=0)
        >>> # Colour images, the VQ-VAE paper's networks, bits/dim of a discrete likelihood:
        >>> vae = VAE(input_shape=(32, 32, 3), filters=128, num_residual_blocks=2,
        ...           downsample=8, likelihood="discretized_logistic")
        >>> bpd = keras_vq.metrics.bits_per_dim(-vae.log_likelihood(images), 32 * 32 * 3)
    """

    _config_attributes = {
        "input_shape": "image_shape",
        "latent_dim": "latent_dim",
        "likelihood": "likelihood",
        "beta": "beta",
        "observation_scale": "observation_scale",
        "filters": "filters",
        "num_residual_blocks": "num_residual_blocks",
        "downsample": "downsample",
        "seed": "seed",
    }

    def __init__(
        self,
        input_shape=None,
        latent_dim: int = 16,
        encoder: keras.Model | None = None,
        decoder: keras.Model | None = None,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        observation_scale: float | None = None,
        filters: int | tuple[int, ...] | None = None,
        num_residual_blocks: int = 0,
        downsample: int | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        network = networks.resolve_network(filters, downsample, num_residual_blocks)
        self.filters, self.downsample = network.filters, network.downsample
        self.num_residual_blocks = network.num_residual_blocks
        self.latent_dim = _validation.check_int("latent_dim", latent_dim, minimum=1)
        self.likelihood = _validation.check_choice("likelihood", likelihood, LIKELIHOODS)
        self.beta = _validation.check_float("beta", beta, minimum=0.0)
        self.observation_scale = (
            None
            if observation_scale is None
            else _validation.check_float(
                "observation_scale", observation_scale, minimum=0.0, open_interval=True
            )
        )
        self.seed = _validation.check_seed("seed", seed)
        self.image_shape = _common.resolve_input_shape(input_shape, encoder, network.stages)
        self._custom_networks = _common.check_networks(encoder, decoder)
        self.encoder = encoder or networks.build_gaussian_encoder(
            self.image_shape,
            self.latent_dim,
            network.stages,
            num_residual_blocks=network.num_residual_blocks,
            kernel_size=network.kernel_size,
        )
        self.decoder = decoder or networks.build_dense_to_conv_decoder(
            self.latent_dim,
            self.image_shape,
            network.stages[::-1],
            num_residual_blocks=network.num_residual_blocks,
            kernel_size=network.kernel_size,
        )
        self.sampler = Sampling(seed=seed, name="sampling")
        self.prior_seed_generator = keras.random.SeedGenerator(
            _validation.offset_seed(self.seed, 1)
        )
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")
        self.build((None, *self.image_shape))

    def build(self, input_shape):
        if self.likelihood in _SCALED and self.observation_scale is None:
            self.log_scale = self.add_weight(
                name="log_scale", shape=(), initializer="zeros", dtype="float32", autocast=False
            )
        self.built = True

    # ------------------------------------------------------------------ building blocks
    def _encode(self, x, training=False):
        outputs = self.encoder(x, training=training)
        if isinstance(outputs, list | tuple):
            z_mean, z_log_var = outputs
        else:
            z_mean, z_log_var = ops.split(outputs, 2, axis=-1)
        return ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")

    def _log_scale(self):
        if self.observation_scale is not None:
            return ops.convert_to_tensor(math.log(self.observation_scale), dtype="float32")
        return self.log_scale

    def _log_px_given_z(self, x, decoder_output):
        """log p(x|z) per example (nats)."""
        if self.likelihood == "bernoulli":
            return vq_losses.bernoulli_log_likelihood(x, decoder_output)
        if self.likelihood == "discretized_logistic":
            return vq_losses.discretized_logistic_log_likelihood(
                x, decoder_output, self._log_scale()
            )
        return vq_losses.gaussian_log_likelihood(x, decoder_output, self._log_scale())

    def _mean_image(self, decoder_output):
        decoder_output = ops.cast(decoder_output, "float32")
        if self.likelihood == "bernoulli":
            return ops.sigmoid(decoder_output)
        if self.likelihood == "discretized_logistic":
            # The discretised distribution lives on [0, 1]: its end bins absorb the tails.
            return ops.clip(decoder_output, 0.0, 1.0)
        return decoder_output

    @property
    def _pixels_are_probabilities(self) -> bool:
        """Bernoulli and discretised pixels lie in [0, 1]; a Gaussian takes any real value."""
        return self.likelihood != "gaussian"

    # ------------------------------------------------------------------ public API
    def call(self, inputs, training=None):
        inputs = _common.checked_images(
            inputs, self.image_shape, unit_interval=self._pixels_are_probabilities
        )
        z_mean, z_log_var = self._encode(inputs, training=training)
        z = self.sampler([z_mean, z_log_var]) if training else z_mean
        return self._mean_image(self.decoder(z, training=training))

    def validate_batch(self, data) -> None:
        # Called on each batch before it enters a jitted step (JAX), where an error raised
        # while tracing would leave the model's state behind: reject integer images here.
        _common.check_image_batch(self._unpack(data)[0], self.image_shape)

    def step_loss(self, x, y=None, sample_weight=None, training=False):
        x = _common.checked_images(x, self.image_shape)
        target = x if y is None else y
        z_mean, z_log_var = self._encode(x, training=training)
        z = self.sampler([z_mean, z_log_var])
        decoder_output = self.decoder(z, training=training)
        reconstruction_loss = -self._log_px_given_z(target, decoder_output)
        kl = vq_losses.kl_divergence(z_mean, z_log_var)
        reconstruction_loss = _common.weighted_mean(reconstruction_loss, sample_weight)
        kl_loss = _common.weighted_mean(kl, sample_weight)
        # β = 1: the loss is the negative ELBO; other β weigh the KL (β-VAE).
        elbo = vq_losses.elbo(-reconstruction_loss, self.beta * kl_loss)
        total = -elbo + _common.sum_losses(self.losses)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return total, self._mean_image(decoder_output)

    serving_formats = ("tf_saved_model", "onnx", "litert")

    def _serving_endpoints(self, format: str) -> list:
        if format == "tf_saved_model":
            return serving.vae_endpoints(self)
        return serving.vae_graph_endpoints(self)

    @inference
    def encode(self, x):
        """Images → ``(z_mean, z_log_var)``, each float32 ``(B, latent_dim)``.

        Raises:
            TypeError: integer images. ValueError: wrong shape, NaN/Inf, or (Bernoulli,
            discretised) values outside ``[0, 1]``.
        """
        x = _common.checked_images(
            x, self.image_shape, finite=True, unit_interval=self._pixels_are_probabilities
        )
        return self._encode(x, training=False)

    @inference
    def decode(self, z):
        """Latents ``(B, latent_dim)`` → mean images (probabilities for Bernoulli)."""
        z = ops.convert_to_tensor(z)
        if len(z.shape) != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"`z` must have shape (batch, {self.latent_dim}), got shape {tuple(z.shape)}."
            )
        _validation.check_finite("z", z)
        return self._mean_image(self.decoder(z, training=False))

    @inference
    def sample(self, num_samples: int, seed: int | None = None, batch_size: int | None = None):
        """Decode ``num_samples`` draws of z ~ N(0, I); a fixed ``seed`` repeats them.

        All latents are drawn at once, ``(num_samples, latent_dim)``; ``batch_size`` only
        decodes them in chunks (bounding the decoder's memory). So for a given ``seed`` the
        images do not depend on ``batch_size``, up to the decoder's float round-off (kernels
        may sum in another order for another batch size).

        Args:
            num_samples: number of images ≥ 1.
            seed: int in ``[0, 2**31 - 1]``, or ``None`` for the model's own random stream.
            batch_size: latents decoded per decoder call, ≥ 1; ``None``: all at once.

        Returns:
            Images ``(num_samples, H, W, C)`` (probabilities for the Bernoulli likelihood).
        """
        num_samples = _validation.check_int("num_samples", num_samples, minimum=1)
        seed = _validation.check_seed("seed", seed)
        if batch_size is not None:
            batch_size = _validation.check_int("batch_size", batch_size, minimum=1)
        z = keras.random.normal(
            (num_samples, self.latent_dim),
            seed=self.prior_seed_generator if seed is None else seed,
        )
        if batch_size is None or batch_size >= num_samples:
            return self.decode(z)
        chunks = [self.decode(z[i : i + batch_size]) for i in range(0, num_samples, batch_size)]
        return ops.concatenate(chunks, axis=0)

    @inference
    def elbo(self, x, seed: int | None = None):
        """One-sample ELBO estimate per example, nats ``(B,)``."""
        return self.log_likelihood(x, num_samples=1, seed=seed)

    @inference
    def log_likelihood(
        self, x, num_samples: int = 100, seed: int | None = None, chunk_size: int = 64
    ):
        """Importance-weighted estimate of log p(x) in nats per example (IWAE bound).

            log p(x) ≥ log (1/S) Σ_s p(x|z_s) p(z_s) / q(z_s|x),   z_s ~ q(z|x)

        S = 1 is the ELBO; the bound tightens monotonically (in expectation) as S grows.

        Args:
            x: batch of float images (in ``[0, 1]`` unless the likelihood is Gaussian).
            num_samples: S ≥ 1.
            seed: seed of the importance samples.
            chunk_size: samples decoded at once (memory: chunk_size · batch decoder passes).

        Returns:
            float32 ``(B,)``.
        """
        num_samples = _validation.check_int("num_samples", num_samples, minimum=1)
        chunk_size = _validation.check_int("chunk_size", chunk_size, minimum=1)
        seed = _validation.check_seed("seed", seed)
        x = _common.checked_images(
            x, self.image_shape, finite=True, unit_interval=self._pixels_are_probabilities
        )
        z_mean, z_log_var = self._encode(x, training=False)
        batch = ops.shape(x)[0]
        generator = keras.random.SeedGenerator(seed)
        log_weights = []
        for start in range(0, num_samples, chunk_size):
            s = min(chunk_size, num_samples - start)
            eps = keras.random.normal((s, batch, self.latent_dim), seed=generator)
            z = z_mean[None] + ops.exp(0.5 * z_log_var)[None] * eps
            z_flat = ops.reshape(z, (s * batch, self.latent_dim))
            x_rep = ops.reshape(
                ops.broadcast_to(x[None], (s, *tuple(x.shape))), (s * batch, *tuple(x.shape[1:]))
            )
            log_px = self._log_px_given_z(x_rep, self.decoder(z_flat, training=False))
            log_pz = vq_losses.standard_normal_log_prob(z_flat)
            log_qz = vq_losses.diagonal_normal_log_prob(
                z_flat,
                ops.reshape(ops.broadcast_to(z_mean[None], ops.shape(z)), (s * batch, -1)),
                ops.reshape(ops.broadcast_to(z_log_var[None], ops.shape(z)), (s * batch, -1)),
            )
            log_weights.append(ops.reshape(log_px + log_pz - log_qz, (s, batch)))
        return vq_metrics.iwae_log_likelihood(ops.concatenate(log_weights, axis=0))
