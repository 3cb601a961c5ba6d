"""SavedModel export: signatures checked in a fresh process that cannot import keras_vq.

The models are exported once per module; one subprocess reloads every artifact with
``tf.saved_model.load``, calls each signature by name with named inputs and writes the
outputs as ``.npy``; the tests compare them with the Keras models' own outputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_vq.export import _version_dir, export_generator, export_saved_model
from keras_vq.models import VAE, VQVAE, PixelCNNPrior, TransformerPrior
from tests.test_case import to_numpy

REPO = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (8, 8, 1)
K = 8
ATOL = 1e-5

# Runs with `python -I` in a temporary cwd: no PYTHONPATH, no repository on sys.path.
RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["keras_vq"] = None  # installed (editable) in the venv: block it outright
    try:
        import keras_vq  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("keras_vq must not be importable in the reload process")

    import json

    import numpy as np
    import tensorflow as tf

    calls = json.load(open(sys.argv[1]))
    loaded, results = {}, {}
    for call_id, call in calls.items():
        if call["path"] not in loaded:
            loaded[call["path"]] = tf.saved_model.load(call["path"])
        fn = loaded[call["path"]].signatures[call["signature"]]
        inputs = {name: tf.constant(np.load(path)) for name, path in call["inputs"].items()}
        result = {
            "inputs": sorted(fn.structured_input_signature[1]),
            "outputs": sorted(fn.structured_outputs),
            "error": None,
        }
        try:
            outputs = fn(**inputs)
        except tf.errors.InvalidArgumentError as error:
            result["error"] = error.message
        else:
            for name, value in outputs.items():
                np.save(f"{call['prefix']}.{name}.npy", value.numpy())
        results[call_id] = result
    json.dump(results, open(sys.argv[2], "w"))
    """
)


def tiny_vae():
    return VAE(input_shape=IMAGE_SHAPE, latent_dim=3, filters=(4,))


def tiny_vqvae():
    return VQVAE(input_shape=IMAGE_SHAPE, num_embeddings=K, embedding_dim=4, filters=(4,))


def tiny_prior(latent_shape, num_classes=None, num_embeddings=K, label_dropout=0.0):
    return PixelCNNPrior(
        num_embeddings,
        latent_shape,
        num_layers=2,
        filters=4,
        kernel_size=3,
        num_classes=num_classes,
        label_dropout=label_dropout,
    )


def tiny_transformer(latent_shape, num_classes=None):
    return TransformerPrior(
        K, latent_shape, num_layers=2, num_heads=2, hidden_dim=8, num_classes=num_classes
    )


def with_value(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def randomize(model, seed):
    """Every weight random and non-zero: zero biases (Keras' default) would hide a sampler
    that drops or adds one. NumPy, so the weights are the same on every backend."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        scale = 0.5 if len(variable.shape) == 1 else 1.5
        variable.assign(rng.normal(scale=scale, size=tuple(variable.shape)).astype("float32"))
        assert np.all(to_numpy(variable) != 0)


def tf_noise(shape, seed):
    """The uniform noise a generator's ``sample_seeded`` draws for ``seed``, on any backend."""
    import tensorflow as tf

    tiny = float(np.finfo("float32").tiny)
    noise = tf.random.stateless_uniform(shape, seed=[seed, 0], minval=tiny, maxval=1.0)
    return noise.numpy()


def reference_sample(prior, uniform, temperature, labels=None):
    """Raster order with one whole forward pass of the prior per position: slow but plainly
    the definition, ``c_ij = argmax_k(logits_k + T·(-log(-log u_k)))``."""
    batch, height, width, _ = uniform.shape
    gumbel = temperature * -np.log(-np.log(uniform))
    codes = np.zeros((batch, height, width), "int32")
    for i in range(height):
        for j in range(width):
            logits = to_numpy(prior(codes if labels is None else [codes, labels]))
            codes[:, i, j] = np.argmax(logits[:, i, j] + gumbel[:, i, j], axis=-1)
    return codes


class Served:
    """The exports, and every call's served outputs next to the Keras models' outputs.

    An export that raises is recorded, not raised: only the tests of that model fail (with
    its traceback), and the others still run.
    """

    def __init__(self, root: Path):
        self.root = root
        self.paths: dict[str, str] = {}
        self.errors: dict[str, Exception] = {}
        self.calls: dict[str, dict] = {}
        self.call_model: dict[str, str] = {}
        self.expected: dict[str, dict[str, np.ndarray]] = {}
        self.results: dict[str, dict] = {}

    def export(self, name, fn, *args, **kwargs):
        try:
            self.paths[name] = fn(*args, **kwargs)
        except Exception as error:
            self.errors[name] = error

    def path(self, name) -> str:
        if name in self.errors:
            raise self.errors[name]
        return self.paths[name]

    def add(self, call_id, signature, inputs, expected=None):
        model = call_id.split(".")[0]
        self.call_model[call_id] = model
        if model in self.errors:
            return
        prefix = self.root / "calls" / call_id
        prefix.parent.mkdir(exist_ok=True)
        files = {}
        for name, value in inputs.items():
            files[name] = f"{prefix}.in.{name}.npy"
            np.save(files[name], to_numpy(value))
        self.calls[call_id] = {
            "path": self.paths[model],
            "signature": signature,
            "inputs": files,
            "prefix": str(prefix),
        }
        self.expected[call_id] = {k: to_numpy(v) for k, v in (expected or {}).items()}

    def result(self, call_id) -> dict:
        self.path(self.call_model[call_id])
        return self.results[call_id]

    def outputs(self, call_id) -> dict[str, np.ndarray]:
        result = self.result(call_id)
        assert result["error"] is None, result["error"]
        prefix = self.calls[call_id]["prefix"]
        return {name: np.load(f"{prefix}.{name}.npy") for name in result["outputs"]}

    def reload_in_fresh_process(self):
        calls_file, results_file = self.root / "calls.json", self.root / "results.json"
        calls_file.write_text(json.dumps(self.calls))
        script = self.root / "reload.py"
        script.write_text(RELOAD_SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        proc = subprocess.run(
            [sys.executable, "-I", str(script), str(calls_file), str(results_file)],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
        self.results = json.loads(results_file.read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    s = Served(tmp_path_factory.mktemp("export"))
    vae, vqvae = tiny_vae(), tiny_vqvae()
    prior = tiny_prior(vqvae.latent_shape)
    conditional_prior = tiny_prior(vqvae.latent_shape, num_classes=3)
    randomize(prior, seed=1)
    randomize(conditional_prior, seed=2)
    transformer = tiny_transformer(vqvae.latent_shape, num_classes=3)
    randomize(transformer, seed=3)
    s.export("vae", export_saved_model, vae, s.root / "vae")
    s.export("vqvae", export_saved_model, vqvae, str(s.root / "vqvae"), version=1)
    s.export("generator", export_generator, vqvae, prior, s.root / "generator")
    s.export(
        "greedy", export_generator, vqvae, conditional_prior, s.root / "greedy", temperature=0
    )
    s.export("transformer", export_generator, vqvae, transformer, s.root / "transformer")
    # Classifier-free guidance, top-k and top-p fixed into the artifact.
    guided_prior = tiny_prior(vqvae.latent_shape, num_classes=3, label_dropout=0.2)
    randomize(guided_prior, seed=4)
    s.guided_options = {"temperature": 1.3, "top_k": 6, "top_p": 0.8, "guidance_scale": 2.5}
    s.export(
        "guided", export_generator, vqvae, guided_prior, s.root / "guided", **s.guided_options
    )

    images = rng.random((3, *IMAGE_SHAPE), dtype="float32")
    one = images[:1]
    latents = rng.normal(size=(2, vae.latent_dim)).astype("float32")
    codes = rng.integers(0, K, size=(2, *vqvae.latent_shape), dtype="int32")
    z_mean, z_log_var = vae.encode(images)
    s.add("vae.reconstruct", "serving_default", {"images": images}, {"images": vae(images)})
    s.add("vae.reconstruct_1", "serving_default", {"images": one}, {"images": vae(one)})
    s.add("vae.encode", "encode", {"images": images}, {"z_mean": z_mean, "z_log_var": z_log_var})
    s.add("vae.decode", "decode", {"latents": latents}, {"images": vae.decode(latents)})
    s.add("vqvae.reconstruct", "serving_default", {"images": images}, {"images": vqvae(images)})
    s.add("vqvae.encode", "encode", {"images": images}, {"codes": vqvae.encode(images)})
    s.add("vqvae.encode_1", "encode", {"images": one}, {"codes": vqvae.encode(one)})
    s.add("vqvae.decode", "decode", {"codes": codes}, {"images": vqvae.decode(codes)})

    # Temperature 0 is the argmax path: exact on every backend, whatever the noise.
    n, labels = np.int32(4), np.array([0, 2, 1, 2], "int32")
    greedy = conditional_prior.sample(4, temperature=0.0, labels=labels)
    expected = {"codes": greedy, "images": vqvae.decode(greedy)}
    s.add("greedy.sample", "sample", {"num_samples": n, "labels": labels}, expected)
    seeded = {"num_samples": n, "seed": np.int32(1), "labels": labels}
    s.add("greedy.sample_seeded", "sample_seeded", seeded, expected)
    bad_labels = {"num_samples": np.int32(2), "labels": np.array([0, 5], "int32")}
    s.add("greedy.bad_labels", "sample", bad_labels)
    for call_id, seed in [("seed7", 7), ("seed7_again", 7), ("seed8", 8), ("zero", 1)]:
        count = np.int32(0 if call_id == "zero" else 3)
        s.add(
            f"generator.{call_id}", "sample_seeded", {"num_samples": count, "seed": np.int32(seed)}
        )
    for call_id in ("fresh_a", "fresh_b"):
        s.add(f"generator.{call_id}", "sample", {"num_samples": np.int32(3)})
    transformer_labels = np.array([0, 2, 1], "int32")
    seeded = {"num_samples": np.int32(3), "seed": np.int32(7), "labels": transformer_labels}
    s.add("transformer.seed7", "sample_seeded", seeded)
    s.add("transformer.seed7_again", "sample_seeded", seeded)
    s.add("transformer.fresh", "sample", {"num_samples": np.int32(2), "labels": labels[:2]})
    bad_labels = {"num_samples": np.int32(2), "labels": np.array([0, 3], "int32")}
    s.add("transformer.bad_labels", "sample", bad_labels)
    guided_labels = np.array([0, 2, 3], "int32")  # 3: the null label
    seeded = {"num_samples": np.int32(3), "seed": np.int32(7), "labels": guided_labels}
    s.add("guided.seed7", "sample_seeded", seeded)
    bad_labels = {"num_samples": np.int32(2), "labels": np.array([0, 4], "int32")}
    s.add("guided.bad_labels", "sample", bad_labels)

    # Requests that do not fit the signature: the Keras models never see them.
    bad = {
        "vae.images_size": ("serving_default", {"images": np.zeros((1, 1, 1, 1), "float32")}),
        "vae.images_rank": ("encode", {"images": images[..., 0]}),
        "vae.images_dtype": ("serving_default", {"images": images.astype("float64")}),
        "vae.latents_size": ("decode", {"latents": np.zeros((2, 4), "float32")}),
        "vae.latents_rank": ("decode", {"latents": latents[0]}),
        "vae.latents_dtype": ("decode", {"latents": latents.astype("float64")}),
        "vqvae.images_size": ("encode", {"images": np.zeros((1, 8, 8, 3), "float32")}),
        "vqvae.images_rank": ("serving_default", {"images": images[0]}),
        "vqvae.images_rank_5": ("encode", {"images": images[..., None]}),
        "vqvae.images_dtype": ("encode", {"images": images.astype("float64")}),
        "vqvae.codes_size": ("decode", {"codes": np.zeros((2, 4, 5), "int32")}),
        "vqvae.codes_rank": ("decode", {"codes": codes[0]}),
        "vqvae.codes_dtype": ("decode", {"codes": codes.astype("int64")}),
        "vqvae.codes_too_large": ("decode", {"codes": with_value(codes, (1, 2, 3), K)}),
        "vqvae.codes_negative": ("decode", {"codes": with_value(codes, (0, 1, 0), -1)}),
        "generator.num_samples_rank": ("sample", {"num_samples": np.array([3], "int32")}),
        "generator.num_samples_dtype": ("sample", {"num_samples": np.int64(3)}),
        "generator.negative_seed": (
            "sample_seeded",
            {"num_samples": np.int32(3), "seed": np.int32(-1)},
        ),
        "generator.seed_rank": (
            "sample_seeded",
            {"num_samples": np.int32(3), "seed": np.array([1, 2], "int32")},
        ),
        "greedy.labels_rank": ("sample", {"num_samples": n, "labels": labels[:, None]}),
        "greedy.labels_count": ("sample", {"num_samples": n, "labels": labels[:3]}),
    }
    for call_id, (signature, inputs) in bad.items():
        s.add(call_id, signature, inputs)
    s.add("generator.default", "serving_default", {"num_samples": np.int32(2)})

    s.reload_in_fresh_process()

    # Served codes decoded by the Keras VQVAE, and the prior's own draw for seed 7.
    if "generator" not in s.errors:
        for call_id in ("seed7", "seed8", "fresh_a"):
            served_codes = s.outputs(f"generator.{call_id}")["codes"]
            s.expected[f"generator.{call_id}"] = {"images": vqvae.decode(served_codes)}
    s.prior_seed7_codes = to_numpy(prior.sample(3, temperature=1.0, seed=7))
    # The same noise as the served seed 7 on every backend: the prior's in-process fast sampler
    # and the slow reference on it.
    s.seed7_noise = tf_noise((3, *vqvae.latent_shape, K), seed=7)
    zeros = np.zeros((3,), "int32")
    s.fast_seed7_codes = to_numpy(prior._sample_from_uniform(s.seed7_noise, 1.0, zeros))
    s.reference_seed7_codes = reference_sample(prior, s.seed7_noise, 1.0)
    # The transformer's cached sampler and the slow reference on the served noise.
    s.transformer_labels = transformer_labels
    s.transformer_fast_seed7 = to_numpy(
        transformer._sample_from_uniform(s.seed7_noise, 1.0, transformer_labels)
    )
    s.transformer_reference_seed7 = reference_sample(
        transformer, s.seed7_noise, 1.0, transformer_labels
    )
    s.transformer_prior_seed7 = to_numpy(
        transformer.sample(3, temperature=1.0, seed=7, labels=transformer_labels)
    )
    if "transformer" not in s.errors:
        served_codes = s.outputs("transformer.seed7")["codes"]
        s.expected["transformer.seed7"] = {"images": vqvae.decode(served_codes)}
    # The guided prior's in-process sampler on the served noise, and its own seeded draw.
    options = dict(s.guided_options)
    temperature = options.pop("temperature")
    s.guided_fast_seed7 = to_numpy(
        guided_prior._sample_from_uniform(s.seed7_noise, temperature, guided_labels, **options)
    )
    s.guided_prior_seed7 = to_numpy(
        guided_prior.sample(3, seed=7, labels=guided_labels, **s.guided_options)
    )
    s.guided_plain_seed7 = to_numpy(
        guided_prior._sample_from_uniform(s.seed7_noise, temperature, guided_labels)
    )
    return s


def while_loops(path, signature) -> list[set[str]]:
    """The op types each while loop run by ``signature`` executes, its nested loops' included.

    Read from ``saved_model.pb``: a loop's ``body`` function and every function it calls.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    library = {function.signature.name: function for function in graph.library.function}

    def called(node):
        for attr in node.attr.values():
            yield from (
                [attr.func.name]
                if attr.HasField("func")
                else attr.list.func and [function.name for function in attr.list.func]
            )

    def op_types(name, seen=()):
        types = set()
        for node in library[name].node_def:
            types.add(node.op)
            for callee in called(node):
                if callee in library and callee not in seen:
                    types |= op_types(callee, (*seen, name))
        return types

    loops, visited = [], set()

    def collect(name):
        if name in visited or name not in library:
            return
        visited.add(name)
        for node in library[name].node_def:
            if node.op in ("While", "StatelessWhile"):
                loops.append(op_types(node.attr["body"].func.name))
            for callee in called(node):
                collect(callee)

    output = next(iter(saved.meta_graphs[0].signature_def[signature].outputs.values()))
    root = {node.name: node for node in graph.node}[output.name.split(":")[0]]
    for callee in called(root):
        collect(callee)
    return loops


def assert_outputs_match(served, call_id, exact=()):
    outputs = served.outputs(call_id)
    for name, expected in served.expected[call_id].items():
        expected = to_numpy(expected)
        if name in exact:
            assert outputs[name].dtype == np.int32, (name, outputs[name].dtype)
            np.testing.assert_array_equal(outputs[name], expected, err_msg=f"{call_id}:{name}")
        else:
            np.testing.assert_allclose(outputs[name], expected, atol=ATOL, err_msg=call_id)


def signature_keys(served, call_id):
    result = served.result(call_id)
    return result["inputs"], result["outputs"]


@pytest.mark.subprocess
class TestServedSignatures:
    def test_vae_signatures_match_the_keras_model(self, served):
        assert signature_keys(served, "vae.reconstruct") == (["images"], ["images"])
        assert signature_keys(served, "vae.encode") == (["images"], ["z_log_var", "z_mean"])
        assert signature_keys(served, "vae.decode") == (["latents"], ["images"])
        for call_id in ("vae.reconstruct", "vae.reconstruct_1", "vae.encode", "vae.decode"):
            assert_outputs_match(served, call_id)

    def test_vqvae_signatures_match_the_keras_model(self, served):
        assert signature_keys(served, "vqvae.reconstruct") == (["images"], ["images"])
        assert signature_keys(served, "vqvae.encode") == (["images"], ["codes"])
        assert signature_keys(served, "vqvae.decode") == (["codes"], ["images"])
        for call_id in ("vqvae.reconstruct", "vqvae.encode", "vqvae.encode_1", "vqvae.decode"):
            assert_outputs_match(served, call_id, exact=("codes",))

    def test_batch_dimension_is_dynamic(self, served):
        assert served.outputs("vae.reconstruct")["images"].shape == (3, *IMAGE_SHAPE)
        assert served.outputs("vae.reconstruct_1")["images"].shape == (1, *IMAGE_SHAPE)
        assert served.outputs("vqvae.encode_1")["codes"].shape[0] == 1

    def test_greedy_generator_matches_prior_sample_with_labels(self, served):
        assert signature_keys(served, "greedy.sample") == (
            ["labels", "num_samples"],
            ["codes", "images"],
        )
        assert signature_keys(served, "greedy.sample_seeded") == (
            ["labels", "num_samples", "seed"],
            ["codes", "images"],
        )
        assert_outputs_match(served, "greedy.sample", exact=("codes",))
        assert_outputs_match(served, "greedy.sample_seeded", exact=("codes",))

    def test_generator_seed_repeats_and_images_decode_the_codes(self, served):
        assert signature_keys(served, "generator.fresh_a") == (
            ["num_samples"],
            ["codes", "images"],
        )
        seed7 = served.outputs("generator.seed7")["codes"]
        assert seed7.shape == (3, 4, 4) and seed7.dtype == np.int32
        assert seed7.min() >= 0 and seed7.max() < K
        np.testing.assert_array_equal(served.outputs("generator.seed7_again")["codes"], seed7)
        assert not np.array_equal(served.outputs("generator.seed8")["codes"], seed7)
        fresh_a = served.outputs("generator.fresh_a")["codes"]
        assert not np.array_equal(served.outputs("generator.fresh_b")["codes"], fresh_a)
        for call_id in ("generator.seed7", "generator.seed8", "generator.fresh_a"):
            assert_outputs_match(served, call_id)

    @pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="the same noise as prior.sample(seed=...) only with TensorFlow's RNG",
    )
    def test_seeded_generator_draws_what_prior_sample_draws(self, served):
        codes = served.outputs("generator.seed7")["codes"]
        np.testing.assert_array_equal(codes, served.prior_seed7_codes)

    def test_seeded_generator_draws_what_the_prior_fast_sampler_draws(self, served):
        # Any backend: the served codes for seed 7 are the prior's own sampler on the same
        # noise, and the definition (one full forward pass per position) agrees.
        codes = served.outputs("generator.seed7")["codes"]
        assert len(np.unique(codes)) > 2  # random non-zero weights: not one repeated code
        np.testing.assert_array_equal(codes, served.fast_seed7_codes)
        np.testing.assert_array_equal(codes, served.reference_seed7_codes)

    def test_generator_carries_the_row_cached_sampler(self, served):
        # PixelCNNPrior's sampler: a loop over rows (the vertical stacks, convolutions), and in
        # it a loop over pixels that is matmuls only, not a whole forward pass per position.
        loops = while_loops(served.path("generator"), "sample")
        innermost = [ops for ops in loops if not ops & {"While", "StatelessWhile"}]
        assert len(innermost) < len(loops), "no loop over pixels inside a loop over rows"
        assert innermost and all("MatMul" in ops for ops in innermost), innermost
        assert not any(op.startswith("Conv") for ops in innermost for op in ops), innermost

    def test_transformer_generator_draws_what_its_cached_sampler_draws(self, served):
        # Any backend: the served codes for seed 7 are the transformer's own cached sampler
        # on the same noise, and one full forward pass per position agrees.
        codes = served.outputs("transformer.seed7")["codes"]
        assert codes.shape == (3, 4, 4) and len(np.unique(codes)) > 2
        np.testing.assert_array_equal(codes, served.transformer_fast_seed7)
        np.testing.assert_array_equal(codes, served.transformer_reference_seed7)
        np.testing.assert_array_equal(served.outputs("transformer.seed7_again")["codes"], codes)
        assert_outputs_match(served, "transformer.seed7")
        if keras.backend.backend() == "tensorflow":  # the same RNG as prior.sample(seed=7)
            np.testing.assert_array_equal(codes, served.transformer_prior_seed7)
        fresh = served.outputs("transformer.fresh")["codes"]
        assert fresh.shape == (2, 4, 4) and fresh.min() >= 0 and fresh.max() < K

    def test_transformer_generator_rejects_out_of_range_labels(self, served):
        error = served.result("transformer.bad_labels")["error"]
        assert error is not None and "`labels` must lie in [0, 2] (num_classes=3)" in error

    def test_guided_generator_draws_what_the_guided_sampler_draws(self, served):
        # Any backend: guidance, top-k and top-p baked into the artifact give the codes of
        # the prior's own guided sampler on the served noise (labels with the null label).
        codes = served.outputs("guided.seed7")["codes"]
        assert codes.shape == (3, 4, 4) and len(np.unique(codes)) > 2
        np.testing.assert_array_equal(codes, served.guided_fast_seed7)
        assert not np.array_equal(codes, served.guided_plain_seed7)  # the options mattered
        if keras.backend.backend() == "tensorflow":  # the same RNG as prior.sample(seed=7)
            np.testing.assert_array_equal(codes, served.guided_prior_seed7)
        error = served.result("guided.bad_labels")["error"]
        assert error is not None and "`labels` must lie in [0, 3]" in error

    def test_generator_serving_default_is_sample(self, served):
        assert signature_keys(served, "generator.default") == (
            ["num_samples"],
            ["codes", "images"],
        )
        assert served.outputs("generator.default")["codes"].shape == (2, 4, 4)

    def test_bad_generator_requests_fail_with_a_message(self, served):
        assert "`num_samples` must be >= 1" in served.result("generator.zero")["error"]
        # The seeds prior.sample accepts, and no others (int32 bounds them above).
        error = served.result("generator.negative_seed")["error"]
        assert error is not None and "`seed` must be an integer in [0, 2147483647]" in error
        assert "`labels` must lie in [0, 2]" in served.result("greedy.bad_labels")["error"]

    @pytest.mark.parametrize(
        "call_id, name, shape, got",
        [
            ("vae.images_size", "images", "(batch, 8, 8, 1)", "[1 1 1 1]"),
            ("vae.images_rank", "images", "(batch, 8, 8, 1)", "[3 8 8]"),
            ("vae.latents_size", "latents", "(batch, 3)", "[2 4]"),
            ("vae.latents_rank", "latents", "(batch, 3)", "[3]"),
            ("vqvae.images_size", "images", "(batch, 8, 8, 1)", "[1 8 8 3]"),
            ("vqvae.images_rank", "images", "(batch, 8, 8, 1)", "[8 8 1]"),
            ("vqvae.images_rank_5", "images", "(batch, 8, 8, 1)", "[3 8 8 1 1]"),
            ("vqvae.codes_size", "codes", "(batch, 4, 4)", "[2 4 5]"),
            ("vqvae.codes_rank", "codes", "(batch, 4, 4)", "[4 4]"),
            ("generator.num_samples_rank", "num_samples", "() (a scalar)", "[1]"),
            ("generator.seed_rank", "seed", "() (a scalar)", "[2]"),
            ("greedy.labels_rank", "labels", "(num_samples,)", "[4 1]"),
        ],
    )
    def test_wrong_shape_is_refused_naming_the_input(self, served, call_id, name, shape, got):
        error = served.result(call_id)["error"]
        assert error is not None, f"{call_id} was served"
        assert f"`{name}` must have shape {shape}, got shape] {got}" in error, error

    def test_labels_not_one_per_sample_are_refused(self, served):
        error = served.result("greedy.labels_count")["error"]
        assert error is not None and "`labels` must have num_samples entries" in error, error

    @pytest.mark.parametrize("call_id", ["vqvae.codes_too_large", "vqvae.codes_negative"])
    def test_codes_out_of_range_are_refused(self, served, call_id):
        error = served.result(call_id)["error"]
        assert error is not None, f"{call_id} was served"
        codes = np.load(served.calls[call_id]["inputs"]["codes"])
        expected = f"`codes` must lie in [0, {K - 1}] (num_embeddings={K}), got values in]"
        assert f"{expected} [{codes.min()} {codes.max()}]" in error, error

    @pytest.mark.parametrize(
        "call_id, expected, got",
        [
            ("vae.images_dtype", "float", "double"),
            ("vae.latents_dtype", "float", "double"),
            ("vqvae.images_dtype", "float", "double"),
            ("vqvae.codes_dtype", "int32", "int64"),
            ("generator.num_samples_dtype", "int32", "int64"),
        ],
    )
    def test_wrong_dtype_is_refused_before_the_graph_runs(self, served, call_id, expected, got):
        # TensorFlow checks dtypes itself, before any assertion of ours could run, and names
        # the input by position: #0 is the only input, or num_samples.
        error = served.result(call_id)["error"]
        assert error is not None, f"{call_id} was served"
        message = f"input #0(zero-based) was expected to be a {expected} tensor but is a {got}"
        assert message in error, error

    @pytest.mark.parametrize("name", ["vae", "vqvae", "generator", "greedy"])
    def test_layout_is_tf_serving(self, served, name):
        path = Path(served.path(name))
        assert path == served.root / name / "1"
        assert (path / "saved_model.pb").is_file()
        assert (path / "variables" / "variables.index").is_file()
        assert os.listdir(path.parent) == ["1"]  # no staging directory left behind

    def test_second_export_takes_the_next_version(self, served):
        base = Path(served.path("vqvae")).parent
        first = (base / "1" / "saved_model.pb").read_bytes()
        path = export_saved_model(tiny_vqvae(), base)
        assert path == str(base / "2")
        assert (base / "2" / "saved_model.pb").is_file()
        assert (base / "1" / "saved_model.pb").read_bytes() == first

    def test_refuses_to_overwrite_an_existing_version(self, served):
        vae_path, greedy_path = Path(served.path("vae")), Path(served.path("greedy"))
        with pytest.raises(FileExistsError, match=re.escape(str(vae_path))):
            export_saved_model(tiny_vae(), vae_path.parent, version=1)
        with pytest.raises(FileExistsError, match=re.escape(str(greedy_path))):
            export_generator(tiny_vqvae(), tiny_prior((4, 4)), greedy_path.parent, 1)

    def test_saved_model_cli_lists_the_signatures(self, served):
        cli = Path(sys.executable).parent / "saved_model_cli"
        if not cli.exists():
            pytest.skip("saved_model_cli is not installed next to the interpreter")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(
            [str(cli), "show", "--dir", served.path("vqvae"), "--all"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        for name in ("serving_default", "encode", "decode"):
            assert f"signature_def['{name}']" in proc.stdout
        assert "DT_INT32" in proc.stdout


class TestVersions:
    def test_next_version_is_largest_existing_plus_one(self, tmp_path):
        assert _version_dir(tmp_path / "new", None) == tmp_path / "new" / "1"
        for name in ("1", "7", "notes", ".7.partial-abc"):
            (tmp_path / name).mkdir()
        (tmp_path / "12").write_text("a file, not a version")
        assert _version_dir(tmp_path, None) == tmp_path / "8"
        assert _version_dir(tmp_path, 3) == tmp_path / "3"
        assert _version_dir(str(tmp_path), np.int64(0)) == tmp_path / "0"

    @pytest.mark.parametrize("version", ["2", 1.0, True, [1]])
    def test_non_integer_version_is_a_type_error(self, tmp_path, version):
        with pytest.raises(TypeError, match="`version`"):
            export_saved_model(tiny_vae(), tmp_path, version=version)
        assert not tmp_path.joinpath("1").exists()

    def test_negative_version_is_a_value_error(self, tmp_path):
        with pytest.raises(ValueError, match="`version` must be >= 0, got -1"):
            export_saved_model(tiny_vae(), tmp_path, version=-1)

    def test_export_dir_must_be_a_path_to_a_directory(self, tmp_path):
        with pytest.raises(TypeError, match="`export_dir`"):
            export_saved_model(tiny_vae(), 42)
        (tmp_path / "file").write_text("")
        with pytest.raises(NotADirectoryError, match="`export_dir`"):
            export_saved_model(tiny_vae(), tmp_path / "file")


class TestBadModels:
    def test_other_models_are_a_type_error_naming_the_accepted_types(self, tmp_path):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        with pytest.raises(
            TypeError,
            match=r"`model` must be a keras_vq.models.VAE or "
            r"keras_vq.models.VQVAE.*got Sequential",
        ):
            export_saved_model(model, tmp_path)
        with pytest.raises(TypeError, match="export_generator"):
            export_saved_model(tiny_prior((4, 4)), tmp_path)
        assert list(tmp_path.iterdir()) == []

    def test_unbuilt_model_is_a_value_error(self, tmp_path):
        model = tiny_vae()
        model.built = False
        with pytest.raises(ValueError, match="`model` must be built"):
            export_saved_model(model, tmp_path)

    def test_generator_checks_its_pair(self, tmp_path):
        vqvae = tiny_vqvae()
        with pytest.raises(TypeError, match=r"`vqvae` must be a keras_vq\.models\.VQVAE"):
            export_generator(tiny_vae(), tiny_prior((4, 4)), tmp_path)
        with pytest.raises(TypeError, match=r"`prior` must be a keras_vq\.models\.PixelCNNPrior"):
            export_generator(vqvae, vqvae, tmp_path)
        with pytest.raises(ValueError, match="num_embeddings=4 codes but `vqvae` has"):
            export_generator(vqvae, tiny_prior((4, 4), num_embeddings=4), tmp_path)
        with pytest.raises(ValueError, match=r"latent_shape=\(3, 4\)"):
            export_generator(vqvae, tiny_prior((3, 4)), tmp_path)
        with pytest.raises(ValueError, match="`temperature`"):
            export_generator(vqvae, tiny_prior((4, 4)), tmp_path, temperature=-1.0)
        with pytest.raises(TypeError, match="`jit_compile` must be True or False, got 'yes'"):
            export_generator(vqvae, tiny_prior((4, 4)), tmp_path, jit_compile="yes")
        with pytest.raises(ValueError, match="`guidance_scale` needs a class-conditional prior"):
            export_generator(vqvae, tiny_prior((4, 4), num_classes=2), tmp_path, guidance_scale=2)
        with pytest.raises(ValueError, match=r"`top_p` must be in \(0, 1\]"):
            export_generator(vqvae, tiny_prior((4, 4)), tmp_path, top_p=0.0)
        with pytest.raises(ValueError, match="`top_k` must be at most num_embeddings=8"):
            export_generator(vqvae, tiny_prior((4, 4)), tmp_path, top_k=9)
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["pixelcnn", "transformer_conditional"])
def test_xla_compiled_generator_draws_the_codes_of_the_plain_one(kind, tmp_path):
    """``jit_compile=True`` compiles the same sampling loop: for every seed the served codes
    and images equal those of the artifact without XLA (loaded with plain TensorFlow)."""
    import tensorflow as tf

    vqvae = tiny_vqvae()
    prior = tiny_prior((4, 4)) if kind == "pixelcnn" else tiny_transformer((4, 4), num_classes=3)
    randomize(vqvae, 1)
    randomize(prior, 2)
    labels = {} if prior.num_classes is None else {"labels": tf.constant([0, 2, 1], tf.int32)}
    outputs = []
    for jit_compile in (False, True):
        path = export_generator(vqvae, prior, tmp_path / str(jit_compile), jit_compile=jit_compile)
        graph = (Path(path) / "saved_model.pb").read_bytes()
        assert (b"_XlaMustCompile" in graph) == jit_compile  # the loop is marked for XLA
        sample = tf.saved_model.load(path).signatures["sample_seeded"]
        outputs.append(
            [sample(num_samples=tf.constant(3), seed=tf.constant(s), **labels) for s in (5, 6)]
        )
    for plain, compiled in zip(*outputs):
        codes = plain["codes"].numpy()
        assert len(np.unique(codes)) > 2  # random weights: not one repeated code
        np.testing.assert_array_equal(compiled["codes"].numpy(), codes)
        np.testing.assert_allclose(compiled["images"].numpy(), plain["images"].numpy(), atol=ATOL)


@pytest.mark.subprocess
class TestRecipe:
    def run_recipe(self, *args, cwd):
        # The keras_vq under test, as in this process (not another installed copy).
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": pythonpath}
        return subprocess.run(
            [sys.executable, str(REPO / "recipes" / "export.py"), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    def test_help_does_not_import_keras(self, tmp_path):
        # `python recipes/export.py` puts the script's folder first on sys.path; run_path not.
        code = (
            f"import runpy, sys; sys.path.insert(0, {str(REPO / 'recipes')!r})\n"
            "sys.argv = ['export.py', '--help']\n"
            "try:\n    runpy.run_path(sys.argv.pop(1), run_name='__main__')\n"
            "except SystemExit as exit:\n    assert exit.code == 0\n"
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules\n"
        )
        code = code.replace("sys.argv.pop(1)", repr(str(REPO / "recipes" / "export.py")))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "--model" in proc.stdout and "--prior" in proc.stdout

    def test_prior_without_vqvae_is_a_usage_error(self, tmp_path):
        proc = self.run_recipe("--prior", "p.keras", cwd=tmp_path)
        assert proc.returncode == 2
        assert "--vqvae" in proc.stderr

    @pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="the recipe always exports with TensorFlow; once per suite is enough",
    )
    def test_exports_a_saved_model_and_prints_its_path(self, tmp_path):
        model_path = tmp_path / "vqvae.keras"
        tiny_vqvae().save(model_path)
        proc = self.run_recipe("--model", str(model_path), "--out", "exports/vqvae", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        path = proc.stdout.strip().splitlines()[-1]
        assert Path(tmp_path, path).resolve() == (tmp_path / "exports" / "vqvae" / "1")
        assert (tmp_path / "exports" / "vqvae" / "1" / "saved_model.pb").is_file()
