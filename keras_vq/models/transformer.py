"""Decoder-only transformer prior over VQ-VAE code maps, with a key/value-cached sampler."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_vq import _validation
from keras_vq.backend import TrainStepMixin, inference
from keras_vq.backend.ops import loop_ops
from keras_vq.models._export import ExportMixin
from keras_vq.models._prior import CodePicker, PriorMixin
from keras_vq.presets import PresetMixin

# Masked attention scores: exp underflows to exactly 0 in float32, and no inf - inf NaNs.
_MASKED = -1e9


def _norm_params(layer) -> tuple:
    """A LayerNormalization's ``(gamma, beta)`` as tensors, float32 as stored (the layer does
    not autocast them)."""
    return ops.convert_to_tensor(layer.gamma), ops.convert_to_tensor(layer.beta)


class _Block(keras.layers.Layer):
    """Pre-norm decoder block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))`` (4× hidden, gelu).

    ``call`` attends causally over a whole sequence; ``step`` advances one position with a
    key/value cache. Both share every projection, so they compute the same function.
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim, self.num_heads = hidden_dim, num_heads
        self.head_dim = hidden_dim // num_heads
        sub = {"dtype": self.dtype_policy}
        self.attention_norm = keras.layers.LayerNormalization(name="attention_norm", **sub)
        self.query = keras.layers.Dense(hidden_dim, name="query", **sub)
        self.key = keras.layers.Dense(hidden_dim, name="key", **sub)
        self.value = keras.layers.Dense(hidden_dim, name="value", **sub)
        self.attention_output = keras.layers.Dense(hidden_dim, name="attention_output", **sub)
        self.mlp_norm = keras.layers.LayerNormalization(name="mlp_norm", **sub)
        self.mlp_hidden = keras.layers.Dense(4 * hidden_dim, name="mlp_hidden", **sub)
        self.mlp_output = keras.layers.Dense(hidden_dim, name="mlp_output", **sub)
        self.dropout = keras.layers.Dropout(dropout, **sub)

    def build(self, input_shape):
        d = self.hidden_dim
        for layer, width in [
            (self.attention_norm, d),
            (self.query, d),
            (self.key, d),
            (self.value, d),
            (self.attention_output, d),
            (self.mlp_norm, d),
            (self.mlp_hidden, d),
            (self.mlp_output, 4 * d),
        ]:
            if not layer.built:
                layer.build((None, None, width))
        self.built = True

    def _heads(self, x):
        """``(B, L, D)`` → ``(B, heads, L, head_dim)``."""
        x = ops.reshape(x, (ops.shape(x)[0], -1, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def _attend(self, q, keys_t, v, mask, xops=ops):
        """Softmax attention in float32 (bf16/fp16 scores lose the small differences); the
        keys come transposed, ``(B, heads, head_dim, L)``."""
        scores = xops.cast(q, "float32") @ xops.cast(keys_t, "float32")
        scores = xops.where(mask, scores / math.sqrt(self.head_dim), _MASKED)
        weights = xops.cast(xops.softmax(scores, axis=-1), self.compute_dtype)
        out = weights @ xops.cast(v, self.compute_dtype)  # (B, heads, L, head_dim)
        out = xops.transpose(out, (0, 2, 1, 3))
        # -1 for the batch: unknown (None) in an exported graph; the length is static.
        return xops.reshape(out, (-1, out.shape[1], self.hidden_dim))

    def _finish(self, x, attended, training=None):
        x = x + self.dropout(self.attention_output(attended), training=training)
        hidden = ops.gelu(self.mlp_hidden(self.mlp_norm(x)))
        return x + self.dropout(self.mlp_output(hidden), training=training)

    def call(self, x, training=None):
        h = self.attention_norm(x)
        length = ops.shape(x)[1]
        positions = ops.arange(length)
        causal = positions[None, :] <= positions[:, None]  # (L, L): query row, key column
        attended = self._attend(
            self._heads(self.query(h)),
            ops.swapaxes(self._heads(self.key(h)), -1, -2),
            self._heads(self.value(h)),
            causal,
        )
        return self._finish(x, attended, training)

    # --- incremental sampling: one token at a time ----------------------------------------
    # A sampler calls ``step`` once per position and block. Calling the sub-layers would cost a
    # Keras layer call each (~0.1 ms eagerly on torch, eight per block); instead the weights
    # are prepared once per sampling call (``step_weights``) and a position is a few plain
    # matmuls, Python operators where they exist (the native op on every backend without
    # keras.ops' dispatch). ``call`` defines the model; tests check ``step`` against it.
    def step_weights(self, dtype) -> dict:
        """The weights as :meth:`step` uses them: Dense kernels cast to ``dtype`` (as Keras'
        autocast does) with the query/key/value projections fused into one ``(D, 3D)``
        matmul; LayerNorm parameters as stored (LayerNormalization does not autocast)."""

        def dense(layer):
            return ops.cast(layer.kernel, dtype), ops.cast(layer.bias, dtype)

        (wq, bq), (wk, bk), (wv, bv) = dense(self.query), dense(self.key), dense(self.value)
        return {
            "attention_norm": _norm_params(self.attention_norm),
            "qkv": (ops.concatenate([wq, wk, wv], axis=1), ops.concatenate([bq, bk, bv], 0)),
            "attention_output": dense(self.attention_output),
            "mlp_norm": _norm_params(self.mlp_norm),
            "mlp_hidden": dense(self.mlp_hidden),
            "mlp_output": dense(self.mlp_output),
        }

    @staticmethod
    def _norm(layer, x, params):
        """``layer(x)`` on prepared parameters: the op LayerNormalization itself calls."""
        xops = loop_ops()
        out = xops.layer_normalization(x, *params, axis=-1, epsilon=layer.epsilon)
        return xops.cast(out, layer.compute_dtype)

    def step(self, x, cache, t, visible, weights=None):
        """Advance one position.

        Args:
            x: the block's input at position ``t``, ``(B, 1, D)``.
            cache: ``(keys, values)`` of positions ``< t``: keys transposed, ``(B, heads,
                head_dim, T)``, values ``(B, heads, T, head_dim)``; entries ``>= t`` are
                ignored. Separate and contiguous: a batched matmul with a strided view of
                one shared cache is several times slower on CPU.
            t: the position, a scalar int (tensor).
            visible: bool ``(T,)``, ``True`` for positions ``<= t``.
            weights: ``step_weights(dtype)``; computed here when ``None``.

        Returns:
            ``(output (B, 1, D), cache with position t)``.
        """
        w = self.step_weights(self.compute_dtype) if weights is None else weights
        xops = loop_ops()
        heads, d = self.num_heads, self.hidden_dim
        h = self._norm(self.attention_norm, x, w["attention_norm"])
        kernel, bias = w["qkv"]
        qkv = h @ kernel + bias  # (B, 1, 3D)
        # One token: (B, 1, D) → (B, heads, 1, head_dim) or its transpose (B, heads,
        # head_dim, 1) is a reshape.
        keys, values = cache
        query = xops.reshape(qkv[..., :d], (-1, heads, 1, self.head_dim))
        key = xops.reshape(qkv[..., d : 2 * d], (-1, heads, self.head_dim, 1))
        value = xops.reshape(qkv[..., 2 * d :], (-1, heads, 1, self.head_dim))
        keys = xops.slice_update(keys, [0, 0, 0, t], xops.cast(key, keys.dtype))
        values = xops.slice_update(values, [0, 0, t, 0], xops.cast(value, values.dtype))
        attended = self._attend(query, keys, values, visible, xops)
        kernel, bias = w["attention_output"]
        x = x + (attended @ kernel + bias)
        h = self._norm(self.mlp_norm, x, w["mlp_norm"])
        kernel, bias = w["mlp_hidden"]
        hidden = xops.gelu(h @ kernel + bias)
        kernel, bias = w["mlp_output"]
        return x + (hidden @ kernel + bias), (keys, values)


@keras.saving.register_keras_serializable(package="keras_vq")
class TransformerPrior(PriorMixin, PresetMixin, TrainStepMixin, ExportMixin, keras.Model):
    """Autoregressive prior ``p(c) = Π_t p(c_t | c_<t)`` over ``(h, w)`` maps of K codes.

    A decoder-only transformer over the raster order ``t = i·w + j``: the input at position
    ``t`` is ``embed(c_{t-1}) + pos_t`` (a start token at ``t = 0``: the class embedding with
    ``num_classes``, else a learnt vector), followed by ``num_layers`` pre-norm blocks
    (``x + MHA(LN(x))`` with causal attention, ``x + MLP(LN(x))`` with a 4× gelu MLP), a final
    LayerNorm and a Dense head to the logits of ``p(c_t | c_<t)``. The loss is the categorical
    cross-entropy averaged over positions (nats per code).

    ``fit`` data are code maps ``codes`` or, with ``num_classes``, ``(codes, labels)``; logs
    ``loss`` (nats per code), ``accuracy`` and ``bits_per_code``, as :class:`PixelCNNPrior`.
    With ``label_dropout`` p > 0 the class embedding has a row for the null class
    ``null_label = num_classes``, which replaces each label with probability p while training
    (for classifier-free guidance, as in :class:`PixelCNNPrior`).

    Args:
        num_embeddings: K, the number of codes.
        latent_shape: ``(h, w)`` of the code maps.
        num_layers: transformer blocks (≥ 1).
        num_heads: attention heads; must divide ``hidden_dim``.
        hidden_dim: width D of the embeddings and blocks.
        num_classes: number of classes for class-conditional priors, or ``None``.
        dropout: dropout rate in ``[0, 1)`` while training, on the input embeddings (code +
            position) and on every block's attention and MLP outputs (as GPT-2).
        label_dropout: probability in ``[0, 1)`` of training on the null label instead of a
            sample's label; > 0 needs ``num_classes`` and enables ``guidance_scale``.
        guidance_scale: the classifier-free guidance scale ``sample`` (and ``generate``,
            ``export_generator``) use when theirs is ``None``; ``None``: no guidance. Needs
            ``label_dropout > 0``. Saved with the model, so a preset samples as it was tuned
            (``guidance_scale=1.0`` in a call turns it off: plain conditional sampling).
        top_p: the nucleus mass in (0, 1] ``sample`` (and ``generate``,
            ``export_generator``) use when theirs is ``None``; ``None`` (or 1): every code.
            Saved with the model, so a preset samples as it was tuned (``top_p=1.0`` in a
            call turns it off: no nucleus).
        **kwargs: ``keras.Model`` arguments (``name``, ``dtype``).

    Call arguments:
        inputs: int codes ``(B, h, w)``; with ``num_classes``, the list ``[codes, labels]``
            (labels in ``[0, num_classes)``, or ``null_label`` when the prior has one).
        training: dropout and label dropout on (``fit`` does).

    Returns:
        float32 logits ``(B, h, w, num_embeddings)``; position t depends on codes ``< t`` only.

    Example:
        >>> prior = TransformerPrior(num_embeddings=64, latent_shape=(8, 8))
        >>> prior.compile(optimizer="adam")
        >>> prior.fit(codes, epochs=10)                       # codes: int (N, 8, 8)
        >>> new_codes = prior.sample(16, seed=0, top_k=32)    # int32 (16, 8, 8)
        >>> guided = TransformerPrior(64, (8, 8), num_classes=10, label_dropout=0.1)
        >>> # ... fit on (codes, labels), then sample with classifier-free guidance:
        >>> digits = guided.sample(10, labels=range(10), guidance_scale=3.0, top_p=0.9)

    Reference:
        Vaswani et al. "Attention Is All You Need", 2017; Esser, Rombach, Ommer. "Taming
        Transformers for High-Resolution Image Synthesis", 2021.
    """

    _CONFIG_KEYS = ("num_layers", "num_heads", "hidden_dim", "dropout")

    def __init__(
        self,
        num_embeddings: int,
        latent_shape: Sequence[int],
        num_layers: int = 2,
        num_heads: int = 4,
        hidden_dim: int = 64,
        num_classes: int | None = None,
        dropout: float = 0.1,
        label_dropout: float = 0.0,
        guidance_scale: float | None = None,
        top_p: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_prior(
            num_embeddings, latent_shape, num_classes, label_dropout, guidance_scale, top_p
        )
        self.num_layers = _validation.check_int("num_layers", num_layers, minimum=1)
        self.num_heads = _validation.check_int("num_heads", num_heads, minimum=1)
        self.hidden_dim = _validation.check_int("hidden_dim", hidden_dim, minimum=1)
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"`hidden_dim` must be a multiple of `num_heads`, got hidden_dim={hidden_dim} "
                f"and num_heads={num_heads}."
            )
        self.dropout = _validation.check_float("dropout", dropout, minimum=0.0)
        if self.dropout >= 1.0:
            raise ValueError(f"`dropout` must lie in [0, 1), got {dropout}.")
        sub = {"dtype": self.dtype_policy}
        d = self.hidden_dim
        self.embedding = keras.layers.Embedding(
            self.num_embeddings, d, name="code_embedding", **sub
        )
        self.class_embedding = (
            None
            if self.num_classes is None
            else keras.layers.Embedding(self.num_label_rows, d, name="class_embedding", **sub)
        )
        self.blocks = [
            _Block(d, self.num_heads, self.dropout, name=f"block_{i}", **sub)
            for i in range(self.num_layers)
        ]
        # GPT-2's embedding dropout: on the token + position input of the first block.
        self.embedding_dropout = keras.layers.Dropout(
            self.dropout, name="embedding_dropout", **sub
        )
        self.final_norm = keras.layers.LayerNormalization(name="final_norm", **sub)
        self.head = keras.layers.Dense(self.num_embeddings, name="head_logits", **sub)
        self.build()

    def build(self, input_shape=None):
        d, length = self.hidden_dim, math.prod(self.latent_shape)
        # Building twice (build_from_config after __init__) must not recreate weights.
        if not self.embedding.built:
            self.embedding.build((None, length))
            self.position_embedding = self.add_weight(
                shape=(length, d),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="position_embedding",
            )
            if self.class_embedding is None:
                self.start = self.add_weight(
                    shape=(d,),
                    initializer=keras.initializers.RandomNormal(stddev=0.02),
                    name="start",
                )
            else:
                self.class_embedding.build((None,))
            for block in self.blocks:
                block.build((None, length, d))
            self.final_norm.build((None, length, d))
            self.head.build((None, length, d))
        self.built = True

    # --- forward pass -----------------------------------------------------------------------
    def _start_tokens(self, labels, batch):
        """The input at t = 0, ``(B, D)``: the class embedding, or the learnt start vector."""
        if self.class_embedding is not None:
            return self.class_embedding(ops.reshape(ops.cast(labels, "int32"), (-1,)))
        start = ops.cast(self.start, self.compute_dtype)
        return ops.broadcast_to(start[None, :], (batch, self.hidden_dim))

    def _logits(self, x):
        return ops.cast(self.head(self.final_norm(x)), "float32")

    def call(self, inputs, training=None):
        codes, labels = self._split_inputs(inputs)
        return self._forward(codes, self._drop_labels(labels, training), training)

    def _forward(self, codes, labels=None, training=None):
        """``call`` without the input checks (their TF assertions do not compile with XLA)."""
        batch = ops.shape(codes)[0]
        length = math.prod(self.latent_shape)
        embedded = self.embedding(ops.reshape(ops.cast(codes, "int32"), (batch, length)))
        # Shift right: position t reads code t-1, so it never sees code t or later.
        start = self._start_tokens(labels, batch)[:, None, :]
        x = ops.concatenate([start, embedded[:, :-1]], axis=1)
        x = x + ops.cast(self.position_embedding, self.compute_dtype)[None]
        x = self.embedding_dropout(x, training=training)
        for block in self.blocks:
            x = block(x, training=training)
        return ops.reshape(self._logits(x), (batch, *self.latent_shape, self.num_embeddings))

    # --- sampling ---------------------------------------------------------------------------
    @inference
    def sample(
        self,
        num_samples: int,
        temperature: float = 1.0,
        seed: int | None = None,
        labels: Any = None,
        top_k: int | None = None,
        batch_size: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
    ):
        """Draw code maps ``c ~ p(c)`` (or ``p(c | label)``) in raster order.

        Position t takes ``argmax_k(logits_k + T · g_k)``, ``g`` Gumbel noise drawn up front
        from ``seed``: a draw from ``softmax(logits / T)``, the same maps for the same seed;
        ``T = 0`` is the greedy path. Each block keeps the keys and values of past positions
        (preallocated caches of ``h·w`` positions), so a position costs one token's pass on
        weights prepared once per call, in one compiled loop (XLA on TF and JAX; on torch
        eagerly without autograd, on native ops: ``keras_vq.backend.ops.loop_ops``).
        ``top_k``, ``top_p`` and ``guidance_scale`` (classifier-free guidance: the caches hold
        2B rows, the labels and the null label) work as in :meth:`PixelCNNPrior.sample`.

        Args:
            num_samples: number of maps B ≥ 1.
            temperature: T ≥ 0.
            seed: non-negative int, or ``None`` for fresh randomness.
            labels: with ``num_classes``: an int class for all samples or int ``(B,)``
                (``null_label`` allowed).
            top_k: keep only the k largest logits at each position (1 ≤ k ≤ K), or ``None``.
            batch_size: maps drawn per sampler call (bounds memory), ``None``: all at once; as
                in :meth:`PixelCNNPrior.sample`, call ``i`` uses ``seed + i``.
            top_p: nucleus mass in (0, 1]; 1 keeps every code (and so turns the prior's own
                off for this call). ``None``: the prior's own ``top_p``, itself ``None``
                (every code, no extra cost) unless set.
            guidance_scale: s ≥ 0; needs ``null_label`` (``label_dropout > 0``). ``None``:
                the prior's own ``guidance_scale``, itself ``None`` (plain sampling, no extra
                cost) unless set.

        Returns:
            int32 backend tensor ``(B, h, w)``.
        """
        return self._draw(
            num_samples,
            temperature,
            seed,
            labels,
            batch_size,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
        )

    def _sample_loop(
        self, uniform, temperature, labels, top_k=None, top_p=None, guidance_scale=None
    ):
        """The cached sampler on uniform noise ``(B, h, w, K)``; ``top_k`` static, ``top_p``
        and ``guidance_scale`` scalars or ``None`` (see :class:`CodePicker`)."""
        batch = ops.shape(uniform)[0]  # a tensor in a graph with a dynamic batch (export)
        pick = CodePicker(temperature, top_k, top_p, guidance_scale)
        # The network's rows: B, or with guidance the B conditional then the B null rows, one
        # batched pass; both halves of a sample read the code drawn from their combination.
        labels = self.guided_labels(labels, guidance_scale)
        rows = 2 * batch if pick.guided else batch
        height, width = self.latent_shape
        length, k, d = height * width, self.num_embeddings, self.hidden_dim
        dtype = self.compute_dtype
        # Loop invariants, prepared once: weights, the noise, the position embeddings.
        noise = ops.reshape(temperature * -ops.log(-ops.log(uniform)), (batch, length * k))
        positions = ops.cast(self.position_embedding, dtype)
        embeddings = ops.cast(self.embedding.embeddings, dtype)
        weights = [block.step_weights(dtype) for block in self.blocks]
        final_norm = _norm_params(self.final_norm)
        head_kernel, head_bias = ops.cast(self.head.kernel, dtype), ops.cast(self.head.bias, dtype)
        steps = ops.arange(length)
        xops = loop_ops()  # the loop body's ops: native on torch, which runs it eagerly
        head_dim = d // self.num_heads

        def position(t, carry):
            codes, token, caches = carry
            x = token + xops.slice(positions, [t, 0], [1, d])[None]  # (B, 1, D)
            visible = steps <= t  # later cache entries are stale zeros
            new_caches = []
            for block, cache, w in zip(self.blocks, caches, weights):
                x, cache = block.step(x, cache, t, visible, weights=w)
                new_caches.append(cache)
            x = _Block._norm(self.final_norm, x, final_norm)
            logits = xops.cast(xops.reshape(x, (rows, d)) @ head_kernel + head_bias, "float32")
            code = pick(logits, xops.slice(noise, [0, t * k], [batch, k]), xops)
            codes = xops.slice_update(codes, [0, t], xops.reshape(code, (batch, 1)))
            token = xops.take(embeddings, pick.feed(code, xops), axis=0)
            return codes, xops.reshape(token, (rows, 1, d)), new_caches

        token = ops.reshape(self._start_tokens(labels, rows), (rows, 1, d))
        caches = [
            (
                ops.zeros((rows, self.num_heads, head_dim, length), dtype),
                ops.zeros((rows, self.num_heads, length, head_dim), dtype),
            )
            for _ in self.blocks
        ]
        codes = ops.zeros((batch, length), "int32")
        codes, _, _ = ops.fori_loop(0, length, position, (codes, token, caches))
        return ops.reshape(codes, (batch, height, width))


__all__ = ["TransformerPrior"]
