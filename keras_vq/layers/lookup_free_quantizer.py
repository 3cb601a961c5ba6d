"""Lookup-free quantisation (Yu et al., 2023, MAGVIT-v2): sign codes and an entropy penalty."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_vq import _validation
from keras_vq.layers import _quantizer
from keras_vq.layers._projection import ProjectionMixin
from keras_vq.layers._quantizer import config_entries

# Probabilities are clamped to this inside the entropy's log (as vector-quantize-pytorch does).
ENTROPY_EPSILON = 1e-5
# Entries (rows × codes) of one block of the soft assignment: 16 MiB of float32.
CHUNK_ENTRIES = 2**22
# The entropy penalty enumerates all 2^k codes; beyond this it is not practical.
MAX_ENTROPY_BITS = 20
MAX_BITS = 30
# The constructor arguments get_config lists, in its order.
CONFIG_KEYS = (
    "num_bits",
    "codebook_size",
    "entropy_loss_weight",
    "commitment_weight",
    "diversity_gamma",
    "temperature",
    "chunk_size",
)


def bit_weights(num_bits: int) -> np.ndarray:
    """int32 ``2^(k-1-i)`` of channel ``i``: channel 0 is the most significant bit."""
    return (2 ** np.arange(num_bits - 1, -1, -1)).astype(np.int32)


def code_signs(num_bits: int):
    """All ``2^k`` codes as float32 ``±1`` vectors ``(2^k, k)``; row ``j`` is code ``j``."""
    indices = ops.arange(2**num_bits, dtype="int32")[:, None]
    bits = ops.mod(ops.floor_divide(indices, bit_weights(num_bits)), 2)
    return ops.cast(bits, "float32") * 2.0 - 1.0


def default_chunk_size(num_bits: int) -> int:
    """Rows of the soft assignment per block: ``CHUNK_ENTRIES`` entries at most (≥ 1 row)."""
    return max(1, CHUNK_ENTRIES // 2**num_bits)


def _soft_assignment(rows, signs, inv_temperature: float):
    """``softmax(-d / T)`` over the codes, ``d = -2 x·c`` (``||x - c||²`` up to a constant)."""
    return ops.softmax(ops.matmul(rows, ops.transpose(signs)) * (2.0 * inv_temperature), axis=-1)


def _entropy(prob):
    """``H(p) = -Σ_j p_j log max(p_j, ε)`` over the last axis."""
    return -ops.sum(prob * ops.log(ops.maximum(prob, ENTROPY_EPSILON)), axis=-1)


def _entropy_derivative(prob):
    """``∂H/∂p_j = -log max(p_j, ε) - [p_j ≥ ε]``, elementwise."""
    return -ops.log(ops.maximum(prob, ENTROPY_EPSILON)) - ops.cast(
        prob >= ENTROPY_EPSILON, "float32"
    )


def _row_blocks(x, rows: int):
    """``(N, k)`` → zero-padded ``(num_blocks, rows, k)``, row validity, ``num_blocks``."""
    num_rows = ops.shape(x)[0]
    num_blocks = (num_rows + rows - 1) // rows
    padded = ops.pad(x, [[0, num_blocks * rows - num_rows], [0, 0]])
    blocks = ops.reshape(padded, (num_blocks, rows, ops.shape(x)[1]))
    valid = ops.reshape(ops.arange(num_blocks * rows) < num_rows, (num_blocks, rows))
    return blocks, ops.cast(valid, "float32"), num_blocks


def _blocked_inputs(x, chunk_size: int | None):
    """Stopped float32 ``x``, its ``k``, the rows per block and the ``(2^k, k)`` sign codes."""
    x = ops.stop_gradient(ops.cast(x, "float32"))
    num_bits = int(x.shape[1])
    return x, num_bits, chunk_size or default_chunk_size(num_bits), code_signs(num_bits)


def entropy_terms(x, inv_temperature: float = 100.0, chunk_size: int | None = None):
    """Per-sample and batch entropy of the soft code assignment (values, no gradient).

    With ``p_n = softmax(2 x_n·c / T)`` over the ``2^k`` sign codes ``c``, returns float32
    ``(mean_n H(p_n), H(mean_n p_n), mean_n p_n)``. Computed ``chunk_size`` rows at a time, so
    memory is O(chunk_size · 2^k) whatever N.

    Args:
        x: ``(N, k)`` float vectors.
        inv_temperature: ``1 / T``.
        chunk_size: rows per block; ``None`` for ``default_chunk_size(k)``.
    """
    x, num_bits, rows, signs = _blocked_inputs(x, chunk_size)
    num_rows = x.shape[0]
    if num_rows == 0:
        zero = ops.zeros((), "float32")
        return zero, zero, ops.zeros((2**num_bits,), "float32")
    if isinstance(num_rows, int) and num_rows <= rows:
        prob = _soft_assignment(x, signs, inv_temperature)
        prob_sum, entropy_sum = ops.sum(prob, axis=0), ops.sum(_entropy(prob))
    else:
        blocks, valid, num_blocks = _row_blocks(x, rows)

        def accumulate(i, sums):
            prob = _soft_assignment(ops.take(blocks, i, axis=0), signs, inv_temperature)
            prob = prob * ops.take(valid, i, axis=0)[:, None]
            return sums[0] + ops.sum(prob, axis=0), sums[1] + ops.sum(_entropy(prob))

        init = (ops.zeros((2**num_bits,), "float32"), ops.zeros((), "float32"))
        prob_sum, entropy_sum = ops.fori_loop(0, num_blocks, accumulate, init)
    count = ops.cast(ops.maximum(ops.shape(x)[0], 1), "float32")
    mean_prob = prob_sum / count
    return entropy_sum / count, _entropy(mean_prob), mean_prob


def entropy_penalty_gradient(
    x, mean_prob, diversity_gamma: float, inv_temperature: float, chunk_size: int | None = None
):
    """``∂/∂x [mean_n H(p_n) - γ H(p̄)]``, float32 ``(N, k)``, in blocks of ``chunk_size`` rows.

    With ``v_n = (H'(p_n) - γ H'(p̄)) / N``, the softmax gives ``∂/∂l_n = p_n ⊙ (v_n - p_n·v_n)``
    for the logits ``l_n = 2 x_n·c / T``, and ``∂/∂x_n = (2 / T) Σ_j (∂/∂l_nj) c_j``.

    Args:
        x: ``(N, k)`` float vectors.
        mean_prob: ``p̄``, from ``entropy_terms``.
        diversity_gamma: γ.
        inv_temperature: ``1 / T``.
        chunk_size: rows per block; ``None`` for ``default_chunk_size(k)``.
    """
    x, num_bits, rows, signs = _blocked_inputs(x, chunk_size)
    scale = 2.0 * inv_temperature / ops.cast(ops.maximum(ops.shape(x)[0], 1), "float32")
    batch_term = diversity_gamma * _entropy_derivative(ops.stop_gradient(mean_prob))

    def gradient(block):
        prob = _soft_assignment(block, signs, inv_temperature)
        v = _entropy_derivative(prob) - batch_term[None, :]
        logits_grad = prob * (v - ops.sum(prob * v, axis=-1, keepdims=True))
        return ops.matmul(logits_grad, signs) * scale

    num_rows = x.shape[0]
    if num_rows == 0:
        return ops.zeros_like(x)
    if isinstance(num_rows, int) and num_rows <= rows:
        return gradient(x)
    blocks, _, _ = _row_blocks(x, rows)
    # Padded rows get gradients too; they are cut off below.
    grads = ops.reshape(ops.map(gradient, blocks), (-1, num_bits))
    return grads[: ops.shape(x)[0]]


def entropy_penalty(
    x, diversity_gamma: float, inv_temperature: float, chunk_size: int | None = None
):
    """MAGVIT-v2's entropy penalty ``mean_n H(p_n) - γ H(p̄)`` with memory bounded in N.

    Autodiff through the blocks would keep every block of the soft assignment for the
    backward pass (O(N · 2^k)). Instead the value and its gradient ``G`` are computed block by
    block without gradient, and the result is ``value + (s - sg(s))`` with ``s = Σ sg(G) ⊙ x``:
    its value is exactly ``value`` and its gradient with respect to ``x`` is ``G``.

    Returns:
        ``(penalty, per_sample_entropy, batch_entropy)``, float32 scalars; only ``penalty``
        carries a gradient.
    """
    per_sample, batch, mean_prob = entropy_terms(x, inv_temperature, chunk_size)
    grad = entropy_penalty_gradient(x, mean_prob, diversity_gamma, inv_temperature, chunk_size)
    surrogate = ops.sum(ops.stop_gradient(grad) * x)
    value = per_sample - diversity_gamma * batch
    return value + (surrogate - ops.stop_gradient(surrogate)), per_sample, batch


def _resolve_bits(num_bits, codebook_size) -> int:
    if num_bits is None and codebook_size is None:
        raise ValueError("Pass `num_bits` or `codebook_size` (= 2**num_bits); got neither.")
    if codebook_size is not None:
        codebook_size = _validation.check_int("codebook_size", codebook_size, minimum=2)
        if codebook_size & (codebook_size - 1):
            raise ValueError(
                f"`codebook_size` must be a power of 2, got {codebook_size} (nearest: "
                f"{2 ** round(math.log2(codebook_size))})."
            )
        from_size = codebook_size.bit_length() - 1
        if num_bits is None:
            num_bits = from_size
        elif _validation.check_int("num_bits", num_bits) != from_size:
            raise ValueError(
                f"`num_bits`={num_bits} and `codebook_size`={codebook_size} disagree: "
                f"codebook_size must be 2**num_bits = {2**num_bits}."
            )
    num_bits = _validation.check_int("num_bits", num_bits, minimum=1)
    if num_bits > MAX_BITS:
        raise ValueError(f"`num_bits` must be <= {MAX_BITS} (int32 indices), got {num_bits}.")
    return num_bits


@keras.saving.register_keras_serializable(package="keras_vq")
class LookupFreeQuantizer(ProjectionMixin, keras.layers.Layer):
    """Lookup-free quantiser: each of ``k`` channels replaced by its sign, ``±1``.

    The implicit codebook is ``{-1, 1}^k`` (``2^k`` codes); a channel ``x_i`` (after the
    optional input projection) becomes ``q_i = 1`` if ``x_i > 0`` else ``-1``, with a
    straight-through gradient, and the index of the code is

        k = Σ_i [x_i > 0] · 2^(k-1-i)        (channel 0 most significant).

    In ``training=True`` calls the layer adds (``add_loss``) the auxiliary loss

        L = w_e · (mean_n H(p_n) - γ H(mean_n p_n)) + w_c · mean((x - sg[q])²),
        p_n = softmax_c(-‖x_n - c‖² / T) = softmax_c(2 x_n·c / T)  over all 2^k codes c,

    ``H(p) = -Σ p log max(p, 10⁻⁵)``: low per-sample entropy makes each assignment confident,
    high batch entropy spreads the batch over the codebook. The soft assignment is built a
    block of ``chunk_size`` rows at a time, forward and backward, so memory stays
    O(chunk_size · 2^k) for any batch (16 MiB blocks by default: 64 rows at ``k = 16``).
    Inference calls add a zero loss. Codes, indices and the loss equal those of
    vector-quantize-pytorch's ``LFQ`` (``inv_temperature = 1 / T``) with matching settings.

    Everything is computed in float32 under every dtype policy (the input projection too), so
    codes under ``mixed_bfloat16``/``mixed_float16`` are those of float32; the output has the
    dtype of the input. When the input's last axis ``D`` is not ``k``, Dense layers project
    the input to ``k`` channels and the codes back to ``D``.

    Inputs are floating point: an integer or boolean dtype raises a ``TypeError`` (it would
    be truncated). Non-finite inputs follow the rule of every keras_vq quantizer:
    :meth:`encode` raises a ``ValueError`` when their values are known (eagerly); a call
    (training included) and an ``encode`` traced into a graph (``tf.function``, ``jax.jit``,
    a SavedModel) code a vector with any NaN or ±inf entry as index 0 and output NaN for
    the whole vector.

    Args:
        num_bits: ``k``, the bits per code.
        codebook_size: ``2^k``, instead of (or agreeing with) ``num_bits``.
        entropy_loss_weight: ``w_e ≥ 0``; 0 skips the entropy penalty (it costs O(N · 2^k)).
        commitment_weight: ``w_c ≥ 0``.
        diversity_gamma: ``γ ≥ 0``, the weight of the batch entropy.
        temperature: ``T > 0`` of the soft assignment.
        chunk_size: rows of the soft assignment per block; ``None`` for ``2^22 / 2^k``.

    Call arguments:
        inputs: float tensor ``(..., D)``.
        training: add the auxiliary loss when true (a zero loss otherwise).
        return_indices: also return the int32 code indices, shape ``inputs.shape[:-1]``.
        return_loss: return the loss (float32 scalar) instead of adding it with ``add_loss``.

    Returns:
        Quantised tensor, same shape and dtype as ``inputs``, followed by the indices and the
        loss when asked for.

    Example:
        >>> lfq = LookupFreeQuantizer(num_bits=10)
        >>> z_q, codes = lfq(keras.random.normal((2, 4, 4, 10)), return_indices=True)
        >>> vectors = lfq.decode(codes)                           # equal to z_q

    Reference:
        Yu et al. "Language Model Beats Diffusion — Tokenizer is Key to Visual Generation",
        2023 (arXiv:2310.05737).
    """

    def __init__(
        self,
        num_bits: int | None = None,
        codebook_size: int | None = None,
        entropy_loss_weight: float = 0.1,
        commitment_weight: float = 0.0,
        diversity_gamma: float = 1.0,
        temperature: float = 0.01,
        chunk_size: int | None = None,
        **kwargs,
    ):
        # Inputs keep their dtype; the quantisation casts to float32 itself.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_bits = _resolve_bits(num_bits, codebook_size)
        self.entropy_loss_weight = _validation.check_float(
            "entropy_loss_weight", entropy_loss_weight, minimum=0.0
        )
        if self.entropy_loss_weight > 0 and self.num_bits > MAX_ENTROPY_BITS:
            raise ValueError(
                f"The entropy penalty enumerates all 2**num_bits codes: with num_bits="
                f"{self.num_bits} (> {MAX_ENTROPY_BITS}) pass entropy_loss_weight=0, got "
                f"entropy_loss_weight={self.entropy_loss_weight}."
            )
        self.commitment_weight = _validation.check_float(
            "commitment_weight", commitment_weight, minimum=0.0
        )
        self.diversity_gamma = _validation.check_float(
            "diversity_gamma", diversity_gamma, minimum=0.0
        )
        self.temperature = _validation.check_float(
            "temperature", temperature, minimum=0.0, open_interval=True
        )
        self.chunk_size = (
            None
            if chunk_size is None
            else _validation.check_int("chunk_size", chunk_size, minimum=1)
        )
        self._init_projections(self.num_bits)

    @property
    def codebook_size(self) -> int:
        """Number of codes, ``2^num_bits``."""
        return 2**self.num_bits

    @property
    def rows_per_chunk(self) -> int:
        """Rows of the soft assignment computed at once."""
        return self.chunk_size or default_chunk_size(self.num_bits)

    def _indices(self, x):
        positive = ops.cast(ops.stop_gradient(x) > 0, "int32")
        indices = ops.sum(ops.multiply(positive, bit_weights(self.num_bits)), axis=-1)
        # A vector with NaN or ±inf is code 0 (see `_quantizer`), not the sign of its inf.
        return _quantizer.zero_where_not(_quantizer.finite_rows(x), indices)

    def aux_loss(self, x, quantized):
        """``L`` of the class docstring for float32 ``x`` ``(..., k)`` and its codes ``q``."""
        flat = ops.reshape(x, (-1, self.num_bits))
        loss = ops.zeros((), "float32")
        if self.entropy_loss_weight > 0:
            penalty, _, _ = entropy_penalty(
                flat, self.diversity_gamma, 1.0 / self.temperature, self.rows_per_chunk
            )
            loss = loss + self.entropy_loss_weight * penalty
        if self.commitment_weight > 0:
            commitment = ops.mean(ops.square(x - ops.stop_gradient(quantized)))
            loss = loss + self.commitment_weight * commitment
        # An empty batch has no loss (the commitment mean would be NaN).
        return ops.where(ops.shape(flat)[0] > 0, loss, ops.zeros_like(loss))

    def call(self, inputs, training=None, return_indices=False, return_loss=False):
        x = self._project_in(inputs)
        ones = ops.ones_like(x)
        quantized = ops.where(x > 0, ones, -ones)
        # Value exactly ±1 (x - x is 0), gradient identity with respect to x; a vector with
        # NaN or ±inf is NaN throughout (inf - inf would make only those entries NaN).
        straight_through = _quantizer.nan_where_not(
            _quantizer.finite_rows(x), quantized + (x - ops.stop_gradient(x))
        )
        loss = self.aux_loss(x, quantized) if training else ops.zeros((), "float32")
        if not return_loss:
            self.add_loss(loss)
        outputs = self._project_out(straight_through, inputs.dtype)
        extras = []
        if return_indices:
            extras.append(self._indices(x))
        if return_loss:
            extras.append(loss)
        return (outputs, *extras) if extras else outputs

    def _encode_projected(self, z):
        return self._indices(z)

    def _decode_codes(self, indices):
        indices = ops.cast(indices, "int32")[..., None]
        bits = ops.mod(ops.floor_divide(indices, bit_weights(self.num_bits)), 2)
        return ops.cast(bits, "float32") * 2.0 - 1.0

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(config_entries(self, CONFIG_KEYS))
        return config
