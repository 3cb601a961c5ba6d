"""The recipes' flags: one parser per recipe, built from the shared flag groups.

Nothing here imports Keras: a recipe parses its arguments and sets ``KERAS_BACKEND``
(``--backend``) before Keras is imported, so ``--help`` answers instantly.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

DEFAULT_DATASET = "digits"
DEFAULT_IMAGE_SIZE = 32
BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTIONS = ("none", "mirrored", "data_parallel")
QUANTIZERS = ("vq", "rvq", "fsq", "lfq")


class RecipeError(Exception):
    """A user-facing failure: printed as ``error: ...`` without a traceback, exit status 2."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except for flags and options whose help says what unset means."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or isinstance(default, bool) or default is argparse.SUPPRESS:
            return text
        if "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the recipe's docstring and whose help shows defaults."""
    return argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_data_args(parser: argparse.ArgumentParser, image_size: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help="keras_vq.data name: 'digits' (offline) or a TFDS image dataset (mnist, ...)",
    )
    group.add_argument("--data-dir", default=None, help="TFDS data directory (not for digits)")
    group.add_argument(
        "--download",
        action="store_true",
        help="download and prepare a TFDS dataset missing from --data-dir (needs internet)",
    )
    if image_size:
        group.add_argument(
            "--image-size",
            type=non_negative_int,
            default=DEFAULT_IMAGE_SIZE,
            help="resize images to this square size (0: keep the dataset's size)",
        )
    group.add_argument(
        "--eval-split", default="test", help="held-out split for metrics and validation"
    )


def add_train_args(
    parser: argparse.ArgumentParser,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=positive_int, default=epochs)
    group.add_argument("--batch-size", type=positive_int, default=batch_size)
    group.add_argument("--learning-rate", type=float, default=learning_rate, help="Adam")
    group.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        default=None,
        help="batches per epoch (unset: one pass over the data); for short test runs",
    )


def add_vqvae_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("VQ-VAE")
    group.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="vq",
        help="vq: VectorQuantizer; rvq: ResidualVectorQuantizer; fsq: FiniteScalarQuantizer; "
        "lfq: LookupFreeQuantizer (default: %(default)s)",
    )
    group.add_argument(
        "--num-embeddings",
        type=positive_int,
        default=128,
        help="codebook size K (vq; rvq: per stage)",
    )
    group.add_argument(
        "--embedding-dim",
        type=positive_int,
        default=None,
        help="code size D, the encoder's output channels (vq, rvq: default 16; fsq, lfq: "
        "default len(--levels) or --num-bits, another value adds a projection)",
    )
    group.add_argument(
        "--filters",
        type=positive_int,
        nargs="+",
        default=[32, 64],
        help="encoder filters; each halves the image size (32x32 -> 8x8 codes with two)",
    )
    group.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    group.add_argument(
        "--ema-decay",
        type=float,
        default=0.99,
        help="EMA codebook decay; 0 learns the codebook by gradients instead",
    )
    group.add_argument(
        "--dead-code-threshold",
        type=float,
        default=1.0,
        help="restart codes assigned fewer than this many vectors per batch (EMA); 0 disables",
    )
    add_quantizer_args(parser)


def add_quantizer_args(parser: argparse.ArgumentParser) -> None:
    """The flags of the quantizers other than the default ``vq`` (see ``--quantizer``)."""
    group = parser.add_argument_group("quantizer (--quantizer rvq, fsq, lfq)")
    group.add_argument(
        "--num-quantizers", type=positive_int, default=4, help="rvq: stages (codes per position)"
    )
    group.add_argument(
        "--quantize-dropout",
        action="store_true",
        help="rvq: train with a random number of stages",
    )
    group.add_argument(
        "--levels",
        type=positive_int,
        nargs="+",
        default=[8, 5, 5, 5],
        help="fsq: levels per channel, each >= 3 (their product is the codebook size)",
    )
    group.add_argument(
        "--num-bits", type=positive_int, default=10, help="lfq: bits per code (2**bits codes)"
    )


def add_prior_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PixelCNN prior")
    group.add_argument("--num-layers", type=positive_int, default=6, help="gated blocks")
    group.add_argument("--prior-filters", type=positive_int, default=64)
    group.add_argument("--kernel-size", type=positive_int, default=5, help="odd, >= 3")
    group.add_argument(
        "--conditional", action="store_true", help="condition the prior on class labels"
    )
    group.add_argument(
        "--label-dropout",
        type=float,
        default=None,
        help="with --conditional: probability in [0, 1) of training on a null class instead "
        "of the label, which enables --guidance-scale (unset: the model's default, 0)",
    )


def add_image_args(parser: argparse.ArgumentParser, num_samples: bool = False) -> None:
    """``--num-images`` (reconstructions.png) and, with ``num_samples``, ``--num-samples``."""
    group = parser.add_argument_group("images")
    if num_samples:
        group.add_argument(
            "--num-samples", type=non_negative_int, default=64, help="images in samples.png"
        )
    group.add_argument(
        "--num-images",
        type=non_negative_int,
        default=32,
        help="test images in reconstructions.png (0: none)",
    )


def add_model_data_args(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """A trained model file (default: train_vqvae's) and the data flags without
    ``--image-size``: the model fixes the size its images are resized to."""
    parser.add_argument(flag, default="runs/train_vqvae/vqvae.keras", help=help_text)
    add_data_args(parser, image_size=False)


def training_parser(
    doc: str | None,
    out: str,
    model_args: Callable[[argparse.ArgumentParser], None],
    extra_args: Callable[[argparse.ArgumentParser], None],
    model_file: tuple[str, str] | None = None,
) -> argparse.ArgumentParser:
    """The parser of a training recipe: the data flags (after the ``model_file`` flag and its
    help, for a model trained on another model's outputs), ``model_args``, the training flags
    (20 epochs of batches of 64, Adam 1e-3), ``extra_args`` and the run flags."""
    parser = new_parser(doc)
    if model_file is None:
        add_data_args(parser)
    else:
        add_model_data_args(parser, *model_file)
    model_args(parser)
    add_train_args(parser, epochs=20, batch_size=64, learning_rate=1e-3)
    extra_args(parser)
    add_run_args(parser, out=out)
    return parser


def add_sampling_args(parser: argparse.ArgumentParser, num_samples: int = 64) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--num-samples", type=non_negative_int, default=num_samples, help="images in the grid"
    )
    group.add_argument("--temperature", type=float, default=1.0, help="prior temperature")
    group.add_argument(
        "--labels",
        default=None,
        help="class-conditional prior: one int, a comma list (cycled), or 'cycle' "
        "(0, 1, ..., K-1, 0, ...; also when unset)",
    )
    group.add_argument(
        "--sample-batch-size", type=positive_int, default=32, help="maps drawn per sampler call"
    )
    group.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        help="keep the k most likely codes (unset: all)",
    )
    group.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="nucleus sampling: keep the likeliest codes up to this mass, in (0, 1] (unset: all)",
    )
    group.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale s >= 0 (1: plain conditional, > 1: sharper "
        "classes); needs a prior trained with --conditional --label-dropout (unset: no guidance)",
    )


def add_run_args(parser: argparse.ArgumentParser, *, out: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--out", default=out, help="output directory")
    group.add_argument(
        "--overwrite", action="store_true", help="replace a finished or different run in --out"
    )
    group.add_argument("--seed", type=non_negative_int, default=0, help="keras random seed")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (unset: KERAS_BACKEND, else keras.json)",
    )
    group.add_argument("--precision", choices=PRECISIONS, default="float32", help="dtype policy")
    group.add_argument(
        "--distribute",
        choices=DISTRIBUTIONS,
        default="none",
        help="'mirrored': tf.distribute.MirroredStrategy (TensorFlow); "
        "'data_parallel': keras.distribution.DataParallel (JAX)",
    )
    group.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="0 silent, 1 progress bars, 2 one line per epoch",
    )


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """Parse, then fix the backend in the environment before anything imports Keras."""
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = resolve_backend(getattr(args, "backend", None))
    return args


def resolve_backend(flag: str | None) -> str:
    """``--backend``, else ``KERAS_BACKEND``, else keras.json, else TensorFlow (Keras' order)."""
    if flag:
        return flag
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(keras_home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"
