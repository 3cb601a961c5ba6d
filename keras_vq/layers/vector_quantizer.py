"""Vector quantisation with a learnt codebook (van den Oord et al., 2017)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_vq import _validation
from keras_vq import backend as vq_backend
from keras_vq import losses as vq_losses
from keras_vq import metrics as vq_metrics
from keras_vq.backend import distribute as _distribute
from keras_vq.layers._seed_state import SeedStateMixin


def squared_distances(flat_inputs, codebook):
    """``||z - e||² = ||z||² - 2 z·e + ||e||²`` for every pair, float32 ``(N, K)``.

    Args:
        flat_inputs: ``(N, D)`` vectors.
        codebook: ``(K, D)`` codes.
    """
    flat_inputs = ops.cast(flat_inputs, "float32")
    codebook = ops.cast(codebook, "float32")
    z_sq = ops.sum(ops.square(flat_inputs), axis=1, keepdims=True)
    e_sq = ops.sum(ops.square(codebook), axis=1)
    return z_sq - 2.0 * ops.matmul(flat_inputs, ops.transpose(codebook)) + e_sq[None, :]


def nearest_code(flat_inputs, codebook, chunk_size: int = 4096):
    """Index of the nearest code for each row of ``flat_inputs``, int32 ``(N,)``.

    The distance matrix is built ``chunk_size`` rows at a time, so memory is
    O(chunk_size · K) rather than O(N · K). ``||z||²`` is the same for every code in a row
    and is left out of the argmin.

    Args:
        flat_inputs: ``(N, D)`` float vectors.
        codebook: ``(K, D)`` codes.
        chunk_size: rows per distance block.

    Returns:
        int32 tensor ``(N,)``.
    """
    flat_inputs = ops.stop_gradient(ops.cast(flat_inputs, "float32"))
    codebook = ops.stop_gradient(ops.cast(codebook, "float32"))
    codebook_t = ops.transpose(codebook)
    e_sq = ops.sum(ops.square(codebook), axis=1)[None, :]

    def assign(chunk):
        return ops.cast(ops.argmin(e_sq - 2.0 * ops.matmul(chunk, codebook_t), axis=-1), "int32")

    num_rows = flat_inputs.shape[0]
    # A symbolic batch (jax2tf export) is not an int: take the chunked path, valid for any N.
    if isinstance(num_rows, int) and num_rows <= chunk_size:
        return assign(flat_inputs)

    # Pad to whole chunks and scan over them (tf.map_fn / lax.map / a loop on torch).
    dim = ops.shape(flat_inputs)[1]
    dynamic_rows = ops.shape(flat_inputs)[0]
    num_chunks = (dynamic_rows + chunk_size - 1) // chunk_size
    padding = num_chunks * chunk_size - dynamic_rows
    padded = ops.pad(flat_inputs, [[0, padding], [0, 0]])
    chunks = ops.reshape(padded, (num_chunks, chunk_size, dim))
    indices = ops.reshape(ops.map(assign, chunks), (-1,))
    return indices[:dynamic_rows]


@keras.saving.register_keras_serializable(package="keras_vq")
class VectorQuantizer(SeedStateMixin, keras.layers.Layer):
    """Nearest-neighbour vector quantiser with a straight-through gradient.

    Each input vector ``z_e`` (the last axis, size D) is replaced by its nearest code
    ``e_k``, ``k = argmin_j ||z_e - e_j||²``, from a codebook ``e ∈ R^{K×D}``. The forward value
    is ``e_k``; the backward pass copies the gradient straight through to ``z_e``
    (``z_q = z_e + sg[e_k - z_e]``). The layer adds (``add_loss``)

        L = mean((sg[z_e] - e)²) + β · mean((z_e - sg[e])²)

    with means over all elements (Sonnet's convention). With ``ema_decay`` set, the codebook is
    instead an exponential moving average of the encoder outputs assigned to each code
    (VQ-VAE paper, appendix A.1), updated in ``training=True`` calls without gradient, and only
    the commitment term ``β · mean((z_e - sg[e])²)`` is added:

        N_k ← γ N_k + (1-γ) n_k,   m_k ← γ m_k + (1-γ) Σ_{i: k_i = k} z_i,
        e_k = m_k / Ñ_k,   Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j   (Laplace smoothing).

    ``N`` starts at 1 and ``m`` at the initial codebook, so ``e = m / N`` holds from step 0.
    Codes whose usage ``N_k`` (an EMA of per-batch assignment counts, decay ``ema_decay`` or
    0.99 without EMA) falls below ``dead_code_threshold`` are restarted from random encoder
    outputs of the current batch.

    The codebook, distances, EMA statistics and losses are float32 under every dtype policy;
    the output has the dtype of the input. State is only updated in ``training=True`` calls,
    and a batch with non-finite values leaves it untouched.

    Args:
        num_embeddings: K, the number of codes.
        embedding_dim: D; ``None`` takes it from the input's last axis at build time.
        beta: commitment weight β ≥ 0.
        ema_decay: γ in (0, 1) for an EMA codebook, or ``None`` for a codebook learnt by
            gradient descent on the codebook loss.
        epsilon: Laplace smoothing ε of the EMA cluster sizes.
        dead_code_threshold: restart codes whose usage is below this (0 disables).
        chunk_size: rows of the distance matrix computed at once.
        codebook_initializer: initializer of the codebook.
        seed: seed of the dead-code restarts.

    Call arguments:
        inputs: float tensor ``(..., D)``.
        training: update EMA statistics, restarts and ``perplexity`` when true.
        return_indices: also return the int32 code indices, shape ``inputs.shape[:-1]``.
        return_loss: return the VQ loss (float32 scalar) instead of adding it with
            ``add_loss``: the caller owns it. keras_vq's models use this, because a layer's
            ``losses`` list is shared by the replica threads of ``MirroredStrategy``.

    Returns:
        Quantised tensor, same shape and dtype as ``inputs``, followed by the indices and the
        loss when asked for.

    Example:
        >>> vq = VectorQuantizer(num_embeddings=64, embedding_dim=8)
        >>> z_q = vq(keras.random.normal((2, 4, 4, 8)))
        >>> codes = vq.encode(keras.random.normal((2, 4, 4, 8)))   # int32 (2, 4, 4)
        >>> vectors = vq.decode(codes)                               # (2, 4, 4, 8)

    Reference:
        van den Oord, Vinyals, Kavukcuoglu. "Neural Discrete Representation Learning", 2017.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int | None = None,
        beta: float = 0.25,
        ema_decay: float | None = None,
        epsilon: float = 1e-5,
        dead_code_threshold: float = 0.0,
        chunk_size: int = 4096,
        codebook_initializer: Any = "variance_scaling",
        seed: int | None = None,
        **kwargs,
    ):
        # Inputs keep their dtype and the codebook is never autocast to float16.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_embeddings = _validation.check_int("num_embeddings", num_embeddings, minimum=1)
        self.embedding_dim = (
            None
            if embedding_dim is None
            else _validation.check_int("embedding_dim", embedding_dim, minimum=1)
        )
        self.beta = _validation.check_float("beta", beta, minimum=0.0)
        self.ema_decay = (
            None
            if ema_decay is None
            else _validation.check_float(
                "ema_decay", ema_decay, minimum=0.0, maximum=1.0, open_interval=True
            )
        )
        self.epsilon = _validation.check_float("epsilon", epsilon, minimum=0.0)
        self.dead_code_threshold = _validation.check_float(
            "dead_code_threshold", dead_code_threshold, minimum=0.0
        )
        self.chunk_size = _validation.check_int("chunk_size", chunk_size, minimum=1)
        self.codebook_initializer = keras.initializers.get(codebook_initializer)
        self.seed = _validation.check_seed("seed", seed)
        self.seed_generator = (
            keras.random.SeedGenerator(self.seed) if self.dead_code_threshold > 0 else None
        )

    @property
    def uses_ema(self) -> bool:
        return self.ema_decay is not None

    @property
    def tracks_usage(self) -> bool:
        return self.uses_ema or self.dead_code_threshold > 0

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError("VectorQuantizer needs a known last axis (embedding_dim) at build.")
        if self.embedding_dim is None:
            self.embedding_dim = int(dim)
        self._check_last_axis(input_shape)
        shape = (self.num_embeddings, self.embedding_dim)
        self.codebook = self.add_weight(
            name="codebook",
            shape=shape,
            initializer=self.codebook_initializer,
            dtype="float32",
            trainable=not self.uses_ema,
            autocast=False,
        )
        if self.tracks_usage:
            self.ema_cluster_size = self.add_weight(
                name="ema_cluster_size",
                shape=(self.num_embeddings,),
                initializer="ones",
                dtype="float32",
                trainable=False,
                autocast=False,
            )
        self.codebook_offset = None
        if self.dead_code_threshold > 0 and not self.uses_ema:
            # Restarts of a trainable codebook, where JAX's stateless training step keeps
            # them (non-trainable state); folded into `codebook` wherever assignments persist.
            self.codebook_offset = self.add_weight(
                name="codebook_offset",
                shape=shape,
                initializer="zeros",
                dtype="float32",
                trainable=False,
                autocast=False,
            )
        if self.uses_ema:
            codebook = self.codebook
            self.ema_sum = self.add_weight(
                name="ema_sum",
                shape=shape,
                initializer=lambda shape, dtype=None: ops.copy(codebook.value),
                dtype="float32",
                trainable=False,
                autocast=False,
            )
        self.perplexity = self.add_weight(
            name="perplexity",
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            autocast=False,
        )

    def _check_last_axis(self, shape, name: str = "inputs") -> None:
        if len(shape) < 1 or (shape[-1] is not None and shape[-1] != self.embedding_dim):
            raise ValueError(
                f"`{name}` must have last axis embedding_dim={self.embedding_dim}, "
                f"got shape {tuple(shape)}."
            )

    def _flatten(self, inputs):
        if self.embedding_dim is not None:
            self._check_last_axis(inputs.shape)
        z = ops.cast(inputs, "float32")
        return z, ops.reshape(z, (-1, self.embedding_dim))

    @property
    def embeddings(self):
        """The codebook used for look-ups, ``codebook`` plus restarts not yet folded into it.

        Equal to ``codebook`` except on JAX after restarts of a gradient-trained codebook made
        inside a stateless training step (a user's ``fit``); keras_vq's models fold them in
        after every step.
        """
        if self.codebook_offset is None:
            return ops.convert_to_tensor(self.codebook)
        return self.codebook + self.codebook_offset

    def call(self, inputs, training=None, return_indices=False, return_loss=False):
        z, flat = self._flatten(inputs)
        codebook = self.embeddings
        indices = nearest_code(flat, codebook, self.chunk_size)
        quantized = ops.reshape(vq_backend.gather_rows(codebook, indices), ops.shape(z))
        loss = vq_losses.vq_loss(z, quantized, self.beta, codebook_term=not self.uses_ema)
        # An empty batch has no loss (its mean would be NaN) and changes no state.
        num_rows = ops.shape(flat)[0]
        loss = ops.where(num_rows > 0, loss, ops.zeros_like(loss))
        if not return_loss:
            self.add_loss(loss)
        # As BatchNormalization: a frozen layer (trainable=False) keeps its state.
        if training and self.trainable and flat.shape[0] != 0:
            self._update_state(flat, indices)
        # Straight-through estimator: forward value e_k, gradient identity w.r.t. z_e.
        outputs = inputs + ops.stop_gradient(ops.cast(quantized, inputs.dtype) - inputs)
        extras = []
        if return_indices:
            extras.append(ops.reshape(indices, ops.shape(inputs)[:-1]))
        if return_loss:
            extras.append(loss)
        return (outputs, *extras) if extras else outputs

    def _update_state(self, flat, indices) -> None:
        counts = vq_metrics.code_counts(indices, self.num_embeddings)
        # Global batch statistics, so every replica applies the same update.
        if not self.tracks_usage:
            (counts,) = _distribute.sum_across_replicas(counts)
            valid = ops.sum(counts) > 0
            perplexity = vq_metrics.perplexity_from_counts(counts)
            self.perplexity.assign(ops.where(valid, perplexity, self.perplexity.value))
            return
        sums = ops.segment_sum(ops.stop_gradient(flat), indices, num_segments=self.num_embeddings)
        counts, sums = _distribute.sum_across_replicas(counts, sums)
        # A non-finite batch (fp16 overflow) must not poison the codebook; an empty one (a
        # dynamic batch of size 0) must not decay the usage statistics.
        valid = ops.logical_and(ops.all(ops.isfinite(sums)), ops.sum(counts) > 0)
        decay = self.ema_decay if self.uses_ema else 0.99
        cluster_size = ema_update(self.ema_cluster_size, counts, decay)
        ema_sum = None
        if self.uses_ema:
            ema_sum = ema_update(self.ema_sum, sums, decay)
            codebook = ema_sum / laplace_smoothing(cluster_size, self.epsilon)[:, None]
        else:
            codebook = self.embeddings
        if self.dead_code_threshold > 0:
            codebook, cluster_size, ema_sum = self._restart_dead_codes(
                flat, codebook, cluster_size, ema_sum
            )
        self.perplexity.assign(
            ops.where(valid, vq_metrics.perplexity_from_counts(counts), self.perplexity.value)
        )
        self.ema_cluster_size.assign(ops.where(valid, cluster_size, self.ema_cluster_size.value))
        if ema_sum is not None:
            self.ema_sum.assign(ops.where(valid, ema_sum, self.ema_sum.value))
        if self.uses_ema:
            self.codebook.assign(ops.where(valid, codebook, self.codebook.value))
        elif self.dead_code_threshold > 0:
            self._assign_restarted(ops.where(valid, codebook, self.embeddings))

    def _assign_restarted(self, codebook) -> None:
        """Make ``codebook`` the effective codebook of a gradient-trained quantizer."""
        codebook = ops.stop_gradient(codebook)
        if vq_backend.forward_assignments_persist():
            self.codebook.assign(codebook)
            self.codebook_offset.assign(ops.zeros_like(codebook))
        else:
            self.codebook_offset.assign(codebook - ops.stop_gradient(self.codebook.value))

    def _restart_dead_codes(self, flat, codebook, cluster_size, ema_sum):
        """Replace codes used less than ``dead_code_threshold`` by random batch vectors."""
        num_rows = ops.shape(flat)[0]
        u = keras.random.uniform((self.num_embeddings,), seed=self.seed_generator)
        rows = ops.cast(ops.floor(u * ops.cast(num_rows, "float32")), "int32")
        rows = ops.clip(rows, 0, ops.maximum(num_rows - 1, 0))
        # Replicas see different batches: all restart from the first replica's vectors.
        candidates = _distribute.broadcast_from_first_replica(
            ops.take(ops.stop_gradient(flat), rows, axis=0)
        )
        dead = cluster_size < self.dead_code_threshold
        codebook = ops.where(dead[:, None], candidates, ops.stop_gradient(codebook))
        cluster_size = ops.where(dead, self.dead_code_threshold, cluster_size)
        if ema_sum is not None:
            ema_sum = ops.where(dead[:, None], candidates * self.dead_code_threshold, ema_sum)
        return codebook, cluster_size, ema_sum

    def set_codebook(self, vectors) -> None:
        """Set the codebook to ``vectors``, keeping the EMA state consistent with it.

        The one public way to set the codebook (for any initialisation scheme): with an EMA
        codebook, ``ema_sum`` is set so that ``ema_sum / Ñ = vectors`` for the current smoothed
        cluster sizes ``Ñ``, so the next training call starts from ``vectors``; restarts not
        yet folded in are dropped.

        Args:
            vectors: float ``(num_embeddings, embedding_dim)``, finite. Builds the layer when
                it is not built yet.

        Raises:
            ValueError: wrong shape or non-finite values. TypeError: non-float dtype.

        Example:
            >>> vq = VectorQuantizer(num_embeddings=4, embedding_dim=2, ema_decay=0.99)
            >>> vq.set_codebook(np.eye(4, 2))
        """
        dtype = keras.backend.standardize_dtype(getattr(vectors, "dtype", "float32"))
        if "float" not in dtype:
            raise TypeError(f"`vectors` must have a float dtype, got dtype {dtype}.")
        vectors = ops.cast(ops.convert_to_tensor(vectors), "float32")
        shape = tuple(vectors.shape)
        dim = self.embedding_dim if self.embedding_dim is not None else shape[-1]
        if len(shape) != 2 or shape != (self.num_embeddings, dim):
            raise ValueError(
                f"`vectors` must have shape (num_embeddings, embedding_dim) = "
                f"({self.num_embeddings}, {dim}), got shape {shape}."
            )
        _validation.check_finite("vectors", vectors)
        if not self.built:
            self.build((None, dim))
        self.codebook.assign(vectors)
        if self.codebook_offset is not None:
            self.codebook_offset.assign(ops.zeros_like(vectors))
        if self.uses_ema:
            smoothed = laplace_smoothing(self.ema_cluster_size.value, self.epsilon)
            self.ema_sum.assign(vectors * smoothed[:, None])

    def encode(self, inputs):
        """Nearest-code indices, int32 of shape ``inputs.shape[:-1]``.

        Args:
            inputs: float tensor ``(..., D)``.
        """
        inputs = ops.convert_to_tensor(inputs)
        if not self.built:
            self.build(inputs.shape)
        _, flat = self._flatten(inputs)
        indices = nearest_code(flat, self.embeddings, self.chunk_size)
        return ops.reshape(indices, ops.shape(inputs)[:-1])

    def decode(self, indices):
        """Codebook vectors for ``indices``: float32 of shape ``indices.shape + (D,)``.

        Args:
            indices: integer tensor with values in ``[0, num_embeddings)``.

        Raises:
            TypeError: for a non-integer dtype. ValueError: for out-of-range values.
        """
        if not self.built:
            raise ValueError("VectorQuantizer.decode needs a built layer (call it once first).")
        _validation.check_integer_codes("indices", indices, self.num_embeddings)
        return ops.take(self.embeddings, ops.cast(indices, "int32"), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=None, return_indices=False, return_loss=False):
        outputs = [keras.KerasTensor(inputs.shape, dtype=inputs.dtype)]
        if return_indices:
            outputs.append(keras.KerasTensor(inputs.shape[:-1], dtype="int32"))
        if return_loss:
            outputs.append(keras.KerasTensor((), dtype="float32"))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_embeddings=self.num_embeddings,
            embedding_dim=self.embedding_dim,
            beta=self.beta,
            ema_decay=self.ema_decay,
            epsilon=self.epsilon,
            dead_code_threshold=self.dead_code_threshold,
            chunk_size=self.chunk_size,
            codebook_initializer=keras.initializers.serialize(self.codebook_initializer),
            seed=self.seed,
        )
        return config


def ema_update(average, value, decay: float):
    """Exponential moving average ``γ · average + (1 - γ) · value``."""
    return decay * average + (1.0 - decay) * value


def laplace_smoothing(cluster_size, epsilon: float):
    """``Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j``: no code's size is ever 0.

    Args:
        cluster_size: EMA cluster sizes ``N``, ``(K,)``.
        epsilon: ε ≥ 0.
    """
    total = ops.sum(cluster_size)
    num_codes = cluster_size.shape[0]
    return (cluster_size + epsilon) / (total + num_codes * epsilon) * total
