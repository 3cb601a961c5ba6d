"""Train a VAE (keras_vq.models.VAE) by maximising the ELBO.

Writes to --out: config.json, vae.keras, logs/ (TensorBoard: losses, reconstructions,
samples), backup/ (checkpoint every epoch; rerun the same command to resume),
samples.png (decoded z ~ N(0, I)), reconstructions.png and metrics.json (held-out
reconstruction MSE, ELBO and IWAE negative log-likelihood in nats and bits/dim).

Example:
    python recipes/train_vae.py --out runs/vae --latent-dim 16
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common

RECIPE = "train_vae"
MODEL_FILE = "vae.keras"


def build_parser():
    parser = _common.new_parser(__doc__)
    _common.add_data_args(parser)
    group = parser.add_argument_group("VAE")
    group.add_argument("--latent-dim", type=_common.positive_int, default=16)
    group.add_argument(
        "--filters",
        type=_common.positive_int,
        nargs="+",
        default=[32, 64],
        help="encoder filters (reversed for the decoder)",
    )
    group.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    group.add_argument("--beta", type=float, default=1.0, help="KL weight (1: the ELBO)")
    group.add_argument(
        "--iwae-samples",
        type=_common.positive_int,
        default=100,
        help="importance samples of the held-out IWAE log-likelihood",
    )
    _common.add_train_args(parser, epochs=20, batch_size=64, learning_rate=1e-3)
    group = parser.add_argument_group("images")
    group.add_argument(
        "--num-samples", type=_common.non_negative_int, default=64, help="images in samples.png"
    )
    group.add_argument(
        "--num-images",
        type=_common.non_negative_int,
        default=32,
        help="test images in reconstructions.png (0: none)",
    )
    _common.add_run_args(parser, out="runs/train_vae")
    return parser


def evaluate_likelihood(vae, dataset, num_samples: int, seed: int, verbose: int) -> dict:
    """Held-out ELBO and IWAE bound, nats per example, and the NLL in bits per dimension."""
    import numpy as np

    elbo, iwae, count = 0.0, 0.0, 0
    bar = _common.progbar(_common.dataset_length(dataset), verbose, unit="batch")
    for step, images in enumerate(_common.iter_batches(dataset), start=1):
        with _common.no_grad():
            elbo += float(np.sum(_common.to_numpy(vae.elbo(images, seed=seed + step))))
            log_px = vae.log_likelihood(images, num_samples=num_samples, seed=seed + step)
            iwae += float(np.sum(_common.to_numpy(log_px)))
        count += len(images)
        bar.update(step)
    dims = math.prod(vae.image_shape)
    nll = -iwae / count
    return {
        "test_elbo_nats": elbo / count,
        "test_iwae_nll_nats": nll,
        "test_iwae_nll_bits_per_dim": nll / (dims * math.log(2.0)),
        "iwae_samples": num_samples,
    }


def setup(args) -> dict:
    """Check the data and build the VAE (a usage error if either fails); writes nothing."""
    import keras

    import keras_vq

    size = _common.image_size(args)
    image_shape = _common.dataset_info(args, size).image_shape
    train_data, eval_data, fit_eval_data = _common.load_train_and_eval(args, size)
    with _common.strategy_scope():
        try:
            model = keras_vq.models.VAE(
                input_shape=image_shape,
                latent_dim=args.latent_dim,
                likelihood=args.likelihood,
                beta=args.beta,
                filters=tuple(args.filters),
                seed=args.seed,
            )
        except ValueError as error:
            raise _common.RecipeError(str(error)) from None
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    return {
        "model": model,
        "train_data": train_data,
        "eval_data": eval_data,
        "fit_eval_data": fit_eval_data,
    }


def train(args, run: _common.Run, *, model, train_data, eval_data, fit_eval_data) -> dict:
    """Fit, save and evaluate the VAE built by :func:`setup`; returns the metrics."""
    shown = _common.first_images(eval_data, max(args.num_images, 8))

    def render(images):
        recon = _common.to_numpy(model(images[:8], training=False))
        samples = _common.to_numpy(model.sample(8, seed=args.seed))
        return {
            "inputs|reconstructions": _common.side_by_side(images[:8], recon),
            "samples": samples,
        }

    summary = _common.fit(
        model,
        run,
        train_data,
        validation_data=fit_eval_data,
        extra_callbacks=(_common.image_logger(run.log_dir, shown, render),),
    )
    model.save(run.path(MODEL_FILE))
    metrics = _common.evaluate_reconstructions(model, eval_data, verbose=args.verbose)
    metrics.update(
        evaluate_likelihood(model, eval_data, args.iwae_samples, args.seed, args.verbose)
    )
    with _common.no_grad():
        if args.num_samples:
            samples = _common.to_numpy(model.sample(args.num_samples, seed=args.seed))
            _common.save_grid(run.path("samples.png"), samples)
        if args.num_images:
            recon = _common.to_numpy(model(shown[: args.num_images], training=False))
            _common.save_grid(
                run.path("reconstructions.png"),
                _common.interleave_rows(shown[: args.num_images], recon, ncols=8),
                ncols=8,
            )
    return {**summary, **metrics, "model": MODEL_FILE}


def main(argv=None) -> int:
    args = _common.parse_args(build_parser(), argv)
    return _common.run_recipe(RECIPE, args, train, setup)


if __name__ == "__main__":
    sys.exit(main())
