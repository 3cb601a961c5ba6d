"""Reconstruct held-out images with a trained VAE or VQ-VAE: a PNG of inputs vs outputs.

reconstructions.png holds rows of --num-images inputs, each row followed by the row of their
reconstructions. metrics.json holds the reconstruction MSE over the whole --split (and, for a
VQ-VAE, its perplexity and codes used).

Examples:
    python recipes/reconstruct.py --model runs/train_vqvae/vqvae.keras --out runs/reconstruct
    python recipes/reconstruct.py --preset vqvae_digits --out runs/reconstruct_preset
"""

from __future__ import annotations

import re
import sys

import _flags
import _inputs
import _run
import _train
from _rundir import Run

RECIPE = "reconstruct"


def build_parser():
    parser = _flags.new_parser(__doc__)
    _flags.add_model_data_args(parser, "--model", "trained VAE or VQ-VAE (.keras)")
    parser.add_argument(
        "--preset",
        default=None,
        help="a VAE or VQ-VAE preset instead of --model: bundled name (vqvae_digits, "
        "vae_digits), preset directory, hf:// or kaggle:// handle",
    )
    parser.add_argument("--split", default=None, help="split (unset: --eval-split)")
    parser.add_argument("--num-images", type=_flags.positive_int, default=32, help="in the grid")
    parser.add_argument("--ncols", type=_flags.positive_int, default=8, help="images per row")
    parser.add_argument(
        "--batch-size", type=_flags.positive_int, default=128, help="images per model call"
    )
    _flags.add_run_args(parser, out="runs/reconstruct")
    return parser


def setup(args, run: Run) -> dict:
    """Load the model and check the data against it; writes nothing."""
    if args.preset:
        model = _inputs.load_preset(args.preset, ("VAE", "VQVAE"))
    else:
        model = _inputs.load_model(args.model, ("VAE", "VQVAE"), "--model")
    channels = _inputs.dataset_info(args).image_shape[-1]
    if channels != model.image_shape[-1]:
        raise _flags.RecipeError(
            f"--model takes {model.image_shape[-1]}-channel images but --dataset "
            f"{args.dataset} has {channels} channels."
        )
    data = _inputs.load_split(
        args,
        args.split or args.eval_split,
        image_size=tuple(model.image_shape[:2]),
        batch_size=args.batch_size,
        shuffle=False,
    )
    return {"model": model, "data": data}


def reconstruct(args, run: Run, *, model, data) -> dict:
    """Reconstruct the images of ``data`` with the model :func:`setup` loaded; returns the
    metrics."""
    from keras_vq import evaluation, visualization
    from keras_vq.data import first_images

    split = args.split or args.eval_split
    shown = first_images(data, args.num_images)
    recon = _train.write_reconstructions(run.path("reconstructions.png"), model, shown, args.ncols)
    visualization.write_tensorboard_images(
        run.log_dir / "images",
        "inputs|reconstructions",
        visualization.side_by_side(shown[:16], recon[:16]),
    )
    metrics = _train.held_out_metrics(
        evaluation.evaluate_reconstructions(model, data, verbose=args.verbose),
        prefix=re.sub(r"\W+", "_", split).strip("_"),
    )
    return {
        **metrics,
        "model": type(model).__name__,
        "split": split,
        "num_images": len(shown),
        "grid": "reconstructions.png",
    }


def main(argv=None) -> int:
    return _run.main(RECIPE, build_parser(), reconstruct, setup, argv)


if __name__ == "__main__":
    sys.exit(main())
