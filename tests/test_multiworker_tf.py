"""Training over two TensorFlow workers (``tf.distribute.MultiWorkerMirroredStrategy``).

Keras 3.15's TensorFlow trainer cannot ``fit`` any model on several workers (see
``keras_vq/backend/_tf_step.py``); keras_vq's models train there through their own build and
step. Two local workers (``TF_CONFIG`` with two free localhost ports, CPU) run once per module,
as subprocesses under a shared deadline and killed on failure, so nothing here can hang:

- the watchdogs: a plain ``keras.Model.fit`` still fails with the known error, and so does a
  model that sidesteps only the first failure; when either passes, Keras has fixed it and the
  test says what to remove;
- a ``VQVAE`` with EMA, dead-code restarts and k-means initialisation, each worker fed half of
  every global batch, ends equal (1e-5) to one process on the whole batches.

TensorFlow only: the module is skipped on the JAX and torch runs of the suite.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.processes import finish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes")
# Hang guards: each worker needs ~10 s of CPU (TensorFlow's import is half of it), each recipe
# ~20 s; the wall time on two busy shared cores can be several times that.
TIMEOUT_S = 150

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="tf.distribute.MultiWorkerMirroredStrategy is TensorFlow's; on JAX several "
        "processes train with keras.distribution (tests/test_multiprocess.py)",
    ),
]

# The same tiny VQ-VAE for the workers and the single process: EMA codebook, restarts of codes
# used less than twice (they happen on this data: checked below), k-means initialisation,
# non-trivial weights and biases.
MODEL = """
import keras, numpy as np
from sklearn.datasets import load_digits
from keras_vq.layers import VectorQuantizer
from keras_vq.models import VQVAE

images = (load_digits().images[:128] / 16.0).astype("float32")[..., None]

def build_vqvae():
    keras.utils.set_random_seed(0)
    quantizer = VectorQuantizer(16, 4, ema_decay=0.9, dead_code_threshold=2.0,
                                kmeans_init=True, seed=0, name="quantizer")
    model = VQVAE(input_shape=(8, 8, 1), quantizer=quantizer, filters=(8, 8), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    rng = np.random.default_rng(1)
    for weight in model.trainable_weights:
        weight.assign(np.asarray(weight.value)
                      + rng.normal(0, 0.05, weight.shape).astype("float32"))
    return model

def weights_by_position(model):
    # Keys independent of the model's unique name (vqvae, vqvae_1, ...) in the process.
    return {f"{i:02d}_{w.path.rsplit('/', 1)[-1]}": np.asarray(w.value)
            for i, w in enumerate(model.weights)}
"""

# One worker: the two watchdogs, then the VQ-VAE on 4 global batches of 32 for 2 epochs. Every
# step runs on both workers in the same order, so a success too stays in lockstep.
WORKER = (
    MODEL
    + """
import json, sys
import tensorflow as tf

out = sys.argv[1]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
result = {"replicas": strategy.num_replicas_in_sync}
x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")

def outcome(model_class):
    with strategy.scope():
        inputs = keras.Input((4,))
        model = model_class(inputs, keras.layers.Dense(1)(keras.layers.Dense(3)(inputs)))
        model.compile(optimizer="sgd", loss="mse")
    try:
        model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0)
    except Exception as error:
        return f"{type(error).__name__}: {error}"[:2000]
    return "trained"

class SymbolicBuildFromSpec(keras.Model):
    # keras_vq's first workaround alone (keras_vq/backend/_tf_step.py).
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

result["plain_fit"] = outcome(keras.Model)
result["fit_with_spec_build"] = outcome(SymbolicBuildFromSpec)

with strategy.scope():
    model = build_vqvae()
history = model.fit(images, epochs=2, batch_size=32, shuffle=False, verbose=0).history
result["loss"] = history["loss"]
result["evaluate"] = model.evaluate(images[:64], batch_size=32, verbose=0, return_dict=True)
prediction = model.predict(images[:64], batch_size=32, verbose=0)
np.savez(out, prediction=prediction, **weights_by_position(model))
print("RESULT", json.dumps(result), flush=True)
"""
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_configs(count: int) -> list[str]:
    """``TF_CONFIG`` of each of ``count`` local workers (worker 0 is the chief)."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(count)]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        for index in range(count)
    ]


def start(args: list[str], tf_config: str | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "PYTHONPATH": ROOT,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "",  # one CPU replica per worker
    }
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_workers(tmp_path, count: int = 2) -> list[tuple[dict, dict]]:
    """``count`` workers of ``WORKER``; each one's RESULT and saved arrays."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    processes = [
        start([str(script), str(tmp_path / f"worker{index}.npz")], tf_config)
        for index, tf_config in enumerate(worker_configs(count))
    ]
    results = []
    for index, (code, out) in enumerate(finish(processes, TIMEOUT_S)):
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert code == 0 and lines, out[-3000:]
        arrays = dict(np.load(tmp_path / f"worker{index}.npz"))
        results.append((json.loads(lines[-1][len("RESULT ") :]), arrays))
    return results


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp("multiworker"))


@pytest.fixture(scope="module")
def one_process():
    """The VQ-VAE trained step by step in this process, on the whole batches, counting the
    restarts (a restarted code's usage is set to exactly the threshold, 2.0)."""
    namespace = {}
    exec(MODEL, namespace)
    model, images = namespace["build_vqvae"](), namespace["images"]
    restarts, losses = 0, []
    for step in range(8):
        batch = images[32 * (step % 4) : 32 * (step % 4 + 1)]
        losses.append(model.fit(batch, batch_size=32, shuffle=False, verbose=0).history["loss"])
        restarts += int(np.sum(np.asarray(model.quantizer.ema_cluster_size.value) == 2.0))
    arrays = namespace["weights_by_position"](model)
    arrays["prediction"] = model.predict(images[:64], batch_size=32, verbose=0)
    evaluate = model.evaluate(images[:64], batch_size=32, verbose=0, return_dict=True)
    return arrays, evaluate, restarts


FIXED = (
    "Keras' TensorFlow trainer now {what} under MultiWorkerMirroredStrategy: keras_vq's "
    "workaround for it in keras_vq/backend/_tf_step.py ({part}) can go; update this test and "
    "the README's multi-worker paragraph. Outcome: {outcome}"
)


def test_plain_keras_fit_still_fails_on_two_workers(workers):
    """Watchdog: Keras' symbolic build reduces the first PerReplica batch eagerly."""
    for result, _ in workers:
        assert result["replicas"] == 2
        outcome = result["plain_fit"]
        assert outcome != "trained", FIXED.format(
            what="trains a plain keras.Model", part="the symbolic build", outcome=outcome
        )
        assert outcome.startswith("ValueError: Attempt to convert a value (PerReplica:"), outcome
        assert "unsupported type" in outcome, outcome


def test_keras_log_reduction_still_fails_on_two_workers(workers):
    """Watchdog: past the build, Keras reduces the scalar logs along an axis 0 they lack."""
    for result, _ in workers:
        outcome = result["fit_with_spec_build"]
        assert outcome != "trained", FIXED.format(
            what="reduces scalar logs", part="the shape-(1,) logs", outcome=outcome
        )
        assert "Invalid reduction dimension 0 for input with 0 dimensions" in outcome, outcome


def test_vqvae_on_two_workers_equals_one_process(workers, one_process):
    reference, evaluate, restarts = one_process
    assert restarts > 0, "the configuration must exercise dead-code restarts"
    initialized = next(key for key in reference if key.endswith("initialized"))
    assert reference[initialized], "k-means initialised the codebook"
    (first, first_arrays), (second, second_arrays) = workers
    assert first_arrays.keys() == reference.keys()
    for key, expected in reference.items():
        np.testing.assert_allclose(first_arrays[key], expected, atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(second_arrays[key], first_arrays[key], err_msg=key)
    assert first["loss"] == second["loss"]
    np.testing.assert_allclose(
        first["evaluate"]["reconstruction_loss"], evaluate["reconstruction_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(first["evaluate"]["loss"], evaluate["loss"], rtol=1e-5)


def recipe_command(out, extra=(), backend="tensorflow") -> list[str]:
    return [
        os.path.join(RECIPES, "train_vqvae.py"),
        *f"--out {out} --image-size 8 --filters 4 --num-embeddings 8 --embedding-dim 4".split(),
        *"--batch-size 16 --epochs 2 --steps-per-epoch 2 --num-images 4 --verbose 2".split(),
        *("--backend", backend, *extra),
    ]


def printed_metrics(out: str) -> dict:
    return json.loads(out[out.index("{") : out.rindex("}") + 1])


def test_recipe_on_two_workers_equals_one_process(tmp_path):
    """``--distribute multi_worker``: the chief alone writes ``--out``, and the model equals
    the one of a single process on the same batches (the default VQ-VAE: EMA, restarts)."""
    out, single = tmp_path / "workers", tmp_path / "single"
    workers = [
        start(recipe_command(out, ("--distribute", "multi_worker")), tf_config)
        for tf_config in worker_configs(2)
    ]
    results = finish([*workers, start(recipe_command(single))], 2 * TIMEOUT_S)
    for code, text in results:
        assert code == 0, text[-3000:]
    (_, chief), (_, other), (_, alone) = results
    assert "MultiWorkerMirroredStrategy over 2 replica(s)." in chief
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())
    assert f"outputs in {out}" in chief and f"outputs in {out}" not in other
    private = other.split("outputs in ")[-1].split()[0]
    assert not os.path.exists(private), "worker 1's private directory is removed at exit"
    assert json.loads((out / "config.json").read_text())["args"]["distribute"] == "multi_worker"
    trained, reference = (keras.saving.load_model(d / "vqvae.keras") for d in (out, single))
    for weight, expected in zip(trained.weights, reference.weights, strict=True):
        np.testing.assert_allclose(
            weight.numpy(), expected.numpy(), atol=1e-5, err_msg=weight.path
        )
    metrics, expected = printed_metrics(chief), printed_metrics(alone)
    assert metrics["test_reconstruction_mse"] == pytest.approx(
        expected["test_reconstruction_mse"], rel=1e-5
    )
    assert printed_metrics(other)["test_reconstruction_mse"] == metrics["test_reconstruction_mse"]


@pytest.mark.parametrize(
    "backend, tf_config, message",
    [
        ("tensorflow", None, "needs the environment variable TF_CONFIG"),
        ("tensorflow", "{not json", "is not a TensorFlow cluster configuration"),
        (
            "tensorflow",
            '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
            "task index 3",
        ),
        ("jax", None, "--distribute multi_process on JAX"),
        ("torch", None, "Keras 3.15 has no torch distribution"),
    ],
)
def test_multi_worker_usage_errors_write_nothing(tmp_path, backend, tf_config, message):
    out = tmp_path / "run"
    args = recipe_command(out, ("--distribute", "multi_worker"), backend)
    ((code, text),) = finish([start(args, tf_config)], 60)
    assert code == 2, text[-2000:]
    assert message in text
    assert not out.exists()
