"""``ImageGenerator``: a VQ-VAE and the prior over its codes as one Keras model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vq import _validation, serving
from keras_vq.backend import inference
from keras_vq.models.pixelcnn import check_pair, generate
from keras_vq.presets import PresetMixin


@keras.saving.register_keras_serializable(package="keras_vq")
class ImageGenerator(PresetMixin, keras.Model):
    """Two-stage image generation: ``codes ~ prior``, ``images = vqvae.decode(codes)``.

    One object for what :func:`keras_vq.models.generate` and
    :func:`keras_vq.export.export_generator` take as two: it tracks both stages (their weights
    are its weights), round-trips through ``get_config``/``from_config``, ``.keras`` files
    (safe mode) and presets, and draws exactly what ``generate`` draws for the same arguments.
    Calling it reconstructs images through the VQ-VAE.

    Args:
        vqvae: a built :class:`~keras_vq.models.VQVAE` with a single-index quantizer
            (VectorQuantizer, FiniteScalarQuantizer, LookupFreeQuantizer).
        prior: the prior trained on its codes: a :class:`~keras_vq.models.PixelCNNPrior`, a
            :class:`~keras_vq.models.TransformerPrior` or any prior with ``sample``,
            ``num_embeddings`` and ``latent_shape``.
        **kwargs: ``keras.Model`` arguments (``name``).

    Raises:
        TypeError / ValueError: as :func:`keras_vq.models.generate` for a mismatched pair.

    Example:
        >>> generator = ImageGenerator.from_preset("pixelcnn_digits")
        >>> images = generator.generate(labels=list(range(10)), seed=0)
        >>> generator.save("generator.keras")
        >>> generator.export("generator_savedmodel")
    """

    def __init__(self, vqvae: keras.Model, prior: keras.Model, **kwargs):
        super().__init__(**kwargs)
        check_pair(vqvae, prior)
        self.vqvae = vqvae
        self.prior = prior
        self.built = bool(vqvae.built and prior.built)

    def call(self, inputs, training=None):
        return self.vqvae(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            vqvae=keras.saving.serialize_keras_object(self.vqvae),
            prior=keras.saving.serialize_keras_object(self.prior),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImageGenerator:
        config = dict(config)
        for key in ("vqvae", "prior"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    # --- presets ---------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str | os.PathLike) -> ImageGenerator:
        """Load a generator: a preset saved by :meth:`save_to_preset`, or a prior preset whose
        metadata names its VQ-VAE preset (``"vqvae_preset"``, see
        :func:`keras_vq.presets.load_pair`).

        Args:
            preset: a bundled prior name (``"pixelcnn_digits"``), a directory or a handle.

        Returns:
            The generator, uncompiled.

        Raises:
            FileNotFoundError / ValueError: as :func:`keras_vq.presets.load_pair`; a preset
                that is neither a generator nor a prior.

        Example:
            >>> generator = ImageGenerator.from_preset("pixelcnn_digits")
        """
        from keras_vq import presets

        stored = presets.stored_class(preset)
        if issubclass(stored, cls):
            return presets.load(preset, model_class=cls)
        vqvae, prior = presets.load_pair(preset)
        return cls(vqvae, prior)

    # --- generation ------------------------------------------------------------------------
    def _num_samples(self, num_samples: Any, labels: Any) -> int:
        """``num_samples``, or the number of ``labels`` when it is ``None``."""
        if num_samples is not None:
            return _validation.check_int("num_samples", num_samples, minimum=1)
        if labels is None:
            raise ValueError(
                "`num_samples` must be given (an integer >= 1) when `labels` is None, got "
                "num_samples=None and labels=None."
            )
        shape = tuple(np.shape(labels) if _is_host_array(labels) else ops.shape(labels))
        if len(shape) != 1:
            raise ValueError(
                "`num_samples=None` takes the number of `labels`, which must then be a "
                f"sequence of labels (one per sample), got labels of shape {shape}."
            )
        return int(shape[0])

    def generate(
        self,
        num_samples: int | None = None,
        labels: Any = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
    ):
        """Images drawn from the two stages: those of
        ``keras_vq.models.generate(vqvae, prior, ...)`` for the same arguments.

        Args:
            num_samples: images to draw; ``None``: one per entry of ``labels``.
            labels: class labels (a class-conditional prior), one per sample or one int.
            temperature, top_k, seed, batch_size: as in
                :meth:`~keras_vq.models.PixelCNNPrior.sample`.
            top_p: nucleus mass in (0, 1]; ``None``: the prior's own ``top_p`` (``None``
                unless set: every code); 1: every code.
            guidance_scale: classifier-free guidance scale; ``None``: the prior's own
                ``guidance_scale`` (``None`` unless set: plain sampling).

        Returns:
            Images ``(num_samples, H, W, C)``.

        Raises:
            ValueError / TypeError: neither ``num_samples`` nor ``labels``, or an argument
                ``prior.sample`` refuses (named).

        Example:
            >>> images = generator.generate(labels=[3, 3, 7], guidance_scale=2.0, seed=0)
        """
        return generate(
            self.vqvae,
            self.prior,
            self._num_samples(num_samples, labels),
            temperature=temperature,
            seed=seed,
            labels=labels,
            batch_size=batch_size,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
        )

    def generate_codes(
        self,
        num_samples: int | None = None,
        labels: Any = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
    ):
        """The code maps :meth:`generate` decodes: ``prior.sample(...)`` for the same
        arguments (see :meth:`generate`).

        Returns:
            int32 codes ``(num_samples, h, w)``.

        Example:
            >>> codes = generator.generate_codes(4, seed=0)   # unconditional prior
        """
        return self.prior.sample(
            self._num_samples(num_samples, labels),
            temperature=temperature,
            seed=seed,
            labels=labels,
            batch_size=batch_size,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
        )

    @inference
    def reconstruct(self, images):
        """The VQ-VAE's reconstruction of ``images`` (inference mode).

        Args:
            images: float images ``(B, H, W, C)`` of the VQ-VAE's input shape.

        Returns:
            Reconstructed images of the same shape.

        Example:
            >>> generator.reconstruct(images[:4])
        """
        return self.vqvae(images, training=False)

    # --- serving ---------------------------------------------------------------------------
    serving_formats = ("tf_saved_model",)

    def serving_endpoints(
        self,
        format: str = "tf_saved_model",
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        jit_compile: bool = False,
    ) -> list:
        """The generator's endpoints ``sample`` (also ``serving_default``) and
        ``sample_seeded``, with the prior's fast sampler and the sampling options fixed
        (see :func:`keras_vq.export.export_generator`); TensorFlow backend only.

        Returns:
            ``[(name, function, input specs)]``.

        Example:
            >>> [name for name, _, _ in generator.serving_endpoints()]
            ['sample', 'sample_seeded']
        """
        if format not in self.serving_formats:
            raise ValueError(
                f"`format` must be 'tf_saved_model' for an ImageGenerator, got {format!r}."
            )
        temperature = _validation.check_float("temperature", temperature, minimum=0.0)
        options = self.prior.sampling_options(
            top_k=top_k, top_p=top_p, guidance_scale=guidance_scale
        )
        return serving.generator_endpoints(
            self.vqvae, self.prior, temperature, options, jit_compile
        )

    def export(
        self,
        filepath: str | os.PathLike,
        format: str = "tf_saved_model",
        verbose: bool | None = None,
        input_signature: Any = None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        jit_compile: bool = False,
    ) -> str:
        """Write the generator as a SavedModel in ``filepath`` (exactly there, no version
        directory) with the prior's fast sampler: the signatures ``sample`` (also
        ``serving_default``) and ``sample_seeded`` of
        :func:`keras_vq.export.export_generator`, which writes the same artifact.

        Args:
            filepath: the SavedModel directory; must not exist.
            format: ``"tf_saved_model"`` (the only one: ONNX and LiteRT have no sampler).
            verbose: print where the artifact went.
            input_signature: must be ``None`` (fixed, named signatures).
            temperature, top_k, top_p, guidance_scale, jit_compile: fixed into the artifact,
                as in :func:`keras_vq.export.export_generator` (``top_p=None``,
                ``guidance_scale=None``: the prior's own).

        Returns:
            ``filepath`` as a string.

        Raises:
            ValueError: another format, an ``input_signature``, bad sampling options.
            FileExistsError: ``filepath`` exists.

        Example:
            >>> path = generator.export("generator_savedmodel", temperature=0.9)
            >>> tf.saved_model.load(path).signatures["sample_seeded"](
            ...     num_samples=tf.constant(4), seed=tf.constant(0))["images"]
        """
        if format != "tf_saved_model":
            raise ValueError(
                f"`format` must be 'tf_saved_model' for an ImageGenerator (the sampler is a "
                f"TensorFlow loop that ONNX and LiteRT do not hold), got {format!r}."
            )
        if input_signature is not None:
            raise ValueError(
                "`input_signature` must be None: the generator's signatures are fixed "
                f"(num_samples, seed, labels), got {input_signature!r}."
            )
        from keras_vq.export import write_generator

        path = write_generator(
            self.vqvae,
            self.prior,
            Path(os.fspath(filepath)) if isinstance(filepath, os.PathLike) else filepath,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            jit_compile=jit_compile,
        )
        if verbose:
            print(f"Saved tf_saved_model artifact of ImageGenerator at '{path}'.")
        return path


def _is_host_array(value: Any) -> bool:
    return isinstance(value, list | tuple | range | np.ndarray | int | np.integer)


__all__ = ["ImageGenerator"]
