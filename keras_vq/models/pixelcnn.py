"""Gated PixelCNN prior over VQ-VAE code maps, its fast sampler and two-stage generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_vq import _validation
from keras_vq.backend import TrainStepMixin, inference
from keras_vq.backend.ops import loop_ops
from keras_vq.layers.pixelcnn import GatedPixelCNNBlock, dense_weights
from keras_vq.models._export import ExportMixin
from keras_vq.models._prior import (  # _TINY: tests import the noise floor from here
    _TINY,  # noqa: F401
    CodePicker,
    PriorMixin,
    join_chunks,
)
from keras_vq.presets import PresetMixin


@keras.saving.register_keras_serializable(package="keras_vq")
class PixelCNNPrior(PriorMixin, PresetMixin, TrainStepMixin, ExportMixin, keras.Model):
    """Autoregressive prior ``p(c) = Π_i p(c_i | c_<i)`` over ``(h, w)`` maps of K codes.

    Codes are embedded (``Embedding(K, filters)``), passed through ``num_layers`` gated
    PixelCNN blocks (the first with mask A) and a ``ReLU → 1×1 conv → ReLU → 1×1 conv`` head
    giving the logits of ``p(c_i | c_<i)`` at every position, in raster order. The loss is the
    categorical cross-entropy ``-log p(c_i | c_<i)`` averaged over positions (nats per code).

    ``fit`` data are code maps ``codes`` or, with ``num_classes``, ``(codes, labels)`` (labels
    int ``(B,)``); an unconditional prior ignores any ``y``. With ``label_dropout`` p > 0 the
    prior also learns ``p(c)`` without a class, for classifier-free guidance (Ho & Salimans,
    2022): a null class ``null_label = num_classes`` gets its own class biases, and while
    training each label is replaced by it with probability p. Logs ``loss`` (nats per code),
    ``accuracy`` (fraction of positions where the argmax is the target code) and
    ``bits_per_code`` (``loss / ln 2``). Compiled metrics receive the logits as ``y_pred``;
    prefer the built-in ``accuracy``.

    Args:
        num_embeddings: K, the number of codes.
        latent_shape: ``(h, w)`` of the code maps.
        num_layers: gated blocks (≥ 1).
        filters: channels of the embedding and of both stacks.
        kernel_size: odd kernel size k ≥ 3 of the blocks.
        num_classes: number of classes for class-conditional priors, or ``None``.
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
        training: with ``label_dropout``, drop labels to the null label (``fit`` does).

    Returns:
        float32 logits ``(B, h, w, num_embeddings)``.

    Example:
        >>> prior = PixelCNNPrior(num_embeddings=64, latent_shape=(7, 7))
        >>> prior.compile(optimizer="adam")
        >>> prior.fit(codes, epochs=10)                       # codes: int (N, 7, 7)
        >>> new_codes = prior.sample(16, temperature=1.0, seed=0)   # int32 (16, 7, 7)
        >>> images = generate(vqvae, prior, 16, seed=0)
        >>> guided = PixelCNNPrior(64, (7, 7), num_classes=10, label_dropout=0.1)
        >>> # ... fit on (codes, labels), then sample with classifier-free guidance:
        >>> digits = guided.sample(10, labels=range(10), guidance_scale=3.0, top_p=0.9)

    Reference:
        van den Oord et al. "Conditional Image Generation with PixelCNN Decoders", 2016;
        van den Oord, Vinyals, Kavukcuoglu. "Neural Discrete Representation Learning", 2017;
        Ho, Salimans. "Classifier-Free Diffusion Guidance", 2022.
    """

    _CONFIG_KEYS = ("num_layers", "filters", "kernel_size")

    def __init__(
        self,
        num_embeddings: int,
        latent_shape: Sequence[int],
        num_layers: int = 6,
        filters: int = 64,
        kernel_size: int = 5,
        num_classes: int | None = None,
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
        self.filters = _validation.check_int("filters", filters, minimum=1)
        self.kernel_size = _validation.check_odd_int("kernel_size", kernel_size, minimum=3)
        sub = {"dtype": self.dtype_policy}
        self.embedding = keras.layers.Embedding(
            self.num_embeddings, self.filters, name="code_embedding", **sub
        )
        self.blocks = [
            GatedPixelCNNBlock(
                self.filters,
                self.kernel_size,
                num_classes=self.num_label_rows,
                mask_type="A" if i == 0 else "B",
                name=f"gated_block_{i}",
                **sub,
            )
            for i in range(self.num_layers)
        ]
        self.head_hidden = keras.layers.Conv2D(self.filters, 1, name="head_hidden", **sub)
        self.head_logits = keras.layers.Conv2D(self.num_embeddings, 1, name="head_logits", **sub)
        self.build()

    def build(self, input_shape=None):
        h, w = self.latent_shape
        feature_shape = (None, h, w, self.filters)
        block_shape = [feature_shape, feature_shape]
        if self.num_classes is not None:
            block_shape.append((None,))
        # Building twice (build_from_config after __init__) must not recreate weights.
        for layer, shape in [
            (self.embedding, (None, h, w)),
            *[(block, block_shape) for block in self.blocks],
            (self.head_hidden, feature_shape),
            (self.head_logits, feature_shape),
        ]:
            if not layer.built:
                layer.build(shape)
        self.built = True

    # --- forward pass and loss --------------------------------------------------------------
    def _head(self, h):
        logits = self.head_logits(ops.relu(self.head_hidden(ops.relu(h))))
        return ops.cast(logits, "float32")

    def call(self, inputs, training=None):
        codes, labels = self._split_inputs(inputs)
        labels = self._drop_labels(labels, training)
        x = self.embedding(ops.cast(codes, "int32"))
        v, h = x, x
        for block in self.blocks:
            v, h = block([v, h] if labels is None else [v, h, labels])
        return self._head(h)

    # --- sampling ---------------------------------------------------------------------------
    @inference
    def sample(
        self,
        num_samples: int,
        temperature: float = 1.0,
        seed: int | None = None,
        labels: Any = None,
        batch_size: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
    ):
        """Draw code maps ``c ~ p(c)`` (or ``p(c | label)``) in raster order.

        Position ``(i, j)`` takes ``argmax_k(logits_k + T · g_k)``, ``g`` Gumbel noise, i.e. a
        draw from ``softmax(logits / T)``; ``T = 0`` is the greedy (argmax) path. All noise of a
        call is drawn up front from ``seed``, so one seed always gives the same maps.

        ``top_k`` keeps the k largest logits, ``top_p`` then the nucleus: the most probable
        codes of ``softmax(logits / T)`` until their probability reaches p (the most probable
        always; codes tied with the last kept one too). With ``guidance_scale`` s
        (classifier-free guidance, for a prior trained with ``label_dropout``) the logits
        are ``l_null + s·(l_label − l_null)`` before both: one batched pass of 2B rows (the
        labels, then the null label) per position, each sample's two rows fed the code drawn
        from their combination. ``s = 1`` draws exactly the maps of plain conditional
        sampling with the same seed, ``s = 0`` those of ``labels=null_label``; ``s > 1``
        sharpens the class. The loop
        over positions runs in one compiled function (XLA on TF and JAX): the vertical stack is
        advanced by one row per row and the horizontal stack by one pixel per pixel, so each
        position costs one pixel of each block.

        ``batch_size`` bounds memory (the noise and the sampler's state grow with the maps
        drawn at once). With ``c = min(batch_size, num_samples)`` the maps are drawn in
        ``ceil(num_samples / c)`` calls of ``c`` maps: call ``i = 0, 1, ...`` is exactly
        ``sample(c, temperature, seed + i, labels[i·c : (i+1)·c])`` (labels cycled past the
        end; ``seed=None``: fresh noise for every call); the maps are concatenated and the
        last call's surplus dropped. Every call has the same shape, so the sampler is
        compiled once. Consequently ``batch_size >= num_samples`` (or ``None``) is one call,
        and a given ``(seed, batch_size)`` always gives the same maps; a different
        ``batch_size`` < ``num_samples`` draws other noise, so other maps.

        Args:
            num_samples: number of maps B ≥ 1.
            temperature: T ≥ 0.
            seed: non-negative int, or ``None`` for fresh randomness.
            labels: with ``num_classes``: an int class for all samples or int ``(B,)``
                (``null_label`` allowed).
            batch_size: maps drawn per sampler call, ≥ 1; ``None``: all at once.
            top_k: keep the k largest logits at each position (1 ≤ k ≤ K), or ``None``.
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
        """The row-cached sampler on uniform noise ``(B, h, w, K)``; ``top_k`` static, ``top_p``
        and ``guidance_scale`` scalars or ``None`` (see :class:`CodePicker`)."""
        batch = ops.shape(uniform)[0]  # a tensor in a graph with a dynamic batch (export)
        (height, width), n, f = self.latent_shape, self.kernel_size // 2, self.filters
        num_layers, k, dtype = self.num_layers, self.num_embeddings, self.compute_dtype
        pick = CodePicker(temperature, top_k, top_p, guidance_scale)
        # The network's rows: B, or with guidance the B conditional then the B null rows, one
        # batched pass; both halves of a sample read the code drawn from their combination.
        labels = self.guided_labels(labels, guidance_scale)
        rows = 2 * batch if pick.guided else batch
        # Loop invariants, prepared once: per-block biases and weights, the noise.
        biases = [block.label_bias(labels) for block in self.blocks]
        weights = [block.sampling_weights(dtype) for block in self.blocks]
        hidden_w, hidden_b = dense_weights(self.head_hidden, dtype)
        logits_w, logits_b = dense_weights(self.head_logits, dtype)
        embeddings = ops.cast(self.embedding.embeddings, dtype)
        # Per-position tensors are kept flat, (B, positions · channels), so that reading one
        # position is one slice (the cheapest op on every backend, eager torch included).
        noise = ops.reshape(temperature * -ops.log(-ops.log(uniform)), (batch, -1))  # T·Gumbel
        xops = loop_ops()  # the per-pixel ops: native on torch, which runs the loop eagerly

        def pixel(i, j, codes, row_in, h_ins, offsets):
            """Sample (i, j). row_in: row i of the codes, embedded; h_ins[l]: row i of block
            l+1's horizontal input; both with n zero columns on the left, flattened to
            (rows, (W+n)·F), so a window of columns is one slice."""
            window = xops.slice(row_in, [0, j * f], [rows, n * f])
            h = self.blocks[0].horizontal_pixel(window, at(offsets[0], j), weights=weights[0])
            new_h_ins = []
            for layer in range(1, num_layers):
                h_in = xops.slice_update(h_ins[layer - 1], [0, (j + n) * f], h)
                new_h_ins.append(h_in)
                window = xops.slice(h_in, [0, j * f], [rows, (n + 1) * f])
                h = self.blocks[layer].horizontal_pixel(
                    window, at(offsets[layer], j), h, weights=weights[layer]
                )
            hidden = xops.relu(xops.relu(h) @ hidden_w + hidden_b)
            logits = xops.cast(hidden @ logits_w + logits_b, "float32")
            code = pick(logits, xops.slice(noise, [0, (i * width + j) * k], [batch, k]), xops)
            codes = xops.slice_update(codes, [0, i, j], xops.reshape(code, (batch, 1, 1)))
            embedded = xops.take(embeddings, pick.feed(code, xops), axis=0)
            row_in = xops.slice_update(row_in, [0, (j + n) * f], embedded)
            return codes, row_in, new_h_ins

        def at(offsets, j):
            return xops.slice(offsets, [0, j * 2 * f], [rows, 2 * f])

        def row(i, carry):
            codes, v_ins, offsets = carry

            def column(j, carry):
                return pixel(i, j, *carry, offsets)

            row_in = ops.zeros((rows, (width + n) * f), dtype)
            h_ins = [ops.zeros((rows, (width + n) * f), dtype) for _ in range(num_layers - 1)]
            codes, row_in, _ = ops.fori_loop(0, width, column, (codes, row_in, h_ins))
            # Row i is complete: advance every vertical stack by row i, which gives the
            # offsets of row i+1. v_ins hold each block's vertical input with n zero rows on
            # top and n zero columns on each side; rows i-n..i are padded rows i..i+n.
            x = xops.reshape(row_in[:, n * f :], (rows, 1, width, f))
            new_v_ins, new_offsets = [], []
            for layer, block in enumerate(self.blocks):
                x = xops.pad(x, [[0, 0], [0, 0], [n, n], [0, 0]])
                v_in = xops.slice_update(v_ins[layer], [0, i + n, 0, 0], x)
                window = xops.slice(v_in, [0, i, 0, 0], [rows, n + 1, width + 2 * n, f])
                x, offset = block.vertical_row(window, biases[layer], weights=weights[layer])
                new_v_ins.append(v_in)
                new_offsets.append(xops.reshape(offset, (rows, width * 2 * f)))
            return codes, new_v_ins, new_offsets

        codes = ops.zeros((batch, height, width), "int32")
        v_ins = [ops.zeros((rows, height + n, width + 2 * n, f), dtype) for _ in range(num_layers)]
        # Row 0 sees no row above: no link term at all (as in ``call``), only the biases.
        offsets = [
            ops.reshape(
                block.first_row_offset(rows, width, bias, weights=w, dtype=dtype),
                (rows, width * 2 * f),
            )
            for block, w, bias in zip(self.blocks, weights, biases)
        ]
        codes, _, _ = ops.fori_loop(0, height, row, (codes, v_ins, offsets))
        return codes


@inference
def check_pair(vqvae, prior) -> None:
    """Check that ``prior`` models ``vqvae``'s codes, as :func:`generate` needs.

    Args:
        vqvae: a model with ``decode(codes)`` and, for a :class:`VQVAE`, one code per position.
        prior: a model with ``sample`` and ``num_embeddings`` (either prior).

    Raises:
        TypeError: a model without the methods named. ValueError: a residual quantizer's
            stacked codes, or a codebook size or latent grid that differ.

    Example:
        >>> check_pair(vqvae, prior)   # before sampling with both
    """
    if not callable(getattr(prior, "sample", None)) or not isinstance(
        getattr(prior, "num_embeddings", None), int
    ):
        raise TypeError(
            "`prior` must be a prior with `sample` and `num_embeddings` (PixelCNNPrior or "
            f"TransformerPrior), got {type(prior).__name__}."
        )
    if not callable(getattr(vqvae, "decode", None)):
        raise TypeError(f"`vqvae` must have a `decode(codes)` method, got {type(vqvae).__name__}.")
    code_shape = getattr(vqvae, "code_shape", None)
    latent_shape = getattr(vqvae, "latent_shape", None)
    if code_shape is not None and tuple(code_shape) != tuple(latent_shape):
        raise ValueError(
            f"`vqvae` has codes of shape {tuple(code_shape)} per image (one per residual "
            "stage) but `prior` samples one code per position: generate needs a VQVAE with a "
            "single-index quantizer (VectorQuantizer, FiniteScalarQuantizer, LookupFreeQuantizer)."
        )
    prior_shape = getattr(prior, "latent_shape", None)
    if latent_shape is not None and prior_shape is not None:
        if tuple(prior_shape) != tuple(latent_shape):
            raise ValueError(
                f"`prior` has latent_shape={tuple(prior_shape)} but `vqvae` encodes to "
                f"latent_shape={tuple(latent_shape)}."
            )
    codebook_size = getattr(vqvae, "num_embeddings", None)
    if isinstance(codebook_size, int) and codebook_size != prior.num_embeddings:
        raise ValueError(
            f"`vqvae` has num_embeddings={codebook_size} but `prior` models "
            f"num_embeddings={prior.num_embeddings} codes."
        )


def generate(
    vqvae,
    prior: keras.Model,
    num_samples: int,
    temperature: float = 1.0,
    seed: int | None = None,
    labels: Any = None,
    batch_size: int | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float | None = None,
):
    """Two-stage generation: ``codes ~ prior``, then ``images = vqvae.decode(codes)``.

    Args:
        vqvae: a model with ``decode(codes)`` (a :class:`VQVAE`), whose codebook size equals
            ``prior.num_embeddings``: one code per position (a VectorQuantizer,
            FiniteScalarQuantizer or LookupFreeQuantizer; not a ResidualVectorQuantizer).
        prior: the prior trained on ``vqvae``'s codes: a :class:`PixelCNNPrior` or a
            :class:`~keras_vq.models.TransformerPrior` (any model with ``sample`` and
            ``num_embeddings``).
        num_samples, temperature, seed, labels: as in :meth:`PixelCNNPrior.sample`.
        batch_size: maps sampled and decoded per call, ``None``: all at once. The codes are
            those of ``prior.sample(..., batch_size=batch_size)`` (see there).
        top_k, top_p, guidance_scale: as in :meth:`PixelCNNPrior.sample` (for either prior):
            top-k and nucleus sampling, classifier-free guidance.

    Returns:
        Decoded images ``(B, H, W, C)``.

    Example:
        >>> images = generate(vqvae, prior, 10, labels=range(10), guidance_scale=3.0, seed=0)
    """
    check_pair(vqvae, prior)
    chunks = prior._sample_chunks(
        num_samples,
        temperature,
        seed,
        labels,
        batch_size,
        top_k=top_k,
        top_p=top_p,
        guidance_scale=guidance_scale,
    )
    # Each call's maps are decoded at once, the surplus of the last one included, so that
    # every decoder call has the same batch size.
    return join_chunks([vqvae.decode(codes) for codes in chunks], num_samples)


__all__ = ["PixelCNNPrior", "check_pair", "generate"]
