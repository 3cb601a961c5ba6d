"""``model.export(path, format=...)``: SavedModel, ONNX and LiteRT files of keras_vq models.

Every keras_vq model's ``export`` (Keras' own method, overridden) lands here:

====================  ==========================================  ===========================
format                VAE / VQVAE                                 PixelCNNPrior /
                                                                  TransformerPrior
====================  ==========================================  ===========================
``tf_saved_model``    ``serving_default`` (reconstruct),          ``serving_default``
                      ``encode``, ``decode``: the signatures of   (``codes`` [, ``labels``]
                      :func:`keras_vq.export.export_saved_model`  → ``logits``)
``onnx``              one endpoint per ``.onnx`` file             —
                      (``endpoint=``, default ``serving_default``;
                      a list: a directory of ``<endpoint>.onnx``)
``litert``            one ``.tflite`` with the three signatures   —
                      (or those ``endpoint=`` names)
====================  ==========================================  ===========================

All artifacts come from TensorFlow graphs, built as :mod:`keras_vq.export` builds its
SavedModels (in a ``KERAS_BACKEND=tensorflow`` subprocess on JAX and torch,
:func:`~keras_vq.backend.tensorflow_bridge.runs_in_tensorflow`), so every backend writes the
same file. ONNX goes through ``tf2onnx``, LiteRT through TensorFlow's LiteRT converter.

ONNX and LiteRT graphs differ from the SavedModel in three ways. They carry no in-graph
assertions (neither format has TensorFlow's ``Assert``). ONNX Runtime checks the declared
dtype, rank and fixed sizes itself; LiteRT checks the dtype only (its signature runners
resize an input to any array), so every graph passes its inputs through a concatenation that
fails on a wrong rank or size ("CONCATENATION ... failed to prepare"), and a VQVAE's codes
through a look-up ``codes_out_of_range`` that fails the runtimes' bounds check for a code
outside ``[0, num_embeddings)`` (FSQ and LFQ decode by arithmetic, and ONNX's Gather wraps
negative indices). A VQVAE's codes come without loops for every quantizer: the
nearest-code search of a ``VectorQuantizer`` (and of each ``ResidualVectorQuantizer`` stage)
is one block over all codes (``nearest_code(..., chunk_size=None)``; its chunked path for an
unknown batch becomes a loop), its argmin TensorFlow's own (``backend.argmin_last_axis``;
Keras' ``ops.argmin`` lowers to ``Bitcast``/``BitwiseAnd`` ops, its -0.0 handling, that
neither converter takes); FSQ and LFQ codes are elementwise. Same distances, same codes. And
the latent keeps its static shape into the decoder (a projection, ``codebook_dim`` or FSQ/LFQ,
loses it, and tf2onnx then converts the first transposed convolution with an
``output_shape`` that shifts the image). A VQVAE's ``serving_default`` there is
``decode(encode(images))``: the reconstruction ``__call__`` gives in inference, up to float
round-off of the straight-through estimator. An ONNX graph's names are unique, so its
``serving_default`` output is ``reconstruction`` (its input is ``images``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras import ops

from keras_vq import _validation
from keras_vq import export as _saved_model
from keras_vq.backend.tensorflow_bridge import runs_in_tensorflow
from keras_vq.layers.finite_scalar_quantizer import FiniteScalarQuantizer
from keras_vq.layers.residual_vector_quantizer import ResidualVectorQuantizer
from keras_vq.layers.vector_quantizer import VectorQuantizer
from keras_vq.models.pixelcnn import PixelCNNPrior
from keras_vq.models.transformer import TransformerPrior
from keras_vq.models.vae import VAE
from keras_vq.models.vqvae import VQVAE

FORMATS = ("tf_saved_model", "onnx", "litert")
ENDPOINTS = ("serving_default", "encode", "decode")
_AUTOENCODERS = (VAE, VQVAE)
_PRIORS = (PixelCNNPrior, TransformerPrior)
# The formats each model writes; ONNX and LiteRT hold the autoencoders' encode/decode.
_MODEL_FORMATS = {
    VAE: FORMATS,
    VQVAE: FORMATS,
    PixelCNNPrior: ("tf_saved_model",),
    TransformerPrior: ("tf_saved_model",),
}


def export_model(
    model: VAE | VQVAE | PixelCNNPrior | TransformerPrior,
    filepath: str | os.PathLike,
    format: str = "tf_saved_model",
    *,
    verbose: bool | None = None,
    input_signature: Any = None,
    endpoint: str | Sequence[str] | None = None,
    overwrite: bool = False,
    opset_version: int | None = None,
) -> str:
    """Write ``model`` to ``filepath`` in ``format``; what ``model.export`` does.

    Args:
        model: a built VAE, VQVAE, PixelCNNPrior or TransformerPrior.
        filepath: the SavedModel directory, ``.onnx`` or ``.tflite`` file to write.
        format: ``"tf_saved_model"`` (every model), ``"onnx"`` or ``"litert"`` (VAE, VQVAE).
        verbose: print where the artifact went.
        input_signature: must be ``None``: the model fixes its signatures.
        endpoint: ONNX: the one endpoint in the file (``"serving_default"`` by default,
            ``"encode"``, ``"decode"``), or a list of them: ``filepath`` is then a directory
            holding ``<endpoint>.onnx`` for each; LiteRT: the signatures in the file (a name
            or a list; default: all three); ``tf_saved_model``: must be ``None`` (all
            signatures).
        overwrite: replace an existing ``filepath`` (the new artifact is written aside first
            and moved into place when complete).
        opset_version: ONNX opset, ``None`` for tf2onnx's default; ONNX only.

    Returns:
        ``filepath`` as a string.

    Raises:
        TypeError: ``model`` is not a keras_vq model; a wrongly typed argument.
        ValueError: unknown ``format``/``endpoint``, a format the model does not support, an
            ``input_signature``, or an unbuilt model.
        FileExistsError: ``filepath`` exists and ``overwrite`` is False.
        ImportError: ``format="onnx"`` without the ``export`` extra (tf2onnx).

    Example:
        >>> export_model(vqvae, "vqvae.tflite", format="litert")
        >>> runner = ai_edge_litert.interpreter.Interpreter("vqvae.tflite")
        >>> codes = runner.get_signature_runner("encode")(images=x)["codes"]
    """
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {', '.join(map(repr, FORMATS))}, got {format!r}."
        )
    _saved_model._check_model("model", model, (*_AUTOENCODERS, *_PRIORS))
    supported = next(f for cls, f in _MODEL_FORMATS.items() if isinstance(model, cls))
    if format not in supported:
        kind = type(model).__name__
        raise ValueError(
            f"format={format!r} is not supported for a {kind}; it exports to "
            f"{', '.join(map(repr, supported))} (ONNX and LiteRT hold the VAE's and VQVAE's "
            "encode/decode; generate images from a prior with "
            "keras_vq.export.export_generator(vqvae, prior, ...))."
        )
    if input_signature is not None:
        raise ValueError(
            "`input_signature` must be None: keras_vq models export fixed, named signatures "
            f"(images, codes, latents) with a dynamic batch; got {input_signature!r}."
        )
    endpoints = _check_endpoint(format, endpoint)
    onnx_directory = format == "onnx" and not isinstance(endpoint, str | None)
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be a bool, got {overwrite!r}.")
    if opset_version is not None:
        if format != "onnx":
            raise ValueError(
                f"`opset_version` applies to format='onnx' only, got opset_version="
                f"{opset_version!r} with format={format!r}."
            )
        opset_version = _validation.check_int("opset_version", opset_version, minimum=7)
    target = _check_target(filepath, overwrite)
    if format == "onnx":
        _require("tf2onnx", "format='onnx'")
        _require("onnx", "format='onnx'")

    # Written next to the target under a hidden name and moved into place when complete: a
    # failed export leaves no half-written artifact, and an overwritten one stays until then.
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if format == "tf_saved_model":
            _write_saved_model(model, str(staging))
        elif format == "onnx":
            _write_onnx(model, str(staging), list(endpoints), opset_version, onnx_directory)
        else:
            _write_litert(model, str(staging), list(endpoints))
        _move_into_place(staging, target, overwrite)
    finally:
        _remove(staging)
    if verbose:
        print(f"Saved {format} artifact of {type(model).__name__} at '{target}'.")
    return str(target)


# --- checks and layout ------------------------------------------------------------------
def _check_endpoint(format: str, endpoint: Any) -> tuple[str, ...]:
    names = [endpoint] if isinstance(endpoint, str) else endpoint
    valid = endpoint is None or (
        isinstance(names, list | tuple)
        and len(names) > 0
        and all(isinstance(name, str) and name in ENDPOINTS for name in names)
        and len(set(names)) == len(names)
    )
    if not valid:
        raise ValueError(
            f"`endpoint` must be None, one of {', '.join(map(repr, ENDPOINTS))} or a list of "
            f"distinct ones, got {endpoint!r}."
        )
    if format == "tf_saved_model":
        if endpoint is not None:
            raise ValueError(
                "`endpoint` must be None with format='tf_saved_model' (the SavedModel holds "
                f"every signature), got endpoint={endpoint!r}."
            )
        return ()
    if endpoint is not None:
        return tuple(names)
    return ("serving_default",) if format == "onnx" else ENDPOINTS


def _check_target(filepath: Any, overwrite: bool) -> Path:
    target = _saved_model.checked_path("filepath", filepath)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists; export does not overwrite it unless overwrite=True."
        )
    return target


def _require(module: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise ImportError(
            f"{what} needs `{module}`, part of keras_vq's `export` extra: "
            "pip install 'keras-vq[export]'."
        ) from error


def _move_into_place(staging: Path, target: Path, overwrite: bool) -> None:
    if not target.exists():
        staging.rename(target)
        return
    if not overwrite:
        raise FileExistsError(f"{target} appeared during the export; not overwriting it.")
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)  # the previous artifact stays when the new one cannot go in
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- writers (TensorFlow backend) -------------------------------------------------------
@runs_in_tensorflow("model")
def _write_saved_model(model, target: str) -> str:
    if isinstance(model, VAE):
        endpoints = _saved_model._vae_endpoints(model)
    elif isinstance(model, VQVAE):
        endpoints = _saved_model._vqvae_endpoints(model)
    else:
        endpoints = _prior_endpoints(model)
    return _saved_model._write_archive([model], endpoints, Path(target))


@runs_in_tensorflow("model")
def _write_onnx(
    model, target: str, endpoints: list[str], opset_version: int | None, directory: bool
) -> str:
    graphs = _graph_endpoints(model)
    if not directory:
        return _convert_to_onnx(graphs[endpoints[0]], target, opset_version)
    os.mkdir(target)
    for name in endpoints:
        _convert_to_onnx(graphs[name], os.path.join(target, f"{name}.onnx"), opset_version)
    return target


def _convert_to_onnx(graph: tuple, target: str, opset_version: int | None) -> str:
    import tensorflow as tf
    import tf2onnx

    _, fn, input_signature = graph
    inputs = {spec.name for spec in input_signature}

    def renamed(*args):
        # An ONNX graph's names are unique: serving_default's output `images` would be its
        # input's name, so that output is `reconstruction`.
        return {
            ("reconstruction" if key in inputs else key): value for key, value in fn(*args).items()
        }

    function = tf.function(renamed, input_signature=input_signature, autograph=False)
    tf2onnx.convert.from_function(
        function, input_signature=input_signature, opset=opset_version, output_path=target
    )
    return target


@runs_in_tensorflow("model")
def _write_litert(model, target: str, endpoints: list[str]) -> str:
    import tensorflow as tf

    graphs = _graph_endpoints(model)
    with tempfile.TemporaryDirectory(prefix="keras_vq_litert_") as tmp:
        # The converter keeps a SavedModel's signature names, input and output keys.
        saved = _saved_model._write_archive(
            [model], [graphs[name] for name in endpoints], Path(tmp) / "saved_model"
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=endpoints)
        flatbuffer = converter.convert()
    with open(target, "wb") as f:
        f.write(flatbuffer)
    return target


# --- graphs -----------------------------------------------------------------------------
def _prior_endpoints(prior: PixelCNNPrior | TransformerPrior) -> list:
    """``serving_default``: ``codes`` [, ``labels``] → ``logits`` ``(B, h, w, K)``."""
    import tensorflow as tf

    latent_shape, k, num_classes = tuple(prior.latent_shape), prior.num_embeddings, None
    num_classes = prior.num_classes
    code_spec = _saved_model._spec((None, *latent_shape), "int32", "codes")

    def checked_codes(codes):
        return _saved_model._checked_codes(codes, latent_shape, k)

    if num_classes is None:

        def logits(codes):
            codes = checked_codes(codes)
            return {"logits": ops.cast(prior(codes, training=False), "float32")}

        return [("serving_default", logits, [code_spec])]

    def conditional_logits(codes, labels):
        codes = checked_codes(codes)
        shape = _saved_model._shape_check(labels, "labels", (None,), "(batch,)")
        with tf.control_dependencies([shape]):
            checks = [
                tf.debugging.assert_equal(
                    tf.size(labels),
                    tf.shape(codes)[0],
                    message="`labels` must have one entry per code map",
                ),
                _saved_model._range_check(labels, "labels", num_classes, "num_classes"),
            ]
        labels = _saved_model._checked([shape, *checks], labels)
        return {"logits": ops.cast(prior([codes, labels], training=False), "float32")}

    label_spec = _saved_model._spec((None,), "int32", "labels")
    return [("serving_default", conditional_logits, [code_spec, label_spec])]


def _graph_endpoints(model: VAE | VQVAE) -> dict[str, tuple]:
    """The ONNX/LiteRT endpoints by name: no ``Assert`` ops, a convertible argmin, inputs
    checked by shape (``_fixed_shape``) and codes by range (``_in_range``)."""
    if isinstance(model, VAE):
        image_shape = tuple(model.image_shape)
        image_spec = _saved_model._spec((None, *image_shape), "float32", "images")
        latent_spec = _saved_model._spec((None, model.latent_dim), "float32", "latents")

        def vae_reconstruct(images):
            images = _fixed_shape(images, image_shape)
            return {"images": ops.cast(model(images, training=False), "float32")}

        def vae_encode(images):
            z_mean, z_log_var = model.encode(_fixed_shape(images, image_shape))
            return {"z_mean": z_mean, "z_log_var": z_log_var}

        def vae_decode(latents):
            latents = _fixed_shape(latents, (model.latent_dim,))
            return {"images": ops.cast(model.decode(latents), "float32")}

        endpoints = [
            ("serving_default", vae_reconstruct, [image_spec]),
            ("encode", vae_encode, [image_spec]),
            ("decode", vae_decode, [latent_spec]),
        ]
    else:
        image_shape, code_shape = tuple(model.image_shape), tuple(model.code_shape)
        image_spec = _saved_model._spec((None, *image_shape), "float32", "images")
        code_spec = _saved_model._spec((None, *code_shape), "int32", "codes")

        def vqvae_encode(images):
            return {"codes": _graph_codes(model, _fixed_shape(images, image_shape))}

        def vqvae_decode(codes):
            codes = _in_range(_fixed_shape(codes, code_shape), model.num_embeddings)
            return {"images": _graph_decode(model, codes)}

        def vqvae_reconstruct(images):
            codes = _graph_codes(model, _fixed_shape(images, image_shape))
            return {"images": _graph_decode(model, codes)}

        endpoints = [
            ("serving_default", vqvae_reconstruct, [image_spec]),
            ("encode", vqvae_encode, [image_spec]),
            ("decode", vqvae_decode, [code_spec]),
        ]
    return {endpoint[0]: endpoint for endpoint in endpoints}


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


def _graph_codes(vqvae: VQVAE, images):
    """``vqvae.encode`` without loops: int32 codes ``(B, *code_shape)`` of static shape.

    A ``VectorQuantizer``'s (and each residual stage's) nearest-code search is one distance
    block over all vectors (``_nearest_indices``); FSQ and LFQ codes are elementwise, their
    own ``encode``.
    """
    import tensorflow as tf

    quantizer = vqvae.quantizer
    z_e = tf.cast(vqvae.encoder(images, training=False), tf.float32)
    if isinstance(quantizer, VectorQuantizer):
        codes = _nearest_indices(quantizer, tf.reshape(z_e, [-1, quantizer.embedding_dim]))
    elif isinstance(quantizer, ResidualVectorQuantizer):
        # Stage s codes the residual the stages before it leave (the layer's inference pass).
        residual, stages = tf.reshape(z_e, [-1, quantizer.embedding_dim]), []
        for s in range(quantizer.num_quantizers):
            stage = quantizer.quantizer(s)
            stages.append(_nearest_indices(stage, residual))
            residual = residual - stage.decode(stages[-1])
        codes = tf.stack(stages, axis=-1)
    elif isinstance(quantizer, FiniteScalarQuantizer):
        codes = _fsq_indices(quantizer, z_e)
    else:
        codes = quantizer.encode(z_e)
    return tf.reshape(tf.cast(codes, tf.int32), [-1, *vqvae.code_shape])


def _fsq_indices(quantizer: FiniteScalarQuantizer, z_e):
    """``FiniteScalarQuantizer.encode`` with its index ``Σ_i (q_i + ⌊L_i/2⌋) Π_{j<i} L_j``
    summed as ``Σ_i q_i Π_{j<i} L_j`` plus a constant: the layer's integer add of the
    half-widths becomes an int32 ``BiasAdd``, an op LiteRT lacks."""
    import numpy as np
    import tensorflow as tf

    levels = np.asarray(quantizer.levels, np.int64)
    basis = np.cumprod([1, *levels[:-1]])
    offset = int(np.sum(levels // 2 * basis))
    rounded = quantizer._rounded_levels(quantizer._project_in(z_e))
    signed = tf.reduce_sum(tf.cast(rounded, tf.int32) * basis.astype(np.int32), axis=-1)
    return signed + offset


def _nearest_indices(quantizer: VectorQuantizer, flat):
    """int32 ``(N,)`` nearest codes of float32 ``flat`` ``(N, D)``: ``VectorQuantizer.encode``'s
    code space and look-up table, in one distance block for any batch (module docstring)."""
    from keras_vq.layers.vector_quantizer import nearest_code

    vectors = quantizer._to_code_space(flat)
    table = quantizer._lookup_table(quantizer.embeddings)
    return nearest_code(vectors, table, chunk_size=None, distance=quantizer.distance)


def _graph_decode(vqvae: VQVAE, codes):
    """``vqvae.decode`` with the latent's static shape restored before the decoder.

    A projection (``codebook_dim``, FSQ/LFQ) leaves the latent's spatial sizes unknown in the
    TensorFlow graph; tf2onnx then converts the decoder's first transposed convolution with
    an ``output_shape`` instead of its pads, which shifts the image.
    """
    import tensorflow as tf

    z_q = vqvae.quantizer.decode(codes)
    z_q = tf.reshape(tf.cast(z_q, tf.float32), [-1, *vqvae.latent_shape, vqvae.embedding_dim])
    return tf.cast(vqvae.decoder(z_q, training=False), tf.float32)


__all__ = ["ENDPOINTS", "FORMATS", "export_model"]
