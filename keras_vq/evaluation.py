"""Held-out evaluation over a whole dataset: reconstruction error, code usage, likelihoods;
and the quality of generated images (``sample_quality``, ``frechet_distance``,
``precision_recall``, from ``keras_vq.sample_quality``).

The numbers are accumulated on the host in float64 over every batch (not a mean of batch
means), so they do not depend on the batch size. Works on TensorFlow, JAX and PyTorch.

Example:
    >>> test = keras_vq.data.load("digits", split="test", image_size=32, shuffle=False)
    >>> evaluate_reconstructions(vqvae, test)
    {'reconstruction_mse': 0.0021, 'perplexity': 97.3, 'used_codes': 121, ...}
    >>> evaluate_likelihood(vae, test, num_samples=100)
    {'elbo_nats': -64.1, 'iwae_nll_nats': 61.9, 'iwae_nll_bits_per_dim': 0.087, ...}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from keras_vq import _batches
from keras_vq._validation import check_float, check_int, check_seed, offset_seed
from keras_vq.backend import to_numpy
from keras_vq.metrics import code_usage
from keras_vq.sample_quality import (
    default_feature_model,
    frechet_distance,
    precision_recall,
    sample_quality,
)

__all__ = [
    "dataset_code_usage",
    "default_feature_model",
    "evaluate_likelihood",
    "evaluate_reconstructions",
    "frechet_distance",
    "precision_recall",
    "sample_quality",
]


def _is_vector_quantized(model: Any) -> bool:
    """A model with a codebook: ``encode`` → int codes, ``decode`` and ``num_embeddings``."""
    return isinstance(getattr(model, "num_embeddings", None), int) and callable(
        getattr(model, "decode", None)
    )


def _usage(codes: list[np.ndarray], num_embeddings: int, threshold: float) -> dict[str, Any]:
    usage = code_usage(np.concatenate([c.ravel() for c in codes]), num_embeddings, threshold)
    usage = {key: float(to_numpy(value)) for key, value in usage.items()}
    for key in ("used_codes", "dead_codes"):
        usage[key] = round(usage[key])
    return usage


def evaluate_reconstructions(
    model: Any, data: Any, *, batch_size: int = 128, threshold: float = 1.0, verbose: int = 0
) -> dict[str, Any]:
    """Mean squared reconstruction error over ``data`` and, for a VQ-VAE, its code usage.

    A model with a codebook (``num_embeddings`` and ``decode``, e.g. a ``VQVAE``) reconstructs
    ``decode(encode(x))``; any other (a ``VAE``) ``model(x, training=False)``.

    Args:
        model: a ``VAE``, a ``VQVAE`` or any Keras model mapping images to images.
        data: a dataset of ``images`` or ``(images, labels)`` batches, or an array of images.
        batch_size: batch size when ``data`` is an array.
        threshold: for code usage: a code is used when assigned at least this many times.
        verbose: 0 silent, 1 a progress bar.

    Returns:
        ``reconstruction_mse`` (float: Σ (x̂ - x)² / number of pixel values) and, for a model
        with a codebook, ``keras_vq.metrics.code_usage`` of all codes: ``perplexity``,
        ``used_codes`` (int), ``used_fraction``, ``dead_codes`` (int).
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    threshold = check_float("threshold", threshold, minimum=0.0)
    quantized = _is_vector_quantized(model)
    totals = {"squared": 0.0, "pixels": 0}
    codes: list[np.ndarray] = []

    def add(step: int, images: np.ndarray) -> None:
        if quantized:
            codes.append(to_numpy(model.encode(images)))
            recon = to_numpy(model.decode(codes[-1]))
        else:
            recon = to_numpy(model(images, training=False))
        totals["squared"] += float(np.sum((recon.astype(np.float64) - images) ** 2))
        totals["pixels"] += images.size

    if not _batches.for_each_batch(data, add, batch_size=batch_size, verbose=verbose):
        raise ValueError("`data` holds no images.")
    metrics: dict[str, Any] = {"reconstruction_mse": totals["squared"] / max(totals["pixels"], 1)}
    if quantized:
        metrics.update(_usage(codes, model.num_embeddings, threshold))
    return metrics


def dataset_code_usage(
    vqvae: Any, data: Any, *, batch_size: int = 128, threshold: float = 1.0, verbose: int = 0
) -> dict[str, Any]:
    """``keras_vq.metrics.code_usage`` of the codes of every image in ``data``.

    Args:
        vqvae: a model with ``encode(images)`` → int codes and ``num_embeddings`` (a ``VQVAE``).
        data, batch_size, threshold, verbose: as in :func:`evaluate_reconstructions`.

    Returns:
        ``perplexity``, ``used_codes`` (int), ``used_fraction`` and ``dead_codes`` (int).
    """
    if not _is_vector_quantized(vqvae):
        raise TypeError(
            "`vqvae` must have `encode`, `decode` and an int `num_embeddings` (a VQVAE), got "
            f"{type(vqvae).__name__}."
        )
    batch_size = check_int("batch_size", batch_size, minimum=1)
    threshold = check_float("threshold", threshold, minimum=0.0)
    codes: list[np.ndarray] = []
    if not _batches.for_each_batch(
        data,
        lambda step, images: codes.append(to_numpy(vqvae.encode(images))),
        batch_size=batch_size,
        verbose=verbose,
    ):
        raise ValueError("`data` holds no images.")
    return _usage(codes, vqvae.num_embeddings, threshold)


def evaluate_likelihood(
    vae: Any,
    data: Any,
    *,
    num_samples: int = 100,
    seed: int = 0,
    batch_size: int = 128,
    verbose: int = 0,
) -> dict[str, Any]:
    """Held-out ELBO and IWAE bound of a ``VAE``, in nats per example and bits per dimension.

    Batch ``b`` (b = 1, 2, ...) draws its noise with seed ``seed + b`` (mod ``2**31``): the
    result is repeatable for a given ``seed`` and batching of ``data``.

    Args:
        vae: a ``VAE`` (``elbo``, ``log_likelihood`` and ``image_shape``).
        data: a dataset of ``images`` or ``(images, labels)`` batches, or an array of images.
        num_samples: importance samples S of the IWAE bound ``log (1/S) Σ_s w_s``.
        seed: int in ``[0, 2**31 - 1]`` (batch seeds wrap around past the end).
        batch_size: batch size when ``data`` is an array.
        verbose: 0 silent, 1 a progress bar.

    Returns:
        ``elbo_nats`` (mean one-sample ELBO), ``iwae_nll_nats`` (mean -IWAE bound, an upper
        bound of the NLL), ``iwae_nll_bits_per_dim`` (the same over ``H·W·C`` dims, in bits;
        for ``likelihood="gaussian"``, a density, the bits/dim of 8-bit data dequantised to
        ``[0, 1]``: ``keras_vq.metrics.bits_per_dim(nll, H·W·C, num_bins=256)``) and
        ``iwae_samples``.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    seed = check_seed("seed", seed)
    if seed is None:
        raise TypeError("`seed` must be an integer in [0, 2**31 - 1], got None.")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    totals = {"elbo": 0.0, "iwae": 0.0, "count": 0}

    def add(step: int, images: np.ndarray) -> None:
        totals["elbo"] += float(np.sum(to_numpy(vae.elbo(images, seed=offset_seed(seed, step)))))
        log_px = vae.log_likelihood(images, num_samples=num_samples, seed=offset_seed(seed, step))
        totals["iwae"] += float(np.sum(to_numpy(log_px)))
        totals["count"] += len(images)

    if not _batches.for_each_batch(data, add, batch_size=batch_size, verbose=verbose):
        raise ValueError("`data` holds no images.")
    count = totals["count"]
    nll = -totals["iwae"] / count
    dims = math.prod(vae.image_shape)
    # A Gaussian decoder gives a density on [0, 1]: 256 bins per pixel turn it into the
    # (dequantised) bits of 8-bit pixels; the other likelihoods are already discrete.
    if getattr(vae, "likelihood", None) == "gaussian":
        nll_bits = nll + dims * math.log(256.0)
    else:
        nll_bits = nll
    return {
        "elbo_nats": totals["elbo"] / count,
        "iwae_nll_nats": nll,
        # On the host in float64, as the sums above.
        "iwae_nll_bits_per_dim": nll_bits / (dims * math.log(2.0)),
        "iwae_samples": num_samples,
    }
