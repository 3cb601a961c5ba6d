"""Loss terms of the lecture, one function per equation, in pure ``keras.ops``.

Everything is computed in float32 whatever the input dtype, so the same numbers come out
under a mixed-precision policy. Per-example terms return shape ``(batch,)`` in nats; the
VQ terms return scalars (means over all elements, the DeepMind Sonnet convention).
"""

from __future__ import annotations

import math

from keras import ops

_LOG_2PI = math.log(2.0 * math.pi)


def _f32(x):
    return ops.cast(x, "float32")


def _sum_per_example(x):
    """Sum every axis but the first."""
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


# --------------------------------------------------------------------------------------
# VQ-VAE:  L = -log p(x|z_q) + ||sg[z_e] - e||² + β ||z_e - sg[e]||²
# --------------------------------------------------------------------------------------
def codebook_loss(z_e, e):
    """Codebook term ``mean((sg[z_e] - e)²)``: moves the chosen codes towards the encoder.

    Args:
        z_e: encoder outputs, any shape ``(..., D)``.
        e: the codes assigned to them, same shape.

    Returns:
        float32 scalar.

    Example:
        >>> codebook_loss(ops.ones((2, 3)), ops.zeros((2, 3)))  # 1.0
    """
    return ops.mean(ops.square(ops.stop_gradient(_f32(z_e)) - _f32(e)))


def commitment_loss(z_e, e):
    """Commitment term ``mean((z_e - sg[e])²)``: keeps the encoder close to its codes.

    Args:
        z_e: encoder outputs, any shape ``(..., D)``.
        e: the codes assigned to them, same shape.

    Returns:
        float32 scalar (multiply by β to get the lecture's weighted term).
    """
    return ops.mean(ops.square(_f32(z_e) - ops.stop_gradient(_f32(e))))


def vq_loss(z_e, e, beta: float = 0.25, *, codebook_term: bool = True):
    """VQ objective ``||sg[z_e] - e||² + β ||z_e - sg[e]||²`` (means over all elements).

    Args:
        z_e: encoder outputs ``(..., D)``.
        e: assigned codes, same shape.
        beta: commitment weight β.
        codebook_term: drop the first term when the codebook is learnt by EMA instead.

    Returns:
        float32 scalar.
    """
    loss = beta * commitment_loss(z_e, e)
    if codebook_term:
        loss = loss + codebook_loss(z_e, e)
    return loss


# --------------------------------------------------------------------------------------
# VAE:  ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I))
# --------------------------------------------------------------------------------------
def kl_divergence(z_mean, z_log_var):
    """Closed-form ``KL(N(μ, diag σ²) || N(0, I)) = ½ Σ (σ² + μ² - 1 - log σ²)``.

    Args:
        z_mean: μ, shape ``(batch, latent_dim)``.
        z_log_var: log σ², same shape.

    Returns:
        KL in nats per example, shape ``(batch,)``.

    Example:
        >>> kl_divergence(ops.zeros((4, 2)), ops.zeros((4, 2)))  # [0, 0, 0, 0]
    """
    z_mean, z_log_var = _f32(z_mean), _f32(z_log_var)
    return 0.5 * _sum_per_example(ops.exp(z_log_var) + ops.square(z_mean) - 1.0 - z_log_var)


def bernoulli_log_likelihood(x, logits):
    """``log p(x|z) = Σ x·l - softplus(l)`` for Bernoulli pixels with logits ``l``.

    Valid for ``x`` in [0, 1] (the continuous relaxation used for grey-level images).

    Args:
        x: targets ``(batch, ...)`` in [0, 1].
        logits: decoder logits, same shape.

    Returns:
        log-likelihood in nats per example, shape ``(batch,)``.
    """
    x, logits = _f32(x), _f32(logits)
    return _sum_per_example(x * logits - ops.softplus(logits))


def gaussian_log_likelihood(x, mean, log_scale):
    """``log N(x; μ, σ²) = Σ -½ log 2π - log σ - ½ ((x - μ)/σ)²``.

    Args:
        x: targets ``(batch, ...)``.
        mean: μ, same shape.
        log_scale: log σ, broadcastable to ``x``.

    Returns:
        log-likelihood in nats per example, shape ``(batch,)``.
    """
    x, mean, log_scale = _f32(x), _f32(mean), _f32(log_scale)
    z = (x - mean) * ops.exp(-log_scale)
    log_prob = -0.5 * _LOG_2PI - log_scale - 0.5 * ops.square(z)
    return _sum_per_example(log_prob + ops.zeros_like(x))


def discretized_logistic_log_likelihood(x, mean, log_scale, num_bins: int = 256):
    """``log P(x)`` of pixels on the grid ``{0, 1/(n-1), ..., 1}`` (n = ``num_bins``) under a
    logistic density discretised into n bins (PixelCNN++-style, Salimans et al., 2017).

    Bin ``k`` is ``[x - h, x + h]`` with ``h = 1/(2(n-1))``; the end bins reach to ∓∞, so the n
    probabilities sum to 1. With ``σ(t)`` the sigmoid and ``s = exp(log_scale)``:

        P(x) = σ((x + h - μ)/s) - σ((x - h - μ)/s)

    computed stably in log space (the density at the bin centre times ``2h`` where the
    difference underflows). 8-bit images divided by 255 lie on this grid with n = 256; a value
    between grid points gets the mass of the width-``2h`` bin centred on it. The result is a
    proper discrete log-probability, so ``-log P / (dims · log 2)`` is bits per dimension as
    reported for 8-bit images (see ``keras_vq.metrics.bits_per_dim``).

    Args:
        x: targets ``(batch, ...)`` in [0, 1].
        mean: μ, same shape.
        log_scale: log s, broadcastable to ``x``.
        num_bins: n ≥ 2 pixel levels.

    Returns:
        log-likelihood in nats per example, shape ``(batch,)``.

    Example:
        >>> discretized_logistic_log_likelihood(images, decoder_means, ops.zeros(()) - 3.0)
    """
    x, mean, log_scale = _f32(x), _f32(mean), _f32(log_scale)
    half_bin = 0.5 / (num_bins - 1)
    inv_scale = ops.exp(-log_scale)
    centred = x - mean
    upper = (centred + half_bin) * inv_scale
    lower = (centred - half_bin) * inv_scale
    # log σ(u) = -softplus(-u); log(1 - σ(l)) = -softplus(l).
    log_cdf_upper = -ops.softplus(-upper)
    log_survival_lower = -ops.softplus(lower)
    mass = ops.sigmoid(upper) - ops.sigmoid(lower)
    mid = centred * inv_scale
    log_density_mid = mid - log_scale - 2.0 * ops.softplus(mid)
    log_mass = ops.where(
        mass > 1e-5,
        ops.log(ops.maximum(mass, 1e-12)),
        log_density_mid + math.log(2.0 * half_bin),
    )
    log_prob = ops.where(
        x < half_bin,
        log_cdf_upper,
        ops.where(x > 1.0 - half_bin, log_survival_lower, log_mass),
    )
    return _sum_per_example(log_prob + ops.zeros_like(x))


def diagonal_normal_log_prob(z, z_mean, z_log_var):
    """``log N(z; μ, diag σ²)`` summed over the latent axis; shape ``(batch,)``."""
    return gaussian_log_likelihood(z, z_mean, 0.5 * _f32(z_log_var))


def standard_normal_log_prob(z):
    """``log N(z; 0, I)`` summed over the latent axis; shape ``(batch,)``."""
    z = _f32(z)
    return _sum_per_example(-0.5 * _LOG_2PI - 0.5 * ops.square(z))


def elbo(log_likelihood, kl):
    """``ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))`` per example (a lower bound on log p(x))."""
    return _f32(log_likelihood) - _f32(kl)


# --------------------------------------------------------------------------------------
# PixelCNN prior:  -log p(c) = -Σ_i log p(c_i | c_<i)
# --------------------------------------------------------------------------------------
def categorical_cross_entropy(codes, logits):
    """``-log softmax(logits)[codes]`` per position, in nats.

    Args:
        codes: int codes ``(batch, h, w)``.
        logits: ``(batch, h, w, K)``.

    Returns:
        float32 tensor ``(batch, h, w)``.
    """
    logits = _f32(logits)
    log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    one_hot = ops.one_hot(ops.cast(codes, "int32"), ops.shape(logits)[-1], dtype="float32")
    return -ops.sum(one_hot * log_probs, axis=-1)
