"""``model.export(path, format=...)`` for every keras_vq model (Keras' own call, overridden)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from keras_vq import serving


class ExportMixin:
    """Replaces ``keras.Model.export`` with keras_vq's named signatures on every backend.

    Keras' own export writes one ``serve`` endpoint of ``call`` and needs a traceable model
    per backend; keras_vq's models export their encode/decode endpoints instead, the same
    artifact on TensorFlow, JAX and torch (see :mod:`keras_vq.export_formats`).

    Each model describes what it serves: ``serving_formats`` (the formats it writes) and
    ``serving_endpoints(format)`` (its endpoints, built with :mod:`keras_vq.serving`); the
    export code writes what the model describes and knows no model class.
    """

    serving_formats: tuple[str, ...] = ("tf_saved_model",)

    def serving_endpoints(self, format: str = "tf_saved_model") -> list[serving.Endpoint]:
        """The model's serving endpoints for ``format``: ``[(name, function, input specs)]``
        (TensorFlow graphs: call on the TensorFlow backend, as the export code does).

        Raises:
            ValueError: a format the model does not write (not in ``serving_formats``).

        Example:
            >>> [name for name, _, _ in vqvae.serving_endpoints()]
            ['serving_default', 'encode', 'decode']
        """
        if format not in self.serving_formats:
            raise ValueError(
                f"`format` must be one of {', '.join(map(repr, self.serving_formats))} for a "
                f"{type(self).__name__}, got {format!r}."
            )
        return self._serving_endpoints(format)

    def _serving_endpoints(self, format: str) -> list[serving.Endpoint]:
        raise NotImplementedError

    def export(
        self,
        filepath: str | os.PathLike,
        format: str = "tf_saved_model",
        verbose: bool | None = None,
        input_signature=None,
        *,
        endpoint: str | Sequence[str] | None = None,
        overwrite: bool = False,
        opset_version: int | None = None,
    ) -> str:
        """Write the model for serving outside Keras.

        - ``"tf_saved_model"``: a SavedModel in ``filepath`` (exactly there, no version
          directory) with the signatures of :func:`keras_vq.export.export_saved_model`:
          VAE/VQVAE ``serving_default`` (reconstruct), ``encode`` and ``decode``; a prior
          ``serving_default`` (``codes`` [, ``labels``]) → ``logits``. Image generation from a
          prior is :func:`keras_vq.export.export_generator` or
          :meth:`keras_vq.models.ImageGenerator.export`.
        - ``"onnx"`` (VAE, VQVAE): one ``.onnx`` graph, the endpoint named by ``endpoint``
          (``"serving_default"``, ``"encode"`` or ``"decode"``; default ``serving_default``,
          whose output is named ``reconstruction``: ONNX names are unique); a list of
          endpoints writes the directory ``filepath`` with one ``<endpoint>.onnx`` each.
        - ``"litert"`` (VAE, VQVAE): one ``.tflite`` file with the signatures
          ``serving_default``, ``encode`` and ``decode`` (or those named by ``endpoint``), run
          with ``Interpreter(...).get_signature_runner("encode")(images=x)``.

        Every endpoint has named inputs and outputs (``images``, ``codes``, ``latents``,
        ``z_mean``, ``z_log_var``, ``logits``) and a dynamic batch. ONNX and LiteRT need the
        ``export`` extra (``pip install keras-vq[export]``).

        Args:
            filepath: where to write (a directory for ``tf_saved_model``, else a file).
            format: ``"tf_saved_model"``, ``"onnx"`` or ``"litert"``.
            verbose: print where the artifact went.
            input_signature: must be ``None``; the signatures are fixed by the model.
            endpoint: the endpoint(s) to write (ONNX, LiteRT): a name or a list of names;
                ``None`` for the default.
            overwrite: replace an existing ``filepath``; otherwise it raises
                ``FileExistsError``.
            opset_version: ONNX opset (``None``: the converter's default).

        Returns:
            ``filepath`` as a string.

        Raises:
            ValueError: unknown format or endpoint, a (model, format) pair not supported, an
                ``input_signature``, or an unbuilt model. FileExistsError: ``filepath``
                exists and ``overwrite`` is False. ImportError: the ``export`` extra is
                missing (ONNX, LiteRT).

        Example:
            >>> vqvae.export("vqvae_savedmodel")                          # 3 signatures
            >>> vqvae.export("encode.onnx", format="onnx", endpoint="encode")
            >>> vqvae.export("vqvae_onnx", format="onnx", endpoint=["encode", "decode"])
            >>> vqvae.export("vqvae.tflite", format="litert")
        """
        from keras_vq import export_formats

        return export_formats.export_model(
            self,
            filepath,
            format=format,
            verbose=verbose,
            input_signature=input_signature,
            endpoint=endpoint,
            overwrite=overwrite,
            opset_version=opset_version,
        )
