"""Held-out quality of the VQ-VAE and VAE, next to a naive VQ-VAE trained alike.

    python -m benchmarks.quality                         # offline digits, 20 epochs, TF
    python -m benchmarks.quality --quick                 # 2 epochs, IWAE with 20 samples
    python -m benchmarks.quality --data-dir ~/tensorflow_datasets --mnist-epochs 3
    python -m benchmarks.quality --backend jax --models vqvae_ema_restart vae

Data: the offline ``digits`` resized to 32×32 (8×8 codes), the fixed ``split="train"`` for
training and ``split="test"`` (360 images) for every figure; with ``--data-dir`` holding
TFDS ``mnist``, also MNIST at 28×28 (7×7 codes). Models, all K=128, D=16, encoder/decoder
filters (32, 64), Adam(1e-3), the same batch size and epochs, one subprocess each, all on
``--backend``:

- ``vqvae_ema_restart``: ``VQVAE(ema_decay=0.99, dead_code_threshold=1.0)``;
- ``vqvae``: ``VQVAE(ema_decay=None, dead_code_threshold=0.0)``, codebook learnt by gradients,
  no restarts (the defaults before issue 17);
- ``vae``: ``VAE(latent_dim=16)``, Bernoulli likelihood;
- ``naive_vqvae``: the baseline, ``benchmarks.naive_vqvae.NaiveVQVAE`` (the paper's equations
  in plain ``keras.ops``, gradient codebook) around the same encoder and decoder as ``VQVAE``.

One JSON line per (dataset, model): held-out ``mse`` (pixels in [0, 1]); for VQ models the
test-set code usage from ``keras_vq.metrics.code_usage`` (``perplexity``, ``used_codes``,
``used_fraction``, ``dead_codes``; target ``used_fraction`` ≥ 0.9 with EMA + restart); for the
VAE ``elbo_nats`` (mean per-image ELBO, 1 sample), ``iwae_nll_nats``
(``-log_likelihood(num_samples=--iwae-samples)``); and training ``images_per_s`` (epochs after
the first). Each keras_vq VQ-VAE line carries ``mse_vs_naive`` (ours / the naive model's
held-out MSE; ≤ 1 means at least as good, the target).
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks import _harness

MODELS = ("vqvae_ema_restart", "vqvae", "vae", "naive_vqvae")
NUM_EMBEDDINGS, EMBEDDING_DIM = 128, 16
USED_FRACTION_TARGET = 0.9


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        choices=_harness.BACKENDS,
    )
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


# ------------------------------------------------------------------ one model
def build(model_name: str, image_shape, filters, args):
    """The compiled model and the ``fit`` data transform it needs."""
    import keras

    from benchmarks.naive_vqvae import NaiveVQVAE
    from keras_vq.models import VAE, VQVAE, networks

    keras.utils.set_random_seed(args.seed)
    optimizer = keras.optimizers.Adam(args.learning_rate)
    if model_name == "vae":
        model = VAE(input_shape=image_shape, latent_dim=16, filters=filters, seed=args.seed)
    elif model_name == "naive_vqvae":
        grid = networks.latent_grid(image_shape, filters)
        model = NaiveVQVAE(
            networks.build_conv_encoder(image_shape, EMBEDDING_DIM, filters),
            networks.build_conv_decoder((*grid, EMBEDDING_DIM), image_shape[-1], filters[::-1]),
            NUM_EMBEDDINGS,
        )
        model.compile(optimizer=optimizer, loss="mse")
        return model, lambda x: (x, x)
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
    model.compile(optimizer=optimizer)
    return model, None


def train_and_evaluate(model_name: str, dataset: str, args) -> dict:
    import keras
    import numpy as np
    from keras import ops

    from keras_vq.metrics import code_usage

    train, test_x, image_shape, filters = load_splits(dataset, args)
    epochs = args.epochs if dataset == "digits" else args.mnist_epochs
    record = {
        "benchmark": "quality",
        "backend": keras.backend.backend(),
        "dataset": dataset,
        "model": model_name,
        "image_shape": list(image_shape),
        "epochs": epochs,
        "batch_size": args.batch_size,
        "test_images": len(test_x),
    }
    if model_name == "vqvae_ema_restart":
        record.update(ema_decay=0.99, dead_code_threshold=args.dead_code_threshold)
    model, transform = build(model_name, image_shape, filters, args)
    timer = epoch_timer(keras)
    start = time.perf_counter()
    fit_data = train if transform is None else train.map(transform)
    history = model.fit(fit_data, epochs=epochs, verbose=0, callbacks=[timer])
    record["train_s"] = round(time.perf_counter() - start, 1)
    later = timer.durations[1:] or timer.durations
    record["images_per_s"] = round(len(train) * args.batch_size * len(later) / sum(later), 1)
    record["final_train_loss"] = round(float(history.history["loss"][-1]), 5)

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
        return record
    codes = np.concatenate([ops.convert_to_numpy(model.encode(x)) for x in _batches(test_x)])
    usage = {k: float(v) for k, v in code_usage(codes, NUM_EMBEDDINGS).items()}
    record.update(
        perplexity=round(usage["perplexity"], 2),
        used_codes=int(usage["used_codes"]),
        used_fraction=round(usage["used_fraction"], 4),
        dead_codes=int(usage["dead_codes"]),
    )
    record["used_fraction_target"] = USED_FRACTION_TARGET
    return record


def run_child(args) -> None:
    model_name, dataset = args._child.split(":")
    record = train_and_evaluate(model_name, dataset, args)
    _harness.emit({**record, **_harness.versions(), **_harness.machine()})


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
    """``mse_vs_naive`` on keras_vq's VQ-VAE lines; whether the code-usage target is met."""
    naive = {
        r["dataset"]: r["mse"] for r in records if r.get("model") == "naive_vqvae" and "mse" in r
    }
    for r in records:
        if r.get("model", "").startswith("vqvae") and "mse" in r and r["dataset"] in naive:
            r["naive_mse"] = naive[r["dataset"]]
            r["mse_vs_naive"] = round(r["mse"] / naive[r["dataset"]], 3)
            r["mse_at_least_as_good"] = r["mse"] <= naive[r["dataset"]]
        if "used_fraction" in r and r.get("model") == "vqvae_ema_restart":
            r["used_fraction_target_met"] = r["used_fraction"] >= USED_FRACTION_TARGET
    return records


def run_all(args) -> list[dict]:
    """One child process per (dataset, model); then the comparisons with the naive model."""
    datasets = ["digits"]
    records = []
    skip = mnist_available(args)
    if skip is None:
        datasets.append("mnist")
    else:
        records.append({"benchmark": "quality", "dataset": "mnist", "skipped": skip})
    forwarded = _harness.flags(
        args,
        "epochs",
        "batch_size",
        "learning_rate",
        "dead_code_threshold",
        "iwae_samples",
        "mnist_epochs",
        "seed",
        "data_dir",
    )
    configurations = [
        (
            args.backend,
            [*forwarded, "--_child", f"{model}:{dataset}"],
            {"benchmark": "quality", "dataset": dataset, "model": model},
        )
        for dataset in datasets
        for model in args.models
    ]
    records += _harness.run_configurations("quality", configurations, timeout=args.timeout)
    return add_comparisons(records)


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
