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
``serving_default`` output is ``reconstruction`` (its input is ``images``). Non-finite inputs
follow the SavedModel's rule (:mod:`keras_vq.serving`): a non-finite latent vector is code 0
and NaN in the reconstruction, whatever the runtime's argmin or int cast makes of NaN, and an
image with any non-finite pixel is coded 0 and reconstructed as NaN throughout (the NaN comes
from ``sqrt(-1)``, not a select: tf2onnx lowers a float select to arithmetic, where 0 · NaN
would spread it to every image).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from keras_vq import _validation
from keras_vq import export as _saved_model
from keras_vq.backend.tensorflow_bridge import runs_in_tensorflow

FORMATS = ("tf_saved_model", "onnx", "litert")
ENDPOINTS = ("serving_default", "encode", "decode")
# No model class here: a model lists the formats it writes (``serving_formats``; ONNX and
# LiteRT hold the autoencoders' encode/decode) and describes its endpoints per format
# (``serving_endpoints(format)``); the classes checked are Keras' registered ones.
_MODELS = ("VAE", "VQVAE", "PixelCNNPrior", "TransformerPrior")


def export_model(
    model: keras.Model,
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
    _saved_model._check_model("model", model, _saved_model.registered(*_MODELS))
    supported = tuple(model.serving_formats)
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
    endpoints = model.serving_endpoints("tf_saved_model")
    return _saved_model._write_archive([model], endpoints, Path(target))


@runs_in_tensorflow("model")
def _write_onnx(
    model, target: str, endpoints: list[str], opset_version: int | None, directory: bool
) -> str:
    graphs = _graph_endpoints(model, "onnx")
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

    graphs = _graph_endpoints(model, "litert")
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
def _graph_endpoints(model: keras.Model, format: str) -> dict[str, tuple]:
    """The model's ONNX/LiteRT endpoints by name (see :mod:`keras_vq.serving`)."""
    return {endpoint[0]: endpoint for endpoint in model.serving_endpoints(format)}


__all__ = ["ENDPOINTS", "FORMATS", "export_model"]
