"""Sample a PNG grid of new images from a trained model or a preset.

--preset NAME_OR_DIR: a VAE preset, an ImageGenerator preset, or a prior preset together with
the VQ-VAE preset its metadata names (loaded with ImageGenerator.from_preset; python -c
"import keras_vq; print(keras_vq.presets.list())" lists the bundled ones). VAE (--vae
vae.keras): decode z ~ N(0, I). VQ-VAE (--vqvae vqvae.keras --prior prior.keras): draw code
maps from the prior (PixelCNN or transformer) and decode them; --labels picks the classes of a
class-conditional prior (default: cycle through all classes, one per column).
--quality-samples more images are drawn (every class in turn) and compared with --dataset's
--eval-split (default: the digits' test split): sample_fd, sample_precision, sample_recall,
sample_confident_share, sample_class_histogram, sample_accuracy (conditional) in
metrics.json, logs/sample_quality and the final line; 32x32x1 images only. --top-k, --top-p
(nucleus) and --guidance-scale (classifier-free guidance, for a prior trained with
--label-dropout) shape the draw; unset, --top-p and --guidance-scale take the prior's own
(saved by train_prior; --top-p 1 or --guidance-scale 1 turns a saved one off).
Writes to --out: config.json, samples.png, logs/ (the grid as a TensorBoard image) and
metrics.json.

Examples:
    python recipes/sample.py --preset pixelcnn_digits --out runs/sample_preset
    python recipes/sample.py --vae runs/train_vae/vae.keras --out runs/sample_vae
    python recipes/sample.py --vqvae runs/train_vqvae/vqvae.keras \\
        --prior runs/train_prior/prior.keras --temperature 0.8 --out runs/sample_vqvae
"""

from __future__ import annotations

import sys

import _flags
import _inputs
import _quality
import _run
import _sampling
import train_prior
from _rundir import Run

RECIPE = "sample"


def build_parser():
    parser = _flags.new_parser(__doc__)
    group = parser.add_argument_group("models (--preset, --vae, or --vqvae with --prior)")
    group.add_argument(
        "--preset",
        default=None,
        help="a VAE or prior preset: bundled name (pixelcnn_digits, vae_digits), preset "
        "directory, hf:// or kaggle:// handle",
    )
    group.add_argument("--vae", default=None, help="trained VAE (.keras)")
    group.add_argument("--vqvae", default=None, help="trained VQ-VAE (.keras)")
    group.add_argument(
        "--prior", default=None, help="PixelCNN or transformer prior of --vqvae (.keras)"
    )
    _sampling.add_sampling_args(parser)
    _flags.add_data_args(parser, image_size=False)  # the held-out images of --quality-samples
    _flags.add_run_args(parser, out="runs/sample")
    return parser


def check_models(parser, args) -> None:
    if args.preset and (args.vae or args.vqvae or args.prior):
        parser.error("pass either --preset, or model files (--vae, --vqvae with --prior)")
    if args.preset:
        if args.num_samples < 1:
            parser.error("--num-samples must be >= 1")
        return
    if args.vae and (args.vqvae or args.prior):
        parser.error("pass either --vae or --vqvae with --prior, not both")
    if not args.vae and not (args.vqvae and args.prior):
        parser.error("pass --preset, --vae, or both --vqvae and --prior")
    if args.num_samples < 1:
        parser.error("--num-samples must be >= 1")
    if args.vae and args.labels is not None:
        parser.error("--labels needs --vqvae with a class-conditional --prior")
    if args.vae and (args.top_k, args.top_p, args.guidance_scale) != (None, None, None):
        parser.error("--top-k, --top-p and --guidance-scale need --vqvae with --prior")


def setup(args, run: Run) -> dict:
    """Load the models and check they fit together and --labels; writes nothing."""
    if args.preset:
        return setup_preset(args)
    if args.vae:
        return {"vae": _inputs.load_model(args.vae, ("VAE",), "--vae")}
    vqvae = _inputs.load_model(args.vqvae, ("VQVAE",), "--vqvae")
    prior = _inputs.load_model(args.prior, _inputs.PRIORS, "--prior")
    if prior.num_embeddings != vqvae.num_embeddings or tuple(prior.latent_shape) != tuple(
        vqvae.latent_shape
    ):
        raise _flags.RecipeError(
            f"--prior models {prior.num_embeddings} codes on a {prior.latent_shape} grid but "
            f"--vqvae has {vqvae.num_embeddings} codes on a {vqvae.latent_shape} grid."
        )
    _inputs.class_labels(args.labels, args.num_samples, prior.num_classes)
    _sampling.sampling_options(args, prior)
    return {"vqvae": vqvae, "prior": prior}


def load_generator(preset: str):
    """``ImageGenerator.from_preset(preset)``: a generator preset, or a prior preset and the
    VQ-VAE preset it names; a usage error if that fails."""
    from keras_vq.models import ImageGenerator

    try:
        return ImageGenerator.from_preset(preset)
    except (FileNotFoundError, ImportError, ValueError, TypeError) as error:
        raise _flags.RecipeError(f"--preset {preset}: {error}") from None


def setup_preset(args) -> dict:
    """The models of ``--preset``: a VAE, or the two stages of an ImageGenerator (a generator
    preset, or a prior preset and the VQ-VAE preset it names)."""
    import keras_vq.presets

    kinds = ("VAE", "ImageGenerator", *_inputs.PRIORS)
    try:
        kind = keras_vq.presets.metadata(args.preset).get("class_name")
    except (FileNotFoundError, ImportError, ValueError, TypeError) as error:
        raise _flags.RecipeError(f"--preset {args.preset}: {error}") from None
    if kind == "VAE":
        if args.labels is not None:
            raise _flags.RecipeError("--labels needs a class-conditional prior preset.")
        if (args.top_k, args.top_p, args.guidance_scale) != (None, None, None):
            raise _flags.RecipeError("--top-k, --top-p and --guidance-scale need a prior preset.")
        return {"vae": _inputs.load_preset(args.preset, ("VAE",))}
    if kind not in kinds:
        raise _flags.RecipeError(
            f"--preset {args.preset} holds a {kind}, which cannot sample on its own; pass a "
            f"VAE or prior preset{_inputs.preset_hint(kinds)}."
        )
    generator = load_generator(args.preset)
    vqvae, prior = generator.vqvae, generator.prior
    _inputs.class_labels(args.labels, args.num_samples, prior.num_classes)
    _sampling.sampling_options(args, prior)
    return {"vqvae": vqvae, "prior": prior}


def setup_with_quality(args, run: Run) -> dict:
    """:func:`setup`, then the held-out images of ``--quality-samples`` (loaded before
    anything is written, so a bad --dataset or --eval-split fails at once)."""
    inputs = setup(args, run)
    model = inputs["vae"] if "vae" in inputs else inputs["vqvae"]
    return {**inputs, "real": _quality.held_out(args, tuple(model.image_shape))}


def sample(args, run: Run, *, vae=None, vqvae=None, prior=None, real=None) -> dict:
    """Draw the samples with the models :func:`setup` loaded and measure their quality
    against ``real``; returns the metrics."""
    from keras_vq import visualization
    from keras_vq.backend import to_numpy

    if vae is not None:
        images = to_numpy(vae.sample(args.num_samples, seed=args.seed))
        visualization.save_image_grid(run.path("samples.png"), images)
        visualization.write_tensorboard_images(run.log_dir / "images", "samples", images[:16])
        draw, num_classes = (lambda count, _labels: vae.sample(count, seed=args.seed)), None
    else:
        images = train_prior.write_samples(args, run, vqvae, prior, "samples.png")
        draw, num_classes = _quality.prior_sampler(args, vqvae, prior), prior.num_classes
    shape = tuple(images.shape[1:])
    sampling = {} if prior is None else {"sampling": _sampling.sampling_record(args, prior)}
    return {
        **sampling,
        "num_samples": args.num_samples,
        "image_shape": list(shape),
        "pixel_mean": float(images.mean()),
        "grid": "samples.png",
        **_quality.measure(args, run, draw, shape, num_classes, real),
    }


def main(argv=None) -> int:
    parser = build_parser()
    args = _flags.parse_args(parser, argv)
    check_models(parser, args)
    return _run.run_recipe(RECIPE, args, sample, setup_with_quality)


if __name__ == "__main__":
    sys.exit(main())
