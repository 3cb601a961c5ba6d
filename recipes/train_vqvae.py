"""Train a VQ-VAE (keras_vq.models.VQVAE).

Writes to --out: config.json, vqvae.keras, logs/ (TensorBoard: losses, perplexity,
reconstructions), backup/ (checkpoint every epoch; rerun the same command to resume),
reconstructions.png (rows of test images, each followed by their reconstructions) and
metrics.json (held-out reconstruction MSE, perplexity, codes used).

Example:
    python recipes/train_vqvae.py --out runs/vqvae            # digits at 32x32 -> 8x8 codes
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common

RECIPE = "train_vqvae"
MODEL_FILE = "vqvae.keras"


def build_parser():
    parser = _common.new_parser(__doc__)
    _common.add_data_args(parser)
    _common.add_vqvae_args(parser)
    _common.add_train_args(parser, epochs=20, batch_size=64, learning_rate=1e-3)
    parser.add_argument(
        "--num-images",
        type=_common.non_negative_int,
        default=32,
        help="test images in reconstructions.png (0: none)",
    )
    _common.add_run_args(parser, out="runs/train_vqvae")
    return parser


def setup(args) -> dict:
    """Check the data and build the VQ-VAE (a usage error if either fails); writes nothing."""
    import keras

    import keras_vq

    size = _common.image_size(args)
    image_shape = _common.dataset_info(args, size).image_shape
    train_data, eval_data, fit_eval_data = _common.load_train_and_eval(args, size)
    with _common.strategy_scope():
        try:
            model = keras_vq.models.VQVAE(
                input_shape=image_shape,
                num_embeddings=args.num_embeddings,
                embedding_dim=args.embedding_dim,
                beta=args.beta,
                ema_decay=args.ema_decay or None,
                filters=tuple(args.filters),
                dead_code_threshold=args.dead_code_threshold,
                seed=args.seed,
            )
        except ValueError as error:  # e.g. an image size the encoder cannot halve enough
            raise _common.RecipeError(str(error)) from None
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    return {
        "model": model,
        "train_data": train_data,
        "eval_data": eval_data,
        "fit_eval_data": fit_eval_data,
    }


def train(args, run: _common.Run, *, model, train_data, eval_data, fit_eval_data) -> dict:
    """Fit, save and evaluate the VQ-VAE built by :func:`setup`; returns the metrics."""
    shown = _common.first_images(eval_data, max(args.num_images, 8))

    def render(images):
        recon = _common.to_numpy(model(images[:8], training=False))
        return {"inputs|reconstructions": _common.side_by_side(images[:8], recon)}

    summary = _common.fit(
        model,
        run,
        train_data,
        validation_data=fit_eval_data,
        extra_callbacks=(_common.image_logger(run.log_dir, shown, render),),
    )
    model.save(run.path(MODEL_FILE))
    metrics = _common.evaluate_reconstructions(
        model, eval_data, verbose=args.verbose, num_embeddings=args.num_embeddings
    )
    if args.num_images:
        with _common.no_grad():
            recon = _common.to_numpy(model(shown[: args.num_images], training=False))
        _common.save_grid(
            run.path("reconstructions.png"),
            _common.interleave_rows(shown[: args.num_images], recon, ncols=8),
            ncols=8,
        )
    return {**summary, **metrics, "model": MODEL_FILE, "latent_shape": list(model.latent_shape)}


def main(argv=None) -> int:
    args = _common.parse_args(build_parser(), argv)
    return _common.run_recipe(RECIPE, args, train, setup)


if __name__ == "__main__":
    sys.exit(main())
