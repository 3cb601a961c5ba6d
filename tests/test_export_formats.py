"""``model.export(path, format=...)``: SavedModel, ONNX and LiteRT artifacts run outside Keras.

Each artifact is written once per module (on JAX and torch every export is a TensorFlow
subprocess, seconds each) and run with TensorFlow, ONNX Runtime or the LiteRT interpreter; the
outputs are compared with the Keras models' own. ONNX and LiteRT tests skip only when the
``export`` extra is not installed.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import time

import keras
import numpy as np
import pytest

from keras_vq.backend.tensorflow_bridge import runs_in_tensorflow
from keras_vq.export import export_saved_model
from keras_vq.export_formats import ENDPOINTS, FORMATS
from keras_vq.layers import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from keras_vq.models import VAE, VQVAE, PixelCNNPrior, TransformerPrior
from tests.test_case import to_numpy

IMAGE_SHAPE = (8, 8, 1)
LATENT_SHAPE = (4, 4)
K = 8
NUM_CLASSES = 3
BATCH = 6
IMAGE_ATOL = 1e-4  # the bound for decoded images
EXTRA = "needs keras_vq's `export` extra: pip install 'keras-vq[export]'"


def randomize(model, seed):
    """Every weight random and non-zero, biases included; O(1) activations, so an absolute
    1e-4 bound on images is a real check. NumPy, so the weights match on every backend."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        scale = 0.2 if len(variable.shape) <= 1 else 0.6
        value = rng.normal(scale=scale, size=tuple(variable.shape)).astype(variable.dtype)
        if "variance" in variable.path:  # FSQ's moving variance: positive, not the identity
            value = np.abs(value) + 0.05
        variable.assign(np.where(value == 0, 0.1, value).astype(variable.dtype))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(BATCH, *IMAGE_SHAPE)).astype("float32")


@pytest.fixture(scope="module")
def vqvae():
    model = VQVAE(input_shape=IMAGE_SHAPE, num_embeddings=K, embedding_dim=4, filters=(4,))
    randomize(model, 1)
    return model


@pytest.fixture(scope="module")
def vae():
    model = VAE(input_shape=IMAGE_SHAPE, latent_dim=3, filters=(4,))
    randomize(model, 2)
    return model


@pytest.fixture(scope="module")
def keras_codes(vqvae, images):
    codes = to_numpy(vqvae.encode(images))
    # Several codes in use: one constant code would hide a wrong nearest-code search.
    assert len(np.unique(codes)) >= 3
    return codes


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(3).normal(size=(BATCH, 3)).astype("float32")


def reference_outputs(model, images, codes_or_latents):
    """What each endpoint must return, from the Keras model."""
    if isinstance(model, VQVAE):
        return {
            "encode": {"codes": to_numpy(model.encode(images))},
            "decode": {"images": to_numpy(model.decode(codes_or_latents))},
            "serving_default": {"images": to_numpy(model(images, training=False))},
        }
    z_mean, z_log_var = model.encode(images)
    return {
        "encode": {"z_mean": to_numpy(z_mean), "z_log_var": to_numpy(z_log_var)},
        "decode": {"images": to_numpy(model.decode(codes_or_latents))},
        "serving_default": {"images": to_numpy(model(images, training=False))},
    }


def endpoint_inputs(model, images, codes_or_latents):
    second = "codes" if isinstance(model, VQVAE) else "latents"
    return {
        "encode": {"images": images},
        "decode": {second: codes_or_latents},
        "serving_default": {"images": images},
    }


def assert_matches(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        if value.dtype.kind == "i":  # codes: equal, and int32 as the Keras model gives them
            assert actual[name].dtype == np.int32
            np.testing.assert_array_equal(actual[name], value)
        else:
            np.testing.assert_allclose(actual[name], value, rtol=0, atol=IMAGE_ATOL)


@pytest.fixture(params=["vqvae", "vae"])
def autoencoder(request, vqvae, vae, images, keras_codes, latents):
    """(name, model, endpoint inputs, expected outputs) of one autoencoder."""
    model = {"vqvae": vqvae, "vae": vae}[request.param]
    second = keras_codes if request.param == "vqvae" else latents
    return (
        request.param,
        model,
        endpoint_inputs(model, images, second),
        reference_outputs(model, images, second),
    )


def with_code(codes, value):
    codes = codes.copy()
    codes[-1, 1, 2] = value
    return codes


@functools.cache
def load_saved_model(path: str):
    import tensorflow as tf

    return tf.saved_model.load(path)


def run_saved_model(path, signature, inputs):
    fn = load_saved_model(str(path)).signatures[signature]
    return {name: value.numpy() for name, value in fn(**inputs).items()}


def signature_specs(path):
    """Every signature's named input and output specs, as comparable tuples."""
    loaded = load_saved_model(str(path))

    def describe(specs):
        return sorted((k, tuple(s.shape.as_list()), s.dtype.name) for k, s in specs.items())

    return {
        key: (describe(fn.structured_input_signature[1]), describe(fn.structured_outputs))
        for key, fn in loaded.signatures.items()
    }


# --- tf_saved_model ---------------------------------------------------------------------
def test_saved_model_matches_export_saved_model(vqvae, images, keras_codes, tmp_path):
    path = tmp_path / "vqvae"
    assert vqvae.export(path) == str(path)
    assert (path / "saved_model.pb").is_file()  # exactly there, no version directory
    reference = export_saved_model(vqvae, tmp_path / "serving", version=1)
    specs = signature_specs(path)
    assert specs == signature_specs(reference)
    assert sorted(specs) == ["decode", "encode", "serving_default"]
    inputs = endpoint_inputs(vqvae, images, keras_codes)
    expected = reference_outputs(vqvae, images, keras_codes)
    for signature, named in inputs.items():
        outputs = run_saved_model(path, signature, named)
        assert_matches(outputs, run_saved_model(reference, signature, named))
        assert_matches(outputs, expected[signature])
    for signature, (named, wanted) in non_finite_requests(inputs, expected).items():
        assert_matches(run_saved_model(path, signature, named), wanted)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        vqvae.export(path)


def test_saved_model_of_a_vae_overwrites_only_when_asked(vae, images, latents, tmp_path):
    path = tmp_path / "vae"
    path.mkdir()
    (path / "stale.txt").write_text("an older export")
    vae.export(path, format="tf_saved_model", overwrite=True)
    assert not (path / "stale.txt").exists()
    assert sorted(signature_specs(path)) == ["decode", "encode", "serving_default"]
    expected = reference_outputs(vae, images, latents)
    inputs = endpoint_inputs(vae, images, latents)
    for signature, named in inputs.items():
        assert_matches(run_saved_model(path, signature, named), expected[signature])
    for signature, (named, wanted) in non_finite_requests(inputs, expected).items():
        assert_matches(run_saved_model(path, signature, named), wanted)


@pytest.mark.parametrize(
    "make_prior",
    [
        lambda: PixelCNNPrior(
            K, LATENT_SHAPE, num_layers=2, filters=4, kernel_size=3, num_classes=NUM_CLASSES
        ),
        lambda: TransformerPrior(K, LATENT_SHAPE, num_layers=1, num_heads=2, hidden_dim=8),
    ],
    ids=["pixelcnn_conditional", "transformer"],
)
def test_saved_model_of_a_prior_serves_its_logits(make_prior, tmp_path):
    prior = make_prior()
    randomize(prior, 4)
    rng = np.random.default_rng(5)
    inputs = {"codes": rng.integers(0, K, size=(BATCH, *LATENT_SHAPE)).astype("int32")}
    if prior.num_classes is not None:
        inputs["labels"] = rng.integers(0, NUM_CLASSES, size=(BATCH,)).astype("int32")
    expected = to_numpy(prior(inputs["codes"] if len(inputs) == 1 else list(inputs.values())))
    prior.export(tmp_path / "prior")
    specs = signature_specs(tmp_path / "prior")
    assert sorted(specs) == ["serving_default"]
    assert [name for name, *_ in specs["serving_default"][0]] == sorted(inputs)
    outputs = run_saved_model(tmp_path / "prior", "serving_default", inputs)
    assert sorted(outputs) == ["logits"]
    np.testing.assert_allclose(outputs["logits"], expected, rtol=0, atol=1e-4)


# --- ONNX and LiteRT --------------------------------------------------------------------
def run_onnx(path, inputs: dict) -> dict:
    """Run one ``.onnx`` file on ``inputs`` (checking its named inputs) and on their first
    example alone (a dynamic batch: the same first row); outputs by name."""
    onnxruntime = pytest.importorskip("onnxruntime", reason=EXTRA)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(inputs)
    first_input = next(iter(inputs.values()))
    assert session.get_inputs()[0].shape[1:] == list(first_input.shape[1:])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, inputs)))
    first = session.run(None, {key: value[:1] for key, value in inputs.items()})
    for name, value in zip(names, first):
        np.testing.assert_allclose(value, outputs[name][:1], rtol=0, atol=1e-5)
    return outputs


def test_onnx_directory_of_vqvae_endpoints_runs_in_onnxruntime(
    vqvae, images, keras_codes, tmp_path
):
    pytest.importorskip("tf2onnx", reason=EXTRA)
    directory = vqvae.export(tmp_path / "vqvae_onnx", format="onnx", endpoint=list(ENDPOINTS))
    assert sorted(p.name for p in (tmp_path / "vqvae_onnx").iterdir()) == [
        "decode.onnx",
        "encode.onnx",
        "serving_default.onnx",
    ]
    inputs = endpoint_inputs(vqvae, images, keras_codes)
    expected = reference_outputs(vqvae, images, keras_codes)
    # An ONNX graph's names are unique: the reconstruction is not `images` as its input is.
    expected["serving_default"] = {"reconstruction": expected["serving_default"]["images"]}
    for endpoint in ENDPOINTS:
        outputs = run_onnx(f"{directory}/{endpoint}.onnx", inputs[endpoint])
        assert_matches(outputs, expected[endpoint])
    for endpoint, (named, wanted) in non_finite_requests(inputs, expected).items():
        assert_matches(run_onnx(f"{directory}/{endpoint}.onnx", named), wanted)
    onnxruntime = pytest.importorskip("onnxruntime", reason=EXTRA)
    session = onnxruntime.InferenceSession(f"{directory}/decode.onnx")
    for bad in (-1, K):  # ONNX's Gather alone would read code K-1 for -1
        codes = with_code(keras_codes, bad)
        with pytest.raises(Exception, match="out of data bounds"):
            session.run(None, {"codes": codes})


def test_onnx_vae_file_is_the_reconstruction_unless_endpoints_are_named(
    vae, images, latents, tmp_path
):
    pytest.importorskip("tf2onnx", reason=EXTRA)
    inputs = endpoint_inputs(vae, images, latents)
    expected = reference_outputs(vae, images, latents)
    path = vae.export(tmp_path / "vae.onnx", format="onnx")  # Keras' call: serving_default
    reconstruction = run_onnx(path, inputs["serving_default"])
    assert_matches(reconstruction, {"reconstruction": expected["serving_default"]["images"]})
    directory = vae.export(tmp_path / "vae_onnx", format="onnx", endpoint=("encode", "decode"))
    for endpoint in ("encode", "decode"):
        outputs = run_onnx(f"{directory}/{endpoint}.onnx", inputs[endpoint])
        assert_matches(outputs, expected[endpoint])
    for endpoint, (named, wanted) in non_finite_requests(inputs, expected).items():
        file = path if endpoint == "serving_default" else f"{directory}/{endpoint}.onnx"
        outputs = run_onnx(file, named)
        if endpoint == "serving_default":
            wanted = {"reconstruction": wanted["images"]}
        assert_matches(outputs, wanted)


def test_litert_file_holds_every_signature(autoencoder, tmp_path):
    interpreter = pytest.importorskip("ai_edge_litert.interpreter", reason=EXTRA)
    name, model, inputs, expected = autoencoder
    path = model.export(tmp_path / f"{name}.tflite", format="litert")
    runtime = interpreter.Interpreter(model_path=path)
    signatures = runtime.get_signature_list()
    assert sorted(signatures) == ["decode", "encode", "serving_default"]
    for endpoint, named in inputs.items():
        assert signatures[endpoint]["inputs"] == list(named)
        outputs = runtime.get_signature_runner(endpoint)(**named)
        assert_matches(outputs, expected[endpoint])
    for endpoint, (named, wanted) in non_finite_requests(inputs, expected).items():
        assert_matches(runtime.get_signature_runner(endpoint)(**named), wanted)
    if name == "vqvae":
        for bad in (-1, K):
            codes = with_code(inputs["decode"]["codes"], bad)
            with pytest.raises(RuntimeError, match="out of bounds"):
                runtime.get_signature_runner("decode")(codes=codes)
    # LiteRT resizes inputs to any array: the graph's own check refuses a wrong size.
    second, value = next(iter(inputs["decode"].items()))
    wrong = {
        "encode": {"images": np.zeros((1, 16, 16, 1), "float32")},
        "decode": {second: np.zeros((1, *(size + 1 for size in value.shape[1:])), value.dtype)},
    }
    for endpoint, named in wrong.items():
        runner = interpreter.Interpreter(model_path=path).get_signature_runner(endpoint)
        with pytest.raises(RuntimeError, match="failed to prepare"):
            runner(**named)


# --- refused requests (no export runs) ----------------------------------------------------
def test_unknown_format_names_the_supported_ones(vqvae, tmp_path):
    with pytest.raises(ValueError, match=r"`format` must be one of .*'onnx'.*got 'torchscript'"):
        vqvae.export(tmp_path / "m", format="torchscript")


def test_prior_refuses_onnx_and_points_to_export_generator(tmp_path):
    prior = TransformerPrior(K, LATENT_SHAPE, num_layers=1, num_heads=2, hidden_dim=8)
    with pytest.raises(ValueError, match=r"format='onnx'.*TransformerPrior.*export_generator"):
        prior.export(tmp_path / "p.onnx", format="onnx")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"format": "onnx", "endpoint": "sample"}, ValueError, r"`endpoint` must be.*'sample'"),
        ({"format": "onnx", "endpoint": ["encode", "encode"]}, ValueError, r"distinct ones"),
        ({"format": "litert", "endpoint": []}, ValueError, r"`endpoint` must be.*got \[\]"),
        ({"endpoint": "encode"}, ValueError, r"`endpoint` must be None with format="),
        ({"input_signature": [None]}, ValueError, r"`input_signature` must be None"),
        ({"format": "litert", "opset_version": 17}, ValueError, r"`opset_version` applies"),
        ({"overwrite": "yes"}, TypeError, r"`overwrite` must be a bool, got 'yes'"),
    ],
)
def test_bad_arguments_are_refused_naming_them(vqvae, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        vqvae.export(tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_existing_target_is_refused_before_exporting(vae, tmp_path):
    target = tmp_path / "vae.tflite"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        vae.export(target, format="litert")
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("cls", [VAE, VQVAE, PixelCNNPrior, TransformerPrior])
def test_every_model_overrides_keras_export(cls):
    assert cls.export is not keras.Model.export
    assert "endpoint" in inspect.signature(cls.export).parameters


def test_onnx_without_the_extra_says_how_to_install_it(vae, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` now fails
    with pytest.raises(ImportError, match=r"pip install 'keras-vq\[export\]'"):
        vae.export(tmp_path / "vae.onnx", format="onnx")
    assert list(tmp_path.iterdir()) == []


# --- every quantizer in every format ------------------------------------------------------
# One VQVAE per quantizer configuration, each exported once per format (module scope). On
# JAX and torch all eighteen exports run in one TensorFlow subprocess (the library's own
# bridge, one process instead of eighteen): every backend exports through TensorFlow, so the
# artifacts are those a JAX or torch user gets, and each backend's in-process model is
# compared with them.
Q_IMAGE_SHAPE = (12, 12, 1)  # two stride-2 stages: a 3x3 latent, two transposed convolutions
Q_K, Q_DIM = 16, 6
Q_ATOL = 1e-5  # images: |actual - expected| <= 1e-5 (1 + |expected|)
QUANTIZERS = {
    "vq": lambda: None,  # the VQVAE's own VectorQuantizer
    "vq_codebook_dim": lambda: VectorQuantizer(Q_K, Q_DIM, codebook_dim=3),
    "vq_cosine_rotation": lambda: VectorQuantizer(
        Q_K, Q_DIM, codebook_dim=3, distance="cosine", gradient="rotation"
    ),
    "fsq": lambda: FiniteScalarQuantizer([5, 4]),  # 20 codes, projections 6 -> 2 -> 6
    "lfq": lambda: LookupFreeQuantizer(num_bits=4),  # 16 codes, projections 6 -> 4 -> 6
    "rvq": lambda: ResidualVectorQuantizer(3, Q_K, Q_DIM),  # codes (B, 3, 3, 3)
}


def quantizer_vqvae(name: str, seed: int) -> VQVAE:
    quantizer = QUANTIZERS[name]()
    sizes = {"num_embeddings": Q_K} if quantizer is None else {"quantizer": quantizer}
    model = VQVAE(input_shape=Q_IMAGE_SHAPE, embedding_dim=Q_DIM, filters=(4, 8), **sizes)
    randomize(model, seed)
    return model


@pytest.fixture(scope="module")
def quantizer_models():
    return {name: quantizer_vqvae(name, 10 + i) for i, name in enumerate(QUANTIZERS)}


@pytest.fixture(scope="module")
def quantizer_cases(quantizer_models):
    """Per configuration: each endpoint's inputs and the in-process model's outputs."""
    images = np.random.default_rng(7).uniform(size=(BATCH, *Q_IMAGE_SHAPE)).astype("float32")
    cases = {}
    for name, model in quantizer_models.items():
        codes = to_numpy(model.encode(images))
        assert codes.shape == (BATCH, *model.code_shape) and codes.dtype == np.int32
        assert len(np.unique(codes)) >= 4, name  # a constant code would hide a wrong search
        inputs = endpoint_inputs(model, images, codes)
        cases[name] = (inputs, reference_outputs(model, images, codes))
    return cases


@runs_in_tensorflow(*QUANTIZERS)
def write_quantizer_artifacts(
    vq, vq_codebook_dim, vq_cosine_rotation, fsq, lfq, rvq, root: str
) -> dict:
    """Every model in every format under ``root``: ``{"paths": {name: {format: path}},
    "seconds": {"name/format": s}}``. A failed export's path is its error message (only
    the tests of that artifact fail)."""
    models = locals()
    paths, seconds = {}, {}
    for name in QUANTIZERS:
        paths[name] = {}
        for format in FORMATS:
            target = f"{root}/{name}.{format}"
            endpoint = list(ENDPOINTS) if format == "onnx" else None
            start = time.perf_counter()
            try:
                paths[name][format] = models[name].export(target, format=format, endpoint=endpoint)
            except Exception as error:
                paths[name][format] = f"export failed: {type(error).__name__}: {error}"
            seconds[f"{name}/{format}"] = round(time.perf_counter() - start, 2)
    return {"paths": paths, "seconds": seconds}


@pytest.fixture(scope="module")
def quantizer_artifacts(quantizer_models, tmp_path_factory):
    pytest.importorskip("tf2onnx", reason=EXTRA)
    pytest.importorskip("ai_edge_litert.interpreter", reason=EXTRA)
    root = tmp_path_factory.mktemp("quantizer_artifacts")
    written = write_quantizer_artifacts(**quantizer_models, root=str(root))
    print("export seconds:", written["seconds"])
    return written["paths"]


def tf_constant(value):
    import tensorflow as tf

    return tf.constant(value)


@functools.cache
def onnx_session(path: str):
    onnxruntime = pytest.importorskip("onnxruntime", reason=EXTRA)
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


@functools.cache
def litert_runtime(path: str):
    interpreter = pytest.importorskip("ai_edge_litert.interpreter", reason=EXTRA)
    return interpreter.Interpreter(model_path=path)


def run_artifact(path: str, format: str, endpoint: str, inputs: dict, fresh: bool = False):
    """One endpoint of one artifact on ``inputs``; outputs by name (an ONNX reconstruction,
    named ``reconstruction`` there, as ``images``). ``fresh``: a new ONNX session or LiteRT
    interpreter, untouched by earlier (failed) requests."""
    if path.startswith("export failed"):
        pytest.fail(path)
    if format == "tf_saved_model":  # tensors: TensorFlow would cast NumPy arrays to the spec
        return run_saved_model(path, endpoint, {k: tf_constant(v) for k, v in inputs.items()})
    if format == "onnx":
        file = f"{path}/{endpoint}.onnx"
        session = onnx_session.__wrapped__(file) if fresh else onnx_session(file)
        names = [output.name for output in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, inputs)))
        if "reconstruction" in outputs:
            outputs["images"] = outputs.pop("reconstruction")
        return outputs
    runtime = litert_runtime.__wrapped__(path) if fresh else litert_runtime(path)
    return runtime.get_signature_runner(endpoint)(**inputs)


def bad_requests(model: VQVAE, images, codes) -> dict:
    """Requests every format must refuse: ``{kind: (endpoint, inputs)}``."""
    k = model.num_embeddings
    return {
        "images_size": ("encode", {"images": np.zeros((2, 16, 16, 1), "float32")}),
        "images_height": ("serving_default", {"images": images[:, :8]}),
        "images_channels": ("encode", {"images": np.concatenate([images, images], -1)}),
        "images_rank": ("serving_default", {"images": images[0]}),
        "images_rank_5": ("encode", {"images": images[:, None]}),
        "images_dtype": ("encode", {"images": images.astype("float64")}),
        "codes_size": ("decode", {"codes": np.zeros((2, 4, *codes.shape[2:]), "int32")}),
        "codes_rank": ("decode", {"codes": codes[..., None]}),
        "codes_dtype": ("decode", {"codes": codes.astype("int64")}),
        "codes_negative": ("decode", {"codes": with_code(codes, -1)}),
        "codes_too_large": ("decode", {"codes": with_code(codes, k)}),
    }


# The runtimes' own words for each refusal (LiteRT's kernels name no input; see
# keras_vq.export_formats).
BAD_REQUEST_ERRORS = {
    "tf_saved_model": {
        "images": r"`images` must have shape \(batch, 12, 12, 1\)",
        "codes": r"`codes` must have shape \(batch, 3, 3",
        "dtype": r"expected to be a (float|int32) tensor but is a (double|int64) tensor",
        "range": r"`codes` must lie in \[0, \d+\]",
    },
    "onnx": {
        "images": r"(invalid dimensions|Invalid rank) for input: images",
        "codes": r"(invalid dimensions|Invalid rank) for input: codes",
        "dtype": r"Unexpected input data type",
        "range": r"Name:'codes_out_of_range'.*out of data bounds",
    },
    "litert": {
        # The input check's concatenation (run by the XNNPack delegate for float inputs).
        "images": r"(concatenation\.cc|TfLiteXNNPackDelegate).*failed to prepare",
        "codes": r"concatenation\.cc.*failed to prepare",
        "dtype": r"Got value of type (FLOAT64|INT64) but expected type (FLOAT32|INT32)",
        "range": r"gather index out of bounds",
    },
}


def output_mismatches(path: str, format: str, inputs: dict, expected: dict) -> list[str]:
    """Each endpoint of the artifact against the Keras model: codes exact (int32), images
    within ``Q_ATOL``; one line per mismatch."""
    failures = []
    for endpoint in ENDPOINTS:
        outputs = run_artifact(path, format, endpoint, inputs[endpoint])
        if sorted(outputs) != sorted(expected[endpoint]):
            failures.append(f"{endpoint}: outputs {sorted(outputs)}")
            continue
        for key, value in expected[endpoint].items():
            try:
                if value.dtype.kind == "i":
                    assert outputs[key].dtype == np.int32
                    np.testing.assert_array_equal(outputs[key], value)
                else:
                    assert outputs[key].shape == value.shape
                    np.testing.assert_allclose(outputs[key], value, rtol=Q_ATOL, atol=Q_ATOL)
            except AssertionError as error:
                failures.append(f"{endpoint} {key}: {error}")
    return failures


def refusal_mismatches(path: str, format: str, requests: dict) -> list[str]:
    """Each bad request: refused, with the format's message; one line per request that is
    accepted or refused otherwise."""
    failures = []
    for kind, (endpoint, request) in requests.items():
        group = (
            "dtype"
            if kind.endswith("dtype")
            else "range"
            if kind in ("codes_negative", "codes_too_large")
            else kind.split("_")[0]
        )
        try:
            outputs = run_artifact(path, format, endpoint, request, fresh=True)
        except Exception as error:  # each runtime has its own exception types
            if not re.search(BAD_REQUEST_ERRORS[format][group], str(error)):
                failures.append(f"{kind}: {type(error).__name__}: {str(error)[-400:]}")
        else:
            shapes = {key: value.shape for key, value in outputs.items()}
            failures.append(f"{kind}: accepted, returned {shapes}")
    return failures


def with_non_finite_rows(values) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (images or latents) with one NaN, one +inf and one -inf entry in rows 1, 3
    and 4 (the other rows finite), and whether each row stays finite."""
    values = values.copy()
    for row, value in ((1, np.nan), (3, np.inf), (4, -np.inf)):
        where = (row, *(min(size - 1, 6 - row) for size in values.shape[1:]))
        values[where] = value
    return values, np.isfinite(values).reshape(len(values), -1).all(axis=1)


def non_finite_requests(inputs: dict, expected: dict) -> dict:
    """``{endpoint: (inputs, expected outputs)}`` on images (and a VAE's latents) with NaN and
    ±inf rows next to finite ones. The served rule in every format: a row with any NaN or ±inf
    is coded 0 everywhere (every stage) and its images, latents NaN throughout, whatever the
    runtime's convolutions make of NaN; the finite rows as the model gives them."""
    requests = {}
    for endpoint, named in inputs.items():
        ((key, value),) = named.items()
        if value.dtype.kind != "f":  # codes: no non-finite value to send
            continue
        bad, finite = with_non_finite_rows(value)
        outputs = {name: array.copy() for name, array in expected[endpoint].items()}
        for array in outputs.values():
            array[~finite] = 0 if array.dtype.kind == "i" else np.nan
        requests[endpoint] = ({key: bad}, outputs)
    return requests


def non_finite_mismatches(path: str, format: str, inputs: dict, expected: dict) -> list[str]:
    """Each endpoint of the artifact on non-finite inputs (``non_finite_requests``): codes
    exact, images NaN exactly where expected and within ``Q_ATOL`` elsewhere; one line per
    mismatch."""
    failures = []
    for endpoint, (request, wanted) in non_finite_requests(inputs, expected).items():
        outputs = run_artifact(path, format, endpoint, request)
        for key, value in wanted.items():
            try:
                np.testing.assert_allclose(outputs[key], value, rtol=Q_ATOL, atol=Q_ATOL)
            except AssertionError as error:
                failures.append(f"non-finite {endpoint} {key}: {error}")
    return failures


# One test per artifact, its endpoints and bad requests in loops: with this many artifacts
# loaded each test's teardown (clear_session) costs about a second on JAX and torch.
@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", QUANTIZERS)
def test_every_quantizer_in_every_format_serves_the_model_and_refuses_bad_inputs(
    quantizer_artifacts, quantizer_models, quantizer_cases, name, format
):
    (inputs, expected), path = quantizer_cases[name], quantizer_artifacts[name][format]
    failures = output_mismatches(path, format, inputs, expected)
    images, codes = inputs["encode"]["images"], inputs["decode"]["codes"]
    failures += refusal_mismatches(
        path, format, bad_requests(quantizer_models[name], images, codes)
    )
    failures += non_finite_mismatches(path, format, inputs, expected)
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the ONNX/LiteRT graphs are TensorFlow graphs (JAX and torch export through a "
    "TensorFlow subprocess, tested above)",
)
@pytest.mark.parametrize("name", QUANTIZERS)
def test_graph_codes_a_latent_vector_that_overflows_as_zero(name, quantizer_cases):
    """A finite image whose latent overflows to ±inf in some vectors: the ONNX/LiteRT graph's
    codes are the quantizer call's (0 for those vectors, every stage), whatever the
    runtime's argmin or int cast makes of inf."""
    import tensorflow as tf

    model = quantizer_vqvae(name, 30)
    project = model.encoder.get_layer("project")
    kernel = to_numpy(project.kernel).copy()
    kernel[0, 0, 0, 0] = 3e38  # latent channel 0 overflows where feature 0 exceeds ~1.1
    project.kernel.assign(kernel)
    images = quantizer_cases["vq"][0]["encode"]["images"]
    z_e = model.encoder(images, training=False)
    finite = np.isfinite(to_numpy(z_e)).all(axis=-1)
    assert 0 < finite.sum() < finite.size  # both kinds of vectors, next to each other
    _, expected = model.quantizer(z_e, return_indices=True)
    (encode,) = [fn for key, fn, _ in model.serving_endpoints("onnx") if key == "encode"]
    codes = tf.function(encode, autograph=False)(tf.constant(images))["codes"]
    np.testing.assert_array_equal(codes.numpy(), to_numpy(expected))
    assert (codes.numpy()[~finite] == 0).all()
