"""Train a VQ-VAE (keras_vq.models.VQVAE).

Writes to --out: config.json, vqvae.keras, logs/ (TensorBoard: losses, perplexity,
reconstructions), backup/ (checkpoint every epoch; rerun the same command to resume),
reconstructions.png (rows of test images, each followed by their reconstructions) and
metrics.json (held-out reconstruction MSE, perplexity, codes used).

Example:
    python recipes/train_vqvae.py --out runs/vqvae            # digits at 32x32 -> 8x8 codes
"""

from __future__ import annotations

import sys

import _flags
import _run
import _train
from _rundir import Run

RECIPE = "train_vqvae"
MODEL_FILE = "vqvae.keras"


def build_parser():
    return _flags.training_parser(
        __doc__, "runs/train_vqvae", _flags.add_vqvae_args, _flags.add_image_args
    )


def setup(args, run: Run) -> dict:
    """Check the data and build the VQ-VAE (a usage error if either fails); writes nothing."""
    from keras_vq.models import VQVAE

    return _train.setup_autoencoder(
        args,
        run,
        VQVAE,
        ("num_embeddings", "embedding_dim", "beta", "dead_code_threshold"),
        ema_decay=args.ema_decay or None,  # 0: a codebook learnt by gradients
    )


def train(args, run: Run, *, model, data) -> dict:
    """Fit, save and evaluate the VQ-VAE built by :func:`setup`; returns the metrics."""
    metrics = _train.fit_autoencoder(args, run, model, data, MODEL_FILE)
    return {**metrics, "latent_shape": list(model.latent_shape)}


def main(argv=None) -> int:
    return _run.main(RECIPE, build_parser(), train, setup, argv)


if __name__ == "__main__":
    sys.exit(main())
