"""VQ-VAE training images/s: keras_vq's ``VQVAE`` against the keras.io VQ-VAE example.

    python -m benchmarks.train_throughput              # all backends, jit on and off
    python -m benchmarks.train_throughput --quick      # TF only, a few steps
    python -m benchmarks.train_throughput --backends tensorflow --steps 40 --repeats 5

Same networks, same data shapes, same optimizer, batch 128: the keras.io example's MNIST model
(28×28×1 synthetic images, encoder Conv2D 32/64 s2 + 1×1 to D=16, mirrored Conv2DTranspose
decoder, K=128) trained by the example's own ``VectorQuantizer`` + ``VQVAETrainer``
(``benchmarks/_kerasio_vqvae.py``) and by ``keras_vq.models.VQVAE`` with those same networks
passed as ``encoder=``/``decoder=``. The baseline runs in two flavours: on ``tf_keras``
(Keras 2, which it was written for; its codebook trains) and as-is on Keras 3's TF backend
(its raw ``tf.Variable`` codebook is then silently not trained — a little less work per step).
Ours runs on every backend, with ``compile(jit_compile=False)`` and ``jit_compile=True``.

One subprocess per (backend, jit_compile). On TensorFlow the three models share it: each is
built and warmed up (``--warmup`` steps: tracing, compilation), then they take turns in
``--repeats`` rounds of one timed ``fit`` of ``--steps`` steps each (timed from the end of
the first step to the end of the last), so load from other processes hits all of them alike
(on a shared machine, ratios between separate processes are noise). One JSON line per model
and ``jit_compile`` (median and best images/s over the rounds); ours carry ``ratio`` = ours /
baseline for the same ``jit_compile`` (the ``tf_keras`` flavour, the published behaviour;
on JAX/torch it compares across processes and backends) and ``ratio_vs_keras3_port``. The
last line summarises the target: ≥ 1.2× on TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
TARGET = 1.2
IMAGE_SHAPE = (28, 28, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25, help="steps per timed fit")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--max-seconds", type=float, default=40, help="cap per timed fit")
    parser.add_argument("--num-embeddings", type=int, default=128)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--ema-decay", type=float, default=None, help="ours only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--quick", action="store_true", help="TF only, 6 steps, 1 repeat")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.backends, args.steps, args.repeats, args.warmup = ["tensorflow"], 6, 1, 2
    return args


# ------------------------------------------------------------------ shared timing helpers
def make_step_timer(keras, warmup: int = 0, max_seconds: float | None = None):
    """A callback recording the end time of every training batch (works on tf_keras too).

    Keras 3 syncs the logs of a callback that is not async-safe, so on JAX the recorded times
    follow the computation, not its dispatch.
    """

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []
            self.sizes: list[int] = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            if max_seconds and len(self.times) > warmup + 2:
                if self.times[-1] - self.times[warmup] > max_seconds:
                    self.model.stop_training = True

        def images_per_s(self, batch_size: int) -> tuple[float, int]:
            """Images/s over the steps after the ``warmup``-th, and how many were timed."""
            timed = len(self.times) - 1 - warmup
            if timed < 1:
                raise RuntimeError(f"only {len(self.times)} steps ran; need {warmup + 2}")
            return batch_size * timed / (self.times[-1] - self.times[warmup]), timed

    return StepTimer()


def time_fit(keras, model, x, batch_size: int, max_seconds: float) -> tuple[float, int]:
    """Images/s of one ``fit`` pass over ``x`` (first step excluded) and the steps timed."""
    timer = make_step_timer(keras, warmup=0, max_seconds=max_seconds)
    y = x if model.name == "plain_ae" else None
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return timer.images_per_s(batch_size)


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("keras", "tensorflow", "tf_keras", "jax", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------ one configuration
def _build(model_name: str, args, images):
    """(keras module, compiled model, training images, record fields) for one model."""
    import numpy as np

    from benchmarks import _kerasio_vqvae

    jit_compile = args.jit_compile
    if model_name.startswith("kerasio_"):
        keras = _kerasio_vqvae.import_keras(model_name.removeprefix("kerasio_"))
        # The example trains on (x / 255) - 0.5 and divides the MSE by Var[x / 255].
        images = images - 0.5
        model = _kerasio_vqvae.build_trainer(
            keras,
            float(np.var(images)),
            IMAGE_SHAPE,
            latent_dim=args.embedding_dim,
            num_embeddings=args.num_embeddings,
        )
        model.compile(optimizer=keras.optimizers.Adam(), jit_compile=jit_compile)
        fields = {
            "backend": "tensorflow",
            "codebook_trained": _kerasio_vqvae.codebook_trains(model),
        }
        return keras, model, images, fields
    import keras

    from keras_vq.models import VQVAE

    if model_name == "plain_ae":
        # The same networks without a quantizer, trained by Keras' stock step: the floor
        # that the backend's convolutions set.
        encoder = _kerasio_vqvae.get_encoder(keras, IMAGE_SHAPE, args.embedding_dim)
        decoder = _kerasio_vqvae.get_decoder(keras, IMAGE_SHAPE, args.embedding_dim)
        inputs = keras.Input(IMAGE_SHAPE)
        model = keras.Model(inputs, decoder(encoder(inputs)), name="plain_ae")
        model.compile(optimizer=keras.optimizers.Adam(), loss="mse", jit_compile=jit_compile)
        return keras, model, images, {"backend": keras.backend.backend()}

    model = VQVAE(
        input_shape=IMAGE_SHAPE,
        num_embeddings=args.num_embeddings,
        embedding_dim=args.embedding_dim,
        ema_decay=args.ema_decay,
        encoder=_kerasio_vqvae.get_encoder(keras, IMAGE_SHAPE, args.embedding_dim),
        decoder=_kerasio_vqvae.get_decoder(keras, IMAGE_SHAPE, args.embedding_dim),
    )
    model.compile(optimizer=keras.optimizers.Adam(), jit_compile=jit_compile)
    fields = {"backend": keras.backend.backend(), "ema_decay": args.ema_decay}
    return keras, model, images, fields


def run_child(args) -> None:
    """Build, warm up, then time the models of one process in alternating rounds."""
    import numpy as np

    from benchmarks import _harness

    models, jit = args._child.split(":")
    args.jit_compile = jit == "on"
    rng = np.random.default_rng(0)
    images = rng.random((args.batch_size * args.steps, *IMAGE_SHAPE), dtype=np.float32)
    built = {}
    for name in models.split(","):
        record = {
            "benchmark": "train_throughput",
            "model": name,
            "jit_compile": args.jit_compile,
            "batch_size": args.batch_size,
            "num_embeddings": args.num_embeddings,
            "embedding_dim": args.embedding_dim,
        }
        try:
            keras, model, x, fields = _build(name, args, images)
            record.update(fields)
            start = time.perf_counter()
            warm = x[: args.batch_size * args.warmup]
            y = warm if name == "plain_ae" else None
            model.fit(warm, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
            record["warmup_s"] = round(time.perf_counter() - start, 2)
            built[name] = (keras, model, x, record, [], [])
        except Exception as error:
            _harness.emit({**record, "error": f"{type(error).__name__}: {error}"[:400]})
    for _ in range(args.repeats):
        for name, (keras, model, x, record, rates, steps) in list(built.items()):
            try:
                rate, timed = time_fit(keras, model, x, args.batch_size, args.max_seconds)
            except Exception as error:
                _harness.emit({**record, "error": f"{type(error).__name__}: {error}"[:400]})
                del built[name]
                continue
            rates.append(rate)
            steps.append(timed)
    for _, _, _, record, rates, steps in built.values():
        record["images_per_s"] = round(statistics.median(rates), 1)
        record["images_per_s_best"] = round(max(rates), 1)
        record["timed_steps"] = sum(steps)
        record["repeats"] = args.repeats
        record.update(versions())
        record.update(_harness.machine())
        _harness.emit(record)


def configurations(args) -> list[tuple[str, str, str]]:
    """(backend, comma-separated models, jit): TF baselines and ours share one process."""
    configs = []
    for jit in args.jit:
        for backend in args.backends:
            models = "keras_vq,plain_ae"
            if backend == "tensorflow":
                models = "kerasio_tf_keras,kerasio_keras3,keras_vq,plain_ae"
            configs.append((backend, models, jit))
    return configs


def add_ratios(records: list[dict]) -> list[dict]:
    """Ours / reference (same jit_compile) on every keras_vq record, plus a summary line.

    ``ratio``: vs the keras.io example on tf_keras (TF); ``ratio_vs_keras3_port``: vs the
    example run as-is on Keras 3 (TF); ``ratio_vs_plain_ae``: vs the same networks without a
    quantizer on the same backend (what keras_vq's quantizer and step cost on top).
    """
    ref = {
        (r["model"], r["jit_compile"], r.get("backend")): r["images_per_s"]
        for r in records
        if r["model"] != "keras_vq" and "images_per_s" in r
    }
    for r in records:
        if r["model"] != "keras_vq" or "images_per_s" not in r:
            continue
        for model, key, backend in (
            ("kerasio_tf_keras", "ratio", "tensorflow"),
            ("kerasio_keras3", "ratio_vs_keras3_port", "tensorflow"),
            ("plain_ae", "ratio_vs_plain_ae", r["backend"]),
        ):
            if (model, r["jit_compile"], backend) in ref:
                r[key] = round(r["images_per_s"] / ref[(model, r["jit_compile"], backend)], 3)
    ours_tf = [r for r in records if r["model"] == "keras_vq" and r.get("backend") == "tensorflow"]
    summary = {"benchmark": "train_throughput_summary", "target_ratio_tf": TARGET}
    for r in ours_tf:
        if "ratio" in r:
            summary[f"ratio_tf_{'jit' if r['jit_compile'] else 'nojit'}"] = r["ratio"]
    best_ours = max((r["images_per_s"] for r in ours_tf if "images_per_s" in r), default=None)
    best_base = max((v for (m, _, _), v in ref.items() if m == "kerasio_tf_keras"), default=None)
    if best_ours and best_base:
        summary["ratio_tf_best_vs_best"] = round(best_ours / best_base, 3)
        summary["target_met"] = all(
            v >= TARGET for k, v in summary.items() if k.startswith("ratio_tf_")
        )
    return [*records, summary]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        run_child(args)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    records = []
    for backend, models, jit in configurations(args):
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--_child", f"{models}:{jit}"]
        for flag in ("batch_size", "steps", "repeats", "warmup", "max_seconds"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        cmd += ["--num-embeddings", str(args.num_embeddings)]
        cmd += ["--embedding-dim", str(args.embedding_dim)]
        if args.ema_decay is not None:
            cmd += ["--ema-decay", str(args.ema_decay)]
        failed = {
            "benchmark": "train_throughput",
            "model": models,
            "backend": backend,
            "jit_compile": jit == "on",
        }
        try:
            result = subprocess.run(
                cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout
            )
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            records += [json.loads(line) for line in lines]
            if result.returncode or len(lines) < len(models.split(",")):
                print(result.stderr[-3000:], file=sys.stderr)
                tail = result.stderr.strip().splitlines()[-1:] or [""]
                records.append({**failed, "error": f"exit {result.returncode}: {tail[0][-300:]}"})
        except subprocess.TimeoutExpired:
            records.append({**failed, "error": f"timeout after {args.timeout:.0f} s"})
    for record in add_ratios(records):
        print(json.dumps(record, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
