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
