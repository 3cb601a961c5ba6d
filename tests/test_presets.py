"""Presets: the bundled ones load on every backend with the outputs they were built with,
``save_to_preset`` → ``from_preset`` round trips, and every broken preset fails clearly."""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_vq
from keras_vq import presets
from keras_vq.models import VAE, VQVAE, DigitClassifier, PixelCNNPrior, TransformerPrior
from tests.test_case import to_numpy

BUNDLED = {
    "vqvae_digits": VQVAE,
    "pixelcnn_digits": PixelCNNPrior,
    "vae_digits": VAE,
    "digits_classifier": DigitClassifier,
}


def perturb(model: keras.Model, seed: int = 0) -> None:
    """Random non-trivial values in every weight (biases and EMA state included)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = to_numpy(weight.value)
        if np.issubdtype(value.dtype, np.floating):
            noise = rng.normal(0.0, 0.2, value.shape)
            if "ema_cluster_size" in weight.path or "cluster" in weight.name:
                noise = np.abs(noise) + 0.5  # counts stay positive
            weight.assign((value + noise).astype(value.dtype))


def tiny_models():
    return {
        "VAE": (
            VAE(input_shape=(8, 8, 1), latent_dim=2, filters=(4,)),
            np.random.default_rng(1).random((3, 8, 8, 1), dtype="float32"),
        ),
        "VQVAE": (
            VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(4,)),
            np.random.default_rng(2).random((3, 8, 8, 1), dtype="float32"),
        ),
        "PixelCNNPrior": (
            PixelCNNPrior(
                num_embeddings=8, latent_shape=(4, 4), num_layers=1, filters=8, num_classes=3
            ),
            [
                np.random.default_rng(3).integers(0, 8, (3, 4, 4)).astype("int32"),
                np.array([0, 2, 1], "int32"),
            ],
        ),
        "TransformerPrior": (
            TransformerPrior(
                num_embeddings=8, latent_shape=(3, 3), num_layers=1, num_heads=2, hidden_dim=8
            ),
            np.random.default_rng(4).integers(0, 8, (3, 3, 3)).astype("int32"),
        ),
    }


def outputs(model, inputs) -> np.ndarray:
    return to_numpy(model(inputs, training=False))


def record_digests(directory, digests=True) -> None:
    """Rewrite metadata.json's digests for the files as they are now (``digests=False``:
    remove them, as in a preset saved before they were recorded)."""
    path = directory / "metadata.json"
    meta = json.loads(path.read_text())
    meta.pop("sha256")
    if digests:
        meta["sha256"] = presets.file_digests(directory)
    path.write_text(json.dumps(meta))


@pytest.fixture
def saved(tmp_path):
    """A VQVAE preset with perturbed weights: (model, inputs, directory)."""
    model, inputs = tiny_models()["VQVAE"]
    perturb(model)
    directory = model.save_to_preset(tmp_path / "vqvae", reference_inputs=inputs)
    return model, inputs, directory


# --------------------------------------------------------------------------- bundled presets


def test_bundled_presets_are_listed_by_name_and_class():
    listed = presets.list()
    assert {name: listed.get(name) for name in BUNDLED} == {
        name: cls.__name__ for name, cls in BUNDLED.items()
    }
    for name, cls in BUNDLED.items():
        assert name in cls.presets
        assert all(kind == cls.__name__ for kind in cls.presets.values())
    assert presets.list("VAE") == VAE.presets


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_preset_reproduces_its_reference_outputs_on_this_backend(name):
    """The presets are built on TensorFlow: on JAX and torch this is a cross-backend check."""
    model = BUNDLED[name].from_preset(name)
    assert type(model) is BUNDLED[name]
    with np.load(presets.resolve(name) / presets.REFERENCE_FILE) as data:
        stored = {key: data[key] for key in data.files}
    inputs = [stored[k] for k in sorted(stored) if k.startswith("input_")]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    fresh = outputs(model, inputs)
    diffs = presets.verify(name, model)
    if "probabilities" in stored:  # a prior: what its sampler draws from agrees within 1e-5
        logits = fresh.astype("float64")
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        np.testing.assert_allclose(probabilities, stored["probabilities"], atol=1e-5, rtol=0)
        # Its logits reach |15|, where float32 rounding alone is ~1e-6: 1e-5 plus 1e-6 relative.
        np.testing.assert_allclose(fresh, stored["output"], atol=1e-5, rtol=1e-6)
        assert diffs["output"] <= 1e-5 + 1e-6 * np.abs(stored["output"]).max()
        assert diffs["probabilities"] <= 1e-5
    else:  # images in [0, 1], or a classifier's logits (|17| at most) and features
        np.testing.assert_allclose(fresh, stored["output"], atol=1e-5, rtol=0)
        assert max(diffs.values()) <= 1e-5
    if "features" in stored:
        np.testing.assert_allclose(
            to_numpy(model.features(inputs)), stored["features"], atol=1e-5, rtol=0
        )
    if "codes" in stored:
        np.testing.assert_array_equal(to_numpy(model.encode(inputs)), stored["codes"])


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_preset_metadata_records_versions_metrics_and_command(name):
    meta = presets.metadata(name)
    assert meta["class_name"] == BUNDLED[name].__name__
    assert meta["keras_vq_version"] and meta["keras_version"] and meta["date_saved"]
    assert meta["backend"] == "tensorflow"
    assert meta["parameter_count"] == BUNDLED[name].from_preset(name).count_params()
    assert meta["metrics"] and all(key.startswith(("test_", "sample_")) for key in meta["metrics"])
    if issubclass(BUNDLED[name], PixelCNNPrior):  # a prior's preset records its sample quality
        assert meta["metrics"]["sample_accuracy"] >= 0.95
    assert all(np.all(np.isfinite(value)) for value in meta["metrics"].values())
    assert meta["recipe_command"].startswith(f"python recipes/{meta['recipe']}.py ")
    assert "--seed 0" in meta["recipe_command"]


def test_bundled_presets_take_a_few_megabytes():
    files = [p for name in BUNDLED for p in presets.resolve(name).iterdir()]
    # pixelcnn_digits is the default 6-block PixelCNN (4.2 MB): smaller priors sample worse.
    assert sum(p.stat().st_size for p in files) < 9e6
    # Presets hold the model alone: no optimizer slots, no training configuration.
    for name in BUNDLED:
        config = json.loads((presets.resolve(name) / presets.CONFIG_FILE).read_text())
        assert "compile_config" not in config


def test_prior_preset_loads_with_the_vqvae_preset_it_names():
    vqvae, prior = presets.load_pair("pixelcnn_digits")
    assert presets.metadata("pixelcnn_digits")["vqvae_preset"] == "vqvae_digits"
    assert isinstance(vqvae, VQVAE) and isinstance(prior, PixelCNNPrior)
    assert prior.num_classes == 10
    assert prior.num_embeddings == vqvae.num_embeddings
    assert tuple(prior.latent_shape) == tuple(vqvae.latent_shape)
    reference = VQVAE.from_preset("vqvae_digits")
    for a, b in zip(vqvae.weights, reference.weights):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value))


def test_load_pair_of_a_model_that_is_not_a_prior_is_a_value_error():
    with pytest.raises(ValueError, match="VQVAE, not a prior"):
        presets.load_pair("vqvae_digits")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["VAE", "VQVAE", "PixelCNNPrior", "TransformerPrior"])
def test_save_to_preset_then_from_preset_gives_identical_weights_and_outputs(kind, tmp_path):
    model, inputs = tiny_models()[kind]
    perturb(model)
    directory = model.save_to_preset(
        tmp_path / kind, metadata={"description": "test"}, reference_inputs=inputs
    )
    assert sorted(p.name for p in directory.iterdir()) == sorted(presets._PRESET_FILES)
    revived = type(model).from_preset(directory)
    assert revived.get_config() == model.get_config()
    assert len(revived.weights) == len(model.weights)
    for a, b in zip(model.weights, revived.weights):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value), err_msg=a.path)
    np.testing.assert_array_equal(outputs(revived, inputs), outputs(model, inputs))
    assert presets.verify(directory) == dict.fromkeys(presets.verify(directory), 0.0)
    meta = presets.metadata(directory)
    assert meta["class_name"] == kind and meta["description"] == "test"
    assert meta["backend"] == keras.backend.backend()
    assert meta["keras_vq_version"] == keras_vq.__version__
    assert meta["parameter_count"] == model.count_params()


def test_preset_files_load_with_plain_keras_saving_tools(saved):
    model, inputs, directory = saved
    config = json.loads((directory / "config.json").read_text())
    revived = keras.saving.deserialize_keras_object(config)
    revived.load_weights(str(directory / "model.weights.h5"))
    np.testing.assert_array_equal(outputs(revived, inputs), outputs(model, inputs))


def test_compiled_and_trained_model_is_saved_without_its_optimizer(tmp_path):
    import h5py

    model, inputs = tiny_models()["VQVAE"]
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(inputs, epochs=1, batch_size=3, verbose=0)
    directory = model.save_to_preset(tmp_path / "p")
    with h5py.File(directory / "model.weights.h5", "r") as f:
        assert "optimizer" not in f
    assert "compile_config" not in json.loads((directory / "config.json").read_text())
    revived = VQVAE.from_preset(directory)
    np.testing.assert_array_equal(outputs(revived, inputs), outputs(model, inputs))


# --------------------------------------------------------------------------- errors


def test_unknown_name_is_a_file_not_found_error_listing_the_bundled_presets(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(missing) + ".*vqvae_digits"):
        VQVAE.from_preset(missing)


@pytest.mark.parametrize("name", ["config.json", "model.weights.h5", "metadata.json"])
def test_missing_file_is_a_file_not_found_error_naming_it(saved, name):
    _, _, directory = saved
    (directory / name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(directory / name))):
        VQVAE.from_preset(directory)


@pytest.mark.parametrize("name", ["config.json", "metadata.json"])
def test_corrupted_json_is_a_value_error_naming_the_file(saved, name):
    _, _, directory = saved
    text = (directory / name).read_text()
    (directory / name).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=re.escape(str(directory / name)) + ".*not valid JSON"):
        VQVAE.from_preset(directory)


def test_truncated_weights_are_a_value_error_naming_the_file(saved):
    _, _, directory = saved
    path = directory / "model.weights.h5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        VQVAE.from_preset(directory)


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_saved_preset_records_the_sha256_of_each_file(saved):
    import hashlib

    _, _, directory = saved
    digests = presets.metadata(directory)["sha256"]
    assert sorted(digests) == ["config.json", "model.weights.h5", "reference.npz"]
    for name, digest in digests.items():
        assert digest == hashlib.sha256((directory / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_preset_records_the_digests_of_its_files(name):
    import hashlib

    directory = presets.resolve(name)
    digests = presets.metadata(name)["sha256"]
    assert sorted(digests) == ["config.json", "model.weights.h5", "reference.npz"]
    for file_name, digest in digests.items():
        assert digest == hashlib.sha256((directory / file_name).read_bytes()).hexdigest()


def test_a_flipped_byte_in_the_weights_is_a_value_error_naming_the_file(saved):
    model, _, directory = saved
    path = directory / "model.weights.h5"
    # A byte inside a weight array: h5py reads the file without complaint, so only the digest
    # tells (found as the offset where the bytes of the model's last weight are stored).
    last = np.ascontiguousarray(to_numpy(model.weights[-1].value)).tobytes()
    offset = path.read_bytes().find(last)
    assert offset > 0
    flip_byte(path, offset + 1)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*SHA-256"):
        VQVAE.from_preset(directory)
    # Without the recorded digests (an older preset) it loads, and the weights differ.
    record_digests(directory, digests=False)
    loaded = VQVAE.from_preset(directory)
    assert not np.array_equal(to_numpy(loaded.weights[-1].value), to_numpy(model.weights[-1]))


@pytest.mark.parametrize("digests", [True, False], ids=["with_digests", "without_digests"])
def test_a_truncated_reference_is_a_value_error_naming_the_file(saved, digests):
    _, _, directory = saved
    path = directory / "reference.npz"
    path.write_bytes(path.read_bytes()[:100])
    if not digests:  # NumPy's reader fails (zipfile.BadZipFile), not the digest
        record_digests(directory, digests=False)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        presets.verify(directory)


def test_weights_of_another_architecture_are_a_value_error_naming_the_file(saved, tmp_path):
    _, _, directory = saved
    other = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(4, 8))
    other_dir = other.save_to_preset(tmp_path / "other")
    shutil.copy(other_dir / "model.weights.h5", directory / "model.weights.h5")
    with (
        warnings.catch_warnings(),  # Keras warns about the groups it cannot match first
        pytest.raises(ValueError, match=re.escape(str(directory / "model.weights.h5"))),
    ):
        warnings.simplefilter("ignore")
        VQVAE.from_preset(directory)


def test_preset_of_another_class_is_a_value_error_naming_both(saved):
    _, _, directory = saved
    with pytest.raises(ValueError, match=r"holds a VQVAE.*VAE\.from_preset"):
        VAE.from_preset(directory)
    with pytest.raises(ValueError, match=r"holds a VQVAE.*PixelCNNPrior\.from_preset"):
        PixelCNNPrior.from_preset(directory)
    assert isinstance(presets.load(directory), VQVAE)


def test_config_of_an_unregistered_class_is_a_value_error_naming_the_file(saved):
    _, _, directory = saved
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["registered_name"] = config["class_name"] = "NotAModel"
    path.write_text(json.dumps(config))
    record_digests(directory)  # as another package would have saved it
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*NotAModel"):
        presets.load(directory)


def test_lambda_code_is_refused_in_safe_mode(tmp_path):
    images = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same")(images)
    encoder = keras.Model(images, keras.layers.Lambda(lambda t: t * 2.0)(h))
    codes = keras.Input((4, 4, 4))
    up = keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same")(codes)
    decoder = keras.Model(codes, up)
    model = VQVAE(num_embeddings=8, embedding_dim=4, encoder=encoder, decoder=decoder)
    directory = model.save_to_preset(tmp_path / "lambda")
    with pytest.raises(
        ValueError, match=re.escape(str(directory / "config.json")) + ".*safe_mode"
    ):
        VQVAE.from_preset(directory)


def test_save_refuses_a_non_empty_directory_unless_overwrite(saved, tmp_path):
    model, inputs, directory = saved
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    other, _ = tiny_models()["VQVAE"]
    with pytest.raises(FileExistsError, match=re.escape(str(directory)) + ".*overwrite=True"):
        other.save_to_preset(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        model.save_to_preset(tmp_path / "mine")
    other.save_to_preset(directory, overwrite=True)  # replaces the preset, drops its reference
    assert not (directory / "reference.npz").exists()
    np.testing.assert_array_equal(
        outputs(VQVAE.from_preset(directory), inputs), outputs(other, inputs)
    )


def test_bad_arguments_are_type_errors(saved, tmp_path):
    model, _, _ = saved
    with pytest.raises(TypeError, match="`preset`"):
        VQVAE.from_preset(3)
    with pytest.raises(TypeError, match="`metadata`"):
        model.save_to_preset(tmp_path / "a", metadata=["x"])
    with pytest.raises(TypeError, match="JSON"):
        model.save_to_preset(tmp_path / "b", metadata={"x": object()})
    with pytest.raises(TypeError, match="`model`"):
        presets.save("model", tmp_path / "c")


@pytest.mark.parametrize(
    "handle, library",
    [("hf://keras-vq/vqvae", "huggingface_hub"), ("kaggle://a/b/c/d", "kagglehub")],
)
def test_remote_handle_without_its_library_says_what_to_install(handle, library, monkeypatch):
    monkeypatch.setitem(sys.modules, library, None)  # `import library` raises ImportError
    with pytest.raises(ImportError, match=f"pip install {library}"):
        VQVAE.from_preset(handle)


def test_remote_handle_goes_through_the_download_library(saved, monkeypatch):
    directory = saved[2]
    calls = []

    class FakeHub:
        @staticmethod
        def snapshot_download(repo_id):
            calls.append(repo_id)
            return str(directory)

    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub)
    model = VQVAE.from_preset("hf://keras-vq/vqvae_digits")
    assert calls == ["keras-vq/vqvae_digits"]
    assert isinstance(model, VQVAE)
