"""Is the input pipeline fast enough? Images/s delivered by ``keras_vq.data.load`` against
images/s consumed by a small conv autoencoder training step.

Prints one JSON line per dataset:
``{"benchmark": "data_pipeline", "dataset": "digits", "images_per_s": ...,
"train_step_images_per_s": ..., "backend": ...}``. A ratio above 1 means the data keeps up.

    python benchmarks/data_pipeline.py                       # digits, offline, < 1 minute
    python benchmarks/data_pipeline.py --data-dir ~/tensorflow_datasets --dataset mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# keras first: with the torch backend it imports torch before TensorFlow (avoids a crash).
import keras
import numpy as np

from keras_vq import data


def pipeline_images_per_s(dataset, epochs: int) -> float:
    """Images/s over ``epochs`` full passes, after one warm-up pass that fills the cache."""

    def one_epoch() -> int:
        count = 0
        for batch in dataset.as_numpy_iterator():  # what fit() does on JAX / torch
            count += len(batch[0] if isinstance(batch, tuple) else batch)
        return count

    one_epoch()
    start = time.perf_counter()
    images = sum(one_epoch() for _ in range(epochs))
    return images / (time.perf_counter() - start)


def train_step_images_per_s(image_shape: tuple, batch_size: int, steps: int) -> float:
    """Images/s through ``train_on_batch`` of a small conv autoencoder, after warm-up."""
    channels = image_shape[-1]
    model = keras.Sequential(
        [
            keras.Input(image_shape),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2DTranspose(
                channels, 3, strides=2, padding="same", activation="sigmoid"
            ),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    batch = np.random.default_rng(0).random((batch_size, *image_shape), dtype=np.float32)
    for _ in range(3):
        model.train_on_batch(batch, batch)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(batch, batch)
    return steps * batch_size / (time.perf_counter() - start)


def measure(name: str, args: argparse.Namespace) -> dict:
    dataset = data.load(
        name,
        batch_size=args.batch_size,
        image_size=args.image_size,
        data_dir=args.data_dir,
        seed=0,
    )
    image_shape = tuple(dataset.element_spec.shape[1:])
    return {
        "benchmark": "data_pipeline",
        "dataset": name,
        "image_shape": list(image_shape),
        "batch_size": args.batch_size,
        "images_per_s": round(pipeline_images_per_s(dataset, args.epochs), 1),
        "train_step_images_per_s": round(
            train_step_images_per_s(image_shape, args.batch_size, args.steps), 1
        ),
        "backend": keras.backend.backend(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32, help="resize to this square size")
    parser.add_argument("--epochs", type=int, default=5, help="timed passes over each dataset")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data_dir; also benchmarks --dataset when given"
    )
    parser.add_argument("--dataset", default="mnist", help="TFDS dataset read from --data-dir")
    args = parser.parse_args(argv)

    names = ["digits"] + ([args.dataset] if args.data_dir else [])
    for name in names:
        try:
            result = measure(name, args)
        except data.DatasetNotFoundError as error:
            print(f"skipping {name}: {error}", file=sys.stderr)
            continue
        ratio = result["images_per_s"] / result["train_step_images_per_s"]
        result["pipeline_to_train_ratio"] = round(ratio, 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
