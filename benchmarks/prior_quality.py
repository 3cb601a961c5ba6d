"""Held-out NLL of the two priors on the same VQ-VAE codes, at equal training time.

    KERAS_BACKEND=tensorflow python -m benchmarks.prior_quality            # a few minutes
    KERAS_BACKEND=tensorflow python -m benchmarks.prior_quality --quick    # smoke run
    python -m benchmarks.prior_quality --vqvae-preset vqvae_digits --seeds 0,1 \\
        --transformer "" --transformer "num_layers=2,hidden_dim=64,dropout=0.3"

The codes: a ``VQVAE`` (its defaults unless ``--downsample``/``--num-embeddings``) trained
briefly on the offline ``digits`` resized to 32×32 (``--vqvae-epochs``), or the VQ-VAE of a
preset (``--vqvae-preset vqvae_digits``: the main job's 4×4 maps of 64 codes). The fixed
train and test splits are encoded once. Then, for each seed of ``--seeds``, every prior
configuration (``--pixelcnn`` and ``--transformer``, each repeatable: ``key=value`` pairs of
constructor arguments, plus ``lr`` and ``weight_decay`` (AdamW) for the optimizer; an empty
string: the model's defaults, Adam 1e-3) trains on the train codes for the same ``--seconds``
(batches of ``--batch-size``), with the test codes as ``validation_data``.

The budget is process CPU time (``time.process_time``, all threads, the per-epoch validation
included), counted from the end of the first step (which compiles it): on a shared machine
the other processes' load then favours neither prior. Training stops at the first batch past
it. The held-out NLL is in bits per code (``-log2 p(c_t | c_<t)`` averaged over positions and
maps; lower is better): ``test_bits_last`` of the last weights and ``test_bits_best`` of the
epoch with the lowest one (what ``keras_vq.callbacks.RestoreBestWeights``, which
``recipes/train_prior.py`` uses, keeps). One JSON line per seed and configuration.
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
    parser.add_argument("--vqvae-preset", default=None, help="encode with this preset's VQVAE")
    parser.add_argument("--downsample", type=int, default=None, help="VQVAE's (default: 4)")
    parser.add_argument("--num-embeddings", type=int, default=None, help="VQVAE's (128)")
    parser.add_argument("--conditional", action="store_true", help="class-conditional priors")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument(
        "--pixelcnn", action="append", help="'key=value,...' ('': defaults, 'none': skip)"
    )
    parser.add_argument("--transformer", action="append", help="as --pixelcnn")
    parser.add_argument("--quick", action="store_true", help="10 s per prior, 2 VQ-VAE epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.vqvae_epochs = 10.0, 2
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.pixelcnn = [""] if args.pixelcnn is None else args.pixelcnn
    args.transformer = [""] if args.transformer is None else args.transformer
    return args


def parse_config(text: str) -> dict:
    """``"num_layers=2,dropout=0.3"`` → ``{"num_layers": 2, "dropout": 0.3}``."""
    config = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        number = float(value)
        config[key.strip()] = int(number) if number.is_integer() and "." not in value else number
    return config


def codes_of(args):
    """``({"train": ..., "test": ...} code datasets, K, latent_shape)``."""
    import keras

    from keras_vq import presets
    from keras_vq.data import encode_dataset, load
    from keras_vq.models import VQVAE

    def images(split, **kwargs):
        return load("digits", split, image_size=32, with_labels=args.conditional, **kwargs)

    keras.utils.set_random_seed(0)
    if args.vqvae_preset:
        vqvae = presets.load(args.vqvae_preset)
    else:
        vqvae = VQVAE(
            input_shape=(32, 32, 1),
            downsample=args.downsample,
            num_embeddings=args.num_embeddings,
            seed=0,
        )
        vqvae.compile(optimizer=keras.optimizers.Adam(1e-3))
        train = load("digits", "train", batch_size=64, shuffle=True, image_size=32, seed=0)
        vqvae.fit(train, epochs=args.vqvae_epochs, verbose=0)
    codes = {
        split: encode_dataset(
            vqvae,
            images(split, batch_size=256, shuffle=False),
            with_labels=args.conditional,
            batch_size=args.batch_size,
            shuffle=split == "train",
            seed=0,
        )
        for split in ("train", "test")
    }
    return codes, vqvae.num_embeddings, tuple(vqvae.latent_shape)


def main(argv=None) -> None:
    args = parse_args(argv)  # before importing Keras: --help answers at once

    import keras

    from benchmarks import _harness
    from keras_vq.callbacks import RestoreBestWeights
    from keras_vq.models import PixelCNNPrior, TransformerPrior

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

    codes, k, latent_shape = codes_of(args)
    classes = {"num_classes": 10} if args.conditional else {}
    runs = [(PixelCNNPrior, "pixelcnn", c) for c in args.pixelcnn if c != "none"]
    runs += [(TransformerPrior, "transformer", c) for c in args.transformer if c != "none"]
    bits = 1.0 / math.log(2.0)
    for seed in args.seeds:
        for model_class, name, text in runs:
            config = parse_config(text)
            learning_rate = config.pop("lr", 1e-3)
            weight_decay = config.pop("weight_decay", 0.0)
            keras.utils.set_random_seed(seed)
            prior = model_class(k, latent_shape, **classes, **config)
            optimizer = (
                keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
                if weight_decay
                else keras.optimizers.Adam(learning_rate)
            )
            prior.compile(optimizer=optimizer)
            budget, best = TimeBudget(args.seconds), RestoreBestWeights("val_loss")
            start = time.process_time()
            history = prior.fit(
                codes["train"],
                epochs=100_000,
                validation_data=codes["test"],
                verbose=0,
                callbacks=[budget, best],
            ).history
            cpu = time.process_time() - start
            losses = history["val_loss"]
            _harness.emit(
                {
                    "benchmark": "prior_quality",
                    "backend": keras.backend.backend(),
                    "prior": name,
                    "config": text or "defaults",
                    "seed": seed,
                    "num_embeddings": k,
                    "latent_shape": list(latent_shape),
                    "conditional": args.conditional,
                    "vqvae": args.vqvae_preset or f"VQVAE trained {args.vqvae_epochs} epochs",
                    "train_seconds_each": args.seconds,
                    "cpu_seconds": round(cpu, 1),
                    "steps": budget.steps,
                    "epochs": len(losses),
                    "best_epoch": best.best_epoch,
                    "test_bits_last": round(losses[-1] * bits, 4),
                    "test_bits_best": round(min(losses) * bits, 4),
                    "train_bits_last": round(history["loss"][-1] * bits, 4),
                    "train_bits_at_best": round(history["loss"][best.best_epoch] * bits, 4),
                    "params": prior.count_params(),
                    "lr": learning_rate,
                    "weight_decay": weight_decay,
                    "batch_size": args.batch_size,
                    **_harness.machine(),
                }
            )


if __name__ == "__main__":
    main()
