"""Reconstruct held-out images with a trained VAE or VQ-VAE: a PNG of inputs vs outputs.

reconstructions.png holds rows of --num-images inputs, each row followed by the row of their
reconstructions. metrics.json holds the reconstruction MSE over the whole --split (and, for a
VQ-VAE, its perplexity and codes used).

Example:
    python recipes/reconstruct.py --model runs/train_vqvae/vqvae.keras --out runs/reconstruct
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common

RECIPE = "reconstruct"


def build_parser():
    parser = _common.new_parser(__doc__)
    parser.add_argument(
        "--model", default="runs/train_vqvae/vqvae.keras", help="trained VAE or VQ-VAE (.keras)"
    )
    _common.add_data_args(parser, image_size=False)
    parser.add_argument("--split", default=None, help="split (unset: --eval-split)")
    parser.add_argument("--num-images", type=_common.positive_int, default=32)
    parser.add_argument("--ncols", type=_common.positive_int, default=8, help="images per row")
    parser.add_argument("--batch-size", type=_common.positive_int, default=128)
    _common.add_run_args(parser, out="runs/reconstruct")
    return parser


def setup(args) -> dict:
    """Load the model and check the data against it; writes nothing."""
    model = _common.load_model(args.model, ("VAE", "VQVAE"), "--model")
    channels = _common.dataset_info(args).image_shape[-1]
    if channels != model.image_shape[-1]:
        raise _common.RecipeError(
            f"--model takes {model.image_shape[-1]}-channel images but --dataset "
            f"{args.dataset} has {channels} channels."
        )
    data = _common.load_split(
        args,
        args.split or args.eval_split,
        image_size=tuple(model.image_shape[:2]),
        batch_size=args.batch_size,
        shuffle=False,
    )
    return {"model": model, "data": data}


def reconstruct(args, run: _common.Run, *, model, data) -> dict:
    """Reconstruct the images of ``data`` with the model :func:`setup` loaded; returns the
    metrics."""
    split = args.split or args.eval_split
    shown = _common.first_images(data, args.num_images)
    with _common.no_grad():
        recon = _common.to_numpy(model(shown, training=False))
    _common.save_grid(
        run.path("reconstructions.png"),
        _common.interleave_rows(shown, recon, args.ncols),
        ncols=args.ncols,
    )
    _common.write_tensorboard_images(
        run.log_dir, "inputs|reconstructions", _common.side_by_side(shown[:16], recon[:16])
    )
    is_vqvae = type(model).__name__ == "VQVAE"
    metrics = _common.evaluate_reconstructions(
        model,
        data,
        verbose=args.verbose,
        num_embeddings=model.num_embeddings if is_vqvae else None,
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
    args = _common.parse_args(build_parser(), argv)
    return _common.run_recipe(RECIPE, args, reconstruct, setup)


if __name__ == "__main__":
    sys.exit(main())
