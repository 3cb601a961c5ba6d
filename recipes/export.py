"""Export trained keras_vq models as SavedModels for TF Serving.

    python recipes/export.py --model runs/vqvae.keras --out exports/vqvae
    python recipes/export.py --vqvae runs/vqvae.keras --prior runs/prior.keras --out exports/gen
    python recipes/export.py --preset pixelcnn_digits --out exports/digits_generator

Writes ``<out>/<version>/`` (the next free version unless ``--version``) and prints its path.
--preset takes a VAE or VQ-VAE preset (exported like --model) or a prior preset (exported as
a generator with the VQ-VAE preset its metadata names). Signatures: see ``keras_vq.export``.
A generator samples with --temperature and the prior's own guidance_scale and top_p (saved by
train_prior.py --guidance-scale/--top-p), fixed into the artifact.
``.keras`` files and presets do not depend on the backend that trained them, so this script
always loads them with TensorFlow: the direct export path, and a SavedModel of plain
TensorFlow ops that any TF Serving build runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

import _defaults
import _flags
import _run


def parse_args(argv=None) -> argparse.Namespace:
    parser = _flags.new_parser(
        "Export a VAE/VQVAE, or a VQVAE + prior generator, as a SavedModel in the TF Serving "
        "layout <out>/<version>/."
    )
    parser.add_argument("--model", help="a VAE or VQVAE saved as .keras")
    parser.add_argument("--vqvae", help="with --prior: the VQVAE (.keras) of a generator")
    parser.add_argument("--prior", help="with --vqvae: the prior (.keras) of a generator")
    parser.add_argument(
        "--preset",
        help="a VAE/VQVAE preset, or a prior preset (a generator with its VQ-VAE preset): "
        "bundled name, preset directory, hf:// or kaggle:// handle",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="model base directory that receives the version folders "
        "(default: exports/<name of the --model file>, or exports/generator)",
    )
    parser.add_argument(
        "--version",
        type=_flags.non_negative_int,
        default=None,
        help="version number, >= 0 (default: next free one)",
    )
    parser.add_argument(
        "--temperature",
        type=_defaults.non_negative_float,
        default=1.0,
        help="generator sampling temperature; 0 = greedy",
    )
    args = parser.parse_args(argv)
    if args.preset is not None:
        if args.model or args.vqvae or args.prior:
            parser.error("pass either --preset, or model files (--model, or --vqvae with --prior)")
        if args.out is None:
            args.out = str(Path("exports", Path(args.preset.rstrip("/")).name or "preset"))
        return args
    if (args.vqvae is None) != (args.prior is None):
        parser.error("--prior and --vqvae go together (a generator needs both)")
    if (args.model is None) == (args.prior is None):
        parser.error("pass either --model, or --vqvae with --prior")
    if args.out is None:
        args.out = str(Path("exports", Path(args.model).stem if args.model else "generator"))
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    # Imported after parsing so that --help answers without loading Keras or TensorFlow.
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _run.import_keras()
    import keras_vq
    from keras_vq.export import export_generator, export_saved_model

    def load(flag, path):
        try:
            return keras_vq.saving.load_model(path, compile=False)
        except FileNotFoundError:
            fail(f"{flag} {path}: no such file.")
        except (TypeError, ValueError) as error:  # missing, truncated or corrupted files
            fail(f"{flag}: {error}")

    try:
        if args.preset:
            path = export_preset(args, export_saved_model, export_generator)
        elif args.model:
            model = load("--model", args.model)
            path = export_saved_model(model, args.out, version=args.version)
        else:
            vqvae, prior = load("--vqvae", args.vqvae), load("--prior", args.prior)
            path = export_generator(
                vqvae, prior, args.out, version=args.version, temperature=args.temperature
            )
    except (FileExistsError, TypeError, ValueError) as error:  # the library's own messages
        fail(str(error))
    print(path)
    return path


def export_preset(args, export_saved_model, export_generator) -> str:
    """Export ``--preset``: a VAE/VQVAE as ``--model``, a prior as a generator with its VQ-VAE
    preset; a missing or corrupted preset is a usage error."""
    import keras_vq.presets

    try:
        kind = keras_vq.presets.metadata(args.preset).get("class_name")
        if kind in ("VAE", "VQVAE"):
            return export_saved_model(
                keras_vq.presets.load(args.preset), args.out, version=args.version
            )
        vqvae, prior = keras_vq.presets.load_pair(args.preset)
    except (FileNotFoundError, ImportError) as error:
        fail(f"--preset {args.preset}: {error}")
    except ValueError as error:
        fail(f"--preset {args.preset}: {error}")
    return export_generator(
        vqvae, prior, args.out, version=args.version, temperature=args.temperature
    )


def fail(message: str) -> NoReturn:
    """A usage error: one line on stderr, exit status 2 (as argparse and the other recipes)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
