"""Held-out NLL of the two priors on the same VQ-VAE codes, at equal training time.

    KERAS_BACKEND=tensorflow python -m benchmarks.prior_quality            # a few minutes
    KERAS_BACKEND=tensorflow python -m benchmarks.prior_quality --quick    # smoke run

A default ``VQVAE`` (K = 128 codes, 8×8 code maps) is trained briefly on the offline
``digits`` resized to 32×32 (``--vqvae-epochs``), the fixed train and test splits are encoded
once, and then a ``PixelCNNPrior`` and a ``TransformerPrior`` (their defaults unless flags say
otherwise) each train on the train codes for the same ``--seconds`` (batches of
``--batch-size``, Adam). The budget is process CPU time (``time.process_time``, all threads),
counted from the end of the first step (which compiles it): on a shared machine the other
processes' load then favours neither prior (on an idle machine it is wall-clock time times
the threads used). Training stops at the first batch past it. Each prior is then evaluated on
the test codes: the held-out NLL in bits per code (``-log2 p(c_t | c_<t)`` averaged over
positions and maps; lower is better). One JSON line with both figures and
``transformer_minus_pixelcnn_bits``.
"""

from __future__ import annotations

import argparse
import math
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=90.0, help="training CPU seconds per prior"
    )
    parser.add_argument("--vqvae-epochs", type=int, default=10)
    parser.add_argument("--downsample", type=int, default=None, help="VQVAE's (default: 4)")
    parser.add_argument("--num-embeddings", type=int, default=None, help="VQVAE's (128)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pixelcnn-lr", type=float, default=1e-3)
    parser.add_argument("--transformer-lr", type=float, default=1e-3)
    parser.add_argument("--pixelcnn-layers", type=int, default=6)
    parser.add_argument("--pixelcnn-filters", type=int, default=64)
    parser.add_argument("--transformer-layers", type=int, default=4)
    parser.add_argument("--transformer-heads", type=int, default=4)
    parser.add_argument("--transformer-hidden-dim", type=int, default=128)
    parser.add_argument("--transformer-dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 s per prior, 2 VQ-VAE epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.vqvae_epochs = 10.0, 2
    return args


def main(argv=None) -> None:
    args = parse_args(argv)  # before importing Keras: --help answers at once

    import keras

    from benchmarks import _harness
    from keras_vq.data import encode_dataset, load
    from keras_vq.models import VQVAE, PixelCNNPrior, TransformerPrior

    class TimeBudget(keras.callbacks.Callback):
        """Stops training at the first batch that ends ``seconds`` of process CPU time after
        the first batch (which compiles the step) ended."""

        def __init__(self, seconds: float):
            super().__init__()
            self.seconds, self.steps, self.start = seconds, 0, 0.0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == 1:
                self.start = time.process_time()
            elif time.process_time() - self.start >= self.seconds:
                self.model.stop_training = True

    keras.utils.set_random_seed(args.seed)
    images = {
        split: load(
            "digits",
            split,
            batch_size=args.batch_size,
            shuffle=split == "train",
            image_size=32,
            seed=args.seed,
        )
        for split in ("train", "test")
    }
    vqvae = VQVAE(
        input_shape=(32, 32, 1),
        downsample=args.downsample,
        num_embeddings=args.num_embeddings,
        seed=args.seed,
    )
    vqvae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vqvae.fit(images["train"], epochs=args.vqvae_epochs, verbose=0)
    codes = {
        split: encode_dataset(
            vqvae,
            load("digits", split, batch_size=256, shuffle=False, image_size=32),
            batch_size=args.batch_size,
            shuffle=split == "train",
            seed=args.seed,
        )
        for split in ("train", "test")
    }
    k, latent_shape = vqvae.num_embeddings, tuple(vqvae.latent_shape)

    priors = {
        "pixelcnn": (
            lambda: PixelCNNPrior(
                k, latent_shape, num_layers=args.pixelcnn_layers, filters=args.pixelcnn_filters
            ),
            args.pixelcnn_lr,
        ),
        "transformer": (
            lambda: TransformerPrior(
                k,
                latent_shape,
                num_layers=args.transformer_layers,
                num_heads=args.transformer_heads,
                hidden_dim=args.transformer_hidden_dim,
                dropout=args.transformer_dropout,
            ),
            args.transformer_lr,
        ),
    }
    record = {
        "benchmark": "prior_quality",
        "backend": keras.backend.backend(),
        "num_embeddings": k,
        "latent_shape": list(latent_shape),
        "train_seconds_each": args.seconds,
        "vqvae_epochs": args.vqvae_epochs,
        "batch_size": args.batch_size,
    }
    for name, (build, learning_rate) in priors.items():
        keras.utils.set_random_seed(args.seed)
        prior = build()
        prior.compile(optimizer=keras.optimizers.Adam(learning_rate))
        budget = TimeBudget(args.seconds)
        history = prior.fit(codes["train"], epochs=100_000, verbose=0, callbacks=[budget])
        test = prior.evaluate(codes["test"], verbose=0, return_dict=True)
        record.update(
            {
                f"{name}_test_bits_per_code": round(test["loss"] / math.log(2.0), 4),
                f"{name}_train_bits_per_code": round(
                    history.history["loss"][-1] / math.log(2.0), 4
                ),
                f"{name}_steps": budget.steps,
                f"{name}_epochs": len(history.history["loss"]),
                f"{name}_params": prior.count_params(),
                f"{name}_lr": learning_rate,
            }
        )
    record["transformer_minus_pixelcnn_bits"] = round(
        record["transformer_test_bits_per_code"] - record["pixelcnn_test_bits_per_code"], 4
    )
    record.update(
        transformer_layers=args.transformer_layers,
        transformer_heads=args.transformer_heads,
        transformer_hidden_dim=args.transformer_hidden_dim,
        transformer_dropout=args.transformer_dropout,
        pixelcnn_layers=args.pixelcnn_layers,
        pixelcnn_filters=args.pixelcnn_filters,
        **_harness.machine(),
    )
    _harness.emit(record)


if __name__ == "__main__":
    main()
