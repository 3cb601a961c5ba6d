"""Serving graphs of keras_vq models: TensorFlow endpoints with checked, named inputs.

The lower layer under :mod:`keras_vq.export` and :mod:`keras_vq.export_formats`: it knows no
model class. Each model describes its own endpoints (``model.serving_endpoints(format)``)
with the builders here; export writes whatever a model describes. An endpoint is
``(name, function, input specs)``; the function takes the named inputs and returns a dict of
named outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
from keras import ops

from keras_vq import _validation
from keras_vq.layers import _quantizer
from keras_vq.layers.finite_scalar_quantizer import FiniteScalarQuantizer
from keras_vq.layers.residual_vector_quantizer import ResidualVectorQuantizer
from keras_vq.layers.vector_quantizer import VectorQuantizer

Endpoint = tuple[str, Callable, list]
# The priors' noise floor (keras_vq.models._prior draws its uniforms on [_TINY, 1) too).
_TINY = float(np.finfo("float32").tiny)


# --- signatures -------------------------------------------------------------------------
# Argument names become the signatures' input keys, dict keys their output keys.
#
# TensorFlow checks only an input's dtype against the signature (naming it by position); a wrong
# size or rank goes through and fails deep inside, or, for a convolution, can abort the whole
# server (KERAS3_NOTES "Serving inputs"). Every signature therefore checks its inputs first,
# and everything else reads them through identities that depend on the checks (`_checked`).
# The graph takes the signature's shapes for granted: TensorFlow and Grappler fold any check
# built from a statically known rank or size to `True`. So the checks read only the runtime
# shape's values, and scalars have unknown-rank specs (their shape is checked, then fixed).
def _spec(shape: tuple | None, dtype: str, name: str):
    import tensorflow as tf

    return tf.TensorSpec(shape, dtype, name=name)


def _shape_check(value, name: str, shape: tuple[int | None, ...], expected: str):
    """An assertion that ``value`` has ``shape`` (``None``: any size), whatever its rank."""
    import tensorflow as tf

    actual = tf.shape(value, out_type=tf.int32)
    rank = len(shape)
    # -1 marks "no such axis": the rank is right when axes 0..rank-1 exist and axis rank does
    # not, which the values tell even where the length of `actual` is folded to a constant.
    padded = tf.concat([actual, tf.fill([rank + 1], -1)], axis=0)
    conditions = [tf.equal(padded[rank], -1)]
    if rank:
        conditions.append(tf.reduce_all(padded[:rank] >= 0))
    fixed = [(axis, size) for axis, size in enumerate(shape) if size is not None]
    if fixed:
        axes, sizes = zip(*fixed)
        conditions.append(tf.reduce_all(tf.equal(tf.gather(padded, list(axes)), list(sizes))))
    valid = tf.reduce_all(tf.stack(conditions))
    message = f"`{name}` must have shape {expected}, got shape"
    return tf.debugging.Assert(valid, [message, actual], summarize=16, name=f"check_{name}_shape")


def _range_check(value, name: str, size: int, size_name: str):
    """An assertion that the integers ``value`` lie in ``[0, size)``."""
    import tensorflow as tf

    flat = tf.reshape(value, [-1])  # reductions over the runtime rank, not the signature's
    valid = tf.logical_and(tf.reduce_all(flat >= 0), tf.reduce_all(flat < size))
    message = f"`{name}` must lie in [0, {size - 1}] ({size_name}={size}), got values in"
    low_high = tf.stack([tf.reduce_min(flat), tf.reduce_max(flat)])
    return tf.debugging.Assert(valid, [message, low_high], name=f"check_{name}_range")


def _label_range_check(labels, prior):
    """``labels`` in ``[0, num_classes)``, or up to the null label when the prior has one."""
    if prior.null_label is None:
        return _range_check(labels, "labels", prior.num_classes, "num_classes")
    return _range_check(
        labels, "labels", prior.num_label_rows, "num_classes + 1 with the null label"
    )


def _checked(checks: list, *values):
    """``values`` as identities that run after every assertion in ``checks``."""
    import tensorflow as tf

    with tf.control_dependencies(checks):
        checked = [tf.identity(value) for value in values]
    return checked[0] if len(checked) == 1 else checked


def _batch_shape(shape: Sequence[int]) -> str:
    return "(batch, " + ", ".join(str(size) for size in shape) + ")"


def _checked_images(images, image_shape: tuple[int, ...]):
    return _checked(
        [_shape_check(images, "images", (None, *image_shape), _batch_shape(image_shape))], images
    )


def _checked_codes(codes, code_shape: tuple[int, ...], num_embeddings: int):
    """Shape first: the range check of a wrongly shaped request would hide the real error."""
    import tensorflow as tf

    shape = _shape_check(codes, "codes", (None, *code_shape), _batch_shape(code_shape))
    with tf.control_dependencies([shape]):
        in_range = _range_check(codes, "codes", num_embeddings, "num_embeddings")
    return _checked([shape, in_range], codes)


# Non-finite inputs. Inside TensorFlow's graphs (and other runtimes) a fused Conv2D + BiasAdd
# + ReLU turns NaN into 0, so which latent vectors of an image with a NaN pixel come out
# non-finite depends on the runtime: an all-NaN image would get valid-looking codes and a
# finite reconstruction. Every served graph therefore treats an example with any NaN or ±inf
# entry as non-finite throughout: codes 0 (every stage), NaN images and latents. Eager
# `encode`/`decode` raise a ValueError instead.
def _finite_examples(x):
    """Boolean ``(B,)``: whether every entry of each example ``x[b]`` is finite."""
    import tensorflow as tf

    return tf.reduce_all(tf.math.is_finite(x), axis=list(range(1, x.shape.rank)))


def _per_example(finite, x):
    """``finite`` ``(B,)`` reshaped to broadcast against ``x`` ``(B, ...)``."""
    import tensorflow as tf

    return tf.reshape(finite, [-1] + [1] * (x.shape.rank - 1))


def _nan_unless(finite, x):
    """``x`` with every entry of example ``b`` NaN where ``finite[b]`` is false."""
    return _nan_where_false(_per_example(finite, x), x)


def _nan_where_false(mask, x):
    """``x`` + ``sqrt(mask - 1)``: ``x`` where the boolean ``mask`` (broadcast to ``x``) is
    true, NaN (the root of -1) where false. No select: tf2onnx converts a float ``SelectV2``
    to ``mask * x + (1 - mask) * y``, and 0 · NaN is NaN, so a NaN branch would reach every
    entry."""
    import tensorflow as tf

    return x + tf.sqrt(tf.cast(mask, x.dtype) - 1.0)


def _zero_unless(finite, codes):
    """``codes`` with every code of example ``b`` 0 where ``finite[b]`` is false."""
    import tensorflow as tf

    return tf.where(_per_example(finite, codes), codes, tf.zeros_like(codes))


def vae_endpoints(vae: keras.Model) -> list[Endpoint]:
    image_spec = _spec((None, *vae.image_shape), "float32", "images")
    latent_spec = _spec((None, vae.latent_dim), "float32", "latents")

    def reconstruct(images):
        images = _checked_images(images, vae.image_shape)
        reconstruction = ops.cast(vae(images, training=False), "float32")
        return {"images": _nan_unless(_finite_examples(images), reconstruction)}

    def encode(images):
        images = _checked_images(images, vae.image_shape)
        finite = _finite_examples(images)
        z_mean, z_log_var = vae.encode(images)
        return {"z_mean": _nan_unless(finite, z_mean), "z_log_var": _nan_unless(finite, z_log_var)}

    def decode(latents):
        expected = _batch_shape((vae.latent_dim,))
        latents = _checked(
            [_shape_check(latents, "latents", (None, vae.latent_dim), expected)], latents
        )
        images = ops.cast(vae.decode(latents), "float32")
        return {"images": _nan_unless(_finite_examples(latents), images)}

    return [
        ("serving_default", reconstruct, [image_spec]),
        ("encode", encode, [image_spec]),
        ("decode", decode, [latent_spec]),
    ]


def vqvae_endpoints(vqvae: keras.Model) -> list[Endpoint]:
    image_spec = _spec((None, *vqvae.image_shape), "float32", "images")
    code_spec = _spec((None, *vqvae.code_shape), "int32", "codes")

    def reconstruct(images):
        images = _checked_images(images, vqvae.image_shape)
        reconstruction = ops.cast(vqvae(images, training=False), "float32")
        return {"images": _nan_unless(_finite_examples(images), reconstruction)}

    def encode(images):
        images = _checked_images(images, vqvae.image_shape)
        codes = ops.cast(vqvae.encode(images), "int32")
        return {"codes": _zero_unless(_finite_examples(images), codes)}

    def decode(codes):
        codes = _checked_codes(codes, tuple(vqvae.code_shape), vqvae.num_embeddings)
        return {"images": ops.cast(vqvae.decode(codes), "float32")}

    return [
        ("serving_default", reconstruct, [image_spec]),
        ("encode", encode, [image_spec]),
        ("decode", decode, [code_spec]),
    ]


def generator_endpoints(
    vqvae: keras.Model,
    prior: keras.Model,
    temperature: float,
    options: dict | None = None,
    jit_compile: bool = False,
) -> list[Endpoint]:
    """TensorFlow-only: the batch size comes from the value of ``num_samples``; ``options``:
    ``prior.sampling_options(...)``, fixed into the graph."""
    import tensorflow as tf

    (height, width), k, num_classes = prior.latent_shape, prior.num_embeddings, prior.num_classes
    options = options or {}
    top_k = options.get("top_k")
    constants = {
        name: None if options.get(name) is None else tf.constant(options[name], tf.float32)
        for name in ("top_p", "guidance_scale")
    }
    # The noise's shape comes from a value, which XLA cannot compile; the loop alone can be,
    # once per batch size, when the artifact runs.
    sample_loop = prior._sample_loop
    if jit_compile:
        sample_loop = tf.function(sample_loop, jit_compile=True)

    def generate(num_samples, seed, labels=None):
        shapes = [
            _shape_check(num_samples, "num_samples", (), "() (a scalar)"),
            _shape_check(seed, "seed", (), "() (a scalar)"),
        ]
        if num_classes is not None:
            shapes.append(_shape_check(labels, "labels", (None,), "(num_samples,)"))
        # The value checks read num_samples and labels as the shape checks let them through.
        with tf.control_dependencies(shapes):
            num_samples, seed = tf.reshape(num_samples, []), tf.reshape(seed, [])
            checks = [
                tf.debugging.assert_greater_equal(
                    num_samples, 1, message="`num_samples` must be >= 1"
                ),
                # int32 bounds it above; below, the range of check_seed (prior.sample's).
                tf.debugging.assert_greater_equal(
                    seed,
                    0,
                    message=f"`seed` must be an integer in [0, {_validation.MAX_SEED}] (int32)",
                ),
            ]
            if num_classes is not None:
                checks += [
                    tf.debugging.assert_equal(
                        tf.size(labels),
                        num_samples,
                        message="`labels` must have num_samples entries",
                    ),
                    _label_range_check(labels, prior),
                ]
        # Every later op (the noise's shape, the prior's label lookup) reads these identities.
        num_samples, seed = _checked(shapes + checks, num_samples, seed)
        if num_classes is None:
            labels = tf.zeros(tf.reshape(num_samples, [1]), tf.int32)  # unused by the sampler
        else:
            labels = _checked(shapes + checks, labels)
        # keras.random.uniform(seed=s) on TF draws stateless_uniform(seed=[s, 0]) on [_TINY, 1),
        # as the priors' sample does: the same noise, so the same codes as prior.sample.
        uniform = tf.random.stateless_uniform(
            tf.stack([num_samples, height, width, k]),
            seed=tf.stack([seed, 0]),
            minval=_TINY,
            maxval=1.0,
            dtype=tf.float32,
        )
        # The prior's own cached sampling loop (one implementation per prior), traced with a
        # dynamic batch (XLA only when asked: a server need not have it).
        codes = sample_loop(
            uniform, tf.constant(temperature, tf.float32), labels, top_k, **constants
        )
        codes = tf.cast(codes, tf.int32)
        return {"images": tf.cast(vqvae.decode(codes), tf.float32), "codes": codes}

    def fresh_seed():
        return tf.random.uniform((), maxval=tf.int32.max, dtype=tf.int32)

    # Unknown rank: with a () spec, nothing in the graph could tell a vector from a scalar.
    count_spec = _spec(None, "int32", "num_samples")
    seed_spec = _spec(None, "int32", "seed")
    if num_classes is None:

        def sample(num_samples):
            return generate(num_samples, fresh_seed())

        def sample_seeded(num_samples, seed):
            return generate(num_samples, seed)

        return [
            ("sample", sample, [count_spec]),
            ("sample_seeded", sample_seeded, [count_spec, seed_spec]),
        ]

    label_spec = _spec((None,), "int32", "labels")

    def sample(num_samples, labels):
        return generate(num_samples, fresh_seed(), labels)

    def sample_seeded(num_samples, seed, labels):
        return generate(num_samples, seed, labels)

    return [
        ("sample", sample, [count_spec, label_spec]),
        ("sample_seeded", sample_seeded, [count_spec, seed_spec, label_spec]),
    ]


def prior_endpoints(prior: keras.Model) -> list:
    """``serving_default``: ``codes`` [, ``labels``] → ``logits`` ``(B, h, w, K)``."""
    import tensorflow as tf

    latent_shape, k, num_classes = tuple(prior.latent_shape), prior.num_embeddings, None
    num_classes = prior.num_classes
    code_spec = _spec((None, *latent_shape), "int32", "codes")

    def checked_codes(codes):
        return _checked_codes(codes, latent_shape, k)

    if num_classes is None:

        def logits(codes):
            codes = checked_codes(codes)
            return {"logits": ops.cast(prior(codes, training=False), "float32")}

        return [("serving_default", logits, [code_spec])]

    def conditional_logits(codes, labels):
        codes = checked_codes(codes)
        shape = _shape_check(labels, "labels", (None,), "(batch,)")
        with tf.control_dependencies([shape]):
            checks = [
                tf.debugging.assert_equal(
                    tf.size(labels),
                    tf.shape(codes)[0],
                    message="`labels` must have one entry per code map",
                ),
                _range_check(labels, "labels", num_classes, "num_classes"),
            ]
        labels = _checked([shape, *checks], labels)
        return {"logits": ops.cast(prior([codes, labels], training=False), "float32")}

    label_spec = _spec((None,), "int32", "labels")
    return [("serving_default", conditional_logits, [code_spec, label_spec])]


def vae_graph_endpoints(model: keras.Model) -> list[Endpoint]:
    """A VAE's ONNX/LiteRT endpoints: no ``Assert`` ops, inputs checked by shape
    (``_fixed_shape``)."""
    image_shape = tuple(model.image_shape)
    image_spec = _spec((None, *image_shape), "float32", "images")
    latent_spec = _spec((None, model.latent_dim), "float32", "latents")

    def vae_reconstruct(images):
        images = _fixed_shape(images, image_shape)
        reconstruction = ops.cast(model(images, training=False), "float32")
        return {"images": _nan_unless(_finite_examples(images), reconstruction)}

    def vae_encode(images):
        images = _fixed_shape(images, image_shape)
        finite = _finite_examples(images)
        z_mean, z_log_var = model.encode(images)
        return {"z_mean": _nan_unless(finite, z_mean), "z_log_var": _nan_unless(finite, z_log_var)}

    def vae_decode(latents):
        latents = _fixed_shape(latents, (model.latent_dim,))
        images = ops.cast(model.decode(latents), "float32")
        return {"images": _nan_unless(_finite_examples(latents), images)}

    endpoints = [
        ("serving_default", vae_reconstruct, [image_spec]),
        ("encode", vae_encode, [image_spec]),
        ("decode", vae_decode, [latent_spec]),
    ]
    return endpoints


def vqvae_graph_endpoints(model: keras.Model) -> list[Endpoint]:
    """A VQ-VAE's ONNX/LiteRT endpoints: no ``Assert`` ops, a convertible argmin, inputs
    checked by shape (``_fixed_shape``) and codes by range (``_in_range``)."""
    image_shape, code_shape = tuple(model.image_shape), tuple(model.code_shape)
    image_spec = _spec((None, *image_shape), "float32", "images")
    code_spec = _spec((None, *code_shape), "int32", "codes")

    def vqvae_encode(images):
        images = _fixed_shape(images, image_shape)
        codes, _ = _graph_codes(model, images)
        return {"codes": _zero_unless(_finite_examples(images), codes)}

    def vqvae_decode(codes):
        codes = _in_range(_fixed_shape(codes, code_shape), model.num_embeddings)
        return {"images": _graph_decode(model, codes)}

    def vqvae_reconstruct(images):
        images = _fixed_shape(images, image_shape)
        codes, finite = _graph_codes(model, images)
        reconstruction = _graph_decode(model, codes, finite)
        return {"images": _nan_unless(_finite_examples(images), reconstruction)}

    endpoints = [
        ("serving_default", vqvae_reconstruct, [image_spec]),
        ("encode", vqvae_encode, [image_spec]),
        ("decode", vqvae_decode, [code_spec]),
    ]
    return endpoints


def _fixed_shape(value, shape: tuple[int, ...]):
    """``value``, failing at run time unless it is ``(batch, *shape)``: the LiteRT check.

    LiteRT's signature runners resize an input to whatever array they are given, and its
    kernels run many wrong shapes (a larger image gives more codes; a convolution takes extra
    channels as groups). A concatenation needs the same rank and the same sizes on every
    other axis, so ``value`` goes through one below a ``(1, *shape)`` block (cut off again):
    a wrong shape fails where the graph starts ("CONCATENATION ... failed to prepare"). An
    empty block would be folded away by the converter. ONNX Runtime checks the declared
    shape itself, first.
    """
    import tensorflow as tf

    block = tf.zeros((1, *shape), value.dtype)
    return tf.concat([block, value], axis=0, name="check_input_shape")[1:]


def _in_range(codes, num_embeddings: int):
    """``codes``, failing at run time unless every code lies in ``[0, num_embeddings)``.

    Neither format has an assertion, and FSQ/LFQ decode their codes by arithmetic (no look-up
    that a runtime bounds-checks), while ONNX's Gather wraps negative indices. So an
    out-of-range code reads index 1 of a one-element table: the runtimes' bounds check of that
    look-up fails (ONNX Runtime names the node, ``codes_out_of_range``).
    """
    import tensorflow as tf

    outside = tf.logical_or(codes < 0, codes >= num_embeddings)
    table = tf.zeros((1,), codes.dtype)
    return codes + tf.gather(table, tf.cast(outside, tf.int32), name="codes_out_of_range")


def _graph_codes(vqvae: keras.Model, images):
    """``vqvae.encode`` without loops: int32 codes ``(B, *code_shape)`` of static shape, and
    boolean ``(B, *latent_shape)``: whether each latent vector is finite as its quantizer sees
    it.

    A ``VectorQuantizer``'s (and each residual stage's) nearest-code search is one distance
    block over all vectors (``_nearest_indices``); FSQ and LFQ codes are elementwise, their
    own ``encode``. A non-finite vector is code 0 (every stage), the quantizers' rule: an
    argmin over NaN distances, or NaN cast to int32, is whatever the runtime makes of it.
    """
    import tensorflow as tf

    quantizer = vqvae.quantizer
    z_e = tf.cast(vqvae.encoder(images, training=False), tf.float32)
    if isinstance(quantizer, VectorQuantizer):
        vectors = quantizer._to_code_space(tf.reshape(z_e, [-1, quantizer.embedding_dim]))
        finite = _quantizer.finite_rows(vectors)
        codes = _nearest_indices(quantizer, vectors)
    elif isinstance(quantizer, ResidualVectorQuantizer):
        # Stage s codes the residual the stages before it leave (the layer's inference pass).
        residual, stages = tf.reshape(z_e, [-1, quantizer.embedding_dim]), []
        finite = _quantizer.finite_rows(residual)
        for s in range(quantizer.num_quantizers):
            stage = quantizer.quantizer(s)
            stages.append(_nearest_indices(stage, stage._to_code_space(residual)))
            residual = residual - stage.decode(stages[-1])
        codes = tf.stack(stages, axis=-1)
    elif isinstance(quantizer, FiniteScalarQuantizer):
        z = quantizer._project_in(z_e)
        finite = _quantizer.finite_rows(z)
        codes = _fsq_indices(quantizer, tf.where(finite[..., None], z, tf.zeros_like(z)))
        codes = _quantizer.zero_where_not(finite, codes)
    else:
        finite = _quantizer.finite_rows(quantizer._project_in(z_e))
        codes = quantizer.encode(z_e)  # the LFQ layer's own rule: 0 where not finite
    codes = tf.reshape(tf.cast(codes, tf.int32), [-1, *vqvae.code_shape])
    return codes, tf.reshape(finite, [-1, *vqvae.latent_shape])


def _fsq_indices(quantizer: FiniteScalarQuantizer, z):
    """``FiniteScalarQuantizer``'s indices of projected, finite ``z`` (standardised by the moving
    moments, as at inference), its index
    ``Σ_i (q_i + ⌊L_i/2⌋) Π_{j<i} L_j`` summed as ``Σ_i q_i Π_{j<i} L_j`` plus a constant: the
    layer's integer add of the half-widths becomes an int32 ``BiasAdd``, an op LiteRT lacks."""
    import numpy as np
    import tensorflow as tf

    levels = np.asarray(quantizer.levels, np.int64)
    basis = np.cumprod([1, *levels[:-1]])
    offset = int(np.sum(levels // 2 * basis))
    rounded = quantizer._rounded_levels(quantizer._standardized(z))
    signed = tf.reduce_sum(tf.cast(rounded, tf.int32) * basis.astype(np.int32), axis=-1)
    return signed + offset


def _nearest_indices(quantizer: VectorQuantizer, vectors):
    """int32 ``(N,)`` nearest codes of float32 code-space ``vectors`` ``(N, d)``, 0 for a
    non-finite one: ``VectorQuantizer.encode``'s look-up table, in one distance block for any
    batch (module docstring)."""
    from keras_vq.layers.vector_quantizer import nearest_code

    table = quantizer._lookup_table(quantizer.embeddings)
    indices = nearest_code(vectors, table, chunk_size=None, distance=quantizer.distance)
    return _quantizer.zero_where_not(_quantizer.finite_rows(vectors), indices)


def _graph_decode(vqvae: keras.Model, codes, finite=None):
    """``vqvae.decode`` with the latent's static shape restored before the decoder.

    A projection (``codebook_dim``, FSQ/LFQ) leaves the latent's spatial sizes unknown in the
    TensorFlow graph; tf2onnx then converts the decoder's first transposed convolution with
    an ``output_shape`` instead of its pads, which shifts the image. ``finite``
    (``_graph_codes``): NaN latent vectors where false, as a quantizer's call outputs.
    """
    import tensorflow as tf

    z_q = vqvae.quantizer.decode(codes)
    z_q = tf.reshape(tf.cast(z_q, tf.float32), [-1, *vqvae.latent_shape, vqvae.embedding_dim])
    if finite is not None:
        z_q = _nan_where_false(finite[..., None], z_q)
    return tf.cast(vqvae.decoder(z_q, training=False), tf.float32)


__all__ = [
    "Endpoint",
    "generator_endpoints",
    "prior_endpoints",
    "vae_endpoints",
    "vae_graph_endpoints",
    "vqvae_endpoints",
    "vqvae_graph_endpoints",
]
