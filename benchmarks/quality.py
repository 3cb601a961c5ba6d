"""Held-out quality of the VQ-VAE and VAE, next to the keras.io VQ-VAE example trained alike.

    python -m benchmarks.quality                         # offline digits, 20 epochs, TF
    python -m benchmarks.quality --quick                 # 2 epochs, IWAE with 20 samples
    python -m benchmarks.quality --data-dir ~/tensorflow_datasets --mnist-epochs 3
    python -m benchmarks.quality --backend jax --models vqvae_ema_restart vae

Data: the offline ``digits`` resized to 32×32 (8×8 codes), the fixed ``split="train"`` for
training and ``split="test"`` (360 images) for every figure; with ``--data-dir`` holding
TFDS ``mnist``, also MNIST at 28×28 (7×7 codes, filters (32, 64)). Models, all K=128, D=16,
Adam(1e-3), the same batch size and epochs, one subprocess each:

- ``vqvae_ema_restart``: ``VQVAE(ema_decay=0.99, dead_code_threshold=1.0)``;
- ``vqvae``: ``VQVAE()``, codebook learnt by gradients, no restarts;
- ``vae``: ``VAE(latent_dim=16)``, Bernoulli likelihood;
- ``kerasio``: the keras.io example (``benchmarks/_kerasio_vqvae.py``) on tf_keras, as
  published (data shifted by -0.5, MSE divided by the training variance);
- ``kerasio_keras3``: the same code run as-is on Keras 3 (TF backend only), whose raw
  ``tf.Variable`` codebook Keras 3 does not train.

One JSON line per (dataset, model): held-out ``mse`` (pixels in [0, 1]); for VQ models the
test-set ``perplexity`` of code usage and ``codes_used`` (fraction of the K codes used on the
test set; target ≥ 0.9 with EMA + restart); for the VAE ``elbo_nats`` (mean per-image ELBO,
1 sample), ``iwae_nll_nats`` (``-log_likelihood(num_samples=--iwae-samples)``); and training
``images_per_s`` (epochs after the first). Each VQ-VAE line carries ``mse_vs_kerasio`` (ours /
example's held-out MSE; ≤ 1 means at least as good, the target).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ("vqvae_ema_restart", "vqvae", "vae", "kerasio", "kerasio_keras3")
NUM_EMBEDDINGS, EMBEDDING_DIM = 128, 16
CODES_USED_TARGET = 0.9


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--epochs", type=int, default=20, help="digits epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--dead-code-threshold", type=float, default=1.0)
    parser.add_argument("--iwae-samples", type=int, default=200)
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir holding mnist")
    parser.add_argument("--mnist-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 20 IWAE samples")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.mnist_epochs, args.iwae_samples = 2, 1, 20
    return args


# ------------------------------------------------------------------ data
def load_splits(dataset: str, args):
    """(train tf.data.Dataset, test images as NumPy, image shape, filters)."""
    import numpy as np

    from keras_vq import data

    image_size = 32 if dataset == "digits" else None
    common = {"image_size": image_size, "data_dir": args.data_dir}
    train = data.load(
        dataset,
        split="train",
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
        drop_remainder=True,
        **common,
    )
    test = data.load(dataset, split="test", batch_size=512, shuffle=False, **common)
    test_images = np.concatenate(list(test.as_numpy_iterator()))
    return train, test_images, tuple(test_images.shape[1:]), (32, 64)


def epoch_timer(keras):
    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.durations: list[float] = []
            self.images = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.durations.append(time.perf_counter() - self._start)

    return EpochTimer()


def _batches(x, size: int = 128):
    for start in range(0, len(x), size):
        yield x[start : start + size]


def code_stats(codes, num_embeddings: int) -> dict:
    import numpy as np

    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=num_embeddings)
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "perplexity": round(float(np.exp(-(nz * np.log(nz)).sum())), 2),
        "codes_used": round(float((counts > 0).mean()), 4),
        "codes_used_target": CODES_USED_TARGET,
    }


# ------------------------------------------------------------------ one model
def train_and_evaluate(model_name: str, dataset: str, args) -> dict:
    import numpy as np

    from benchmarks import _kerasio_vqvae

    train, test_x, image_shape, filters = load_splits(dataset, args)
    epochs = args.epochs if dataset == "digits" else args.mnist_epochs
    record = {
        "benchmark": "quality",
        "dataset": dataset,
        "model": model_name,
        "image_shape": list(image_shape),
        "epochs": epochs,
        "batch_size": args.batch_size,
        "test_images": len(test_x),
    }
    if model_name.startswith("kerasio"):
        flavour = "keras3" if model_name == "kerasio_keras3" else "tf_keras"
        keras = _kerasio_vqvae.import_keras(flavour)
        train_x = np.concatenate(list(train.as_numpy_iterator()))
        model = _kerasio_vqvae.build_trainer(
            keras, float(np.var(train_x)), image_shape, EMBEDDING_DIM, NUM_EMBEDDINGS
        )
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
        fit_data = train.map(lambda x: x - 0.5)
        record["backend"] = "tensorflow"
        record["keras"] = flavour
        record["codebook_trained"] = _kerasio_vqvae.codebook_trains(model)
    else:
        import keras

        from keras_vq.models import VAE, VQVAE

        keras.utils.set_random_seed(args.seed)
        if model_name == "vae":
            model = VAE(input_shape=image_shape, latent_dim=16, filters=filters, seed=args.seed)
        else:
            ema = model_name == "vqvae_ema_restart"
            model = VQVAE(
                input_shape=image_shape,
                num_embeddings=NUM_EMBEDDINGS,
                embedding_dim=EMBEDDING_DIM,
                ema_decay=0.99 if ema else None,
                dead_code_threshold=args.dead_code_threshold if ema else 0.0,
                filters=filters,
                seed=args.seed,
            )
            record["ema_decay"] = 0.99 if ema else None
            record["dead_code_threshold"] = args.dead_code_threshold if ema else 0.0
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
        fit_data = train
        record["backend"] = keras.backend.backend()
    timer = epoch_timer(keras)
    start = time.perf_counter()
    history = model.fit(fit_data, epochs=epochs, verbose=0, callbacks=[timer])
    record["train_s"] = round(time.perf_counter() - start, 1)
    steps = len(train)
    later = timer.durations[1:] or timer.durations
    record["images_per_s"] = round(steps * args.batch_size * len(later) / sum(later), 1)
    record["final_train_loss"] = round(float(history.history["loss"][-1]), 5)

    if model_name.startswith("kerasio"):
        quantizer = _kerasio_vqvae.quantizer(model)
        encoder = model.vqvae.get_layer("encoder")
        errors, codes = [], []
        for x in _batches(test_x - 0.5):
            recon = model.vqvae(x, training=False).numpy()
            errors.append(((recon - x) ** 2).reshape(len(x), -1).mean(axis=1))
            z = encoder(x, training=False).numpy()
            codes.append(quantizer.get_code_indices(z.reshape(-1, z.shape[-1])).numpy())
        record["mse"] = round(float(np.concatenate(errors).mean()), 6)
        record.update(code_stats(np.concatenate(codes), NUM_EMBEDDINGS))
        return record

    from keras import ops

    errors = []
    for x in _batches(test_x):
        recon = ops.convert_to_numpy(model(x, training=False))
        errors.append(((recon - x) ** 2).reshape(len(x), -1).mean(axis=1))
    record["mse"] = round(float(np.concatenate(errors).mean()), 6)
    if model_name == "vae":
        elbo = [ops.convert_to_numpy(model.elbo(x, seed=args.seed)) for x in _batches(test_x)]
        record["elbo_nats"] = round(float(np.concatenate(elbo).mean()), 3)
        start = time.perf_counter()
        log_px = [
            ops.convert_to_numpy(
                model.log_likelihood(x, num_samples=args.iwae_samples, seed=args.seed)
            )
            for x in _batches(test_x)
        ]
        record["iwae_nll_nats"] = round(-float(np.concatenate(log_px).mean()), 3)
        record["iwae_samples"] = args.iwae_samples
        record["iwae_s"] = round(time.perf_counter() - start, 1)
        record["final_kl_loss"] = round(float(history.history["kl_loss"][-1]), 4)
    else:
        codes = [ops.convert_to_numpy(model.encode(x)) for x in _batches(test_x)]
        record.update(code_stats(np.concatenate(codes), NUM_EMBEDDINGS))
    return record


def run_child(args) -> None:
    from benchmarks import _harness
    from benchmarks.train_throughput import versions

    model_name, dataset = args._child.split(":")
    record = train_and_evaluate(model_name, dataset, args)
    record.update(versions())
    record.update(_harness.machine())
    _harness.emit(record)


def mnist_available(args) -> str | None:
    """Why MNIST is skipped, or None when TFDS has it prepared."""
    if args.data_dir is None:
        return "no --data-dir given (TFDS mnist is not downloaded by benchmarks)"
    try:
        import tensorflow_datasets as tfds

        if not tfds.builder("mnist", data_dir=args.data_dir).is_prepared():
            return f"mnist is not prepared in {args.data_dir}"
    except Exception as error:
        return f"{type(error).__name__}: {error}"[:300]
    return None


def add_comparisons(records: list[dict]) -> list[dict]:
    kerasio = {
        r["dataset"]: r["mse"] for r in records if r.get("model") == "kerasio" and "mse" in r
    }
    for r in records:
        if r.get("model", "").startswith("vqvae") and "mse" in r and r["dataset"] in kerasio:
            r["kerasio_mse"] = kerasio[r["dataset"]]
            r["mse_vs_kerasio"] = round(r["mse"] / kerasio[r["dataset"]], 3)
            r["mse_at_least_as_good"] = r["mse"] <= kerasio[r["dataset"]]
        if "codes_used" in r and r.get("model") == "vqvae_ema_restart":
            r["codes_used_target_met"] = r["codes_used"] >= CODES_USED_TARGET
    return records


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        run_child(args)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    datasets = ["digits"]
    records = []
    skip = mnist_available(args)
    if skip is None:
        datasets.append("mnist")
    else:
        records.append({"benchmark": "quality", "dataset": "mnist", "skipped": skip})
    for dataset in datasets:
        for model in args.models:
            backend = "tensorflow" if model.startswith("kerasio") else args.backend
            if model == "kerasio_keras3" and args.backend != "tensorflow":
                continue  # the Keras 3 port of the example needs the TF backend
            env = {
                **os.environ,
                "KERAS_BACKEND": backend,
                "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
            }
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            cmd = [sys.executable, "-m", "benchmarks.quality", "--_child", f"{model}:{dataset}"]
            for flag in (
                "epochs",
                "batch_size",
                "learning_rate",
                "dead_code_threshold",
                "iwae_samples",
                "mnist_epochs",
                "seed",
            ):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            failed = {"benchmark": "quality", "dataset": dataset, "model": model}
            try:
                result = subprocess.run(
                    cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout
                )
                lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
                if result.returncode or not lines:
                    print(result.stderr[-3000:], file=sys.stderr)
                    tail = result.stderr.strip().splitlines()[-1:] or [""]
                    failed["error"] = f"exit {result.returncode}: {tail[0][-300:]}"
                    records.append(failed)
                else:
                    records.append(json.loads(lines[-1]))
            except subprocess.TimeoutExpired:
                records.append({**failed, "error": f"timeout after {args.timeout:.0f} s"})
    for record in add_comparisons(records):
        print(json.dumps(record, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
