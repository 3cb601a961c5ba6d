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
  :meth:`keras_vq.models.ImageGenerator.export` writes the same artifact (through
  :func:`write_generator`).

The signatures are those each model describes (``model.serving_endpoints(format)``, built
with :mod:`keras_vq.serving`); this module imports no model class.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from keras_vq import _validation
from keras_vq.backend.tensorflow_bridge import runs_in_tensorflow
from keras_vq.serving import Endpoint

# This module knows no model class: it writes the endpoints a model describes
# (``model.serving_endpoints(...)``) and finds the classes it checks arguments against among
# Keras' registered objects, so the models may import it (no import cycle).
_AUTOENCODERS = ("VAE", "VQVAE")
_PRIORS = ("PixelCNNPrior", "TransformerPrior")


def registered(*names: str) -> tuple[type, ...]:
    """The classes registered as ``keras_vq>name``: the package registers its models when
    it is imported, which importing this module (``keras_vq.export``) does first."""
    return tuple(keras.saving.get_registered_object(f"keras_vq>{name}") for name in names)


def export_saved_model(
    model: keras.Model, export_dir: str | os.PathLike, version: int | None = None
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
    _check_model("model", model, registered(*_AUTOENCODERS))
    return _export_model(model, str(_version_dir(export_dir, version)))


def export_generator(
    vqvae: keras.Model,
    prior: keras.Model,
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
            the nucleus of mass p in (0, 1] (see :meth:`PixelCNNPrior.sample`); ``top_k=None``:
            off; ``top_p=None``: the prior's own ``top_p`` (``None`` unless set: off), 1: off.
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
    vqvae: keras.Model,
    prior: keras.Model,
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
    _check_model("vqvae", vqvae, registered("VQVAE"))
    _check_model("prior", prior, registered(*_PRIORS))
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
    (generator_class,) = registered("ImageGenerator")
    generator = generator_class(vqvae, prior)
    return _export_generator(generator, str(target), temperature, options, jit_compile)


@runs_in_tensorflow("model")
def _export_model(model: keras.Model, target: str) -> str:
    return _write_archive([model], model.serving_endpoints("tf_saved_model"), Path(target))


@runs_in_tensorflow("generator")
def _export_generator(
    generator: keras.Model, target: str, temperature: float, options: dict, jit_compile: bool
) -> str:
    endpoints = generator.serving_endpoints(
        "tf_saved_model", temperature=temperature, jit_compile=jit_compile, **options
    )
    return _write_archive([generator], endpoints, Path(target))


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


def _write_archive(models: Sequence[keras.Model], endpoints: list[Endpoint], target: Path) -> str:
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


__all__ = ["export_generator", "export_saved_model", "write_generator"]
