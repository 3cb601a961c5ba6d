"""Residual vector quantisation: a stack of codebooks, each coding what the previous left."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vq import _validation
from keras_vq import losses as vq_losses
from keras_vq.backend import distribute as _distribute
from keras_vq.layers import _quantizer, vector_quantizer
from keras_vq.layers._seed_state import SeedStateMixin
from keras_vq.layers.vector_quantizer import VectorQuantizer, rotation_trick

# The RVQ's own constructor arguments get_config lists, in its order.
CONFIG_KEYS = (
    "num_quantizers",
    "num_embeddings",
    "embedding_dim",
    "shared_codebook",
    "quantize_dropout",
    "seed",
    "commitment",
)
# How the encoder is committed to the codes (see the class docstring).
COMMITMENTS = ("total", "per_stage")
# VectorQuantizer arguments a stage takes; the rest of **kwargs go to keras.layers.Layer.
# They are the VectorQuantizer's config entries but those the RVQ sets for every stage itself.
STAGE_OPTIONS = tuple(
    key
    for key in vector_quantizer.CONFIG_KEYS
    if key not in ("num_embeddings", "embedding_dim", "seed")
)


@keras.saving.register_keras_serializable(package="keras_vq")
class ResidualVectorQuantizer(SeedStateMixin, _quantizer.EmbeddingDimMixin, keras.layers.Layer):
    """Residual vector quantiser (RVQ): stage s quantizes the residual of stages < s.

    With ``r_0 = z`` and ``VQ_s`` the s-th :class:`VectorQuantizer`,

        k_s = VQ_s.encode(r_s),   q_s = VQ_s.decode(k_s),   r_{s+1} = r_s - q_s,
        z_q = Σ_s q_s,

    and the output has the value ``z_q`` and a straight-through gradient to ``z`` overall
    (``z + sg[z_q - z]``; with ``gradient="rotation"`` the rotation trick from ``z`` to
    ``z_q``). Each stage learns its codebook from its own residual, ``mean((sg[r_s] - e_s)²)``
    (or by EMA of its residuals, with dead-code restarts and k-means drawn from them). The
    encoder's commitment term depends on ``commitment``:

    - ``"total"`` (default): ``β · mean((z - sg[z_q])²)``, once: the encoder is pulled towards
      the sum of the codes, i.e. only the residual left after the last stage is penalised;
      the layer's loss is ``Σ_s mean((sg[r_s] - e_s)²) + β · mean((z - sg[z_q])²)``.
    - ``"per_stage"``: each stage's own ``β · mean((r_s - sg[e_s])²)`` (residuals are computed
      from the stopped codes, so each reaches ``z`` directly), the loss being
      ``Σ_s L_s`` with ``L_s`` a ``VectorQuantizer``'s loss on ``r_s``: SoundStream's and
      vector-quantize-pytorch's ``ResidualVQ`` (whose per-stage losses sum to it). Its
      gradient ``2β Σ_s r_{s+1}`` is dominated by the first stage's residual and pulls ``z``
      onto the first codebook, so later stages get little left to code: on 28×28 digits a
      4-stage RVQ (K=128) reaches 0.45–0.57× one stage's MSE with ``"total"`` (five seeds),
      0.50–0.72× with ``"per_stage"`` (``benchmarks/RESULTS.md``).

    With EMA codebooks the codebook terms are absent. With one stage both are the same. With
    ``codebook_dim`` each stage keeps its commitment in the code space under ``"total"`` too,
    with the residual stopped: it trains ``project_in`` only.

    Each stage is a ``VectorQuantizer`` built from ``**kwargs`` (EMA, dead-code restarts,
    k-means initialisation, ``codebook_dim``, ...), with its own state.
    With ``codebook_dim`` a stage's code is ``project_out`` of its code-space vector;
    ``project_out`` learns from the output's gradient, ``project_in`` from the stage loss.

    ``shared_codebook=True`` uses one quantizer (one codebook) for every stage; its EMA
    statistics are updated once per training call from all stages' residuals, and a
    k-means initialisation uses the inputs (the first residual).

    ``quantize_dropout=True`` trains with the first ``n`` stages only, ``n`` drawn uniformly
    from ``1..num_quantizers`` once per training call (seeded by ``seed``, the same ``n`` on
    every replica); the dropped stages output nothing, change no state, add no loss and
    report index ``-1``. Inference calls use every stage; :meth:`encode` and :meth:`decode`
    take ``num_stages`` for a coarser code.

    Codes, distances and losses are float32 under every dtype policy; the output has the
    dtype of the input.

    Inputs are floating point: an integer or boolean dtype raises a ``TypeError`` (it would
    be truncated). Non-finite inputs follow the rule of every keras_vq quantizer:
    :meth:`encode` raises a ``ValueError`` when their values are known (eagerly); a call
    (training included) and an ``encode`` traced into a graph (``tf.function``, ``jax.jit``,
    a SavedModel) code a vector with any NaN or ±inf entry as index 0 at every active stage and
    output NaN for the whole vector.

    Args:
        num_quantizers: number of stages S ≥ 1.
        num_embeddings: K, the codes per stage (``codebook_size``).
        embedding_dim: D; ``None`` takes it from the input's last axis at build time.
        shared_codebook: one codebook for all stages.
        quantize_dropout: train with a random number of stages.
        seed: seed of the stage count (``quantize_dropout``); stage s gets ``seed + s + 1`` for
            its restarts and k-means seeding.
        commitment: ``"total"`` (commit ``z`` to the sum of the codes) or ``"per_stage"``
            (each stage's commitment on its residual, as vector-quantize-pytorch).
        **kwargs: the stages' ``VectorQuantizer`` options (``beta``, ``ema_decay``,
            ``epsilon``, ``dead_code_threshold``, ``chunk_size``, ``codebook_initializer``,
            ``kmeans_init``, ``codebook_dim``, ``gradient``; ``distance`` must stay
            ``"euclidean"``), then ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: float tensor ``(..., D)``.
        training: update the stages' state and apply ``quantize_dropout`` when true.
        return_indices: also return the int32 indices ``(..., num_quantizers)``.
        return_loss: return the loss (float32 scalar) instead of adding it with ``add_loss``.

    Returns:
        Quantised tensor, same shape and dtype as ``inputs``, followed by the indices and the
        loss when asked for.

    Example:
        >>> rvq = ResidualVectorQuantizer(num_quantizers=4, num_embeddings=256, embedding_dim=8)
        >>> z_q = rvq(keras.random.normal((2, 16, 8)))
        >>> codes = rvq.encode(keras.random.normal((2, 16, 8)))   # int32 (2, 16, 4)
        >>> coarse = rvq.decode(codes, num_stages=2)               # (2, 16, 8), 2 stages

    Reference:
        Zeghidour et al. "SoundStream: An End-to-End Neural Audio Codec", 2021.
    """

    def __init__(
        self,
        num_quantizers: int,
        num_embeddings: int,
        embedding_dim: int | None = None,
        shared_codebook: bool = False,
        quantize_dropout: bool = False,
        seed: int | None = None,
        commitment: str = "total",
        **kwargs,
    ):
        stage_kwargs = {k: kwargs.pop(k) for k in STAGE_OPTIONS if k in kwargs}
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_quantizers = _validation.check_int("num_quantizers", num_quantizers, minimum=1)
        self.num_embeddings = _validation.check_int("num_embeddings", num_embeddings, minimum=1)
        self.embedding_dim = (
            None
            if embedding_dim is None
            else _validation.check_int("embedding_dim", embedding_dim, minimum=1)
        )
        self.shared_codebook = _validation.check_bool("shared_codebook", shared_codebook)
        self.quantize_dropout = _validation.check_bool("quantize_dropout", quantize_dropout)
        self.seed = _validation.check_seed("seed", seed)
        self.commitment = _validation.check_choice("commitment", commitment, COMMITMENTS)
        if stage_kwargs.get("distance", "euclidean") == "cosine":
            raise ValueError(
                "`distance` must be 'euclidean' for a ResidualVectorQuantizer, got 'cosine': "
                "a cosine stage codes only the direction of its residual, so the residual "
                "would not shrink from stage to stage."
            )
        num_layers = 1 if self.shared_codebook else self.num_quantizers
        self.quantizers = [
            VectorQuantizer(
                self.num_embeddings,
                self.embedding_dim,
                seed=_validation.offset_seed(self.seed, s + 1),
                name=f"quantizer_{s}",
                **stage_kwargs,
            )
            for s in range(num_layers)
        ]
        self.seed_generator = (
            keras.random.SeedGenerator(self.seed) if self.quantize_dropout else None
        )

    @property
    def codebook_size(self) -> int:
        """Codes per stage (``num_embeddings``)."""
        return self.num_embeddings

    def quantizer(self, stage: int) -> VectorQuantizer:
        """The ``VectorQuantizer`` of stage ``stage`` (the same one for every stage when
        ``shared_codebook``)."""
        return self.quantizers[0 if self.shared_codebook else stage]

    def build(self, input_shape):
        self._build_embedding_dim(input_shape, "ResidualVectorQuantizer")
        for quantizer in self.quantizers:
            quantizer.build((None, self.embedding_dim))

    def _flatten(self, inputs):
        return ops.reshape(self._float_inputs(inputs), (-1, self.embedding_dim))

    def _active_stages(self, training):
        """Stages used in this call: ``None`` for all, else an int32 scalar in ``1..S``."""
        if not (training and self.quantize_dropout) or self.num_quantizers == 1:
            return None
        u = keras.random.uniform((), seed=self.seed_generator)
        count = ops.floor(u * self.num_quantizers) + 1.0
        # One stage count for the whole global batch.
        count = _distribute.broadcast_from_first_replica(count)
        return ops.clip(ops.cast(count, "int32"), 1, self.num_quantizers)

    def _stage_beta(self, quantizer: VectorQuantizer) -> float | None:
        """Commitment weight of a stage's own loss: its ``beta``, or (``commitment="total"``) 0,
        except for a ``project_in`` (``codebook_dim``), which still learns from it."""
        if self.commitment == "per_stage" or quantizer.codebook_dim is not None:
            return None
        return 0.0

    def _total_commitment(self, flat, codes):
        """``β · mean((z - sg[z_q])²)``: commits ``z`` to the sum of the codes, float32."""
        beta = self.quantizers[0].beta
        term = beta * vq_losses.commitment_loss(flat, codes)
        # An empty batch has no loss (its mean would be NaN).
        return ops.where(ops.shape(flat)[0] > 0, term, ops.zeros_like(term))

    def _quantize(self, flat, num_stages: int, update: bool = False, active=None):
        """Run the stages on ``flat`` ``(N, D)``.

        Returns:
            ``(codes, indices, loss, projection_grads)``: the summed stage codes ``(N, D)``
            (no gradient), the per-stage indices (list of int32 ``(N,)``), the summed loss, and
            a zero-valued term that carries the output's gradient to ``project_out``.
        """
        residual = flat
        codes = ops.zeros_like(flat)
        loss = ops.zeros((), dtype="float32")
        projection_grads = None
        indices = []
        pending = []  # shared codebook: (h, indices, weights) for one state update
        codebook = initialized_now = None
        for s in range(num_stages):
            quantizer = self.quantizer(s)
            enabled = None if active is None else ops.less(s, active)
            # A stage frozen on its own (trainable=False) keeps its state, as it would alone.
            stage_update = update and quantizer.trainable
            if self.commitment == "total":
                # The encoder is committed once, to the sum of the codes (after the loop).
                residual = ops.stop_gradient(residual)
            h = quantizer._to_code_space(residual)
            if codebook is None or not self.shared_codebook:
                codebook, initialized_now = quantizer._current_codebook(h, stage_update, enabled)
            stage_indices, quantized = quantizer._lookup(h, codebook)
            stage_loss = quantizer._loss(h, quantized, self._stage_beta(quantizer))
            stage_codes = quantizer._from_code_space(ops.stop_gradient(quantized))
            if quantizer.codebook_dim is not None:
                term = stage_codes - ops.stop_gradient(stage_codes)
                projection_grads = term if projection_grads is None else projection_grads + term
            stage_codes = ops.stop_gradient(stage_codes)
            weights = None
            if enabled is not None:
                mask = ops.cast(enabled, "float32")
                stage_codes = stage_codes * mask
                stage_loss = stage_loss * mask
                weights = ops.broadcast_to(mask, ops.shape(stage_indices))
                if projection_grads is not None:
                    projection_grads = projection_grads * mask
            if stage_update:
                if self.shared_codebook:
                    pending.append((h, stage_indices, weights))
                else:
                    quantizer._update_state(
                        h, stage_indices, codebook, initialized_now, weights=weights
                    )
            if enabled is not None:
                stage_indices = ops.where(enabled, stage_indices, -ops.ones_like(stage_indices))
            indices.append(stage_indices)
            codes = codes + stage_codes
            residual = residual - stage_codes
            loss = loss + stage_loss
        if self.commitment == "total":
            loss = loss + self._total_commitment(flat, codes)
        if pending:
            h = ops.concatenate([p[0] for p in pending], axis=0)
            stage_indices = ops.concatenate([p[1] for p in pending], axis=0)
            weights = None
            if active is not None:
                weights = ops.concatenate([p[2] for p in pending], axis=0)
            self.quantizers[0]._update_state(
                h, stage_indices, codebook, initialized_now, weights=weights, blocks=len(pending)
            )
        return codes, indices, loss, projection_grads

    def call(self, inputs, training=None, return_indices=False, return_loss=False):
        flat = self._flatten(inputs)
        update = bool(training) and self.trainable and flat.shape[0] != 0
        codes, indices, loss, projection_grads = self._quantize(
            flat, self.num_quantizers, update, self._active_stages(training)
        )
        if not return_loss:
            self.add_loss(loss)
        if self.quantizers[0].gradient == "rotation":
            outputs = rotation_trick(flat, codes)
            if projection_grads is not None:
                outputs = outputs + projection_grads
            outputs = ops.cast(ops.reshape(outputs, ops.shape(inputs)), inputs.dtype)
        else:
            # Straight through in the input's dtype: exactly the identity gradient.
            codes = ops.cast(ops.reshape(codes, ops.shape(inputs)), inputs.dtype)
            outputs = inputs + ops.stop_gradient(codes - inputs)
            if projection_grads is not None:
                grads = ops.reshape(projection_grads, ops.shape(inputs))
                outputs = outputs + ops.cast(grads, inputs.dtype)
        # A vector with NaN or ±inf is NaN throughout; its stages code it as 0 (`_quantizer`).
        finite = ops.reshape(_quantizer.finite_rows(flat), ops.shape(inputs)[:-1])
        outputs = _quantizer.nan_where_not(finite, outputs)
        extras = []
        if return_indices:
            stacked = ops.stack(indices, axis=-1)
            shape = (*ops.shape(inputs)[:-1], self.num_quantizers)
            extras.append(ops.reshape(stacked, shape))
        if return_loss:
            extras.append(loss)
        return (outputs, *extras) if extras else outputs

    def _check_num_stages(self, num_stages, available: int | None = None) -> int:
        limit = self.num_quantizers if available is None else available
        if num_stages is None:
            return limit
        num_stages = _validation.check_int("num_stages", num_stages, minimum=1)
        if num_stages > limit:
            raise ValueError(f"`num_stages` must be in [1, {limit}], got {num_stages}.")
        return num_stages

    def encode(self, inputs, num_stages: int | None = None):
        """Per-stage code indices, int32 ``inputs.shape[:-1] + (num_stages,)``.

        Args:
            inputs: float tensor ``(..., D)``.
            num_stages: code with the first ``num_stages`` stages (all by default).

        Raises:
            TypeError: a non-float dtype. ValueError: NaN or ±inf values (when known: a
                traced graph codes such a vector as 0 at every stage).
        """
        num_stages = self._check_num_stages(num_stages)
        inputs = _quantizer.built_input(self, inputs)
        _, indices, _, _ = self._quantize(self._flatten(inputs), num_stages)
        return ops.reshape(ops.stack(indices, axis=-1), (*ops.shape(inputs)[:-1], num_stages))

    def decode(self, indices, num_stages: int | None = None):
        """Sum of the stages' codes, float32 ``indices.shape[:-1] + (D,)``.

        Args:
            indices: integer tensor ``(..., m)`` with values in ``[0, num_embeddings)``,
                column s holding stage s's code, ``1 ≤ m ≤ num_quantizers``.
            num_stages: sum only the first ``num_stages`` stages (``≤ m``; all m by default).

        Raises:
            TypeError: non-integer indices. ValueError: out-of-range values, or a last axis or
            ``num_stages`` out of range.
        """
        _quantizer.require_built(self, "ResidualVectorQuantizer.decode")
        shape = tuple(getattr(indices, "shape", ()))
        if len(shape) < 1 or shape[-1] is None or not 1 <= shape[-1] <= self.num_quantizers:
            raise ValueError(
                f"`indices` must have shape (..., m) with 1 <= m <= num_quantizers="
                f"{self.num_quantizers}, got shape {shape}."
            )
        _validation.check_integer_codes("indices", indices, self.num_embeddings)
        num_stages = self._check_num_stages(num_stages, available=shape[-1])
        indices = ops.cast(ops.convert_to_tensor(indices), "int32")
        total = None
        for s in range(num_stages):
            codes = self.quantizer(s).decode(indices[..., s])
            total = codes if total is None else total + codes
        return total

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=None, return_indices=False, return_loss=False):
        indices_shape = (*inputs.shape[:-1], self.num_quantizers)
        return _quantizer.quantizer_output_spec(inputs, return_indices, return_loss, indices_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        stage = self.quantizers[0].get_config()
        config.update(_quantizer.config_entries(self, CONFIG_KEYS))
        config.update({key: stage[key] for key in STAGE_OPTIONS})
        return config
