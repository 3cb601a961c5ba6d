"""Pretrained presets: ``Model.from_preset(name_or_dir)`` and ``model.save_to_preset(dir)``.

A preset is a directory in KerasHub's layout, readable with plain ``keras.saving`` tools::

    config.json        keras.saving.serialize_keras_object(model)
                       (rebuild with keras.saving.deserialize_keras_object)
    model.weights.h5   model.save_weights(...)   (load with model.load_weights)
    metadata.json      keras_vq and Keras versions, backend, class, parameter count, date,
                       held-out metrics, the recipe command that reproduces it and the
                       SHA-256 digest of each other file (``"sha256"``)
    reference.npz      optional: a few inputs and the outputs the model gave for them when it
                       was saved (``verify`` recomputes them on the current backend)

Loading checks each file against the digest recorded for it, so a damaged or modified file is
a ``ValueError`` naming it rather than a model with silently wrong weights; presets saved
without digests (older ones) load unchecked.

The presets bundled with the package (small models trained on the offline ``digits`` data by
``recipes/build_presets.py``) are listed by :func:`list` and ``<Model>.presets``. A
class-conditional prior preset names the VQ-VAE preset it was trained on in its metadata
(``"vqvae_preset"``); :func:`load_pair` loads both.

Remote handles go through the libraries Keras uses for them when they are installed:
``hf://<owner>/<repo>`` through ``huggingface_hub.snapshot_download`` and
``kaggle://<owner>/<model>/<framework>/<variation>[/<version>]`` through
``kagglehub.model_download``; the downloaded directory is then loaded like a local one.

Example:
    >>> keras_vq.presets.list()
    {'digits_classifier': 'DigitClassifier', 'pixelcnn_digits': 'PixelCNNPrior',
     'vae_digits': 'VAE', 'vqvae_digits': 'VQVAE'}
    >>> vqvae = keras_vq.models.VQVAE.from_preset("vqvae_digits")
    >>> vqvae.save_to_preset("my_vqvae")        # refuses a non-empty directory
"""

from __future__ import annotations

import builtins
import datetime
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_vq._version import __version__

__all__ = [
    "BUNDLED_DIR",
    "PresetMixin",
    "file_digests",
    "list",
    "load",
    "load_pair",
    "metadata",
    "resolve",
    "save",
    "stored_class",
    "verify",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
REFERENCE_FILE = "reference.npz"
_PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, REFERENCE_FILE)
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
_REMOTE_PREFIXES = ("hf://", "kaggle://")
# What a damaged JSON or HDF5 file raises from deep inside json, h5py and Keras.
_READ_ERRORS = (OSError, KeyError, EOFError, UnicodeDecodeError, ValueError)
# The metadata entry holding {file name: SHA-256 hex digest} of the preset's other files.
DIGESTS_KEY = "sha256"


# --------------------------------------------------------------------------- finding presets


def _bundled_names() -> builtins.list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def list_presets(model_class: type | str | None = None) -> dict[str, str]:
    """The bundled presets, as ``{name: class name}``, sorted by name.

    Args:
        model_class: only presets of this class (a class or its name), e.g. ``"VQVAE"``.

    Returns:
        ``{preset name: model class name}``.

    Example:
        >>> keras_vq.presets.list("VAE")
        {'vae_digits': 'VAE'}
    """
    if model_class is not None and not isinstance(model_class, str | type):
        raise TypeError(
            f"`model_class` must be a class, a class name or None, got {model_class!r}."
        )
    wanted = model_class.__name__ if isinstance(model_class, type) else model_class
    found = {}
    for name in _bundled_names():
        class_name = _read_json(BUNDLED_DIR / name / CONFIG_FILE).get("class_name")
        if wanted is None or class_name == wanted:
            found[name] = class_name
    return found


def resolve(preset: str | os.PathLike) -> Path:
    """The local directory of ``preset``: a bundled name, a directory, or a remote handle.

    Args:
        preset: a bundled preset name (see :func:`list`), a preset directory, or
            ``hf://<owner>/<repo>`` / ``kaggle://<handle>`` (downloaded by ``huggingface_hub``
            / ``kagglehub``, which must be installed).

    Returns:
        The directory (not yet checked for its files).

    Raises:
        TypeError: ``preset`` is not a string or path.
        FileNotFoundError: neither a bundled name nor an existing directory.
        ImportError: a remote handle whose download library is not installed.
    """
    if not isinstance(preset, str | os.PathLike):
        raise TypeError(
            f"`preset` must be a preset name, a directory or an hf:// / kaggle:// handle, "
            f"got {preset!r}."
        )
    text = os.fspath(preset)
    if text.startswith(_REMOTE_PREFIXES):
        return _download(text)
    if text in _bundled_names():
        return BUNDLED_DIR / text
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(
            f"Preset {text!r} is a file, not a preset directory (it must hold {CONFIG_FILE}, "
            f"{WEIGHTS_FILE} and {METADATA_FILE})."
        )
    raise FileNotFoundError(
        f"Preset {text!r} is neither a bundled preset ({', '.join(_bundled_names()) or 'none'})"
        " nor an existing directory."
    )


def _download(handle: str) -> Path:
    """A local copy of a remote preset, through the library made for the handle."""
    if handle.startswith("hf://"):
        try:
            import huggingface_hub
        except ImportError:
            raise ImportError(
                f"Loading {handle!r} needs `huggingface_hub`: pip install huggingface_hub"
            ) from None
        return Path(huggingface_hub.snapshot_download(repo_id=handle[len("hf://") :]))
    try:
        import kagglehub
    except ImportError:
        raise ImportError(f"Loading {handle!r} needs `kagglehub`: pip install kagglehub") from None
    return Path(kagglehub.model_download(handle[len("kaggle://") :]))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"Preset file {str(path)!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Preset file {str(path)!r} is not valid JSON ({_one_line(error)}); the preset is "
            "corrupted: save it again or rebuild it."
        ) from error
    if not isinstance(data, dict):
        raise ValueError(f"Preset file {str(path)!r} must hold a JSON object, got {data!r:.80}.")
    return data


def _checked_dir(preset: str | os.PathLike) -> Path:
    directory = resolve(preset)
    for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"Preset file {str(directory / name)!r} does not exist; a preset directory "
                f"holds {CONFIG_FILE}, {WEIGHTS_FILE} and {METADATA_FILE}."
            )
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(directory: str | os.PathLike) -> dict[str, str]:
    """``{file name: SHA-256 hex digest}`` of a preset directory's files other than
    metadata.json (which records them, see :func:`save`).

    Example:
        >>> keras_vq.presets.file_digests("my_vqvae")["model.weights.h5"]   # 64 hex digits
    """
    directory = Path(os.fspath(directory))
    return {
        name: _sha256(directory / name)
        for name in _PRESET_FILES
        if name != METADATA_FILE and (directory / name).is_file()
    }


def _check_digest(directory: Path, name: str, info: dict[str, Any]) -> None:
    """Compare ``directory/name`` with the digest recorded in ``info`` (metadata.json), if
    one is; a preset saved without digests is not checked."""
    digests = info.get(DIGESTS_KEY)
    if not isinstance(digests, dict) or name not in digests:
        return
    path = directory / name
    if _sha256(path) != digests[name]:
        raise ValueError(
            f"Preset file {str(path)!r} does not match the SHA-256 digest recorded in "
            f"{METADATA_FILE}: it is corrupted or was modified after the preset was saved. "
            "Download, copy or save the preset again."
        )


def metadata(preset: str | os.PathLike) -> dict[str, Any]:
    """The preset's ``metadata.json`` (versions, metrics, the command that made it).

    Raises:
        FileNotFoundError: no such preset or no metadata file. ValueError: invalid JSON.
    """
    return _read_json(_checked_dir(preset) / METADATA_FILE)


# --------------------------------------------------------------------------- loading


def load(preset: str | os.PathLike, model_class: type | None = None) -> keras.Model:
    """The model a preset holds, with its weights (safe mode on: no code is deserialised).

    Args:
        preset: a bundled name, a preset directory or a remote handle (see :func:`resolve`).
        model_class: when given, the preset must hold this class (or a subclass).

    Returns:
        The model, uncompiled.

    Checked: config.json and model.weights.h5 against the SHA-256 digests metadata.json
    records (when it records them; every preset saved by :func:`save` does), so any changed
    byte is an error. Not checked here: that the model reproduces its reference outputs on
    this backend (see :func:`verify`).

    Raises:
        FileNotFoundError: no such preset, or one of its files is missing (named).
        ValueError: a corrupted file (named; a digest mismatch included), a config Keras
            cannot rebuild in safe mode, weights that do not fit the model, or a preset of
            another class.

    Example:
        >>> prior = keras_vq.presets.load("pixelcnn_digits")
    """
    # The classes a config names are registered: importing this module (keras_vq.presets)
    # first ran the package's __init__, which imports every model.
    directory = _checked_dir(preset)
    config_path = directory / CONFIG_FILE
    info = _read_json(directory / METADATA_FILE)  # a damaged metadata file is an error, too
    config = _read_json(config_path)  # invalid JSON says so before the digest does
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        _check_digest(directory, name, info)
    stored = _stored_class(config, config_path)
    if model_class is not None and not issubclass(stored, model_class):
        raise ValueError(
            f"Preset {os.fspath(preset)!r} holds a {stored.__name__} ({config_path}), but "
            f"{model_class.__name__}.from_preset was called; use "
            f"{stored.__name__}.from_preset or keras_vq.presets.load."
        )
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"Could not rebuild the model from {str(config_path)!r}: {_one_line(error)}"
        ) from error
    weights_path = directory / WEIGHTS_FILE
    try:
        model.load_weights(str(weights_path))
    except _READ_ERRORS as error:
        raise ValueError(
            f"Could not load the weights in {str(weights_path)!r} (corrupted, truncated or "
            f"written for another model): {type(error).__name__}: {_one_line(error)}"
        ) from error
    return model


def stored_class(preset: str | os.PathLike) -> type:
    """The registered Keras model class a preset's config.json names (nothing is loaded).

    Raises:
        FileNotFoundError: no such preset or a missing file. ValueError: a config that names
            no registered model class.

    Example:
        >>> keras_vq.presets.stored_class("pixelcnn_digits")   # PixelCNNPrior
    """
    # The classes a config names are registered: importing this module (keras_vq.presets)
    # first ran the package's __init__, which imports every model.
    config_path = _checked_dir(preset) / CONFIG_FILE
    return _stored_class(_read_json(config_path), config_path)


def _stored_class(config: dict[str, Any], config_path: Path) -> type:
    name = config.get("registered_name") or config.get("class_name")
    stored = keras.saving.get_registered_object(name) if isinstance(name, str) else None
    if not isinstance(stored, type) or not issubclass(stored, keras.Model):
        raise ValueError(
            f"Preset file {str(config_path)!r} does not describe a registered Keras model "
            f"(class {name!r}); import the package that defines it, or rebuild the preset."
        )
    return stored


def load_pair(preset: str | os.PathLike) -> tuple[keras.Model, keras.Model]:
    """A prior preset and the VQ-VAE preset its metadata names (``"vqvae_preset"``).

    The VQ-VAE preset is a bundled name, an absolute directory, or a directory relative to the
    prior's preset directory.

    Returns:
        ``(vqvae, prior)``, ready for ``keras_vq.models.generate``.

    Raises:
        ValueError: ``preset`` is not a prior, or its metadata names no VQ-VAE preset.
        FileNotFoundError / ValueError: as :func:`load`, for either preset.

    Example:
        >>> vqvae, prior = keras_vq.presets.load_pair("pixelcnn_digits")
        >>> images = keras_vq.models.generate(vqvae, prior, 16, labels=np.arange(16) % 10)
    """
    prior = load(preset)
    if not hasattr(prior, "latent_shape") or not hasattr(prior, "sample"):
        raise ValueError(
            f"Preset {os.fspath(preset)!r} holds a {type(prior).__name__}, not a prior over "
            "VQ-VAE codes."
        )
    directory = resolve(preset)
    companion = _read_json(directory / METADATA_FILE).get("vqvae_preset")
    if not isinstance(companion, str) or not companion:
        raise ValueError(
            f'{str(directory / METADATA_FILE)!r} names no VQ-VAE preset ("vqvae_preset"), '
            "so the prior's codes cannot be decoded; load the VQ-VAE it was trained on yourself."
        )
    # Resolved among Keras' registered objects: this lower layer imports no model class.
    vqvae_class = keras.saving.get_registered_object("keras_vq>VQVAE")
    if companion not in _bundled_names() and not Path(companion).is_absolute():
        companion = str(directory / companion)
    vqvae = load(companion, vqvae_class)
    if vqvae.num_embeddings != prior.num_embeddings or tuple(vqvae.latent_shape) != tuple(
        prior.latent_shape
    ):
        raise ValueError(
            f"Preset {os.fspath(preset)!r} models {prior.num_embeddings} codes on a "
            f"{tuple(prior.latent_shape)} grid but its VQ-VAE preset {companion!r} has "
            f"{vqvae.num_embeddings} codes on a {tuple(vqvae.latent_shape)} grid."
        )
    return vqvae, prior


# --------------------------------------------------------------------------- saving


def save(
    model: keras.Model,
    preset_dir: str | os.PathLike,
    *,
    metadata: dict[str, Any] | None = None,
    reference_inputs: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a preset directory (see the module docstring for the layout).

    Args:
        model: a keras_vq model (or any registered, serialisable Keras model).
        preset_dir: the directory; created if missing.
        metadata: extra JSON-serialisable entries for metadata.json (``metrics``,
            ``recipe_command``, ``vqvae_preset``, ``description``, ...); ``"sha256"`` is
            set by this function (the digests of the files written).
        reference_inputs: a few inputs (images; codes or ``[codes, labels]`` for a prior)
            whose outputs are stored in reference.npz, so that any backend can check it
            reproduces them (:func:`verify`).
        overwrite: replace the preset files of a non-empty ``preset_dir``; without it such a
            directory is an error, so nothing saved is lost without asking.

    Returns:
        The preset directory.

    Raises:
        TypeError: ``model`` is not a Keras model, or ``metadata`` is not a JSON-ready dict.
        FileExistsError: ``preset_dir`` is a non-empty directory (or a file) and not
            ``overwrite``.

    Example:
        >>> keras_vq.presets.save(vqvae, "presets/my_vqvae", metadata={"metrics": {...}})
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"`metadata` must be a dict or None, got {metadata!r:.80}.")
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be a bool, got {overwrite!r}.")
    directory = Path(os.fspath(preset_dir)).expanduser()
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"`preset_dir` {str(directory)!r} exists and is not a directory.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(
            f"`preset_dir` {str(directory)!r} is not empty (it holds "
            f"{sorted(p.name for p in directory.iterdir())[:5]}); pass overwrite=True to "
            "replace the preset in it, or choose an empty directory."
        )
    info = {
        "keras_vq_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "class_name": type(model).__name__,
        "parameter_count": int(model.count_params()),
        "date_saved": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d@%H:%M:%S"),
        **(metadata or {}),
    }
    try:
        metadata_text = json.dumps(info, indent=2, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"`metadata` must be JSON-serialisable: {error}") from None
    config = keras.saving.serialize_keras_object(model)
    # A preset holds the model alone, as KerasHub's do: no training configuration, and no
    # optimizer slots (save_weights stores them for a compiled model: 3x the file).
    config.pop("compile_config", None)
    config_text = json.dumps(config, indent=2)
    if getattr(model, "optimizer", None) is not None:
        model = _uncompiled_copy(model, config)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written next to the target first: a failure leaves the old preset whole.
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".preset-") as tmp:
        tmp = Path(tmp)
        (tmp / CONFIG_FILE).write_text(config_text + "\n", encoding="utf-8")
        model.save_weights(str(tmp / WEIGHTS_FILE))
        if reference_inputs is not None:
            np.savez_compressed(tmp / REFERENCE_FILE, **_reference_arrays(model, reference_inputs))
        # Digests of the files as written: from_preset and verify check them.
        info[DIGESTS_KEY] = file_digests(tmp)
        metadata_text = json.dumps(info, indent=2, sort_keys=True)
        (tmp / METADATA_FILE).write_text(metadata_text + "\n", encoding="utf-8")
        directory.mkdir(exist_ok=True)
        for name in _PRESET_FILES:
            if (tmp / name).is_file():
                os.replace(tmp / name, directory / name)
            elif (directory / name).is_file():  # a stale reference of the replaced preset
                (directory / name).unlink()
    return directory


def _uncompiled_copy(model: keras.Model, config: dict[str, Any]) -> keras.Model:
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy


def _reference_arrays(model: keras.Model, inputs: Any) -> dict[str, np.ndarray]:
    from keras_vq.backend import no_grad, to_numpy

    parts = builtins.list(inputs) if isinstance(inputs, builtins.list | tuple) else [inputs]
    arrays = {f"input_{i}": np.asarray(to_numpy(x)) for i, x in enumerate(parts)}
    with no_grad():
        arrays.update(_reference_outputs(model, arrays))
    return arrays


def _reference_outputs(model: keras.Model, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """``output`` = ``model(inputs)``; and ``codes`` = ``encode(images)`` for a VQ-VAE,
    ``probabilities`` = softmax of a prior's logits (what its sampler draws from), or
    ``features`` = ``features(images)`` for a classifier (what the Fréchet distance compares)."""
    from keras_vq.backend import to_numpy

    parts = [arrays[f"input_{i}"] for i in range(sum(k.startswith("input_") for k in arrays))]
    inputs = parts if len(parts) > 1 else parts[0]
    output = np.asarray(to_numpy(model(inputs, training=False)))
    outputs = {"output": output}
    if hasattr(model, "quantizer") and hasattr(model, "encode"):
        outputs["codes"] = np.asarray(to_numpy(model.encode(inputs)))
    if hasattr(model, "latent_shape") and hasattr(model, "sample"):
        outputs["probabilities"] = softmax(output)
    if callable(getattr(model, "features", None)) and callable(
        getattr(model, "predict_proba", None)
    ):
        outputs["features"] = np.asarray(to_numpy(model.features(inputs)))
    return outputs


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64 (NumPy), as float32."""
    shifted = logits.astype("float64") - logits.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype("float32")


def verify(preset: str | os.PathLike, model: keras.Model | None = None) -> dict[str, float]:
    """Recompute the preset's reference outputs on the current backend.

    Args:
        preset: a preset with a reference.npz.
        model: the preset's model if already loaded (else it is loaded).

    Returns:
        ``{output name: max |Δ|}`` between the stored and the recomputed outputs.

    Raises:
        FileNotFoundError: the preset has no reference.npz. ValueError: it is corrupted
            (truncated, unreadable or not matching its recorded digest), naming it.

    Example:
        >>> keras_vq.presets.verify("vqvae_digits")    # e.g. on JAX, of a TF-built preset
        {'codes': 0.0, 'output': 2.4e-07}
    """
    from keras_vq.backend import no_grad

    directory = _checked_dir(preset)
    path = directory / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Preset file {str(path)!r} does not exist.")
    _check_digest(directory, REFERENCE_FILE, _read_json(directory / METADATA_FILE))
    try:
        with np.load(path) as data:
            stored = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"Preset file {str(path)!r} is corrupted: {_one_line(error)}") from error
    model = load(preset) if model is None else model
    with no_grad():
        fresh = _reference_outputs(model, stored)
    return {
        key: float(np.max(np.abs(value.astype("float64") - stored[key].astype("float64"))))
        for key, value in fresh.items()
    }


# --------------------------------------------------------------------------- the model hook


class _PresetListing:
    """``Model.presets``: the bundled presets of that class, ``{name: class name}``."""

    def __get__(self, instance: Any, owner: type) -> dict[str, str]:
        return list_presets(owner)


class PresetMixin:
    """``from_preset`` / ``save_to_preset`` / ``presets`` for the keras_vq models."""

    presets = _PresetListing()

    @classmethod
    def from_preset(cls, preset: str | os.PathLike):
        """Load a model of this class from a preset (bundled name, directory or handle).

        Args:
            preset: a name from ``<Model>.presets``, a directory written by
                ``save_to_preset``, or ``hf://…`` / ``kaggle://…`` (see ``keras_vq.presets``).

        Returns:
            The model with its weights, uncompiled.

        Raises:
            FileNotFoundError: no such preset or a missing file (named).
            ValueError: a corrupted file (named), or a preset of another class.

        Example:
            >>> vqvae = VQVAE.from_preset("vqvae_digits")
        """
        return load(preset, model_class=cls)

    def save_to_preset(
        self,
        preset_dir: str | os.PathLike,
        *,
        metadata: dict[str, Any] | None = None,
        reference_inputs: Any = None,
        overwrite: bool = False,
    ) -> Path:
        """Save this model as a preset directory (see ``keras_vq.presets.save``).

        Example:
            >>> model.save_to_preset("presets/my_vqvae", metadata={"description": "..."})
        """
        return save(
            self,
            preset_dir,
            metadata=metadata,
            reference_inputs=reference_inputs,
            overwrite=overwrite,
        )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


# ``keras_vq.presets.list()`` as the issue names it (defined last: the module uses the builtin).
list = list_presets
