"""Train a VAE (keras_vq.models.VAE) by maximising the ELBO.

Writes to --out: config.json, vae.keras, logs/ (TensorBoard: losses, reconstructions,
samples), backup/ (checkpoint every epoch; rerun the same command to resume),
samples.png (decoded z ~ N(0, I)), reconstructions.png and metrics.json (held-out
reconstruction MSE, ELBO and IWAE negative log-likelihood in nats and bits/dim).

Example:
    python recipes/train_vae.py --out runs/vae --latent-dim 16
"""

from __future__ import annotations

import sys

import _defaults
import _flags
import _run
import _train
from _rundir import Run

RECIPE = "train_vae"
MODEL_FILE = "vae.keras"


# The flags passed to VAE(...), named like its arguments.
MODEL_FLAGS = ("latent_dim", "filters", "likelihood", "beta")


def vae_args(parser) -> None:
    group = parser.add_argument_group("VAE")

    def model_arg(flag, help_text, **kwargs):  # VAE's argument named like the flag
        owners = [("", "models/vae.py", "VAE", flag[2:].replace("-", "_"))]
        _defaults.add_model_arg(group, flag, owners, help_text, **kwargs)

    model_arg("--latent-dim", "latent dimensions", type=_flags.positive_int)
    model_arg(
        "--filters",
        "encoder widths, one per halving (reversed for the decoder)",
        type=_flags.positive_int,
        nargs="+",
    )
    model_arg(
        "--likelihood",
        "p(x|z); discretized_logistic: 256 bins per pixel, for colour images",
        choices=("bernoulli", "gaussian", "discretized_logistic"),
    )
    model_arg("--beta", "KL weight (1: the ELBO)", type=_defaults.non_negative_float)
    group.add_argument(
        "--iwae-samples",
        type=_flags.positive_int,
        default=100,
        help="importance samples of the held-out IWAE log-likelihood",
    )


def build_parser():
    return _flags.training_parser(
        __doc__,
        "runs/train_vae",
        vae_args,
        lambda parser: _flags.add_image_args(parser, num_samples=True),
    )


def setup(args, run: Run) -> dict:
    """Check the data and build the VAE (a usage error if either fails); writes nothing."""
    from keras_vq.models import VAE

    return _train.setup_autoencoder(args, run, VAE, MODEL_FLAGS)


def train(args, run: Run, *, model, data) -> dict:
    """Fit, save and evaluate the VAE built by :func:`setup`; returns the metrics."""
    from keras_vq import callbacks, evaluation, visualization

    samples = callbacks.SampleImages(run.log_dir / "images", num_samples=8, seed=args.seed)
    metrics = _train.fit_autoencoder(args, run, model, data, MODEL_FILE, (samples,))
    likelihood = evaluation.evaluate_likelihood(
        model,
        data["eval_data"],
        num_samples=args.iwae_samples,
        seed=args.seed,
        verbose=args.verbose,
    )
    metrics["iwae_samples"] = likelihood.pop("iwae_samples")
    metrics.update({f"test_{key}": value for key, value in likelihood.items()})
    if args.num_samples:
        samples = model.sample(args.num_samples, seed=args.seed)
        visualization.save_image_grid(run.path("samples.png"), samples)
    return metrics


def main(argv=None) -> int:
    return _run.main(RECIPE, build_parser(), train, setup, argv)


if __name__ == "__main__":
    sys.exit(main())
