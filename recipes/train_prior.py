"""Train an autoregressive prior on a VQ-VAE's codes: a gated PixelCNN
(keras_vq.models.PixelCNNPrior, --prior pixelcnn, the default) or a decoder-only transformer
(keras_vq.models.TransformerPrior, --prior transformer; --num-layers blocks of --hidden-dim
wide, --num-heads heads, --dropout).

The images of --dataset are encoded once by the trained VQ-VAE (--vqvae, a .keras file from
train_vqvae.py) with keras_vq.data.encode_dataset; --conditional adds the class labels, and
--label-dropout trains a null class too, for classifier-free guidance (--guidance-scale).
--guidance-scale and --top-p are saved in the prior as its sampling defaults (sample.py,
ImageGenerator and export_generator use them unless told otherwise).
--keep-best (the default) keeps the weights of the epoch with the lowest held-out NLL.
--shifted-copies N adds the codes of N copies of the training images, each image shifted by a
random whole pixel (-1, 0 or 1) along each axis; --init-prior starts from a saved prior's
weights (the same architecture), e.g. to fine-tune such a prior on the unshifted codes alone.
Writes to --out: config.json, prior.keras, logs/ (TensorBoard), backup/ (checkpoint every
epoch; rerun the same command to resume), samples.png (codes ~ prior, decoded by the VQ-VAE;
a conditional prior shows one class per column) and metrics.json (held-out NLL per code and
the sample quality of --quality-samples images: sample_fd, sample_precision, ...; also in
logs/sample_quality).

Example:
    python recipes/train_vqvae.py --out runs/train_vqvae
    python recipes/train_prior.py --vqvae runs/train_vqvae/vqvae.keras --out runs/prior
    python recipes/train_prior.py --vqvae runs/train_vqvae/vqvae.keras --out runs/tprior \
        --prior transformer --num-layers 4 --hidden-dim 128 --num-heads 4
    python recipes/train_prior.py --vqvae runs/train_vqvae/vqvae.keras --out runs/cfg \
        --conditional --label-dropout 0.1 --guidance-scale 3 --top-p 0.9
    python recipes/train_prior.py --vqvae runs/train_vqvae/vqvae.keras --out runs/shifted \
        --conditional --label-dropout 0.1 --shifted-copies 2 --epochs 15
    python recipes/train_prior.py --vqvae runs/train_vqvae/vqvae.keras --out runs/tuned \
        --conditional --label-dropout 0.1 --init-prior runs/shifted/prior.keras \
        --learning-rate 3e-4 --epochs 3
"""

from __future__ import annotations

import argparse
import math
import sys

import _defaults
import _flags
import _inputs
import _quality
import _run
import _sampling
import _train
from _rundir import Run

RECIPE = "train_prior"
MODEL_FILE = "prior.keras"
# The prior's flags and the argument each sets, per --prior. --guidance-scale and --top-p
# (sampling flags) are also the prior's own defaults, so the saved prior samples as the run did.
MODEL_FLAGS = {
    "pixelcnn": {
        "num_layers": "num_layers",
        "prior_filters": "filters",
        "kernel_size": "kernel_size",
        "label_dropout": "label_dropout",
        "guidance_scale": "guidance_scale",
        "top_p": "top_p",
    },
    "transformer": {
        f: f
        for f in (
            "num_layers",
            "num_heads",
            "hidden_dim",
            "dropout",
            "label_dropout",
            "guidance_scale",
            "top_p",
        )
    },
}


def build_parser():
    return _flags.training_parser(
        __doc__,
        "runs/train_prior",
        add_prior_args,
        _sampling.add_sampling_args,
        model_file=("--vqvae", "trained VQ-VAE (.keras)"),
    )


PRIORS = ("pixelcnn", "transformer")


def add_prior_args(parser) -> None:
    """The PixelCNN flags (``--num-layers`` counts the blocks of either prior), ``--prior``
    and the transformer's own flags."""
    _flags.add_prior_args(parser)
    group = parser.add_argument_group("prior choice and transformer prior")
    group.add_argument("--prior", choices=PRIORS, default="pixelcnn", help="prior model")

    def model_arg(flag, help_text, type):  # TransformerPrior's argument named like the flag
        owners = [("", "models/transformer.py", "TransformerPrior", flag[2:].replace("-", "_"))]
        _defaults.add_model_arg(group, flag, owners, help_text, type=type)

    model_arg("--num-heads", "transformer attention heads", _flags.positive_int)
    model_arg("--hidden-dim", "transformer width; a multiple of --num-heads", _flags.positive_int)
    model_arg("--dropout", "transformer dropout rate, in [0, 1)", _defaults.unit_interval)
    parser.add_argument(
        "--shifted-copies",
        type=_flags.non_negative_int,
        default=0,
        help="also train on the codes of this many copies of the training images, each image "
        "shifted by a random whole pixel (-1, 0 or 1) along each axis (0: none)",
    )
    parser.add_argument(
        "--init-prior",
        default=None,
        help="start from the weights of this saved prior (.keras, the same architecture), "
        "e.g. to fine-tune a --shifted-copies prior on the unshifted codes",
    )
    parser.add_argument(
        "--keep-best",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end on the weights of the epoch with the lowest held-out NLL (the --eval-split "
        "loss; keras_vq.callbacks.RestoreBestWeights), not the last epoch's",
    )


def setup(args, run: Run) -> dict:
    """Load the VQ-VAE, check the data and the sampling flags and build the prior (each a
    usage error if it fails); writes nothing."""
    vqvae = _inputs.load_model(args.vqvae, ("VQVAE",), "--vqvae")
    if tuple(vqvae.code_shape) != tuple(vqvae.latent_shape):
        raise _flags.RecipeError(
            f"--vqvae {args.vqvae} codes each position with {vqvae.code_shape[-1]} residual "
            "stages (a ResidualVectorQuantizer); a prior models one code per position: train "
            "the VQ-VAE with --quantizer vq, fsq or lfq."
        )
    info = _inputs.dataset_info(args)
    if info.image_shape[-1] != vqvae.image_shape[-1]:
        raise _flags.RecipeError(
            f"--vqvae {args.vqvae} takes {vqvae.image_shape[-1]}-channel images but "
            f"--dataset {args.dataset} has {info.image_shape[-1]} channels."
        )
    num_classes = None
    if args.conditional:
        num_classes = info.num_classes
        if num_classes is None:
            raise _flags.RecipeError(f"--conditional: {args.dataset!r} has no class labels.")
    size = tuple(vqvae.image_shape[:2])

    def images(split, **kwargs):
        return _inputs.load_split(
            args, split, image_size=size, shuffle=False, with_labels=args.conditional, **kwargs
        )

    train_images = images("train", batch_size=256)
    train_images = _inputs.shifted_copies(train_images, args.shifted_copies, args.seed)
    eval_images = images(args.eval_split, batch_size=256)
    # The training codes are batched with drop_remainder: --batch-size must not exceed the set.
    images("train", batch_size=args.batch_size, drop_remainder=True)
    if args.num_samples:
        _inputs.class_labels(args.labels, args.num_samples, num_classes)
    _quality.enabled(args)  # a bad --quality-samples fails before training
    prior = build_prior(args, run, vqvae, num_classes)
    if args.init_prior is not None:
        _inputs.load_weights_into(prior, args.init_prior, _inputs.PRIORS, "--init-prior")
    if args.num_samples:
        _sampling.sampling_options(args, prior)
    return {
        "vqvae": vqvae,
        "prior": prior,
        "train_images": train_images,
        "eval_images": eval_images,
    }


def build_prior(args, run: Run, vqvae, num_classes: int | None):
    """The compiled prior (``--prior``) for ``vqvae``'s codes; bad flags are a usage error.
    Unset flags pass nothing (the prior's defaults apply) and then record its values."""
    from keras_vq.models import PixelCNNPrior, TransformerPrior

    if args.label_dropout and num_classes is None:
        raise _flags.RecipeError("--label-dropout needs --conditional (class labels).")
    flags = MODEL_FLAGS[args.prior]
    kwargs = {arg: getattr(args, flag) for flag, arg in flags.items()}
    kwargs = {arg: value for arg, value in kwargs.items() if value is not None}
    kwargs.update(
        num_embeddings=vqvae.num_embeddings,
        latent_shape=tuple(vqvae.latent_shape),
        num_classes=num_classes,
    )
    model_class = TransformerPrior if args.prior == "transformer" else PixelCNNPrior
    prior = _train.build_model(run, args.learning_rate, lambda: model_class(**kwargs))
    config = prior.get_config()
    _defaults.record_model_values(args, {flag: config[arg] for flag, arg in flags.items()})
    return prior


def train(args, run: Run, *, vqvae, prior, train_images, eval_images) -> dict:
    """Encode the data, fit, save and evaluate the prior built by :func:`setup`; returns the
    metrics."""
    from keras_vq.callbacks import RestoreBestWeights
    from keras_vq.data import encode_dataset

    def codes(images, label, **kwargs):
        if args.verbose:
            print(f"Encoding {label} images into codes:", flush=True)
        return encode_dataset(
            vqvae, images, with_labels=args.conditional, verbose=args.verbose, **kwargs
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
        batch_size=_inputs.eval_batch_size(args),
        drop_remainder=_inputs.even_batches(args),
    )
    # In memory on one process; a multi_process run's weights span the processes.
    keep_best = args.keep_best and args.distribute != "multi_process"
    best = RestoreBestWeights("val_loss") if keep_best else None
    callbacks = () if best is None else (best,)
    summary = _train.fit(
        prior, run, train_codes, validation_data=eval_codes, extra_callbacks=callbacks
    )
    if best is not None and best.best_epoch is not None:
        summary["best_epoch"] = best.best_epoch + 1  # 1-based, as the epochs counted
    prior.save(run.path(MODEL_FILE))
    evaluation = prior.evaluate(eval_codes, verbose=0, return_dict=True)
    metrics = {
        "test_nll_nats_per_code": float(evaluation["loss"]),
        "test_bits_per_code": float(evaluation["loss"]) / math.log(2.0),
        "test_accuracy": float(evaluation["accuracy"]),
        "num_embeddings": vqvae.num_embeddings,
        "latent_shape": list(vqvae.latent_shape),
        "num_classes": prior.num_classes,
        "prior": type(prior).__name__,
    }
    if args.num_samples:
        write_samples(args, run, vqvae, prior, "samples.png")
    draw = _quality.prior_sampler(args, vqvae, prior)
    metrics.update(_quality.measure(args, run, draw, vqvae.image_shape, prior.num_classes))
    metrics["sampling"] = _sampling.sampling_record(args, prior)
    return {**summary, **metrics, "model": MODEL_FILE, "vqvae": args.vqvae}


def write_samples(args, run: Run, vqvae, prior, name: str):
    """Sample ``--num-samples`` images (codes ~ prior, then decode) into a PNG grid and the
    first 16 into TensorBoard; returns them."""
    from keras_vq import visualization
    from keras_vq.backend import to_numpy
    from keras_vq.models import generate

    labels = _inputs.class_labels(args.labels, args.num_samples, prior.num_classes)
    if args.verbose:
        print(f"Sampling {args.num_samples} images, {args.sample_batch_size} at once.", flush=True)
    images = generate(
        vqvae,
        prior,
        args.num_samples,
        temperature=args.temperature,
        seed=args.seed,
        labels=labels,
        batch_size=args.sample_batch_size,
        **_sampling.sampling_options(args, prior),
    )
    images = to_numpy(images)
    ncols = prior.num_classes if labels is not None and args.labels in (None, "cycle") else None
    visualization.save_image_grid(run.path(name), images, ncols=ncols)
    visualization.write_tensorboard_images(run.log_dir / "images", "samples", images[:16])
    return images


def main(argv=None) -> int:
    return _run.main(RECIPE, build_parser(), train, setup, argv)


if __name__ == "__main__":
    sys.exit(main())
