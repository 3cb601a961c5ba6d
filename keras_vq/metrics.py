"""Evaluation statistics: codebook perplexity and usage, bits per dimension, IWAE bounds."""

from __future__ import annotations

import math

from keras import ops

from keras_vq import _validation
from keras_vq import backend as vq_backend


def code_counts(indices, num_embeddings: int):
    """How many positions are assigned to each code, float32 ``(num_embeddings,)``.

    A segment sum, not a one-hot matrix: memory stays O(N + K) for N positions. The indices
    must lie in ``[0, num_embeddings)``.
    """
    flat = ops.reshape(ops.cast(indices, "int32"), (-1,))
    ones = ops.ones(ops.shape(flat), dtype="float32")
    return vq_backend.segment_sum(ones, flat, num_embeddings)


def perplexity(indices, num_embeddings: int):
    """Codebook perplexity ``exp(-Σ_k p_k log p_k)``, p = code usage in this batch.

    1 when one code is used, ``num_embeddings`` when all are used equally.

    Args:
        indices: int code indices, any shape.
        num_embeddings: K.

    Returns:
        float32 scalar.

    Example:
        >>> perplexity(ops.array([0, 1, 2, 3]), 8)  # 4.0
    """
    return perplexity_from_counts(code_counts(indices, num_embeddings))


def perplexity_from_counts(counts):
    """Perplexity ``exp(-Σ_k p_k log p_k)`` of the usage histogram ``counts`` ``(K,)``."""
    counts = ops.cast(counts, "float32")
    p = counts / ops.maximum(ops.sum(counts), 1.0)
    return ops.exp(-ops.sum(p * ops.log(p + 1e-10)))


def code_usage(indices, num_embeddings: int, threshold: float = 1.0) -> dict:
    """Codebook usage statistics of a set of code indices.

    Args:
        indices: int code indices, any shape (all positions of a dataset or a batch).
        num_embeddings: K.
        threshold: a code counts as used when it is assigned at least this many times.

    Returns:
        Dict of float32 scalars: ``perplexity`` (``exp(-Σ_k p_k log p_k)``), ``used_codes``
        (number of codes used), ``used_fraction`` (``used_codes / K``) and ``dead_codes``
        (``K - used_codes``).

    Raises:
        TypeError: non-integer indices. ValueError: indices outside ``[0, num_embeddings)``
        (checked when their values are known).

    Example:
        >>> code_usage(ops.array([0, 0, 1, 3]), 8)["used_codes"]   # 3.0
    """
    _validation.check_integer_codes("indices", indices, num_embeddings)
    counts = code_counts(indices, num_embeddings)
    used = ops.sum(ops.cast(counts >= threshold, "float32"))
    return {
        "perplexity": perplexity_from_counts(counts),
        "used_codes": used,
        "used_fraction": used / num_embeddings,
        "dead_codes": num_embeddings - used,
    }


def bits_per_dim(nll_nats, num_dims: int, num_bins: int | None = None):
    """Negative log-likelihood in nats per example → bits per dimension.

        bits/dim = (NLL + num_dims · log(num_bins)) / (num_dims · log 2)

    Without ``num_bins`` this is the plain conversion ``NLL / (num_dims · log 2)``, right for a
    discrete likelihood: a PixelCNN prior over codes (nats per code, ``num_dims=1``), a VAE
    with ``likelihood="discretized_logistic"`` or ``"bernoulli"`` on binary images.

    ``num_bins`` is for a *continuous* density (``likelihood="gaussian"``) on pixels scaled
    to ``[0, 1]`` from ``num_bins`` levels (256 for 8-bit images). A density per unit of the
    ``[0, 1]`` scale is ``num_bins`` times the density per unit of the 0..num_bins-1 pixel
    scale, so ``num_dims · log(num_bins)`` nats are added; the result is then the bits/dim
    of the uniformly dequantised data ``(k + u) / num_bins``, ``u ~ U[0, 1)``, an upper bound
    on a discrete model's bits/dim — the convention of the flow and VAE literature. It is
    only that bound when the density was fitted to dequantised data; on the raw grid ``k/255``
    a continuous density can grow without limit (σ → 0) and the figure means little.

    Args:
        nll_nats: ``-log p(x)`` in nats per example, any shape (e.g. ``(batch,)``).
        num_dims: dimensions per example, ``H·W·C`` for images.
        num_bins: levels per dimension of the discretised data, or ``None`` (discrete NLL).

    Returns:
        float32, the shape of ``nll_nats``.

    Example:
        >>> bits_per_dim(nll, 32 * 32 * 3)                 # discretised logistic VAE
        >>> bits_per_dim(nll, 32 * 32 * 3, num_bins=256)   # Gaussian VAE, 8-bit images
    """
    num_dims = _validation.check_int("num_dims", num_dims, minimum=1)
    if num_bins is not None:
        num_bins = _validation.check_int("num_bins", num_bins, minimum=2)
    offset = 0.0 if num_bins is None else num_dims * math.log(num_bins)
    return (ops.cast(nll_nats, "float32") + offset) / (num_dims * math.log(2.0))


def iwae_log_likelihood(log_weights):
    """Importance-weighted bound ``log (1/S) Σ_s w_s`` from log-weights of shape ``(S, batch)``.

    ``log w_s = log p(x, z_s) - log q(z_s|x)`` with ``z_s ~ q(z|x)``. S = 1 gives the ELBO; the
    bound tightens towards log p(x) as S grows (Burda et al., 2016).

    Returns:
        float32 tensor ``(batch,)`` in nats.
    """
    log_weights = ops.cast(log_weights, "float32")
    num_samples = ops.shape(log_weights)[0]
    return ops.logsumexp(log_weights, axis=0) - ops.log(ops.cast(num_samples, "float32"))
