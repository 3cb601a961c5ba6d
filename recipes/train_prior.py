"""Train a gated PixelCNN prior (keras_vq.models.PixelCNNPrior) on a VQ-VAE's codes.

The images of --dataset are encoded once by the trained VQ-VAE (--vqvae, a .keras file from
train_vqvae.py) with keras_vq.data.encode_dataset; --conditional adds the class labels.
Writes to --out: config.json, prior.keras, logs/ (TensorBoard), backup/ (checkpoint every
epoch; rerun the same command to resume), samples.png (codes ~ prior, decoded by the VQ-VAE;
a conditional prior shows one class per column) and metrics.json (held-out NLL per code).

Example:
    python recipes/train_vqvae.py --out runs/train_vqvae
    python recipes/train_prior.py --vqvae runs/train_vqvae/vqvae.keras --out runs/prior
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common

RECIPE = "train_prior"
MODEL_FILE = "prior.keras"


def build_parser():
    parser = _common.new_parser(__doc__)
    parser.add_argument(
        "--vqvae", default="runs/train_vqvae/vqvae.keras", help="trained VQ-VAE (.keras)"
    )
    _common.add_data_args(parser, image_size=False)
    _common.add_prior_args(parser)
    _common.add_train_args(parser, epochs=20, batch_size=64, learning_rate=1e-3)
    _common.add_sampling_args(parser)
    _common.add_run_args(parser, out="runs/train_prior")
    return parser


def setup(args) -> dict:
    """Load the VQ-VAE, check the data and the sampling flags and build the prior (each a
    usage error if it fails); writes nothing."""
    vqvae = _common.load_model(args.vqvae, ("VQVAE",), "--vqvae")
    info = _common.dataset_info(args)
    if info.image_shape[-1] != vqvae.image_shape[-1]:
        raise _common.RecipeError(
            f"--vqvae {args.vqvae} takes {vqvae.image_shape[-1]}-channel images but "
            f"--dataset {args.dataset} has {info.image_shape[-1]} channels."
        )
    num_classes = None
    if args.conditional:
        num_classes = info.num_classes
        if num_classes is None:
            raise _common.RecipeError(f"--conditional: {args.dataset!r} has no class labels.")
    size = tuple(vqvae.image_shape[:2])

    def images(split, **kwargs):
        return _common.load_split(
            args, split, image_size=size, shuffle=False, with_labels=args.conditional, **kwargs
        )

    train_images = images("train", batch_size=256)
    eval_images = images(args.eval_split, batch_size=256)
    # The training codes are batched with drop_remainder: --batch-size must not exceed the set.
    images("train", batch_size=args.batch_size, drop_remainder=True)
    if args.num_samples:
        _common.class_labels(args.labels, args.num_samples, num_classes)
    prior = build_prior(args, vqvae, num_classes)
    return {
        "vqvae": vqvae,
        "prior": prior,
        "train_images": train_images,
        "eval_images": eval_images,
    }


def build_prior(args, vqvae, num_classes: int | None):
    """The compiled PixelCNN prior for ``vqvae``'s codes; bad flags are a usage error."""
    import keras

    import keras_vq

    with _common.strategy_scope():
        try:
            prior = keras_vq.models.PixelCNNPrior(
                num_embeddings=vqvae.num_embeddings,
                latent_shape=tuple(vqvae.latent_shape),
                num_layers=args.num_layers,
                filters=args.prior_filters,
                kernel_size=args.kernel_size,
                num_classes=num_classes,
            )
        except ValueError as error:
            raise _common.RecipeError(str(error)) from None
        prior.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    return prior


def train(args, run: _common.Run, *, vqvae, prior, train_images, eval_images) -> dict:
    """Encode the data, fit, save and evaluate the prior built by :func:`setup`; returns the
    metrics."""

    def codes(images, label, **kwargs):
        return _common.encode_split(
            vqvae,
            images,
            with_labels=args.conditional,
            verbose=args.verbose,
            label=label,
            **kwargs,
        )

    train_codes = codes(
        train_images,
        "train",
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
        drop_remainder=True,
    )
    eval_codes = codes(
        eval_images,
        args.eval_split,
        batch_size=_common.eval_batch_size(args),
        drop_remainder=_common.even_batches(args),
    )
    summary = _common.fit(prior, run, train_codes, validation_data=eval_codes)
    prior.save(run.path(MODEL_FILE))
    evaluation = prior.evaluate(eval_codes, verbose=0, return_dict=True)
    metrics = {
        "test_nll_nats_per_code": float(evaluation["loss"]),
        "test_bits_per_code": float(evaluation["loss"]) / math.log(2.0),
        "test_accuracy": float(evaluation["accuracy"]),
        "num_embeddings": vqvae.num_embeddings,
        "latent_shape": list(vqvae.latent_shape),
        "num_classes": prior.num_classes,
    }
    if args.num_samples:
        write_samples(args, run, vqvae, prior, "samples.png")
    return {**summary, **metrics, "model": MODEL_FILE, "vqvae": args.vqvae}


def write_samples(args, run: _common.Run, vqvae, prior, name: str):
    """Sample ``--num-samples`` images (codes ~ prior, then decode) into a PNG grid."""
    labels = _common.class_labels(args.labels, args.num_samples, prior.num_classes)
    images = _common.sample_prior_images(
        vqvae,
        prior,
        args.num_samples,
        temperature=args.temperature,
        seed=args.seed,
        labels=labels,
        batch_size=args.sample_batch_size,
        verbose=args.verbose,
    )
    ncols = prior.num_classes if labels is not None and args.labels in (None, "cycle") else None
    _common.save_grid(run.path(name), images, ncols=ncols)
    _common.write_tensorboard_images(run.log_dir, "samples", images[:16])
    return images


def main(argv=None) -> int:
    args = _common.parse_args(build_parser(), argv)
    return _common.run_recipe(RECIPE, args, train, setup)


if __name__ == "__main__":
    sys.exit(main())
