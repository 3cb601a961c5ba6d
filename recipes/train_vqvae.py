"""Train a VQ-VAE (keras_vq.models.VQVAE).

Writes to --out: config.json, vqvae.keras, logs/ (TensorBoard: losses, perplexity,
reconstructions), backup/ (checkpoint every epoch; rerun the same command to resume),
reconstructions.png (rows of test images, each followed by their reconstructions) and
metrics.json (held-out reconstruction MSE, perplexity, codes used).

--quantizer picks the quantizer: vq (VectorQuantizer, the default), rvq
(ResidualVectorQuantizer: --num-quantizers stages of --num-embeddings codes, EMA and restarts
as for vq, --quantize-dropout), fsq (FiniteScalarQuantizer with --levels) or lfq
(LookupFreeQuantizer with --num-bits); config.json records it with the other flags.

Example:
    python recipes/train_vqvae.py --out runs/vqvae            # digits at 32x32 -> 8x8 codes
    python recipes/train_vqvae.py --quantizer fsq --levels 8 5 5 5 --out runs/fsq
"""

from __future__ import annotations

import sys

import _flags
import _run
import _train
from _rundir import Run

RECIPE = "train_vqvae"
MODEL_FILE = "vqvae.keras"
DEFAULT_EMBEDDING_DIM = 16  # of vq and rvq; fsq and lfq default to their own code size


def build_parser():
    return _flags.training_parser(
        __doc__, "runs/train_vqvae", _flags.add_vqvae_args, _flags.add_image_args
    )


def setup(args, run: Run) -> dict:
    """Check the data and build the VQ-VAE (a usage error if either fails); writes nothing."""
    from keras_vq.models import VQVAE

    if args.quantizer == "vq":
        return _train.setup_autoencoder(
            args,
            run,
            VQVAE,
            ("num_embeddings", "beta", "dead_code_threshold"),
            embedding_dim=args.embedding_dim or DEFAULT_EMBEDDING_DIM,
            ema_decay=args.ema_decay or None,  # 0: a codebook learnt by gradients
        )

    def build(**kwargs):
        # Built here, inside the run's distribution scope, like the model around it.
        return VQVAE(quantizer=make_quantizer(args), embedding_dim=args.embedding_dim, **kwargs)

    return _train.setup_autoencoder(args, run, build, ())


def make_quantizer(args):
    """The quantizer layer of ``--quantizer`` (not ``vq``) from its flags."""
    from keras_vq.layers import FiniteScalarQuantizer, LookupFreeQuantizer, ResidualVectorQuantizer

    if args.quantizer == "rvq":
        return ResidualVectorQuantizer(
            args.num_quantizers,
            args.num_embeddings,
            args.embedding_dim or DEFAULT_EMBEDDING_DIM,
            quantize_dropout=args.quantize_dropout,
            seed=args.seed,
            beta=args.beta,
            ema_decay=args.ema_decay or None,
            dead_code_threshold=args.dead_code_threshold,
        )
    if args.quantizer == "fsq":
        return FiniteScalarQuantizer(args.levels)
    return LookupFreeQuantizer(num_bits=args.num_bits)


def train(args, run: Run, *, model, data) -> dict:
    """Fit, save and evaluate the VQ-VAE built by :func:`setup`; returns the metrics."""
    metrics = _train.fit_autoencoder(args, run, model, data, MODEL_FILE)
    return {
        **metrics,
        "latent_shape": list(model.latent_shape),
        "quantizer": args.quantizer,
        "num_embeddings": model.num_embeddings,
        "code_shape": list(model.code_shape),
    }


def main(argv=None) -> int:
    return _run.main(RECIPE, build_parser(), train, setup, argv)


if __name__ == "__main__":
    sys.exit(main())
