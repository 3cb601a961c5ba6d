"""Load saved models with one clear error for a missing, truncated or corrupted file.

``keras.saving.load_model`` reports a ``.keras`` file that is not a zip archive (a truncated
download, a half-written copy) as "File not found" although the file exists, and a damaged
weights file as a raw h5py ``OSError`` from deep inside the loader. :func:`load_model` checks
the archive first and turns such low-level failures into one ``ValueError`` that names the
file, says what is wrong with it and what to do; a file that does not exist raises
``FileNotFoundError``.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from typing import Any

import keras

__all__ = ["load_model"]

CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.weights.h5", "model.weights.npz")
_LEGACY_SUFFIXES = (".h5", ".hdf5")
_ADVICE = "Save the model again with model.save(path), or re-run the recipe that wrote it."
# What h5py, zipfile and the JSON reader raise on damaged bytes; Keras lets them through.
_LOW_LEVEL_ERRORS = (
    OSError,
    KeyError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    UnicodeDecodeError,
    json.JSONDecodeError,
)


def load_model(
    path: str | os.PathLike,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
    """``keras.saving.load_model`` that checks the file first and fails with one clear error.

    A local ``.keras`` file must be a zip archive whose members pass their CRC check and that
    holds ``config.json`` (valid JSON) and the weights (``model.weights.h5`` or ``.npz``).
    Importing ``keras_vq`` registers its layers and models, so no ``custom_objects`` are
    needed for them. Legacy ``.h5`` files, directories and remote paths (``gs://``, ``hf://``)
    go to Keras unchecked; their low-level read errors are converted the same way.

    Args:
        path: the saved model, normally ``<name>.keras`` as written by ``model.save``.
        custom_objects: extra classes or functions for deserialisation (as in Keras).
        compile: compile the model with its saved training configuration.
        safe_mode: refuse to deserialise ``lambda`` code (keep it on for untrusted files).

    Returns:
        The loaded model.

    Raises:
        TypeError: ``path`` is not a string or path.
        FileNotFoundError: nothing exists at ``path``.
        ValueError: the file is not a valid or complete ``.keras`` file (not a zip, truncated,
            corrupted, missing its config or weights, another suffix), or Keras cannot
            rebuild the model from it; the message names the file and what to do.

    Example:
        >>> model.save("vqvae.keras")
        >>> model = keras_vq.saving.load_model("vqvae.keras")
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {path!r}.")
    path = os.fspath(path)
    remote = "://" in path
    if not remote:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Model file {path!r} does not exist.")
        if os.path.isfile(path) and not path.endswith(_LEGACY_SUFFIXES):
            _check_keras_archive(path)
    try:
        return keras.saving.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    except _LOW_LEVEL_ERRORS as error:
        raise ValueError(
            f"{path!r} is not a valid, complete saved model: reading it failed with "
            f"{type(error).__name__}: {_one_line(error)}. {_ADVICE}"
        ) from error
    except ValueError as error:  # Keras' own messages do not say which file
        raise ValueError(f"Could not load the model in {path!r}: {_one_line(error)}") from error


def _check_keras_archive(path: str) -> None:
    """Raise ``ValueError`` unless ``path`` is a complete ``.keras`` zip archive."""

    def invalid(reason: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid .keras file: {reason}. {_ADVICE}")

    if not path.endswith(".keras"):
        raise invalid(
            "Keras loads `.keras` model files (or legacy `.h5`), and this name ends in "
            f"{os.path.splitext(path)[1] or 'no suffix'!r}"
        )
    if not zipfile.is_zipfile(path):
        raise invalid(
            "it is not a zip archive, so it is truncated, corrupted or not a saved model "
            f"({os.path.getsize(path)} bytes)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            # The CRC check reads every member once: a damaged copy fails here, not later
            # with a raw h5py error (or, worse, silently with wrong weights).
            damaged = archive.testzip()
            config = archive.read(CONFIG_FILE) if CONFIG_FILE in names else None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
        raise invalid(f"its zip archive is damaged ({_one_line(error)})") from error
    if damaged is not None:
        raise invalid(f"its member {damaged!r} is corrupted (CRC check failed)")
    if config is None:
        raise invalid(f"it has no {CONFIG_FILE} (it holds {sorted(names)})")
    if not names & set(WEIGHTS_FILES):
        raise invalid(f"it has no weights, {WEIGHTS_FILES[0]} (it holds {sorted(names)})")
    try:
        config = json.loads(config)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise invalid(f"its {CONFIG_FILE} is not valid JSON ({_one_line(error)})") from error
    if not isinstance(config, dict) or "class_name" not in config:
        raise invalid(f"its {CONFIG_FILE} does not describe a Keras model")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
