"""The whole VQ-VAE story in one command: train a VQ-VAE, train a PixelCNN prior on its
codes, sample a grid of new images, and export SavedModels for TF Serving.

    python recipes/pipeline.py --out runs/pipeline

Writes to --out:
    config.json                 the resolved arguments, backend and versions
    vqvae/                      stage 1, a train_vqvae.py run (vqvae.keras, logs/, PNGs, ...)
    prior_shifted/              stage 2, a train_prior.py run on the codes of vqvae/vqvae.keras
                                and of --prior-shifted-copies shifted copies of the images
    prior/                      stage 3, that prior fine-tuned on the unshifted codes (with
                                --prior-shifted-copies 0: the only prior stage)
    samples.png                 codes ~ prior, decoded by the VQ-VAE
    export/vqvae/1/             SavedModel: serving_default (reconstruct), encode, decode
    export/generator/1/         SavedModel: sample(num_samples) -> images, codes
    logs/sample_quality/        TensorBoard scalars of the sample quality
    metrics.json, DONE          final numbers of every stage and the sample quality of
                                --quality-samples images (sample_fd, sample_precision, ...)

`tensorboard --logdir runs/pipeline` shows every stage. Killed midway, the same command
resumes: finished stages are reused and the running one continues from its last epoch.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import _defaults
import _flags
import _inputs
import _quality
import _run
import _sampling
import train_prior
import train_vqvae
from _rundir import Run, stage_args

RECIPE = "pipeline"
SHIFTED_STAGE = "prior_shifted"  # the prior trained on shifted copies too, before its fine-tune
PRIOR_FLAGS = tuple(train_prior.MODEL_FLAGS["pixelcnn"])  # the pipeline trains a PixelCNN
# The main job's own choices, made for its samples (benchmarks/RESULTS.md, "Sample quality"):
# a 4×4 map of 64 codes (three halvings, VQVAE's default widths for them), which the prior fits
# far better than 8×8 of 128 (two halvings, the library's default), a class-conditional
# prior trained with label dropout, and classifier-free guidance (s = 1.35, saved with the prior
# as its default, so the exported generator and the saved prior sample the same way). Every
# other model flag left unset takes the model's default. The grid: one column per digit.
GENERATION_DEFAULTS = {
    "filters": [32, 128, 128],
    "num_embeddings": 64,
    "conditional": True,
    "num_samples": 100,
}
# What a conditional prior gets unless the flags say otherwise (--no-conditional: nothing).
CONDITIONAL_DEFAULTS = {"label_dropout": 0.1, "guidance_scale": 1.35}


class PipelineParser(_defaults.OneLineParser):
    """With ``--conditional`` (the main job's default), an unset ``--label-dropout`` or
    ``--guidance-scale`` takes the main job's choice (``CONDITIONAL_DEFAULTS``)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if getattr(namespace, "conditional", False):
            for key, value in CONDITIONAL_DEFAULTS.items():
                if getattr(namespace, key, None) is None:
                    setattr(namespace, key, value)
        return namespace, extras


def build_parser():
    parser = _flags.new_parser(__doc__, PipelineParser)
    _flags.add_data_args(parser)
    _flags.add_vqvae_args(parser)
    _flags.add_prior_args(parser)
    group = parser.add_argument_group("training (the VQ-VAE; --prior-* for the prior)")
    group.add_argument("--epochs", type=_flags.positive_int, default=15, help="VQ-VAE epochs")
    group.add_argument("--prior-epochs", type=_flags.positive_int, default=15, help="prior epochs")
    group.add_argument("--batch-size", type=_flags.positive_int, default=64, help="both stages")
    rate = _defaults.positive_float
    group.add_argument("--learning-rate", type=rate, default=1e-3, help="VQ-VAE (Adam)")
    group.add_argument("--prior-learning-rate", type=rate, default=1e-3, help="prior (Adam)")
    group.add_argument(
        "--prior-shifted-copies",
        type=_flags.non_negative_int,
        default=2,
        help="train the prior first on the codes of this many whole-pixel-shifted copies of "
        "the training images as well (stage prior_shifted/), then fine-tune it on the "
        "unshifted codes (stage prior/); 0: one stage on the unshifted codes",
    )
    group.add_argument(
        "--prior-fine-tune-epochs", type=_flags.positive_int, default=3, help="the fine-tune's"
    )
    group.add_argument(
        "--prior-fine-tune-learning-rate", type=rate, default=3e-4, help="the fine-tune's (Adam)"
    )
    group.add_argument(
        "--steps-per-epoch",
        type=_flags.positive_int,
        default=None,
        help="batches per epoch of both stages (unset: one pass); for short test runs",
    )
    group.add_argument(
        "--num-images",
        type=_flags.non_negative_int,
        default=32,
        help="test images in vqvae/reconstructions.png",
    )
    _sampling.add_sampling_args(parser)
    for action in parser._actions:  # their help shows the main job's default, not the model's
        if action.dest in GENERATION_DEFAULTS:
            action.help = action.help.split(" (unset: the model's default")[0]
            if isinstance(GENERATION_DEFAULTS[action.dest], bool):
                action.help += " (default: on)"
        elif action.dest in CONDITIONAL_DEFAULTS:
            action.help = action.help.split(" (unset:")[0]
            action.help += f" (unset: {CONDITIONAL_DEFAULTS[action.dest]} with --conditional)"
    parser.set_defaults(**GENERATION_DEFAULTS)
    group = parser.add_argument_group("export")
    group.add_argument(
        "--no-export", dest="export", action="store_false", help="skip the SavedModel export"
    )
    _flags.add_run_args(parser, out="runs/pipeline")
    return parser


def vqvae_stage_args(args, out):
    """Stage 1's arguments: train_vqvae's flags taken from the pipeline's."""
    return stage_args(args, train_vqvae.build_parser(), out=out)


def prior_stage_args(args, out, vqvae_path: str, fine_tune: bool = False):
    """A prior stage's arguments: train_prior's flags, with the pipeline's --prior-* values.
    With --prior-shifted-copies the prior trains on the shifted copies too, then
    (``fine_tune``) on the unshifted codes, starting from that prior."""
    if fine_tune:
        stage = {
            "epochs": args.prior_fine_tune_epochs,
            "learning_rate": args.prior_fine_tune_learning_rate,
            "init_prior": str(Path(out).parent / SHIFTED_STAGE / train_prior.MODEL_FILE),
        }
    else:
        stage = {
            "epochs": args.prior_epochs,
            "learning_rate": args.prior_learning_rate,
            "shifted_copies": args.prior_shifted_copies,
        }
    return stage_args(
        args,
        train_prior.build_parser(),
        out=out,
        vqvae=vqvae_path,
        num_samples=0,  # the pipeline draws its own grid
        quality_samples=0,  # and measures its own sample quality
        **stage,
    )


def prior_stages(args, run: Run, vqvae_path: str) -> dict:
    """Train the prior (stage prior/, or stages prior_shifted/ then prior/); its metrics."""
    shifted = args.prior_shifted_copies > 0
    first = run.path(SHIFTED_STAGE if shifted else "prior")
    stages = [prior_stage_args(args, first, vqvae_path)]
    if shifted:
        stages.append(prior_stage_args(args, run.path("prior"), vqvae_path, fine_tune=True))
    for stage in stages:
        metrics = run.stage(train_prior.RECIPE, stage, train_prior.train, train_prior.setup)
    return metrics


def setup(args, run: Run) -> dict:
    """Check both stages' inputs before the pipeline writes anything, so that a bad flag
    fails at once rather than after the VQ-VAE trained: the data, a VQ-VAE and a prior built
    from the flags (then thrown away) and --labels."""
    import keras

    out = Path(args.out)
    num_classes = None
    if args.conditional:
        num_classes = _inputs.dataset_info(args).num_classes
        if num_classes is None:
            raise _flags.RecipeError(f"--conditional: {args.dataset!r} has no class labels.")
    vqvae_args = vqvae_stage_args(args, out / "vqvae")
    vqvae = train_vqvae.setup(vqvae_args, run)["model"]
    prior_args = prior_stage_args(args, out / "prior", str(out / "vqvae" / "vqvae.keras"))
    prior = train_prior.build_prior(prior_args, run, vqvae, num_classes)
    _sampling.sampling_options(args, prior)  # the grid, the quality draw and the export
    # config.json (and the stages') records what the models use for the unset model flags.
    for stage, flags in ((vqvae_args, train_vqvae.MODEL_FLAGS), (prior_args, PRIOR_FLAGS)):
        _defaults.record_model_values(args, {flag: getattr(stage, flag) for flag in flags})
    if args.num_samples:
        _inputs.class_labels(args.labels, args.num_samples, num_classes)
    _quality.held_out(args, vqvae.image_shape)  # a bad --quality-samples or split fails now
    # The stages build their own models: start them from the random state a standalone
    # recipe starts from, as if these checks had not drawn any numbers.
    keras.utils.set_random_seed(args.seed)
    return {}


def pipeline(args, run: Run) -> dict:
    from keras_vq.export import export_generator, export_saved_model

    vqvae_args = vqvae_stage_args(args, run.path("vqvae"))
    vq_metrics = run.stage(train_vqvae.RECIPE, vqvae_args, train_vqvae.train, train_vqvae.setup)
    vqvae_path = str(run.path("vqvae", train_vqvae.MODEL_FILE))
    prior_metrics = prior_stages(args, run, vqvae_path)
    vqvae = _inputs.load_model(vqvae_path, ("VQVAE",), "vqvae")
    prior = _inputs.load_model(
        str(run.path("prior", train_prior.MODEL_FILE)), _inputs.PRIORS, "prior"
    )
    metrics = {
        "vqvae": vq_metrics,
        "prior": prior_metrics,
        "test_reconstruction_mse": vq_metrics["test_reconstruction_mse"],
        "test_perplexity": vq_metrics["test_perplexity"],
        "test_codes_used": vq_metrics["test_codes_used"],
        "prior_test_nll_nats_per_code": prior_metrics.get("test_nll_nats_per_code"),
        "prior_test_bits_per_code": prior_metrics.get("test_bits_per_code"),
    }
    if args.num_samples:
        train_prior.write_samples(args, run, vqvae, prior, "samples.png")
        metrics["samples"] = "samples.png"
    draw = _quality.prior_sampler(args, vqvae, prior)
    metrics.update(_quality.measure(args, run, draw, vqvae.image_shape, prior.num_classes))
    metrics["sampling"] = _sampling.sampling_record(args, prior)
    if args.export:
        export_root = run.path("export")
        shutil.rmtree(export_root, ignore_errors=True)  # a partial export of a killed run
        print("Exporting SavedModels ...", flush=True)
        paths = {
            "vqvae": export_saved_model(vqvae, export_root / "vqvae"),
            "generator": export_generator(
                vqvae,
                prior,
                export_root / "generator",
                temperature=args.temperature,
                **_sampling.sampling_options(args, prior),
            ),
        }
        metrics["export"] = {k: os.path.relpath(v, run.out) for k, v in paths.items()}
    return metrics


def main(argv=None) -> int:
    return _run.main(RECIPE, build_parser(), pipeline, setup, argv)


if __name__ == "__main__":
    sys.exit(main())
