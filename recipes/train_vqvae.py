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
# The VQ-VAE's flags, named like VQVAE's arguments (and config.json's record of them).
VQ_FLAGS = ("num_embeddings", "embedding_dim", "beta", "ema_decay", "dead_code_threshold")
MODEL_FLAGS = ("filters", "downsample", *VQ_FLAGS)


def build_parser():
    return _flags.training_parser(
        __doc__, "runs/train_vqvae", _flags.add_vqvae_args, _flags.add_image_args
    )


def setup(args, run: Run) -> dict:
    """Check the data and build the VQ-VAE (a usage error if either fails); writes nothing."""
    from keras_vq.models import VQVAE

    if args.quantizer == "vq":

        def build_vq(**kwargs):
            if kwargs.get("ema_decay") == 0:  # 0: a codebook learnt by gradients
                kwargs["ema_decay"] = None
            return VQVAE(**kwargs)

        return _train.setup_autoencoder(args, run, build_vq, MODEL_FLAGS)

    def build(**kwargs):
        # Built here, inside the run's distribution scope, like the model around it.
        return VQVAE(quantizer=make_quantizer(args), **kwargs)

    # The other quantizers take the VQ flags themselves (rvq) or have none (fsq, lfq).
    recorded = VQ_FLAGS[:1] + VQ_FLAGS[2:] if args.quantizer == "rvq" else ()
    return _train.setup_autoencoder(
        args, run, build, ("filters", "downsample", "embedding_dim"), recorded
    )


def make_quantizer(args):
    """The quantizer layer of ``--quantizer`` (not ``vq``) from its flags; rvq's stages take
    the VQ flags, unset ones the defaults of VQVAE's own quantizer."""
    from keras_vq.layers import FiniteScalarQuantizer, LookupFreeQuantizer, ResidualVectorQuantizer
    from keras_vq.models import vqvae

    def flag(name: str):
        value = getattr(args, name)
        return getattr(vqvae, f"DEFAULT_{name.upper()}") if value is None else value

    if args.quantizer == "rvq":
        return ResidualVectorQuantizer(
            args.num_quantizers,
            flag("num_embeddings"),
            flag("embedding_dim"),
            quantize_dropout=args.quantize_dropout,
            seed=args.seed,
            beta=flag("beta"),
            ema_decay=flag("ema_decay") or None,
            dead_code_threshold=flag("dead_code_threshold"),
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
