"""Finite scalar quantisation (Mentzer et al., 2023): an implicit codebook, no auxiliary loss."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_vq import _validation
from keras_vq.backend import distribute as _distribute
from keras_vq.layers import _quantizer
from keras_vq.layers._projection import ProjectionMixin

# Half-widths are stretched by (1 + ε) so that tanh's open range still reaches the outer levels.
BOUND_EPSILON = 1e-3
# Added to the variance before the standardisation divides by its square root: a constant
# channel becomes 0, not NaN. Tiny: a channel of standard deviation 10⁻³ must still spread
# over its levels (a fresh encoder's outputs are a few 10⁻²; Keras' BatchNormalization's
# 10⁻³ would squash them towards the zero level).
VARIANCE_EPSILON = 1e-8


# Why a level count below 3 cannot work, by count.
_TOO_FEW_LEVELS = {
    2: "the bound puts two levels at {-1, 0}, saturated around 0 (use LookupFreeQuantizer "
    "for binary codes)",
    1: "one level is one code for every input: the channel carries nothing",
    0: "a channel with no levels has no code at all",
}


def check_levels(levels) -> tuple[int, ...]:
    """``levels`` as a tuple of integers ≥ 3 whose product fits int32 indices, or raise."""
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence | np.ndarray):
        raise TypeError(
            f"`levels` must be a list of integers (one level count per channel), got "
            f"{levels!r} ({type(levels).__name__})."
        )
    levels = list(np.asarray(levels).tolist()) if isinstance(levels, np.ndarray) else levels
    if len(levels) == 0:
        raise ValueError("`levels` must hold at least one level count, got [].")
    checked = []
    for i, level in enumerate(levels):
        level = _validation.check_int(f"levels[{i}]", level)
        if level < 3:
            reason = _TOO_FEW_LEVELS.get(level, "a level count cannot be negative")
            raise ValueError(f"`levels[{i}]` must be >= 3, got {level}: {reason}.")
        checked.append(level)
    size = int(np.prod(checked, dtype=object))
    _quantizer.check_codebook_size("levels", size, f" (the product of {checked})")
    return tuple(checked)


def bound_constants(levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel float32 ``(half_l, offset, shift)`` of the bound ``f`` (see the class).

    ``half_l = (L - 1)(1 + ε) / 2``; ``offset = ½`` for even ``L`` (else 0), so that the
    ``L`` integers ``round(f(z))`` are ``-⌊L/2⌋ … ⌈L/2⌉ - 1``; ``shift = atanh(offset / half_l)``
    makes ``f(0) = 0``. Computed step by step in float32, as the quantizer runs.
    """
    levels = np.asarray(levels, dtype=np.float32)
    half_l = (levels - np.float32(1)) * np.float32(1 + BOUND_EPSILON) / np.float32(2)
    offset = np.where(levels % 2 == 0, np.float32(0.5), np.float32(0.0)).astype(np.float32)
    shift = np.arctanh(offset / half_l).astype(np.float32)
    return half_l, offset, shift


def batch_moments(z, weights):
    """Per-channel mean and (biased) variance of the rows of ``z`` with weight 1, float32.

    Summed over every replica of a ``tf.distribute`` strategy (as one device would see the
    global batch; JAX's ``DataParallel`` already computes on it), in two passes: the mean
    first, then the squared deviations from it (no cancellation of ``E[z²] - E[z]²``).

    Args:
        z: float32 ``(N, d)``, finite where ``weights`` is 1.
        weights: float32 ``(N,)`` 0/1 (0: a row that must not count, e.g. a non-finite one).

    Returns:
        ``(mean, variance, count)``: ``(d,)``, ``(d,)`` and the global row count (a scalar;
        where it is 0 the moments are 0).
    """
    w = weights[:, None]
    count, total = _distribute.sum_across_replicas(ops.sum(weights), ops.sum(z * w, axis=0))
    mean = total / ops.maximum(count, 1.0)
    (squares,) = _distribute.sum_across_replicas(ops.sum(ops.square(z - mean) * w, axis=0))
    return mean, squares / ops.maximum(count, 1.0), count


@keras.saving.register_keras_serializable(package="keras_vq")
class FiniteScalarQuantizer(ProjectionMixin, keras.layers.Layer):
    """Finite scalar quantiser: each channel standardised, then rounded to one of ``L_i`` levels.

    With ``d = len(levels)`` channels ``z`` (after the optional input projection), each
    channel is first standardised (``standardize=True``, the default),

        x = (z - μ) / √(σ² + 10⁻⁸),

    with ``μ``, ``σ²`` the channel's mean and (biased) variance over the batch in training
    (all positions of every image; summed over the replicas of a ``tf.distribute`` strategy,
    so ``MirroredStrategy`` trains as one device; the gradient flows through them, as in
    batch normalisation) and the moving moments ``moving_mean``/``moving_variance`` at
    inference, in ``encode`` and in every export. Training batch ``t`` moves them with decay
    ``min(momentum, (t - 1)/t)`` (the first batches averaged evenly, then exponentially);
    they start at 0 and 1. Why: the bound below gives a channel its ``L`` levels only where
    its values spread over roughly ``[-1.5, 1.5]``, while an encoder's outputs come out at
    their own scale and offset (a fresh convolutional encoder's ~0.04, all on the zero level;
    a trained one's channels each on one side of zero): without the standardisation far fewer
    than ``Π L_i`` codes get used (``benchmarks/RESULTS.md``, "FSQ code usage").
    ``standardize=False`` is the paper's formulation, ``x = z``. Then channel ``i``
    with ``L = L_i`` levels is bounded and rounded,

        f(x) = tanh(x + s) · h - o,   h = (L - 1)(1 + 10⁻³) / 2,
        o = ½ if L is even else 0,    s = atanh(o / h),
        ẑ = round(f(x)) / ⌊L/2⌋,

    with a straight-through gradient for ``round`` (the gradient of ``ẑ`` is that of
    ``f(x) / ⌊L/2⌋``). ``round`` rounds halves to even on every backend (as NumPy, ONNX's
    ``Round`` and TFLite's ``ROUND`` do). ``round(f(x))`` is clipped to the ``L`` integers
    ``-⌊L/2⌋ … ⌈L/2⌉ - 1`` (a no-op up to ``L = 1000``; from ``L = 1001`` on, the stretched
    ``h`` would round one level past either end), so ``ẑ ∈ [-1, 1]`` (``[-1, 1 - 2/L]`` for
    even ``L``) for every ``L``. The level of channel ``i`` is
    ``q_i = round(f(x_i)) + ⌊L_i/2⌋ ∈ [0, L_i)`` and the index of a code

        k = Σ_i q_i · Π_{j<i} L_j        (channel 0 least significant),

    so the implicit codebook has ``Π_i L_i`` codes. Bound, levels and indices are those of
    vector-quantize-pytorch's ``FSQ`` (with ``standardize=False``, same codes for the same
    finite inputs while every ``L ≤ 1000``; from 1001 on the peer's codes leave
    ``[-1, 1]``). There is no codebook to learn and no auxiliary loss.

    When the input's last axis ``D`` is not ``d``, a Dense layer projects the input to ``d``
    channels and another projects the codes back to ``D``. Bound and rounding run in float32
    under every dtype policy (the input projection and the moments too), so the codes under
    ``mixed_bfloat16``/``mixed_float16`` are those of float32; the output has the dtype of the
    input.

    Inputs are floating point: an integer or boolean dtype raises a ``TypeError`` (it would
    be truncated). Non-finite inputs follow the rule of every keras_vq quantizer:
    :meth:`encode` raises a ``ValueError`` when their values are known (eagerly); a call
    (training included) and an ``encode`` traced into a graph (``tf.function``, ``jax.jit``,
    a SavedModel) code a vector with any NaN or ±inf entry as index 0 and output NaN for
    the whole vector (such vectors do not count in the batch moments; a batch without a
    finite vector keeps the moving ones).

    Args:
        levels: level count ``L_i ≥ 3`` of each channel, e.g. ``[8, 5, 5, 5]`` (1000 codes).
        standardize: standardise each channel before the bound (see above); ``False`` gives
            the paper's (and vector-quantize-pytorch's) FSQ. A config saved before this
            argument existed loads with ``False``.
        momentum: decay in (0, 1) of the moving moments (reached after ``1/(1 - momentum)``
            training batches).

    Call arguments:
        inputs: float tensor ``(..., D)``.
        training: with ``standardize``, standardise by the batch's moments and update the
            moving ones (a layer with ``trainable=False`` uses the moving ones, as Keras'
            ``BatchNormalization``); otherwise unused.
        return_indices: also return the int32 code indices, shape ``inputs.shape[:-1]``.
        return_loss: also return a float32 zero scalar, so the layer can stand where a
            ``VectorQuantizer(..., return_loss=True)`` does.

    Returns:
        Quantised tensor, same shape and dtype as ``inputs``, followed by the indices and the
        loss when asked for.

    Example:
        >>> fsq = FiniteScalarQuantizer([8, 5, 5, 5])
        >>> z_q, codes = fsq(keras.random.normal((2, 4, 4, 4)), return_indices=True)
        >>> fsq.codebook_size                                    # 1000
        >>> vectors = fsq.decode(codes)                          # equal to z_q

    Reference:
        Mentzer, Minnen, Agustsson, Tschannen. "Finite Scalar Quantization: VQ-VAE Made
        Simple", 2023 (arXiv:2309.15505).
    """

    def __init__(
        self,
        levels: Sequence[int],
        standardize: bool = True,
        momentum: float = 0.5,
        **kwargs,
    ):
        # Inputs keep their dtype; the quantisation casts to float32 itself.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.levels = check_levels(levels)
        self.standardize = _validation.check_bool("standardize", standardize)
        self.momentum = _validation.check_float(
            "momentum", momentum, minimum=0.0, maximum=1.0, open_interval=True
        )
        self.moving_mean = self.moving_variance = None
        self._init_projections(len(self.levels))
        half_l, offset, shift = bound_constants(self.levels)
        self._bound = (shift, half_l, offset)
        self._half_width = np.asarray([level // 2 for level in self.levels], dtype=np.int32)
        # round(f(z)) ∈ [-⌊L/2⌋, ⌈L/2⌉ - 1], enforced (see `_rounded_levels`).
        self._level_range = (
            -self._half_width.astype(np.float32),
            np.asarray([(level - 1) // 2 for level in self.levels], dtype=np.float32),
        )
        # basis_i = Π_{j<i} L_j; fits int32 because the product of all levels does.
        self._basis = np.cumprod([1, *self.levels[:-1]]).astype(np.int32)

    def build(self, input_shape):
        self._build_projections(input_shape)
        if self.standardize:
            # float32 under every policy (as the bound), never autocast. The moments start as
            # the identity; `moving_updates` counts the training batches that moved them.
            for name, shape, initializer in (
                ("moving_mean", (self.code_dim,), "zeros"),
                ("moving_variance", (self.code_dim,), "ones"),
                ("moving_updates", (), "zeros"),
            ):
                weight = self.add_weight(
                    name=name,
                    shape=shape,
                    initializer=initializer,
                    dtype="float32",
                    trainable=False,
                    autocast=False,
                )
                setattr(self, name, weight)

    def _standardized(self, z, batch_rows=None):
        """``(z - μ) / √(σ² + ε)`` per channel (``z`` itself without ``standardize``).

        Args:
            z: float32 ``(..., d)``, finite (zero where a row was not).
            batch_rows: ``None`` for the moving moments (inference); in training, boolean
                ``(...)``, the rows whose moments (global over replicas) standardise the
                batch and move the moving moments towards them.
        """
        if not self.standardize:
            return z
        mean, variance = self.moving_mean.value, self.moving_variance.value
        if batch_rows is not None:
            flat = ops.reshape(z, (-1, self.code_dim))
            weights = ops.reshape(ops.cast(batch_rows, "float32"), (-1,))
            batch_mean, batch_variance, count = batch_moments(flat, weights)
            self._move_moments(
                ops.stop_gradient(batch_mean), ops.stop_gradient(batch_variance), count
            )
            # An empty batch, or one without a finite row, has no moments: the moving ones.
            valid = count > 0
            mean = ops.where(valid, batch_mean, mean)
            variance = ops.where(valid, batch_variance, variance)
        return (z - mean) / ops.sqrt(variance + VARIANCE_EPSILON)

    def _move_moments(self, batch_mean, batch_variance, count) -> None:
        """The moving moments after batch ``t = moving_updates + 1``: decay
        ``min(momentum, (t - 1) / t)``, so the first batches are averaged evenly (the initial
        identity does not linger, as in a short training) and later ones exponentially. A
        batch without rows (``count`` 0) changes nothing."""
        valid = count > 0
        updates = self.moving_updates.value
        decay = ops.minimum(self.momentum, updates / (updates + 1.0))
        for state, batch in (
            (self.moving_mean, batch_mean),
            (self.moving_variance, batch_variance),
        ):
            moved = state.value * decay + batch * (1.0 - decay)
            state.assign(ops.where(valid, moved, state.value))
        self.moving_updates.assign(ops.where(valid, updates + 1.0, updates))

    @property
    def codebook_size(self) -> int:
        """Number of codes, ``Π_i L_i``."""
        return int(np.prod(self.levels))

    def _rounded_levels(self, z):
        """``clip(round(f(z)))`` as float32 integers, with the gradient of ``f(z)``.

        ``ops.round`` rounds half to even on every backend (as NumPy, ONNX ``Round`` and
        TFLite ``ROUND`` do). The clip is a no-op for ``L ≤ 1000``; from ``L = 1001`` on, the
        stretched bound ``h`` passes ``(L - 1)/2 + ½`` and would round to a level outside.
        """
        shift, half_l, offset = (ops.convert_to_tensor(c) for c in self._bound)
        bounded = ops.subtract(ops.multiply(ops.tanh(ops.add(z, shift)), half_l), offset)
        low, high = self._level_range
        rounded = ops.minimum(ops.maximum(ops.round(ops.stop_gradient(bounded)), low), high)
        # Value exactly `rounded` (bounded - bounded is 0), gradient that of `bounded`.
        return rounded + (bounded - ops.stop_gradient(bounded))

    def _indices(self, rounded):
        levels = ops.add(ops.cast(ops.stop_gradient(rounded), "int32"), self._half_width)
        return ops.sum(ops.multiply(levels, self._basis), axis=-1)

    def call(self, inputs, training=None, return_indices=False, return_loss=False):
        z = self._project_in(inputs)
        # Non-finite vectors: index 0 and NaN codes (see `_quantizer`); 0 keeps the casts sane.
        finite = _quantizer.finite_rows(z)
        z = ops.where(finite[..., None], z, ops.zeros_like(z))
        # As BatchNormalization: batch moments in training unless frozen (trainable=False).
        update = bool(training) and self.trainable
        rounded = self._rounded_levels(self._standardized(z, finite if update else None))
        codes = ops.divide(rounded, ops.cast(self._half_width, "float32"))
        outputs = self._project_out(_quantizer.nan_where_not(finite, codes), inputs.dtype)
        extras = []
        if return_indices:
            extras.append(_quantizer.zero_where_not(finite, self._indices(rounded)))
        if return_loss:
            extras.append(ops.zeros((), "float32"))
        return (outputs, *extras) if extras else outputs

    def _encode_projected(self, z):
        z = ops.stop_gradient(z)
        finite = _quantizer.finite_rows(z)
        z = ops.where(finite[..., None], z, ops.zeros_like(z))
        rounded = self._rounded_levels(self._standardized(z))
        return _quantizer.zero_where_not(finite, self._indices(rounded))

    def level_indices(self, indices):
        """Per-channel levels ``q_i = (k // Π_{j<i} L_j) mod L_i``, int32 ``(..., d)``.

        Args:
            indices: integer tensor with values in ``[0, codebook_size)``.
        """
        indices = ops.cast(indices, "int32")[..., None]
        return ops.mod(ops.floor_divide(indices, self._basis), np.asarray(self.levels, "int32"))

    def _decode_codes(self, indices):
        levels = ops.subtract(self.level_indices(indices), self._half_width)
        return ops.divide(ops.cast(levels, "float32"), ops.cast(self._half_width, "float32"))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            levels=list(self.levels), standardize=self.standardize, momentum=self.momentum
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        # A config saved before `standardize` existed describes the unstandardised layer (its
        # weights have no moving moments).
        return cls(**{"standardize": False, **config})
