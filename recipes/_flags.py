"""The recipes' flags: one parser per recipe, built from the shared flag groups.

Nothing here imports Keras: a recipe parses its arguments and sets ``KERAS_BACKEND``
(``--backend``) before Keras is imported, so ``--help`` answers instantly.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from _defaults import (  # RecipeError: the recipes raise it as _flags.RecipeError
    OneLineParser,
    RecipeError,  # noqa: F401
    add_model_arg,
    non_negative_float,
    positive_float,
    seed_int,
    unit_interval,
)
from _distribute import add_distribute_args

DEFAULT_DATASET = "digits"
DEFAULT_IMAGE_SIZE = 32
BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
QUANTIZERS = ("vq", "rvq", "fsq", "lfq")


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


def new_parser(doc: str | None, parser_class: type = OneLineParser) -> argparse.ArgumentParser:
    """A parser whose description is the recipe's docstring and whose help shows defaults."""
    return parser_class(description=doc, formatter_class=_HelpFormatter)


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


positive_int.invalid, non_negative_int.invalid = ("0", "1.5"), ("-1",)  # tried by the tests
VQVAE, PIXELCNN = ("models/vqvae.py", "VQVAE"), ("models/pixelcnn.py", "PixelCNNPrior")


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
    group.add_argument("--epochs", type=positive_int, default=epochs, help="training epochs")
    group.add_argument("--batch-size", type=positive_int, default=batch_size, help="per step")
    group.add_argument("--learning-rate", type=positive_float, default=learning_rate, help="Adam")
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

    def model_arg(flag, type, help_text, **kwargs):  # VQVAE's argument named like the flag
        owners = [("", *VQVAE, flag[2:].replace("-", "_"))]
        add_model_arg(group, flag, owners, help_text, type=type, **kwargs)

    model_arg("--num-embeddings", positive_int, "codebook size K (vq; rvq: per stage)")
    model_arg(
        "--embedding-dim",
        positive_int,
        "code size D, the encoder's output channels (vq, rvq; fsq, lfq: len(--levels) or "
        "--num-bits unless set, another value adds a projection)",
    )
    model_arg("--filters", positive_int, "encoder widths, one per halving of the size", nargs="+")
    model_arg("--downsample", positive_int, "image size / code map size, a power of 2")
    model_arg("--beta", non_negative_float, "commitment weight (vq, rvq)")
    model_arg("--ema-decay", unit_interval, "EMA codebook decay (vq, rvq); 0: by gradients")
    model_arg(
        "--dead-code-threshold",
        non_negative_float,
        "restart codes assigned fewer than this many vectors per batch (vq, rvq); 0 disables",
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
    group = parser.add_argument_group(
        "prior (--num-layers, --label-dropout: either prior; the rest: PixelCNN)"
    )
    transformer = ("TransformerPrior: ", "models/transformer.py", "TransformerPrior", "num_layers")
    owners = [("PixelCNNPrior: ", *PIXELCNN, "num_layers"), transformer]
    add_model_arg(
        group, "--num-layers", owners, "gated blocks or transformer blocks", type=positive_int
    )
    owners = [("", *PIXELCNN, "filters")]
    add_model_arg(group, "--prior-filters", owners, "PixelCNN channels", type=positive_int)
    owners = [("", *PIXELCNN, "kernel_size")]
    add_model_arg(group, "--kernel-size", owners, "PixelCNN kernel, odd, >= 3", type=positive_int)
    group.add_argument(
        "--conditional",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="condition the prior on class labels",
    )
    owners = [("", *PIXELCNN, "label_dropout")]
    add_model_arg(
        group,
        "--label-dropout",
        owners,
        "with --conditional: probability of training on a null class instead of the label, "
        "which enables --guidance-scale",
        type=unit_interval,
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


def add_run_args(parser: argparse.ArgumentParser, *, out: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--out", default=out, help="output directory")
    group.add_argument(
        "--overwrite", action="store_true", help="replace a finished or different run in --out"
    )
    group.add_argument("--seed", type=seed_int, default=0, help="random seed, in [0, 2**31 - 1]")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (unset: KERAS_BACKEND, else keras.json)",
    )
    group.add_argument("--precision", choices=PRECISIONS, default="float32", help="dtype policy")
    add_distribute_args(group)
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
