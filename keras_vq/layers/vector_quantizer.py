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
from keras_vq.layers import _codebook, _quantizer
from keras_vq.layers._codebook import l2_normalize
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


#: Memory for the distance blocks that may be computed at once (TensorFlow runs that many
#: chunks in parallel; JAX and torch one at a time).
DISTANCE_BLOCKS_BYTES = 64 * 2**20


def nearest_code(
    flat_inputs, codebook, chunk_size: int | None = 4096, distance: str = "euclidean"
):
    """Index of the nearest code for each row of ``flat_inputs``, int32 ``(N,)``.

    The distance matrix is built ``chunk_size`` rows at a time, one block after the other, so
    memory is O(chunk_size · K) rather than O(N · K). ``||z||²`` is the same for every code in
    a row and is left out of the argmin.

    Args:
        flat_inputs: ``(N, D)`` float vectors.
        codebook: ``(K, D)`` codes.
        chunk_size: rows per distance block; ``None``: one block whatever N (no loop, as
            the ONNX/LiteRT graphs need).
        distance: ``"euclidean"`` (argmin ``||z - e||²``) or ``"cosine"`` (argmax of the cosine
            similarity ``z·e / (||z|| ||e||)``; the codes are normalised here).

    Returns:
        int32 tensor ``(N,)``.
    """
    flat_inputs = ops.stop_gradient(ops.cast(flat_inputs, "float32"))
    codebook = ops.stop_gradient(ops.cast(codebook, "float32"))
    if distance == "cosine":
        # ||z|| is constant along a row: argmax cos = argmin -2 z·ê over unit codes ê.
        codebook = l2_normalize(codebook)
        e_sq = ops.zeros((1, codebook.shape[0]), dtype="float32")
    else:
        e_sq = ops.sum(ops.square(codebook), axis=1)[None, :]
    # -2 is folded into the codes (exact: a power of two), saving a pass over the N × K scores.
    codebook_t = -2.0 * ops.transpose(codebook)

    def assign(chunk):
        return vq_backend.argmin_last_axis(vq_backend.matmul_add(chunk, codebook_t, e_sq))

    num_rows = flat_inputs.shape[0]
    if chunk_size is None or (isinstance(num_rows, int) and num_rows <= chunk_size):
        return assign(flat_inputs)
    # Each chunk a slice of the inputs (no padded copy); as many (chunk, K) blocks at once as
    # fit in DISTANCE_BLOCKS_BYTES (parallel chunks are faster for a small codebook).
    block_bytes = 4 * chunk_size * codebook.shape[0]
    parallel = int(min(10, max(1, DISTANCE_BLOCKS_BYTES // block_bytes)))
    return vq_backend.row_chunk_map(assign, flat_inputs, chunk_size, parallel_iterations=parallel)


def rotation_trick(z, e, epsilon: float = 1e-6):
    """Forward value ``e``; gradient to ``z`` carried by the rotation that maps ``z`` onto ``e``.

    The rotation trick (Fifty et al., 2024): ``q = sg[λ R] z`` with ``λ = ||e|| / ||z||`` and

        R = I - 2 r rᵀ + 2 ê ẑᵀ,   ẑ = z / ||z||,  ê = e / ||e||,  r = (ẑ + ê) / ||ẑ + ê||,

    the rotation (built from a Householder reflection) that takes ẑ to ê, so ``λ R z = e``.
    The upstream gradient ``g`` reaches ``z`` as ``λ Rᵀ g`` instead of ``g``
    (straight-through); ``e`` gets no gradient. Written with ``stop_gradient`` alone: the
    forward value is exactly ``e``, the gradient is that of the linear map ``z ↦ λ R z``.

    Args:
        z: float ``(N, D)`` inputs.
        e: float ``(N, D)`` their codes.
        epsilon: floor of the norms (a zero input gets a large, finite gradient).

    Returns:
        float32 ``(N, D)`` with the values of ``e``.
    """
    z = ops.cast(z, "float32")
    e = ops.stop_gradient(ops.cast(e, "float32"))
    z_const = ops.stop_gradient(z)

    def norm(x):
        return ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), epsilon)

    z_norm, e_norm = norm(z_const), norm(e)
    z_hat, e_hat = z_const / z_norm, e / e_norm
    r = z_hat + e_hat
    r = r / norm(r)

    def dot(a, b):
        return ops.sum(a * b, axis=-1, keepdims=True)

    # R z without forming R: z - 2 r (r·z) + 2 ê (ẑ·z); only z carries a gradient.
    transported = (e_norm / z_norm) * (z - 2.0 * r * dot(r, z) + 2.0 * e_hat * dot(z_hat, z))
    return e + (transported - ops.stop_gradient(transported))


DISTANCES = ("euclidean", "cosine")
GRADIENTS = ("straight_through", "rotation")
# The constructor arguments get_config lists, in its order (codebook_initializer serialized).
CONFIG_KEYS = (
    "num_embeddings",
    "embedding_dim",
    "beta",
    "ema_decay",
    "epsilon",
    "dead_code_threshold",
    "chunk_size",
    "codebook_initializer",
    "seed",
    "kmeans_init",
    "distance",
    "codebook_dim",
    "gradient",
)


@keras.saving.register_keras_serializable(package="keras_vq")
class VectorQuantizer(SeedStateMixin, _quantizer.EmbeddingDimMixin, keras.layers.Layer):
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
    outputs of the current batch (drawn from the global batch and the seed, so replicas of
    ``tf.distribute`` restart the codes one device would, with the same vectors).

    Options (each one small and independent):

    - ``kmeans_init``: the first ``training=True`` call of a trainable layer sets the codebook
      to k-means centroids of its batch (k-means++ seeding from the layer's ``seed``, then
      ``kmeans_iterations`` Lloyd steps), as :meth:`set_codebook` would (EMA state kept
      consistent), before quantizing that batch. Under ``tf.distribute`` the replicas gather
      the global batch first, so the centroids are those one device would compute. The
      non-trainable boolean weight ``initialized`` records it (saved with the layer;
      :meth:`set_codebook` sets it too).
    - ``distance="cosine"``: inputs and codes are l2-normalised, the nearest code is the one of
      largest cosine similarity, and everything after the look-up works on unit vectors: the
      output is the **normalised** code ``ê_k`` (the gradient reaches the inputs through the
      normalisation), the losses compare ``ẑ`` with ``ê_k``, EMA sums and restarts use ``ẑ``,
      and :meth:`decode` returns normalised codes.
    - ``codebook_dim``: codes live in a learnt lower-dimensional space (factorised codes,
      ViT-VQGAN): ``h = W_in z + b_in`` (Dense ``project_in``, D → codebook_dim) is quantized
      (losses, EMA and restarts on ``h``) and the output is ``W_out q + b_out`` (Dense
      ``project_out``, codebook_dim → D). ``codebook`` then has shape
      ``(num_embeddings, codebook_dim)``.
    - ``gradient="rotation"``: the rotation trick (:func:`rotation_trick`): the forward value
      is unchanged, the gradient to the (projected, normalised) input is ``λ Rᵀ g`` rather
      than ``g``.

    The codebook, projections, distances, EMA statistics and losses are float32 under every
    dtype policy; the output has the dtype of the input. State is only updated in
    ``training=True`` calls of a trainable layer, and a batch with non-finite values leaves it
    untouched.

    Inputs are floating point: an integer or boolean dtype raises a ``TypeError`` (it would
    be truncated). Non-finite inputs follow the rule of every keras_vq quantizer:
    :meth:`encode` raises a ``ValueError`` when their values are known (eagerly); a call
    (training included) and an ``encode`` traced into a graph (``tf.function``, ``jax.jit``,
    a SavedModel) code a vector with any NaN or ±inf entry as index 0 and output NaN for
    the whole vector.

    Args:
        num_embeddings: K, the number of codes.
        embedding_dim: D; ``None`` takes it from the input's last axis at build time.
        beta: commitment weight β ≥ 0.
        ema_decay: γ in (0, 1) for an EMA codebook, or ``None`` for a codebook learnt by
            gradient descent on the codebook loss.
        epsilon: Laplace smoothing ε of the EMA cluster sizes.
        dead_code_threshold: restart codes whose usage is below this (0 disables).
        chunk_size: rows of the distance matrix computed at once.
        seed: seed of the dead-code restarts and of the k-means++ seeding.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        distance: ``"euclidean"`` or ``"cosine"``.
        codebook_dim: size of the code space, or ``None`` to quantize in the input space.
        gradient: ``"straight_through"`` or ``"rotation"``.
        codebook_initializer: initializer of the codebook.

    Call arguments:
        inputs: float tensor ``(..., D)``.
        training: update EMA statistics, restarts, k-means initialisation and ``perplexity``
            when true.
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
        Yu et al. "Vector-quantized Image Modeling with Improved VQGAN", 2022 (factorised,
        l2-normalised codes). Fifty et al. "Restructuring Vector Quantization with the
        Rotation Trick", 2024.
    """

    #: Lloyd steps after the k-means++ seeding of ``kmeans_init``.
    kmeans_iterations = 10

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int | None = None,
        beta: float = 0.25,
        ema_decay: float | None = None,
        epsilon: float = 1e-5,
        dead_code_threshold: float = 0.0,
        chunk_size: int = 4096,
        seed: int | None = None,
        kmeans_init: bool = False,
        distance: str = "euclidean",
        codebook_dim: int | None = None,
        gradient: str = "straight_through",
        codebook_initializer: Any = "variance_scaling",
        **kwargs,
    ):
        # Inputs keep their dtype and the codebook is never autocast to float16.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_embeddings = _validation.check_int("num_embeddings", num_embeddings, minimum=1)
        _quantizer.check_codebook_size("num_embeddings", self.num_embeddings)
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
        self.kmeans_init = _validation.check_bool("kmeans_init", kmeans_init)
        self.distance = _validation.check_choice("distance", distance, DISTANCES)
        self.codebook_dim = (
            None
            if codebook_dim is None
            else _validation.check_int("codebook_dim", codebook_dim, minimum=1)
        )
        self.gradient = _validation.check_choice("gradient", gradient, GRADIENTS)
        self.seed_generator = (
            keras.random.SeedGenerator(self.seed)
            if self.dead_code_threshold > 0 or self.kmeans_init
            else None
        )

    @property
    def uses_ema(self) -> bool:
        return self.ema_decay is not None

    @property
    def tracks_usage(self) -> bool:
        return self.uses_ema or self.dead_code_threshold > 0

    @property
    def codebook_size(self) -> int:
        """Number of distinct codes (``num_embeddings``)."""
        return self.num_embeddings

    @property
    def code_dim(self) -> int | None:
        """Size of the vectors in the codebook: ``codebook_dim``, else ``embedding_dim``."""
        return self.codebook_dim if self.codebook_dim is not None else self.embedding_dim

    @property
    def _plain(self) -> bool:
        """No option changes the look-up or the gradient: the original fast path."""
        return (
            self.codebook_dim is None
            and self.distance == "euclidean"
            and self.gradient == "straight_through"
        )

    def build(self, input_shape):
        self._build_embedding_dim(input_shape, "VectorQuantizer")
        if self.codebook_dim is not None:
            # float32 whatever the policy: the projections are part of the quantizer's internals.
            self.project_in = keras.layers.Dense(
                self.codebook_dim, dtype="float32", name="project_in"
            )
            self.project_in.build((None, self.embedding_dim))
            self.project_out = keras.layers.Dense(
                self.embedding_dim, dtype="float32", name="project_out"
            )
            self.project_out.build((None, self.codebook_dim))
        shape = (self.num_embeddings, self.code_dim)

        def state(name, shape, initializer, dtype="float32"):
            # Non-trainable float32 (or bool) state, never autocast.
            return self.add_weight(
                name=name,
                shape=shape,
                initializer=initializer,
                dtype=dtype,
                trainable=False,
                autocast=False,
            )

        self.codebook = self.add_weight(
            name="codebook",
            shape=shape,
            initializer=self.codebook_initializer,
            dtype="float32",
            trainable=not self.uses_ema,
            autocast=False,
        )
        if self.tracks_usage:
            self.ema_cluster_size = state("ema_cluster_size", (self.num_embeddings,), "ones")
        self.codebook_offset = None
        if (self.dead_code_threshold > 0 or self.kmeans_init) and not self.uses_ema:
            # Restarts and k-means initialisation of a trainable codebook, where JAX's
            # stateless training step keeps them (non-trainable state); folded into `codebook`
            # wherever assignments persist.
            self.codebook_offset = state("codebook_offset", shape, "zeros")
        if self.uses_ema:
            codebook = self.codebook
            self.ema_sum = state(
                "ema_sum", shape, lambda shape, dtype=None: ops.copy(codebook.value)
            )
        self.initialized = None
        if self.kmeans_init:
            self.initialized = state("initialized", (), "zeros", dtype="bool")
        self.perplexity = state("perplexity", (), "zeros")

    def _flatten(self, inputs):
        z = self._float_inputs(inputs)
        return z, ops.reshape(z, (-1, self.embedding_dim))

    @property
    def embeddings(self):
        """The codebook used for look-ups, ``codebook`` plus changes not yet folded into it.

        Equal to ``codebook`` except on JAX after restarts or a k-means initialisation of a
        gradient-trained codebook made inside Keras' stateless training step (a user's
        ``fit``), which keeps no trainable assignment: there ``codebook_offset`` holds
        ``new - old`` and a restarted row is the chosen vector only to about one ulp of the old
        code. Eager calls and keras_vq's models assign the row itself. With
        ``distance="cosine"`` the look-ups use these vectors l2-normalised.
        """
        if self.codebook_offset is None:
            return ops.convert_to_tensor(self.codebook)
        return self.codebook + self.codebook_offset

    # ---- the steps of a call, shared with ResidualVectorQuantizer -------------------------
    def _to_code_space(self, flat):
        """Float32 ``(N, D)`` inputs → the vectors that are quantized, ``(N, code_dim)``."""
        if self.codebook_dim is not None:
            flat = self.project_in(flat)
        if self.distance == "cosine":
            flat = l2_normalize(flat)
        return flat

    def _from_code_space(self, vectors):
        """Code-space vectors ``(..., code_dim)`` → the input space ``(..., D)``."""
        if self.codebook_dim is not None:
            return self.project_out(vectors)
        return vectors

    def _lookup_table(self, codebook):
        return l2_normalize(codebook) if self.distance == "cosine" else codebook

    def _current_codebook(self, h, update: bool, enabled=None):
        """The codebook for this call and whether k-means initialised it now.

        Returns:
            ``(codebook, initialized_now)``: ``codebook`` is differentiable w.r.t. the
            ``codebook`` weight; ``initialized_now`` is a boolean scalar, or ``None`` when no
            initialisation can happen in this call.
        """
        codebook = self.embeddings
        if not (update and self.kmeans_init):
            return codebook, None
        initial, initialized_now = self._kmeans_codebook(h, codebook, enabled)
        # The value of the initial codes, the gradient of the `codebook` weight.
        return codebook + ops.stop_gradient(initial - codebook), initialized_now

    def _kmeans_codebook(self, h, codebook, enabled=None):
        """k-means centroids of ``h`` if the layer is not initialised yet, else ``codebook``."""
        # Drawn in every training call, outside the `cond`: a random draw advances the seed
        # generator's state, an assignment a JAX `cond` branch may not make.
        uniforms = keras.random.uniform((self.num_embeddings,), seed=self.seed_generator)
        # k-means of the global batch: every replica gathers all rows (as one device sees them).
        h = _distribute.all_gather_rows(ops.stop_gradient(h))
        current = ops.stop_gradient(codebook)
        finite = ops.all(ops.isfinite(h))
        wanted = ops.logical_and(ops.logical_not(self.initialized.value), finite)
        wanted = ops.logical_and(wanted, ops.shape(h)[0] > 0)
        if enabled is not None:
            wanted = ops.logical_and(wanted, enabled)
        points = ops.where(finite, h, ops.zeros_like(h))

        def centroids():
            return _codebook.kmeans(
                points,
                self.num_embeddings,
                uniforms,
                self.kmeans_iterations,
                spherical=self.distance == "cosine",
                assign=lambda x, c: nearest_code(x, c, self.chunk_size, self.distance),
            )

        # Runs k-means once: later calls take the cheap branch.
        initial = ops.cond(wanted, centroids, lambda: current)
        # Every replica computed the same centroids; the first replica's are taken so that
        # replicas hold bit-identical codebooks even where kernels are not deterministic.
        initial = _distribute.broadcast_from_first_replica(initial)
        now = _distribute.broadcast_from_first_replica(ops.cast(wanted, "float32")) > 0.5
        self.initialized.assign(ops.logical_or(self.initialized.value, now))
        return ops.where(now, initial, current), now

    def _nearest(self, h, table, finite=None):
        """``nearest_code`` of ``h``, with index 0 for non-finite rows (see ``_quantizer``):
        an argmin over NaN distances differs by backend. ``finite``: ``finite_rows(h)``."""
        indices = nearest_code(h, table, self.chunk_size, self.distance)
        finite = _quantizer.finite_rows(h) if finite is None else finite
        return _quantizer.zero_where_not(finite, indices)

    def _lookup(self, h, codebook):
        """Nearest codes of ``h``: int32 indices ``(N,)`` and the codes ``(N, code_dim)``."""
        table = self._lookup_table(codebook)
        indices = self._nearest(h, table)
        return indices, vq_backend.gather_rows(table, indices)

    def _loss(self, h, quantized, beta: float | None = None):
        """The VQ loss of ``h`` and its codes; ``beta``: the commitment weight (``self.beta``
        by default; a residual quantizer passes 0 where it commits the encoder itself)."""
        beta = self.beta if beta is None else beta
        loss = vq_losses.vq_loss(h, quantized, beta, codebook_term=not self.uses_ema)
        # An empty batch has no loss (its mean would be NaN).
        return ops.where(ops.shape(h)[0] > 0, loss, ops.zeros_like(loss))

    def _transport(self, h, quantized):
        """Value ``quantized``, gradient to ``h`` by the chosen estimator (float32)."""
        if self.gradient == "rotation":
            return rotation_trick(h, quantized)
        return h + ops.stop_gradient(quantized - h)

    # ---------------------------------------------------------------------------------------
    def call(self, inputs, training=None, return_indices=False, return_loss=False):
        _, flat = self._flatten(inputs)
        # As BatchNormalization: a frozen layer (trainable=False) keeps its state; an empty
        # batch changes none.
        update = bool(training) and self.trainable and flat.shape[0] != 0
        h = self._to_code_space(flat)
        codebook, initialized_now = self._current_codebook(h, update)
        finite = _quantizer.finite_rows(h)
        fused = self._plain
        if fused:
            # Straight-through estimator in the input's dtype (forward value e_k, gradient
            # exactly the identity w.r.t. z_e) and the VQ loss in one op with its own
            # gradient: no (N, D) temporary is kept for the backward pass.
            indices = self._nearest(h, codebook, finite)
            outputs, loss = vq_backend.straight_through_vq(
                ops.reshape(inputs, (-1, self.embedding_dim)),
                codebook,
                indices,
                self.beta,
                codebook_term=not self.uses_ema,
                chunk_size=self.chunk_size,
            )
        else:
            indices, quantized = self._lookup(h, codebook)
            loss = self._loss(h, quantized)
        if not return_loss:
            self.add_loss(loss)
        if update:
            # The restarts' random draw stays out of the compiled update: XLA's random kernels
            # are not TensorFlow's, and a seed must restart the same codes in either.
            vq_backend.compiled_state_update(
                self._update_state, h, indices, codebook, initialized_now, None, self._uniforms()
            )
        if not fused:
            outputs = ops.cast(self._from_code_space(self._transport(h, quantized)), inputs.dtype)
        # A vector with NaN or ±inf is NaN throughout (see `_quantizer`).
        outputs = _quantizer.nan_where_not(finite, outputs)
        outputs = ops.reshape(outputs, ops.shape(inputs))
        extras = []
        if return_indices:
            extras.append(ops.reshape(indices, ops.shape(inputs)[:-1]))
        if return_loss:
            extras.append(loss)
        return (outputs, *extras) if extras else outputs

    def _uniforms(self):
        """The random draw of one call's dead-code restarts: ``(K,)`` uniforms, or ``None``
        without restarts."""
        if self.dead_code_threshold <= 0:
            return None
        return keras.random.uniform((self.num_embeddings,), seed=self.seed_generator)

    def _update_state(
        self,
        flat,
        indices,
        codebook,
        initialized_now=None,
        weights=None,
        uniforms=None,
        blocks: int = 1,
    ) -> None:
        """EMA statistics, restarts, perplexity and k-means results of one training batch.

        Args:
            flat: the quantized vectors ``(N, code_dim)``.
            indices: their codes ``(N,)``.
            codebook: the codebook of this call (after a k-means initialisation).
            initialized_now: boolean scalar from :meth:`_current_codebook`, or ``None``.
            weights: optional float32 ``(N,)`` 0/1 row weights (rows of weight 0 do not
                count; all 0 leaves the statistics as they are).
            uniforms: the restarts' draw (:meth:`_uniforms`), or ``None`` to draw it here.
            blocks: ``flat`` is this many groups of rows, each a slice of the global batch
                (the stages of a shared residual codebook), see :meth:`_restart_dead_codes`.
        """
        codebook = ops.stop_gradient(codebook)
        row_counts = ops.ones(ops.shape(indices), "float32") if weights is None else weights
        counts = vq_backend.segment_sum(row_counts, indices, self.num_embeddings)
        # Global batch statistics, so every replica applies the same update.
        if not self.tracks_usage:
            (counts,) = _distribute.sum_across_replicas(counts)
            valid = ops.sum(counts) > 0
            perplexity = vq_metrics.perplexity_from_counts(counts)
            self.perplexity.assign(ops.where(valid, perplexity, self.perplexity.value))
            if initialized_now is not None:
                self._assign_restarted(codebook)
            return
        vectors = ops.stop_gradient(flat)
        if weights is not None:
            vectors = vectors * weights[:, None]
        sums = vq_backend.segment_sum(vectors, indices, self.num_embeddings)
        counts, sums = _distribute.sum_across_replicas(counts, sums)
        # A non-finite batch (fp16 overflow) must not poison the codebook; an empty one (a
        # dynamic batch of size 0) must not decay the usage statistics.
        valid = ops.logical_and(ops.all(ops.isfinite(sums)), ops.sum(counts) > 0)
        decay = self.ema_decay if self.uses_ema else 0.99
        cluster_size = ema_update(self.ema_cluster_size, counts, decay)
        ema_sum = base_ema_sum = None
        if self.uses_ema:
            base_ema_sum = self.ema_sum.value
            if initialized_now is not None:
                # As set_codebook: the EMA state starts from the k-means codebook.
                smoothed = laplace_smoothing(self.ema_cluster_size.value, self.epsilon)
                base_ema_sum = ops.where(
                    initialized_now, codebook * smoothed[:, None], base_ema_sum
                )
            ema_sum = ema_update(base_ema_sum, sums, decay)
            new_codebook = ema_sum / laplace_smoothing(cluster_size, self.epsilon)[:, None]
        else:
            new_codebook = codebook
        if self.dead_code_threshold > 0:
            new_codebook, cluster_size, ema_sum = self._restart_dead_codes(
                flat, new_codebook, cluster_size, ema_sum, uniforms, blocks
            )
        self.perplexity.assign(
            ops.where(valid, vq_metrics.perplexity_from_counts(counts), self.perplexity.value)
        )
        self.ema_cluster_size.assign(ops.where(valid, cluster_size, self.ema_cluster_size.value))
        # An invalid batch keeps the state, but not an initialisation made in this call.
        if ema_sum is not None:
            self.ema_sum.assign(ops.where(valid, ema_sum, base_ema_sum))
        if self.uses_ema:
            self.codebook.assign(ops.where(valid, new_codebook, codebook))
        elif self.codebook_offset is not None:
            self._assign_restarted(ops.where(valid, new_codebook, codebook))

    def _assign_restarted(self, codebook) -> None:
        """Make ``codebook`` the effective codebook of a gradient-trained quantizer."""
        codebook = ops.stop_gradient(codebook)
        if vq_backend.forward_assignments_persist():
            self.codebook.assign(codebook)
            self.codebook_offset.assign(ops.zeros_like(codebook))
        else:
            self.codebook_offset.assign(codebook - ops.stop_gradient(self.codebook.value))

    def _restart_dead_codes(
        self, flat, codebook, cluster_size, ema_sum, uniforms=None, blocks: int = 1
    ):
        """Replace codes used less than ``dead_code_threshold`` by random batch vectors.

        Code k's candidate is row ``floor(u_k · N)`` of the global batch (``N`` rows over all
        replicas, ``blocks`` groups of them for a shared residual codebook): a function of the
        global batch and the seed only, so replicas restart as one device would.
        """
        u = self._uniforms() if uniforms is None else uniforms
        num_rows = _distribute.global_row_count(ops.shape(flat)[0])
        rows = ops.cast(ops.floor(u * num_rows), "int32")
        rows = ops.clip(rows, 0, ops.maximum(ops.cast(num_rows, "int32") - 1, 0))
        candidates = _distribute.gather_global_rows(ops.stop_gradient(flat), rows, blocks)
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
        yet folded in are dropped. With ``kmeans_init`` the layer counts as initialised: the
        next training call keeps ``vectors``.

        Args:
            vectors: float ``(num_embeddings, code_dim)`` (``code_dim`` is ``codebook_dim``
                when set, else ``embedding_dim``), finite. Builds the layer when it is not
                built yet.

        Raises:
            ValueError: wrong shape or non-finite values; an unbuilt layer with
                ``codebook_dim`` and no ``embedding_dim``. TypeError: non-float dtype.

        Example:
            >>> vq = VectorQuantizer(num_embeddings=4, embedding_dim=2, ema_decay=0.99)
            >>> vq.set_codebook(np.eye(4, 2))
        """
        dtype = keras.backend.standardize_dtype(getattr(vectors, "dtype", "float32"))
        if "float" not in dtype:
            raise TypeError(f"`vectors` must have a float dtype, got dtype {dtype}.")
        vectors = ops.cast(ops.convert_to_tensor(vectors), "float32")
        shape = tuple(vectors.shape)
        dim = self.code_dim if self.code_dim is not None else shape[-1]
        name = "codebook_dim" if self.codebook_dim is not None else "embedding_dim"
        if len(shape) != 2 or shape != (self.num_embeddings, dim):
            raise ValueError(
                f"`vectors` must have shape (num_embeddings, {name}) = "
                f"({self.num_embeddings}, {dim}), got shape {shape}."
            )
        _validation.check_finite("vectors", vectors)
        if not self.built:
            if self.embedding_dim is None and self.codebook_dim is not None:
                raise ValueError(
                    "set_codebook on an unbuilt layer with codebook_dim needs embedding_dim; "
                    "got embedding_dim=None. Build the layer first or pass embedding_dim."
                )
            self.build((None, self.embedding_dim or dim))
        self.codebook.assign(vectors)
        if self.codebook_offset is not None:
            self.codebook_offset.assign(ops.zeros_like(vectors))
        if self.uses_ema:
            smoothed = laplace_smoothing(self.ema_cluster_size.value, self.epsilon)
            self.ema_sum.assign(vectors * smoothed[:, None])
        if self.initialized is not None:
            self.initialized.assign(True)

    def encode(self, inputs):
        """Nearest-code indices, int32 of shape ``inputs.shape[:-1]``.

        Args:
            inputs: float tensor ``(..., D)``.

        Raises:
            TypeError: a non-float dtype. ValueError: NaN or ±inf values (when known: a
                traced graph codes such a vector as 0).
        """
        inputs = _quantizer.built_input(self, inputs)
        _, flat = self._flatten(inputs)
        indices, _ = self._lookup(self._to_code_space(flat), self.embeddings)
        return ops.reshape(indices, ops.shape(inputs)[:-1])

    def decode(self, indices):
        """Vectors for ``indices``: float32 of shape ``indices.shape + (D,)``.

        The codes themselves, l2-normalised with ``distance="cosine"`` and mapped by
        ``project_out`` with ``codebook_dim``: what a call outputs for these codes.

        Args:
            indices: integer tensor with values in ``[0, num_embeddings)``.

        Raises:
            TypeError: for a non-integer dtype. ValueError: for out-of-range values.
        """
        _quantizer.check_decode_input(
            self, "VectorQuantizer.decode", indices, self.num_embeddings, "num_embeddings"
        )
        table = self._lookup_table(self.embeddings)
        return self._from_code_space(ops.take(table, ops.cast(indices, "int32"), axis=0))

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=None, return_indices=False, return_loss=False):
        return _quantizer.quantizer_output_spec(inputs, return_indices, return_loss)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(_quantizer.config_entries(self, CONFIG_KEYS))
        config["codebook_initializer"] = keras.initializers.serialize(self.codebook_initializer)
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
