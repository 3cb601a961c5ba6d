"""keras_vq.saving.load_model: a good file loads exactly; a broken one fails with one clear
error that names the file and says what to do."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

import keras_vq
from keras_vq.models import VQVAE
from keras_vq.saving import load_model
from tests.test_case import to_numpy

IMAGES = np.random.default_rng(7).uniform(size=(3, 8, 8, 1)).astype("float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny VQ-VAE with random weights everywhere (biases, codebook, EMA state) and its file."""
    model = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(4,), seed=0)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if np.dtype(weight.dtype).kind == "f":
            weight.assign(rng.normal(0.0, 0.5, weight.shape).astype(weight.dtype))
    path = tmp_path_factory.mktemp("saving") / "vqvae.keras"
    model.save(path)
    return model, path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def assert_clear_error(error: pytest.ExceptionInfo, path: Path, reason: str) -> None:
    """One line, naming the file, saying what is wrong and what to do."""
    message = str(error.value)
    assert str(path) in message, message
    assert "\n" not in message, message
    assert re.search(reason, message), message
    assert "Save the model again" in message and "re-run the recipe" in message, message


def test_good_file_loads_the_same_weights_and_outputs(saved):
    model, path = saved
    revived = load_model(path)
    assert type(revived) is VQVAE
    assert [w.path for w in revived.weights] == [w.path for w in model.weights]
    for original, loaded in zip(model.weights, revived.weights):
        np.testing.assert_array_equal(to_numpy(loaded), to_numpy(original), err_msg=original.path)
    codes = to_numpy(model.encode(IMAGES))
    np.testing.assert_array_equal(to_numpy(revived.encode(IMAGES)), codes)
    assert len(np.unique(codes)) > 1  # random weights: the codes are not all one code
    np.testing.assert_array_equal(to_numpy(revived(IMAGES)), to_numpy(model(IMAGES)))
    assert keras_vq.saving.load_model is load_model  # exported from the package


def test_missing_file_raises_file_not_found(tmp_path):
    path = tmp_path / "absent.keras"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_model(path)


def test_file_that_is_not_a_zip_is_not_reported_as_missing(tmp_path):
    path = tmp_path / "garbage.keras"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert_clear_error(error, path, "not a valid .keras file: it is not a zip archive")
    assert "not found" not in str(error.value).lower()  # Keras' own message says "File not found"


def test_file_cut_in_half_is_a_value_error(saved, tmp_path):
    blob = saved[1].read_bytes()
    path = tmp_path / "half.keras"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert_clear_error(error, path, "not a zip archive, so it is truncated")


def _drop(name):
    def edit(files):
        del files[name]

    return edit


def _cut_config(files):
    files["config.json"] = files["config.json"][:40]


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop("model.weights.h5"), "it has no weights, model.weights.h5"),
        (_drop("config.json"), "it has no config.json"),
        (_cut_config, "config.json is not valid JSON"),
    ],
    ids=["no_weights", "no_config", "cut_config"],
)
def test_broken_archive_is_a_value_error(saved, tmp_path, edit, message):
    files = members(saved[1])
    edit(files)
    path = write_zip(tmp_path / "broken.keras", files)
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert_clear_error(error, path, message)


def test_truncated_weights_inside_a_valid_archive_are_a_value_error(saved, tmp_path):
    # Zipped again after the cut: the archive and its CRCs are fine, the HDF5 file is not
    # (plain Keras lets h5py's OSError through).
    files = members(saved[1])
    files["model.weights.h5"] = files["model.weights.h5"][: len(files["model.weights.h5"]) // 2]
    path = write_zip(tmp_path / "cut_weights.keras", files)
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert_clear_error(error, path, "not a valid, complete saved model: reading it failed")


def test_corrupted_bytes_fail_the_crc_check(saved, tmp_path):
    blob = bytearray(saved[1].read_bytes())
    with zipfile.ZipFile(saved[1]) as archive:
        info = archive.getinfo("model.weights.h5")
    assert info.compress_type == zipfile.ZIP_STORED  # so the member's bytes lie in the file
    middle = info.header_offset + 30 + len(info.filename) + info.file_size // 2
    blob[middle] ^= 0xFF
    path = tmp_path / "flipped.keras"
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert_clear_error(error, path, r"'model.weights.h5' is corrupted \(CRC check failed\)")


def test_other_suffix_is_a_value_error(saved, tmp_path):
    path = tmp_path / "vqvae.zip"
    path.write_bytes(saved[1].read_bytes())
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert_clear_error(error, path, r"Keras loads `.keras` model files.*'.zip'")


def test_path_must_be_a_string_or_path():
    with pytest.raises(TypeError, match="`path`"):
        load_model(3)


def test_weights_of_another_model_are_a_value_error_naming_the_file(saved, tmp_path):
    # A complete archive whose weights belong to a bigger codebook: Keras' own ValueError,
    # which does not say which file, gets the file name in front (and stays one line).
    other = VQVAE(input_shape=(8, 8, 1), num_embeddings=16, embedding_dim=4, filters=(4,))
    other_path = tmp_path / "other.keras"
    other.save(other_path)
    files = members(saved[1])
    files["model.weights.h5"] = members(other_path)["model.weights.h5"]
    path = write_zip(tmp_path / "mixed.keras", files)
    with pytest.raises(ValueError) as error:
        load_model(path)
    message = str(error.value)
    assert message.startswith(f"Could not load the model in {str(path)!r}: "), message
    assert "\n" not in message
