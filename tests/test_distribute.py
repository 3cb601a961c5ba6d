"""Two simulated devices train like one: MirroredStrategy (TF) and DataParallel (JAX).

Devices must be configured before the backend initialises, so each check runs in a fresh
interpreter. Each runs on the backend whose engine it exercises.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = """
import keras, numpy as np
from sklearn.datasets import load_digits
from keras_vq.models import VQVAE

images = (load_digits().images[:128] / 16.0).astype("float32")[..., None]

def train(ema_decay, dead_code_threshold, scope=None):
    keras.utils.set_random_seed(0)
    def build():
        model = VQVAE(input_shape=(8, 8, 1), num_embeddings=16, embedding_dim=4, filters=(8, 8),
                      ema_decay=ema_decay, dead_code_threshold=dead_code_threshold, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        return model
    if scope is None:
        model = build()
    else:
        with scope:
            model = build()
    history = model.fit(images, epochs=2, batch_size=32, shuffle=False, verbose=0).history
    return model, history
"""

MIRRORED = (
    TRAIN
    + """
import json, tensorflow as tf
one = tf.distribute.OneDeviceStrategy("/cpu:0")
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {"replicas": two.num_replicas_in_sync}
for ema in (None, 0.9):
    m1, h1 = train(ema, 0.0, one.scope())
    m2, h2 = train(ema, 0.0, two.scope())
    diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(m1.weights, m2.weights)]
    result[f"max_weight_diff_{ema}"] = max(diffs)
    result[f"loss_{ema}"] = [h1["loss"][-1], h2["loss"][-1]]
# With restarts on, every replica must still hold the same codebook.
m, _ = train(0.9, 0.5, two.scope())
copies = [np.asarray(v) for v in two.experimental_local_results(m.quantizer.codebook.value)]
result["replica_codebook_diff"] = float(np.abs(copies[0] - copies[1]).max())
result["num_copies"] = len(copies)
print("RESULT", json.dumps(result))
"""
)

DATA_PARALLEL = (
    TRAIN
    + """
import json, jax
result = {"devices": len(jax.devices())}
for ema in (None, 0.9):
    keras.distribution.set_distribution(None)
    m1, h1 = train(ema, 0.0)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    m2, h2 = train(ema, 0.0)
    diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(m1.weights, m2.weights)]
    result[f"max_weight_diff_{ema}"] = max(diffs)
    result[f"loss_{ema}"] = [h1["loss"][-1], h2["loss"][-1]]
print("RESULT", json.dumps(result))
"""
)

PRELUDE_TF = """
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_script(script: str, env_extra: dict) -> dict:
    env = {**os.environ, **env_extra, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


# The default VQVAE (EMA codebook, dead-code restarts at usage 1.0): trained batch by batch so
# that the restarts of each step can be counted (a restarted code's usage is set to exactly the
# threshold; the first step is skipped, where a code used once also lands on 1.0).
RESTARTS = """
import json, keras, numpy as np
from sklearn.datasets import load_digits
from keras_vq.models import VQVAE

images = (load_digits().images[:256] / 16.0).astype("float32")[..., None]

def train(scope):
    keras.utils.set_random_seed(0)
    with scope:
        model = VQVAE(input_shape=(8, 8, 1), num_embeddings=32, embedding_dim=8,
                      ema_decay=0.99, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        assert model.quantizer.dead_code_threshold == 1.0
        restarts = 0
        for step in range(8):
            batch = images[64 * (step % 4) : 64 * (step % 4 + 1)]
            model.fit(batch, epochs=1, batch_size=64, shuffle=False, verbose=0)
            usage = np.asarray(model.quantizer.ema_cluster_size.value)
            restarts += int(np.sum(usage == 1.0)) if step else 0
    weights = [np.asarray(w.value) for w in model.weights if "float" in str(w.dtype)]
    return weights, restarts

def compare(one, two):
    (w1, r1), (w2, r2) = train(one()), train(two())
    a, b = np.concatenate([w.ravel() for w in w1]), np.concatenate([w.ravel() for w in w2])
    return {"relative_diff": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
            "restarts": [r1, r2]}
"""

RESTARTS_MIRRORED = (
    RESTARTS
    + """
import contextlib, tensorflow as tf
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = compare(contextlib.nullcontext, two.scope)
result["replicas"] = two.num_replicas_in_sync
print("RESULT", json.dumps(result))
"""
)

RESTARTS_DATA_PARALLEL = (
    RESTARTS
    + """
import contextlib, jax

@contextlib.contextmanager
def data_parallel():
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        yield
    finally:
        keras.distribution.set_distribution(None)

result = compare(contextlib.nullcontext, data_parallel)
result["replicas"] = len(jax.devices())
print("RESULT", json.dumps(result))
"""
)


def check_restarts_match(result: dict) -> None:
    """Restarts fired, as many on 2 replicas as on 1, and the weights agree to ~3e-7."""
    assert result["replicas"] == 2
    one, two = result["restarts"]
    assert one >= 3 and one == two, result
    assert result["relative_diff"] < 2e-6, result


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="MirroredStrategy is TF's")
def test_mirrored_strategy_restarts_match_one_device():
    check_restarts_match(
        run_script(PRELUDE_TF + RESTARTS_MIRRORED, {"KERAS_BACKEND": "tensorflow"})
    )


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX's")
def test_jax_data_parallel_restarts_match_one_device():
    check_restarts_match(
        run_script(
            RESTARTS_DATA_PARALLEL,
            {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        )
    )


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="MirroredStrategy is TF's")
def test_mirrored_strategy_matches_one_device():
    result = run_script(PRELUDE_TF + MIRRORED, {"KERAS_BACKEND": "tensorflow"})
    assert result["replicas"] == 2
    for ema in ("None", "0.9"):
        assert result[f"max_weight_diff_{ema}"] < 1e-5, result
        np.testing.assert_allclose(*result[f"loss_{ema}"], rtol=1e-5)
    assert result["num_copies"] == 2
    assert result["replica_codebook_diff"] == 0.0


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX's")
def test_jax_data_parallel_matches_one_device():
    result = run_script(
        DATA_PARALLEL,
        {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert result["devices"] == 2
    for ema in ("None", "0.9"):
        assert result[f"max_weight_diff_{ema}"] < 1e-5, result
        np.testing.assert_allclose(*result[f"loss_{ema}"], rtol=1e-5)
