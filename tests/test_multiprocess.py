"""Training over several JAX processes (``keras.distribution.initialize`` + ``DataParallel``).

Two local processes on a free localhost port, each a subprocess with a hard timeout and killed
on failure, so nothing here can hang. The processes run on the JAX backend whatever the
suite's backend; the module runs once, under ``KERAS_BACKEND=jax``. The usage errors of the
other engines' distributions are checked here too.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="multi-process training is JAX-only (Keras 3.15); its subprocesses run once, "
    "under the JAX run of the suite",
)

# One process or two, each feeding its half of every global batch of 32 digits (8x8).
TRAIN = """
import os, sys, json
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import keras, numpy as np
from sklearn.datasets import load_digits
from keras_vq.layers import VectorQuantizer
from keras_vq.models import VQVAE

address, out = sys.argv[1], sys.argv[4]
count, index, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
if count > 1:
    keras.distribution.initialize(address, count, index)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
keras.utils.set_random_seed(0)
images = (load_digits().images[:128] / 16.0).astype("float32")[..., None]
quantizer = VectorQuantizer(16, 4, ema_decay=0.9, dead_code_threshold=2.0, kmeans_init=True,
                            seed=0, name="quantizer")
model = VQVAE(input_shape=(8, 8, 1), quantizer=quantizer, filters=(8, 8), seed=0)
model.compile(optimizer=keras.optimizers.SGD(0.05))
rng = np.random.default_rng(1)
def host(weight):
    return np.asarray(weight.value.addressable_data(0) if count > 1 else weight.value)
for weight in model.trainable_weights:  # non-trivial weights and biases
    weight.assign(host(weight) + rng.normal(0, 0.05, weight.shape).astype("float32"))
rows = np.tile(images, (max(1, steps * 32 // 128), 1, 1, 1))[: steps * 32]
global_batches = rows.reshape(steps, 32, 8, 8, 1)
local = global_batches[:, index * 32 // count:(index + 1) * 32 // count].reshape(-1, 8, 8, 1)
print("TRAINING", flush=True)
model.fit(local, epochs=1, batch_size=32 // count, shuffle=False, verbose=0)
values = {w.path: host(w) for w in model.weights}
np.savez(out, **values)
print("SAVED", flush=True)
"""


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return f"localhost:{s.getsockname()[1]}"


def env() -> dict:
    return {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": ROOT,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONHASHSEED": "0",
        "JAX_PLATFORMS": "cpu",
    }


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Wait for every process until a shared deadline; kill all of them on any failure."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def train(tmp_path, count: int, steps: int = 3) -> list[dict]:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    address = free_address()
    outs = [tmp_path / f"weights_{count}_{i}.npz" for i in range(count)]
    processes = [
        start([str(script), address, str(count), str(i), str(outs[i]), str(steps)])
        for i in range(count)
    ]
    for code, out in finish(processes, timeout=120):
        assert code == 0, out[-3000:]
    return [dict(np.load(out)) for out in outs]


@pytest.mark.subprocess
def test_two_processes_train_like_one(tmp_path):
    (one,) = train(tmp_path, 1)
    first, second = train(tmp_path, 2)
    assert one.keys() == first.keys()
    initialized = next(k for k in one if k.endswith("initialized"))
    assert one[initialized] and first[initialized], "k-means initialised the codebook"
    for key in one:
        np.testing.assert_allclose(first[key], one[key], atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(second[key], first[key], err_msg=key)


def recipe_command(out, address, index, extra=()):
    return [
        os.path.join(RECIPES, "train_vqvae.py"),
        *f"--out {out} --image-size 8 --filters 4 --num-embeddings 8 --embedding-dim 4".split(),
        *"--batch-size 16 --epochs 2 --steps-per-epoch 2 --num-images 4 --verbose 2".split(),
        *f"--backend jax --distribute multi_process --coordinator-address {address}".split(),
        *f"--num-processes 2 --process-id {index}".split(),
        *extra,
    ]


@pytest.mark.subprocess
def test_recipe_outputs_are_written_once_by_process_zero(tmp_path):
    out, address = tmp_path / "run", free_address()
    results = finish([start(recipe_command(out, address, i)) for i in range(2)], timeout=150)
    for code, text in results:
        assert code == 0, text[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "DONE",
            "config.json",
            "logs",
            "metrics.json",
            "preset",
            "reconstructions.png",
            "vqvae.keras",
        ]
    )
    assert f"outputs in {out}" in results[0][1]
    assert f"outputs in {out}" not in results[1][1]  # process 1 wrote to a private directory
    private = results[1][1].split("outputs in ")[-1].split()[0]
    assert not os.path.exists(private), "process 1's private directory is removed at exit"
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["process_id"] == 0 and config["args"]["num_processes"] == 2
    m0 = json.loads(results[0][1][results[0][1].index("{") : results[0][1].rindex("}") + 1])
    m1 = json.loads(results[1][1][results[1][1].index("{") : results[1][1].rindex("}") + 1])
    assert m0["test_reconstruction_mse"] == pytest.approx(m1["test_reconstruction_mse"], 1e-6)


@pytest.mark.slow  # JAX notices a dead peer after its 100 s heartbeat timeout
@pytest.mark.subprocess
def test_killing_one_process_fails_the_other(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    address = free_address()
    processes = [
        start([str(script), address, "2", str(i), str(tmp_path / f"w{i}.npz"), "4000"])
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "TRAINING" not in line:
            assert time.monotonic() < deadline, "process 1 did not start training in 60 s"
            line = processes[1].stdout.readline()
            assert line or processes[1].poll() is None, "process 1 ended early"
        time.sleep(2)
        os.kill(processes[1].pid, signal.SIGKILL)
        processes[0].communicate(timeout=150)
        assert processes[0].returncode != 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "backend, distribute, message",
    [
        ("torch", "data_parallel", "Keras 3.15 has no torch distribution"),
        ("torch", "multi_process", "Keras 3.15 has no torch distribution"),
        ("tensorflow", "multi_process", "needs the JAX backend"),
    ],
)
def test_distributions_an_engine_lacks_are_usage_errors(tmp_path, backend, distribute, message):
    out = tmp_path / "run"
    args = [os.path.join(RECIPES, "train_vqvae.py"), "--out", str(out), "--backend", backend]
    result = finish([start([*args, "--distribute", distribute])], timeout=60)[0]
    assert result[0] == 2, result[1][-2000:]
    assert message in result[1] and "multi_process" in result[1]
    assert not out.exists()
