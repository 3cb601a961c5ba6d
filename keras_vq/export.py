"""SavedModel export in the TF Serving layout: ``<export_dir>/<version>/saved_model.pb``.

The artifacts are written by Keras' own ``keras.export.ExportArchive`` and need neither
keras_vq nor Keras to load: ``tf.saved_model.load(path).signatures["encode"](images=x)``.
Every signature takes named inputs, returns a dict of named outputs and has a dynamic batch.

- :class:`~keras_vq.models.VAE`: ``serving_default`` (``images`` → ``images``, the
  reconstruction from ``z_mean``), ``encode`` (``images`` → ``z_mean``, ``z_log_var``),
  ``decode`` (``latents`` → ``images``).
- :class:`~keras_vq.models.VQVAE`: ``serving_default`` (``images`` → ``images``),
  ``encode`` (``images`` → int32 ``codes``), ``decode`` (int32 ``codes`` → ``images``), for
  every quantizer: ``codes`` are ``(None, *vqvae.code_shape)``, i.e. ``(None, h, w)``, or
  ``(None, h, w, num_quantizers)`` for a ``ResidualVectorQuantizer``, with values in
  ``[0, num_embeddings)`` (the quantizer's ``codebook_size``).
- :func:`export_generator` (VQVAE + PixelCNNPrior or TransformerPrior): ``sample`` (alias
  ``serving_default``) and ``sample_seeded`` → ``images`` and int32 ``codes``.

Inputs are checked where they enter. The specs have an exact rank (``images``
``(None, H, W, C)`` float32, ``codes`` ``(None, *code_shape)`` int32, ``latents``
``(None, latent_dim)`` float32, ``labels`` ``(None,)`` int32; the scalars ``num_samples`` and
``seed`` int32 of unknown rank, see ``_shape_check``), and in-graph assertions reject a wrong
size or rank, ``codes`` or ``labels`` out of range and ``num_samples < 1`` with an
``InvalidArgumentError`` that names the input and what it must be, before any layer runs. A
wrong dtype is refused by TensorFlow itself before the graph runs ("input #0(zero-based) was
expected to be a float tensor but is a double tensor": by position, not name); TF Serving's
REST API converts JSON numbers to the signature's dtype.

Backends: TensorFlow exports in-process. Keras cannot export from torch, JAX would export
through ``jax2tf`` (no room for TensorFlow's input assertions, and ``XlaCallModule`` ops that
older servers cannot run), and the generator's batch size comes from a tensor value, which JAX
cannot trace: JAX and torch exports save the models to temporary ``.keras`` files and run the
same export in a ``KERAS_BACKEND=tensorflow`` subprocess
(:func:`keras_vq.backend.tensorflow_bridge.runs_in_tensorflow`): the same artifact as a
TensorFlow user gets.

A version directory is written under a hidden staging name and renamed into place when
complete, so a running TF Server never sees a half-written model; an existing version is
never overwritten.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
from keras import ops

from keras_vq import _validation
from keras_vq.backend.tensorflow_bridge import runs_in_tensorflow
from keras_vq.models._prior import _TINY
from keras_vq.models.pixelcnn import PixelCNNPrior
from keras_vq.models.transformer import TransformerPrior
from keras_vq.models.vae import VAE
from keras_vq.models.vqvae import VQVAE

_Endpoint = tuple[str, Callable, list]
_PRIORS = (PixelCNNPrior, TransformerPrior)


def export_saved_model(
    model: VAE | VQVAE, export_dir: str | os.PathLike, version: int | None = None
) -> str:
    """Write ``model`` as a SavedModel to ``export_dir/<version>/`` for TF Serving.

    Args:
        model: a built :class:`~keras_vq.models.VAE` or :class:`~keras_vq.models.VQVAE`.
        export_dir: the model's base directory (TF Serving's ``--model_base_path``); created
            when missing.
        version: integer ≥ 0; ``None`` takes the next free one (largest existing + 1, or 1).

    Returns:
        The path of the new version directory.

    Raises:
        TypeError: ``model`` is not a VAE/VQVAE, or ``version`` is not an integer.
        ValueError: ``model`` is not built, or ``version`` is negative.
        FileExistsError: ``export_dir/<version>`` already exists.

    Example:
        >>> path = export_saved_model(vqvae, "exports/vqvae")        # "exports/vqvae/1"
        >>> served = tf.saved_model.load(path)                        # keras_vq not needed
        >>> codes = served.signatures["encode"](images=images)["codes"]
    """
    _check_model("model", model, (VAE, VQVAE))
    return _export_model(model, str(_version_dir(export_dir, version)))


def export_generator(
    vqvae: VQVAE,
    prior: PixelCNNPrior | TransformerPrior,
    export_dir: str | os.PathLike,
    version: int | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float | None = None,
    jit_compile: bool = False,
) -> str:
    """Write a two-stage generator (``codes ~ prior``, ``images = vqvae.decode(codes)``).

    The SavedModel carries the prior's own fast sampler, as plain TensorFlow ops with a
    dynamic batch (:meth:`PixelCNNPrior.sample`'s row-cached raster-order loop, or
    :meth:`TransformerPrior.sample`'s key/value-cached loop): position ``(i, j)`` takes
    ``argmax_k(logits_k + T·g_k)`` with Gumbel noise ``g`` — a draw from ``softmax(logits/T)``,
    after top-k, nucleus (top-p) and classifier-free guidance as in ``prior.sample``.

    The sampling configuration (``temperature``, ``top_k``, ``top_p``, ``guidance_scale``) is
    fixed into the artifact as constants, not signature inputs: one artifact is one sampler,
    its signatures are the same whatever the configuration, and a client cannot ask for a
    guided draw from a prior trained without label dropout. Export one artifact (version) per
    configuration to serve several.

    Signatures (``labels`` only for a class-conditional prior):

    - ``sample`` (also ``serving_default``): ``num_samples`` (int32 scalar), ``labels``
      (int32 ``(B,)``) → ``images``, ``codes``; fresh randomness on every call.
    - ``sample_seeded``: ``num_samples``, ``seed`` (int32 scalar in ``[0, 2**31 - 1]``, the
      range ``prior.sample`` accepts), ``labels`` → the same, and
      the same outputs for the same seed: the codes of ``prior.sample(num_samples,
      temperature, seed=seed, labels=labels, top_k=top_k, top_p=top_p,
      guidance_scale=guidance_scale)`` on the TensorFlow backend. JAX and torch draw
      other random numbers for the same seed, so there the codes equal those of the prior's
      sampler on TensorFlow's noise ``tf.random.stateless_uniform((B, h, w, K), [seed, 0],
      minval=tiny, maxval=1)``, not those of ``prior.sample(seed=seed)``.

    ``labels`` lie in ``[0, num_classes)``, or equal ``prior.null_label`` when the prior has
    one. Bad requests (``num_samples < 1``, a non-scalar ``num_samples`` or ``seed``, a negative
    ``seed``, ``labels`` out of range or not of length ``num_samples``) fail at serving time
    with an ``InvalidArgumentError`` naming the input.

    Args:
        vqvae: the built :class:`~keras_vq.models.VQVAE` whose codes the prior models.
        prior: a :class:`~keras_vq.models.PixelCNNPrior` or
            :class:`~keras_vq.models.TransformerPrior` with the same ``num_embeddings`` and
            ``latent_shape`` (any single-index quantizer: VQ, FSQ, LFQ; a prior over a
            ``ResidualVectorQuantizer``'s stacked codes is not supported).
        export_dir, version: as in :func:`export_saved_model`.
        temperature: T ≥ 0 fixed into the artifact; 0 is the greedy (argmax) path.
        top_k, top_p: fixed into the artifact: keep the k largest logits (1 ≤ k ≤ K), then
            the nucleus of mass p in (0, 1] (see :meth:`PixelCNNPrior.sample`); ``None``: off.
        guidance_scale: classifier-free guidance scale s ≥ 0 fixed into the artifact (the
            prior must have a ``null_label``: trained with ``label_dropout > 0``); ``None``:
            the prior's own ``guidance_scale`` (``None`` unless set: plain sampling).
        jit_compile: compile the sampling loop with XLA when the artifact runs (per batch
            size, on the first call). Faster, above all for the transformer's many small
            per-position ops, but the server must have XLA (TensorFlow's Python package
            does); off by default so any TF Serving build runs the artifact.

    Returns:
        The path of the new version directory.

    Example:
        >>> path = export_generator(vqvae, prior, "exports/generator", jit_compile=True)
        >>> guided = export_generator(vqvae, prior, "exports/guided", guidance_scale=3.0)
        >>> tf.saved_model.load(path).signatures["sample_seeded"](
        ...     num_samples=tf.constant(4), seed=tf.constant(0))["images"]
    """
    target = _version_dir(export_dir, version)
    return write_generator(
        vqvae,
        prior,
        target,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        guidance_scale=guidance_scale,
        jit_compile=jit_compile,
    )


def write_generator(
    vqvae: VQVAE,
    prior: PixelCNNPrior | TransformerPrior,
    target: str | os.PathLike,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float | None = None,
    jit_compile: bool = False,
) -> str:
    """:func:`export_generator`'s SavedModel written to exactly ``target`` (no version
    directory); what :meth:`keras_vq.models.ImageGenerator.export` writes.

    Args:
        vqvae, prior, temperature, top_k, top_p, guidance_scale, jit_compile: as in
            :func:`export_generator`.
        target: the SavedModel directory; it must not exist (``FileExistsError``).

    Returns:
        ``target`` as a string.

    Example:
        >>> write_generator(vqvae, prior, "generator_savedmodel", temperature=0.8)
    """
    _check_model("vqvae", vqvae, (VQVAE,))
    _check_model("prior", prior, _PRIORS)
    if tuple(vqvae.code_shape) != tuple(vqvae.latent_shape):
        raise ValueError(
            f"`vqvae` has codes of shape {tuple(vqvae.code_shape)} per image (a "
            f"{type(vqvae.quantizer).__name__}, one code per stage) but a prior models one "
            "code per position: export_generator needs a VQVAE with a single-index quantizer "
            "(VectorQuantizer, FiniteScalarQuantizer, LookupFreeQuantizer)."
        )
    if prior.num_embeddings != vqvae.num_embeddings:
        raise ValueError(
            f"`prior` models num_embeddings={prior.num_embeddings} codes but `vqvae` has "
            f"num_embeddings={vqvae.num_embeddings}."
        )
    if tuple(prior.latent_shape) != tuple(vqvae.latent_shape):
        raise ValueError(
            f"`prior` has latent_shape={tuple(prior.latent_shape)} but `vqvae` encodes to "
            f"latent_shape={tuple(vqvae.latent_shape)}."
        )
    temperature = _validation.check_float("temperature", temperature, minimum=0.0)
    options = prior.sampling_options(top_k=top_k, top_p=top_p, guidance_scale=guidance_scale)
    jit_compile = _validation.check_bool("jit_compile", jit_compile)
    target = checked_path("target", target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; export never overwrites it.")
    return _export_generator(vqvae, prior, str(target), temperature, options, jit_compile)


@runs_in_tensorflow("model")
def _export_model(model: VAE | VQVAE, target: str) -> str:
    endpoints = _vae_endpoints(model) if isinstance(model, VAE) else _vqvae_endpoints(model)
    return _write_archive([model], endpoints, Path(target))


@runs_in_tensorflow("vqvae", "prior")
def _export_generator(
    vqvae: VQVAE,
    prior: PixelCNNPrior | TransformerPrior,
    target: str,
    temperature: float,
    options: dict,
    jit_compile: bool,
) -> str:
    endpoints = _generator_endpoints(vqvae, prior, temperature, options, jit_compile)
    return _write_archive([vqvae, prior], endpoints, Path(target))


# --- checks and layout ------------------------------------------------------------------
def _check_model(name: str, model: Any, types: tuple[type, ...]) -> None:
    if not isinstance(model, types):
        accepted = " or ".join(f"keras_vq.models.{t.__name__}" for t in types)
        hint = " (use export_generator for a prior)" if name == "model" else ""
        raise TypeError(f"`{name}` must be a {accepted}{hint}, got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"`{name}` must be built before export (construct it with `input_shape` or call "
            f"it on a batch), got an unbuilt {type(model).__name__}."
        )


def checked_path(name: str, value: Any) -> Path:
    """``Path(value)``; a ``TypeError`` naming ``name`` unless it is a str or os.PathLike."""
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"`{name}` must be a path (str or os.PathLike), got {value!r} "
            f"({type(value).__name__})."
        )
    return Path(value)


def _version_dir(export_dir: Any, version: Any) -> Path:
    """``export_dir/<version>``, checked to be new; ``None`` → largest version + 1."""
    base = checked_path("export_dir", export_dir)
    if base.exists() and not base.is_dir():
        raise NotADirectoryError(f"`export_dir` must be a directory, got the file {base}.")
    if version is None:
        versions = [
            int(p.name)
            for p in (base.iterdir() if base.is_dir() else ())
            if p.is_dir() and p.name.isascii() and p.name.isdigit()
        ]
        version = max(versions, default=0) + 1
    else:
        version = _validation.check_int("version", version, minimum=0)
    target = base / str(version)
    if target.exists():
        raise FileExistsError(
            f"{target} already exists; export never overwrites a version. Pass another "
            "`version`, or version=None for the next free one."
        )
    return target


def _write_archive(models: Sequence[keras.Model], endpoints: list[_Endpoint], target: Path) -> str:
    archive = keras.export.ExportArchive()
    for model in models:
        archive.track(model)
    for name, fn, input_signature in endpoints:
        archive.add_endpoint(name, fn, input_signature)
    target.parent.mkdir(parents=True, exist_ok=True)
    # TF Serving ignores non-integer names, so it never loads the staging directory.
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        archive.write_out(str(staging), verbose=False)
        if target.exists():
            raise FileExistsError(f"{target} appeared during the export; not overwriting it.")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _spec(shape: tuple | None, dtype: str, name: str):
    import tensorflow as tf

    return tf.TensorSpec(shape, dtype, name=name)


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


def _vae_endpoints(vae: VAE) -> list[_Endpoint]:
    image_spec = _spec((None, *vae.image_shape), "float32", "images")
    latent_spec = _spec((None, vae.latent_dim), "float32", "latents")

    def reconstruct(images):
        images = _checked_images(images, vae.image_shape)
        return {"images": ops.cast(vae(images, training=False), "float32")}

    def encode(images):
        z_mean, z_log_var = vae.encode(_checked_images(images, vae.image_shape))
        return {"z_mean": z_mean, "z_log_var": z_log_var}

    def decode(latents):
        expected = _batch_shape((vae.latent_dim,))
        latents = _checked(
            [_shape_check(latents, "latents", (None, vae.latent_dim), expected)], latents
        )
        return {"images": ops.cast(vae.decode(latents), "float32")}

    return [
        ("serving_default", reconstruct, [image_spec]),
        ("encode", encode, [image_spec]),
        ("decode", decode, [latent_spec]),
    ]


def _vqvae_endpoints(vqvae: VQVAE) -> list[_Endpoint]:
    image_spec = _spec((None, *vqvae.image_shape), "float32", "images")
    code_spec = _spec((None, *vqvae.code_shape), "int32", "codes")

    def reconstruct(images):
        images = _checked_images(images, vqvae.image_shape)
        return {"images": ops.cast(vqvae(images, training=False), "float32")}

    def encode(images):
        codes = vqvae.encode(_checked_images(images, vqvae.image_shape))
        return {"codes": ops.cast(codes, "int32")}

    def decode(codes):
        codes = _checked_codes(codes, tuple(vqvae.code_shape), vqvae.num_embeddings)
        return {"images": ops.cast(vqvae.decode(codes), "float32")}

    return [
        ("serving_default", reconstruct, [image_spec]),
        ("encode", encode, [image_spec]),
        ("decode", decode, [code_spec]),
    ]


def _generator_endpoints(
    vqvae: VQVAE,
    prior: PixelCNNPrior | TransformerPrior,
    temperature: float,
    options: dict | None = None,
    jit_compile: bool = False,
) -> list[_Endpoint]:
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


__all__ = ["export_generator", "export_saved_model", "write_generator"]
