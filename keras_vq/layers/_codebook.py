"""Codebook helpers shared by the quantizers: l2 normalisation and k-means initialisation.

Pure ``keras.ops`` with static loop bounds, so they run eagerly and inside compiled training
steps (``tf.function``/XLA, ``jax.jit``) alike.
"""

from __future__ import annotations

from keras import ops

from keras_vq import backend as vq_backend

# Squared norms are clamped here before the inverse square root: a zero vector stays zero.
_NORM_FLOOR = 1e-12


def l2_normalize(x, axis: int = -1):
    """``x / ||x||`` along ``axis`` (zero vectors stay zero), float32.

    Args:
        x: float tensor.
        axis: the vector axis.

    Returns:
        float32 tensor of the shape of ``x``.
    """
    x = ops.cast(x, "float32")
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, _NORM_FLOOR))


def _squared_distance_to(points, centre):
    """``||x_i - c||²`` for every row ``x_i`` of ``points`` ``(N, D)``, ``(N,)``."""
    return ops.sum(ops.square(points - centre[None, :]), axis=1)


def _weighted_pick(weights, u, num_rows):
    """Row drawn with probability ``∝ weights`` by inverse CDF at ``u ∈ [0, 1)``.

    The first row whose cumulative weight exceeds ``u · Σ weights``; a uniform draw
    ``floor(u · N)`` when every weight is 0 (all rows coincide with chosen centres).
    """
    total = ops.sum(weights)
    below = ops.cumsum(weights) <= u * total
    by_weight = ops.sum(ops.cast(below, "int32"))
    uniform = ops.cast(ops.floor(u * ops.cast(num_rows, "float32")), "int32")
    index = ops.where(total > 0.0, by_weight, uniform)
    return ops.clip(index, 0, ops.maximum(num_rows - 1, 0))


def kmeans_plus_plus(points, num_codes: int, uniforms):
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) driven by given uniforms.

    Centre 0 is row ``floor(u_0 · N)``; centre k is drawn with probability proportional to
    ``D(x)²``, the squared distance of ``x`` to its nearest centre so far, by inverse CDF at
    ``u_k`` (see :func:`_weighted_pick`). Passing the uniforms in keeps the function pure, so a
    caller can draw them outside a ``cond`` and a test can replay the draw in NumPy.

    Args:
        points: float32 ``(N, D)``, N ≥ 1.
        num_codes: K, centres to pick (points are picked again when N < K).
        uniforms: float32 ``(K,)`` in ``[0, 1)``.

    Returns:
        float32 ``(K, D)``, each row one of ``points``.
    """
    points = ops.cast(points, "float32")
    uniforms = ops.cast(uniforms, "float32")
    num_rows = ops.shape(points)[0]
    first = ops.take(points, _weighted_pick(ops.zeros((num_rows,)), uniforms[0], num_rows), axis=0)
    centres = ops.broadcast_to(first[None, :], (num_codes, points.shape[1]))
    rows = ops.arange(num_codes, dtype="int32")[:, None]

    def add_centre(k, state):
        centres, distances = state
        u = ops.take(uniforms, k)
        centre = ops.take(points, _weighted_pick(distances, u, num_rows), axis=0)
        centres = ops.where(rows == k, centre[None, :], centres)
        return centres, ops.minimum(distances, _squared_distance_to(points, centre))

    centres, _ = ops.fori_loop(
        1, num_codes, add_centre, (centres, _squared_distance_to(points, first))
    )
    return centres


def lloyd_iterations(points, centres, iterations: int, *, spherical: bool = False, assign=None):
    """``iterations`` Lloyd steps: assign to the nearest centre, move centres to the means.

    A centre that gets no point keeps its position. With ``spherical`` the means are
    l2-normalised (spherical k-means for cosine codebooks; ``points`` should be unit vectors).

    Args:
        points: float32 ``(N, D)``.
        centres: float32 ``(K, D)`` starting centres.
        iterations: number of steps (static).
        spherical: normalise the new centres.
        assign: ``assign(points, centres)`` → int32 ``(N,)`` nearest-centre indices.

    Returns:
        float32 ``(K, D)``.
    """
    points = ops.cast(points, "float32")
    num_codes = centres.shape[0]
    ones = ops.ones((ops.shape(points)[0],), dtype="float32")

    def step(_, centres):
        nearest = assign(points, centres)
        sums = vq_backend.segment_sum(points, nearest, num_codes)
        counts = vq_backend.segment_sum(ones, nearest, num_codes)
        means = sums / ops.maximum(counts, 1.0)[:, None]
        if spherical:
            means = l2_normalize(means)
        return ops.where(counts[:, None] > 0.0, means, centres)

    return ops.fori_loop(0, iterations, step, ops.cast(centres, "float32"))


def kmeans(points, num_codes: int, uniforms, iterations: int, *, spherical: bool, assign):
    """k-means++ seeding followed by ``iterations`` Lloyd steps.

    Args:
        points: float32 ``(N, D)``, N ≥ 1 (unit vectors when ``spherical``).
        num_codes: K.
        uniforms: float32 ``(K,)`` in ``[0, 1)`` driving the seeding.
        iterations: Lloyd steps.
        spherical: spherical k-means (normalised centres).
        assign: nearest-centre function, see :func:`lloyd_iterations`.

    Returns:
        float32 ``(K, D)`` centres.
    """
    centres = kmeans_plus_plus(points, num_codes, uniforms)
    return lloyd_iterations(points, centres, iterations, spherical=spherical, assign=assign)
