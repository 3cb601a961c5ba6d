"""The quantizer family on two simulated devices: MirroredStrategy (TF), DataParallel (JAX).

A VQVAE around a ``ResidualVectorQuantizer`` with EMA codebooks, ``quantize_dropout``,
k-means initialisation and dead-code restarts (separate and shared codebooks), one around
``VectorQuantizer(kmeans_init=True)`` with restarts, and one around a
``FiniteScalarQuantizer`` (its standardisation's batch moments), train on two replicas as on
one: the random choices and the moments are taken on the global batch. Every replica ends
with the same codebooks, EMA statistics and moving moments. Devices must be configured
before the backend initialises, so each check runs in a fresh interpreter (see
tests/test_distribute.py).
"""

import keras
import numpy as np
import pytest

from tests.test_distribute import PRELUDE_TF, run_script

TRAIN = """
import keras, numpy as np
from sklearn.datasets import load_digits
from keras_vq.layers import FiniteScalarQuantizer, ResidualVectorQuantizer, VectorQuantizer
from keras_vq.models import VQVAE

images = (load_digits().images[:128] / 16.0).astype("float32")[..., None]

def quantizer(kind):
    if kind == "fsq_standardized":
        return FiniteScalarQuantizer([5, 4, 3])
    if kind in ("rvq_kmeans_restart", "rvq_shared_kmeans_restart"):
        return ResidualVectorQuantizer(3, 16, 4, ema_decay=0.9, quantize_dropout=True, seed=0,
                                       kmeans_init=True, dead_code_threshold=0.5,
                                       shared_codebook=kind == "rvq_shared_kmeans_restart")
    return VectorQuantizer(16, 4, ema_decay=0.9, kmeans_init=True, dead_code_threshold=0.5,
                           seed=0)

def train(kind, scope=None):
    keras.utils.set_random_seed(0)
    def build():
        model = VQVAE(input_shape=(8, 8, 1), filters=(8, 8), quantizer=quantizer(kind))
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        return model
    if scope is None:
        model = build()
    else:
        with scope:
            model = build()
    history = model.fit(images, epochs=2, batch_size=32, shuffle=False, verbose=0).history
    return model, history

def quantizer_state(model):
    return [v for v in model.quantizer.weights if "float" in str(v.dtype)]

KINDS = ("rvq_kmeans_restart", "rvq_shared_kmeans_restart", "vq_kmeans_restart",
         "fsq_standardized")
result = {}

def compare(kind, m1, h1, m2, h2):
    # One device against two: largest weight difference relative to the largest weight.
    a = np.concatenate([np.ravel(np.asarray(w)) for w in m1.weights if "float" in str(w.dtype)])
    b = np.concatenate([np.ravel(np.asarray(w)) for w in m2.weights if "float" in str(w.dtype)])
    result[f"{kind}_weight_diff"] = float(np.abs(a - b).max() / np.abs(a).max())
    result[f"{kind}_loss"] = [h1["loss"][-1], h2["loss"][-1]]
"""

MIRRORED = (
    TRAIN
    + """
import json, tensorflow as tf
one = tf.distribute.OneDeviceStrategy("/cpu:0")
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result["replicas"] = two.num_replicas_in_sync
for kind in KINDS:
    m1, h1 = train(kind, one.scope())
    m, h = train(kind, two.scope())
    compare(kind, m1, h1, m, h)
    diffs = []
    for v in quantizer_state(m):
        copies = [np.asarray(c) for c in two.experimental_local_results(v.value)]
        diffs.append(float(np.abs(copies[0] - copies[1]).max()))
        result[f"{kind}_copies"] = len(copies)
    result[f"{kind}_replica_diff"] = max(diffs)
    result[f"{kind}_state_variables"] = len(diffs)
    result[f"{kind}_loss_finite"] = bool(np.isfinite(h["loss"][-1]))
print("RESULT", json.dumps(result))
"""
)

DATA_PARALLEL = (
    TRAIN
    + """
import json, jax
result["devices"] = len(jax.devices())
for kind in KINDS:
    keras.distribution.set_distribution(None)
    m1, h1 = train(kind)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    m, h = train(kind)
    compare(kind, m1, h1, m, h)
    diffs, copies = [], 0
    for v in quantizer_state(m):
        shards = [np.asarray(s.data) for s in v.value.addressable_shards]
        copies = len(shards)
        diffs.append(max(float(np.abs(s - shards[0]).max()) for s in shards))
    result[f"{kind}_copies"] = copies
    result[f"{kind}_replica_diff"] = max(diffs)
    result[f"{kind}_state_variables"] = len(diffs)
    result[f"{kind}_loss_finite"] = bool(np.isfinite(h["loss"][-1]))
print("RESULT", json.dumps(result))
"""
)


KINDS = (
    "rvq_kmeans_restart",
    "rvq_shared_kmeans_restart",
    "vq_kmeans_restart",
    "fsq_standardized",
)


def check(result: dict, replicas_key: str) -> None:
    assert result[replicas_key] == 2
    for kind in KINDS:
        assert result[f"{kind}_weight_diff"] < 1e-6, result
        np.testing.assert_allclose(*result[f"{kind}_loss"], rtol=1e-5)
        assert result[f"{kind}_copies"] == 2, result
        # codebook + EMA statistics; FSQ: moving mean, variance and update count
        assert result[f"{kind}_state_variables"] >= 2, result
        assert result[f"{kind}_replica_diff"] == 0.0, result
        assert result[f"{kind}_loss_finite"], result


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="MirroredStrategy is TF's")
def test_quantizers_under_mirrored_strategy():
    check(run_script(PRELUDE_TF + MIRRORED, {"KERAS_BACKEND": "tensorflow"}), "replicas")


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX's")
def test_quantizers_under_jax_data_parallel():
    result = run_script(
        DATA_PARALLEL,
        {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    check(result, "devices")
