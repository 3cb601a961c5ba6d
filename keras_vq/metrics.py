"""Evaluation statistics: codebook perplexity and usage, bits per dimension, IWAE bounds."""

from __future__ import annotations

import math

from keras import ops


def code_counts(indices, num_embeddings: int):
    """How many positions are assigned to each code, float32 ``(num_embeddings,)``.

    A segment sum, not a one-hot matrix: memory stays O(N + K) for N positions.
    """
    flat = ops.reshape(ops.cast(indices, "int32"), (-1,))
    ones = ops.ones(ops.shape(flat), dtype="float32")
    return ops.segment_sum(ones, flat, num_segments=num_embeddings)


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

    Example:
        >>> code_usage(ops.array([0, 0, 1, 3]), 8)["used_codes"]   # 3.0
    """
    counts = code_counts(indices, num_embeddings)
    used = ops.sum(ops.cast(counts >= threshold, "float32"))
    return {
        "perplexity": perplexity_from_counts(counts),
        "used_codes": used,
        "used_fraction": used / num_embeddings,
        "dead_codes": num_embeddings - used,
    }


def bits_per_dim(nll_nats, num_dims: int):
    """Convert a negative log-likelihood in nats per example to bits per dimension."""
    return ops.cast(nll_nats, "float32") / (num_dims * math.log(2.0))


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
