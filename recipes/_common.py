"""Plumbing the recipes share: flags, the output directory, resume, runtime set-up, PNG grids.

Nothing here imports Keras at module level: a recipe parses its arguments, sets
``KERAS_BACKEND`` (``--backend``), checks its ``--out`` directory, and only then imports Keras,
so ``--help`` and "this run is already finished" answer instantly. It then checks every input
(arguments the models validate, data, model files to load) and writes nothing under ``--out``
before all of them passed: a failed check leaves no ``config.json`` that would make the
corrected command look like a different run.

An output directory holds one run::

    config.json     the resolved arguments, backend and versions (written at the start)
    backup/         BackupAndRestore checkpoint (every epoch end; removed when fit ends)
    logs/           TensorBoard event files
    *.keras *.png   models and image grids
    metrics.json    final numbers
    DONE            written last: the run finished

Rerunning the same command on an unfinished run resumes it from ``backup/``; a finished run
or a different configuration is an error unless ``--overwrite`` is passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_DATASET = "digits"
DEFAULT_IMAGE_SIZE = 32
BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTIONS = ("none", "mirrored", "data_parallel")

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
DONE_FILE = "DONE"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
# Arguments that do not change what a run computes: a rerun may differ in them.
_NOT_COMPARED = ("overwrite", "verbose", "backend", "download")
# What --overwrite removes from --out (never anything else the user may keep there).
_RUN_FILES = (CONFIG_FILE, METRICS_FILE, DONE_FILE, BACKUP_DIR, LOG_DIR, "export")
_RUN_SUFFIXES = (".keras", ".png")


class RecipeError(Exception):
    """A user-facing failure: printed as ``error: ...`` without a traceback, exit status 2."""


# --------------------------------------------------------------------------- flags


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
    group.add_argument("--num-embeddings", type=positive_int, default=128, help="codebook size K")
    group.add_argument("--embedding-dim", type=positive_int, default=16, help="code size D")
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


def add_prior_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PixelCNN prior")
    group.add_argument("--num-layers", type=positive_int, default=6, help="gated blocks")
    group.add_argument("--prior-filters", type=positive_int, default=64)
    group.add_argument("--kernel-size", type=positive_int, default=5, help="odd, >= 3")
    group.add_argument(
        "--conditional", action="store_true", help="condition the prior on class labels"
    )


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


# --------------------------------------------------------------------------- output dir


def _versions(backend: str) -> dict[str, str | None]:
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "keras": version("keras"),
        "keras_vq": version("keras-vq"),
        backend: version(backend),
    }


def make_config(recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    backend = os.environ.get("KERAS_BACKEND") or resolve_backend(None)
    return {
        "recipe": recipe,
        "args": {k: v for k, v in sorted(vars(args).items())},
        "backend": backend,
        "versions": _versions(backend),
    }


def _config_differences(saved: dict, config: dict) -> list[str]:
    diffs = []
    if saved.get("recipe") != config["recipe"]:
        diffs.append(f"recipe: {saved.get('recipe')!r} (saved) vs {config['recipe']!r} (now)")
    if saved.get("backend") != config["backend"]:
        diffs.append(f"backend: {saved.get('backend')!r} (saved) vs {config['backend']!r} (now)")
    old, new = saved.get("args", {}), config["args"]
    for key in sorted(set(old) | set(new)):
        if key not in _NOT_COMPARED and old.get(key) != new.get(key):
            diffs.append(
                f"--{key.replace('_', '-')}: {old.get(key)!r} (saved) vs {new.get(key)!r}"
            )
    return diffs


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy / backend scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def clear_run(out: Path) -> None:
    """Remove what a recipe writes (and nothing else) from ``out``."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if entry.name in _RUN_FILES or entry.suffix in _RUN_SUFFIXES or _is_run_dir(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _is_run_dir(path: Path) -> bool:
    """A pipeline stage directory (it holds its own config.json)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


class Run:
    """One output directory: its paths, its state (new, resumed, finished) and its runtime."""

    def __init__(self, out: str | os.PathLike, config: dict[str, Any], args: argparse.Namespace):
        self.out = Path(out)
        self.config = config
        self.args = args
        self.resumed = False

    def path(self, *names: str) -> Path:
        return self.out.joinpath(*names)

    @property
    def backup_dir(self) -> Path:
        return self.path(BACKUP_DIR)

    @property
    def log_dir(self) -> Path:
        return self.path(LOG_DIR)

    @property
    def finished(self) -> bool:
        return self.path(DONE_FILE).is_file()

    def saved_config(self) -> dict | None:
        try:
            return read_json(self.path(CONFIG_FILE))
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise RecipeError(f"{self.path(CONFIG_FILE)} is not valid JSON ({error}).") from None

    def check(self, overwrite: bool) -> None:
        """Check ``--out`` against the saved run; writes nothing (runs before importing Keras).

        Raises:
            RecipeError: a finished run, a different configuration, or a directory that is not
                a run, and ``overwrite`` is false.
        """
        self.resumed = False
        if self.out.exists() and not self.out.is_dir():
            raise RecipeError(f"--out {self.out} exists and is not a directory.")
        saved = self.saved_config() if self.out.is_dir() else None
        if not overwrite and self.finished:
            raise RecipeError(
                f"--out {self.out} already holds a finished {(saved or {}).get('recipe', '')} run "
                f"(found {self.path(DONE_FILE)}). Pass --overwrite to replace it, or choose "
                "another --out."
            )
        if not overwrite and saved is not None:
            diffs = _config_differences(saved, self.config)
            if diffs:
                raise RecipeError(
                    f"--out {self.out} holds an unfinished run with a different configuration "
                    "(config mismatch), so it cannot be resumed:\n  "
                    + "\n  ".join(diffs)
                    + "\nRerun with the saved arguments to resume it, pass --overwrite to "
                    "start over, or choose another --out."
                )
            self.resumed = True
        elif not overwrite and self.out.is_dir() and any(self.out.iterdir()):
            names = {p.name for p in self.out.iterdir()}
            if names & set(_RUN_FILES) or any(Path(n).suffix in _RUN_SUFFIXES for n in names):
                raise RecipeError(
                    f"--out {self.out} holds files of a run without {CONFIG_FILE}. Pass "
                    "--overwrite to replace them, or choose another --out."
                )

    def start(self, overwrite: bool) -> None:
        """Write config.json (after :meth:`check` and every input check passed); with
        ``overwrite``, first remove the previous run's files."""
        if overwrite:
            clear_run(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.path(CONFIG_FILE), self.config)
        if self.resumed:
            print(
                f"Resuming the unfinished {self.config['recipe']} run in {self.out}.", flush=True
            )

    def finish(self, metrics: dict[str, Any]) -> None:
        write_json(self.path(METRICS_FILE), metrics)
        self.path(DONE_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")

    # ------------------------------------------------------------------ pipeline stages
    def stage(
        self,
        recipe: str,
        args: argparse.Namespace,
        fn: Callable[..., dict],
        setup: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
    ) -> dict:
        """Run a recipe's ``setup`` and ``fn`` as a sub-run in ``args.out`` (a pipeline stage).

        ``args`` are the recipe's own (see :func:`stage_args`), so the stage's config.json
        reads like the standalone recipe's. A finished stage is not run again, its metrics are
        returned: this is how a resumed pipeline skips the stages it already completed.
        """
        name = Path(args.out).name
        child = Run(args.out, make_config(recipe, args), args)
        saved = child.saved_config()
        stale = saved is not None and bool(_config_differences(saved, child.config))
        if child.finished and not stale:
            print(f"Stage {name!r} already finished in {child.out}; reusing it.", flush=True)
            return read_json(child.path(METRICS_FILE))
        print(f"Stage {name!r} ({recipe}) in {child.out}", flush=True)
        child.check(overwrite=stale)
        inputs = setup(args) if setup is not None else {}
        child.start(overwrite=stale)
        metrics = fn(args, child, **inputs)
        child.finish(metrics)
        return metrics


def stage_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser, *, out: Path, **overrides: Any
) -> argparse.Namespace:
    """The arguments of a pipeline stage writing to ``out``: the recipe's own (``parser``),
    taken from ``args`` where they share a name, then ``overrides``."""
    defaults = vars(parser.parse_args([]))
    values = {key: getattr(args, key, value) for key, value in defaults.items()}
    values.update(overrides, out=str(out), overwrite=False)
    return argparse.Namespace(**values)


def run_recipe(
    recipe: str,
    args: argparse.Namespace,
    fn: Callable[..., dict],
    setup: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> int:
    """Check ``--out``, set up Keras, check the inputs, run the recipe, write metrics.json
    and DONE.

    ``setup(args)`` checks every input (builds the models, opens the data, loads model files)
    and returns keyword arguments for ``fn(args, run, **inputs)``, which does the work. Nothing
    is written under ``--out`` before ``setup`` returned, so a failed check leaves ``--out`` as
    it was and the corrected command starts afresh.

    Returns the exit status: 0, or 2 after printing ``error: ...`` for a :class:`RecipeError`.
    """
    start = time.time()
    try:
        config = make_config(recipe, args)
        check_distribute(args.distribute, config["backend"])
        run = Run(args.out, config, args)
        run.check(args.overwrite)
        import_keras()
        setup_runtime(args)
        inputs = setup(args) if setup is not None else {}
        run.start(args.overwrite)
        metrics = fn(args, run, **inputs)
        metrics["wall_time_s"] = round(time.time() - start, 1)
        run.finish(metrics)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except Exception as error:  # DatasetNotFoundError says how to get the data: no traceback
        if type(error).__name__ == "DatasetNotFoundError":
            print(f"error: {dataset_not_found(error, args)}", file=sys.stderr, flush=True)
            return 2
        raise
    if args.verbose:
        print(json.dumps(metrics, indent=2, sort_keys=True, default=_json_default))
    print(f"Finished {recipe}: outputs in {run.out}", flush=True)
    return 0


# --------------------------------------------------------------------------- runtime


_STRATEGY: Any = None

# TensorFlow's start-up lines (and their absl banner). TF 2.21 logs them through absl while
# its libraries load, before it reads TF_CPP_MIN_LOG_LEVEL, so that variable cannot hide
# them (it does hide the runtime's later INFO and WARNING lines; recipes default it to 2).
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
)


@contextlib.contextmanager
def quiet_tensorflow_startup() -> Iterator[None]:
    """Drop TensorFlow's start-up log lines from stderr; every other line is passed on.

    The C++ libraries write to file descriptor 2 directly, so the descriptor itself is sent
    to a temporary file for the duration and the kept lines are written back afterwards.
    ``TF_CPP_MIN_LOG_LEVEL=0`` (asking for every log line) turns the filter off. oneDNN
    itself stays on: only its notice is dropped, never its numerics.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _STARTUP_NOISE.search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_keras() -> None:
    """Import Keras, TensorFlow and keras_vq and let TF find its devices, without the
    start-up log noise (see :func:`quiet_tensorflow_startup`)."""
    with quiet_tensorflow_startup():
        import keras  # noqa: F401  (first: with torch it loads torch before TensorFlow)
        import tensorflow as tf

        import keras_vq  # noqa: F401

        tf.config.list_physical_devices()  # initialises CUDA (cuInit) inside the filter


def check_distribute(distribute: str, backend: str) -> None:
    """The backends each ``--distribute`` choice works on (checked before importing Keras)."""
    if distribute == "mirrored" and backend != "tensorflow":
        raise RecipeError(
            f"--distribute mirrored (tf.distribute.MirroredStrategy) needs the TensorFlow "
            f"backend, but the backend is {backend!r}. Use --backend tensorflow, or "
            "--distribute data_parallel on JAX."
        )
    if distribute == "data_parallel" and backend != "jax":
        raise RecipeError(
            f"--distribute data_parallel (keras.distribution.DataParallel) needs the JAX "
            f"backend (Keras 3 supports it only there), but the backend is {backend!r}. Use "
            "--backend jax, or --distribute mirrored on TensorFlow."
        )


def setup_runtime(args: argparse.Namespace) -> None:
    """Seed, dtype policy and distribution, in that order, before any model is built."""
    import keras

    from keras_vq.backend import hide_gpus_from_tensorflow

    check_distribute(args.distribute, keras.backend.backend())
    hide_gpus_from_tensorflow()  # on JAX / torch, TensorFlow only feeds the data
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)
    global _STRATEGY
    _STRATEGY = None
    if args.distribute == "mirrored":
        import tensorflow as tf

        _STRATEGY = tf.distribute.MirroredStrategy()
        print(f"MirroredStrategy over {_STRATEGY.num_replicas_in_sync} replica(s).", flush=True)
    elif args.distribute == "data_parallel":
        devices = keras.distribution.list_devices()
        batch_size = getattr(args, "batch_size", None)
        if batch_size is not None and batch_size % len(devices):
            raise RecipeError(
                f"--batch-size {batch_size} must be divisible by the {len(devices)} devices "
                "for --distribute data_parallel."
            )
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        print(f"DataParallel over {len(devices)} device(s).", flush=True)


def strategy_scope() -> contextlib.AbstractContextManager:
    """Where to create and compile models: the MirroredStrategy scope, or nothing."""
    return _STRATEGY.scope() if _STRATEGY is not None else contextlib.nullcontext()


def no_grad() -> contextlib.AbstractContextManager:
    """Inference outside ``fit``: keep torch from recording a graph."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def to_numpy(x: Any):
    import keras
    import numpy as np

    return np.asarray(keras.ops.convert_to_numpy(x))


# --------------------------------------------------------------------------- data


def image_size(args: argparse.Namespace) -> int | None:
    return args.image_size or None


def dataset_info(args: argparse.Namespace, image_size=None):
    """``keras_vq.data.info`` for ``--dataset``; a bad name or size is a usage error."""
    import keras_vq

    try:
        return keras_vq.data.info(args.dataset, args.data_dir, image_size=image_size)
    except (ValueError, TypeError) as error:
        raise RecipeError(f"--dataset {args.dataset}: {error}") from None


def dataset_not_found(error: Exception, args: argparse.Namespace) -> RecipeError:
    """keras_vq.data's ``DatasetNotFoundError``, reworded in the recipe's flags."""
    name = getattr(error, "name", None) or args.dataset
    split = getattr(error, "split", None)
    looked_in = getattr(error, "looked_in", None)
    where = f"--data-dir {args.data_dir}" if args.data_dir else "TFDS's default data directory"
    return RecipeError(
        f"--dataset {name}: {f'split {split!r} ' if split else ''}is not prepared in {where}"
        f"{f' (looked for {looked_in})' if looked_in else ''}. Add --download to download and "
        f"prepare it there (needs internet); or, on a machine with internet, run "
        f"`tfds build {name} --data_dir=DIR`, copy DIR here and pass --data-dir DIR; or use "
        "--dataset digits, which needs no download."
    )


def load_split(
    args: argparse.Namespace,
    split: str,
    *,
    image_size: int | tuple[int, int] | None,
    batch_size: int,
    shuffle: bool,
    with_labels: bool = False,
    drop_remainder: bool = False,
):
    """``keras_vq.data.load`` with the recipe's dataset flags; missing data is a usage error."""
    import keras_vq

    try:
        dataset = keras_vq.data.load(
            args.dataset,
            split=split,
            batch_size=batch_size,
            shuffle=shuffle,
            with_labels=with_labels,
            data_dir=args.data_dir,
            image_size=image_size,
            seed=args.seed,
            drop_remainder=drop_remainder,
            download=getattr(args, "download", False),
        )
    except keras_vq.data.DatasetNotFoundError as error:
        raise dataset_not_found(error, args) from None
    except (ValueError, TypeError) as error:  # e.g. a split the dataset does not have
        raise RecipeError(f"--dataset {args.dataset} split {split!r}: {error}") from None
    if int(dataset.cardinality()) == 0:
        raise RecipeError(
            f"Split {split!r} of {args.dataset!r} has fewer examples than --batch-size "
            f"{batch_size}; lower --batch-size."
        )
    return dataset


def load_train_and_eval(args: argparse.Namespace, size):
    """Training batches, held-out batches, and the held-out batches ``fit`` validates on.

    The last two differ only under data_parallel, where ``fit`` needs batches that split
    evenly over the devices (see :func:`even_batches`).
    """
    train_data = load_split(
        args,
        "train",
        image_size=size,
        batch_size=args.batch_size,
        shuffle=True,
        drop_remainder=True,
    )
    eval_kwargs = {"image_size": size, "batch_size": eval_batch_size(args), "shuffle": False}
    eval_data = load_split(args, args.eval_split, **eval_kwargs)
    fit_eval_data = eval_data
    if even_batches(args):
        fit_eval_data = load_split(args, args.eval_split, drop_remainder=True, **eval_kwargs)
    return train_data, eval_data, fit_eval_data


def eval_batch_size(args: argparse.Namespace) -> int:
    """A multiple of ``--batch-size`` near 128 (divisible by the devices when it is)."""
    return args.batch_size * max(1, 128 // args.batch_size)


def even_batches(args: argparse.Namespace) -> bool:
    """Under data_parallel every batch given to ``fit``/``evaluate`` must split evenly over
    the devices: held-out data for them drops its last short batch there."""
    return args.distribute == "data_parallel"


def first_images(dataset, count: int):
    """The first ``count`` images of a dataset of ``images`` or ``(images, labels)`` batches."""
    import numpy as np

    chunks, total = [], 0
    for batch in dataset.as_numpy_iterator():
        images = batch[0] if isinstance(batch, tuple) else batch
        chunks.append(images)
        total += len(images)
        if total >= count:
            break
    return np.concatenate(chunks)[:count]


def progbar(target: int | None, verbose: int, unit: str = "step"):
    import keras

    return keras.utils.Progbar(
        target if target and target > 0 else None, verbose=verbose, unit_name=unit
    )


def dataset_length(dataset) -> int | None:
    n = int(dataset.cardinality())
    return n if n >= 0 else None


class ProgressEncoder:
    """Wraps a VQ-VAE for ``keras_vq.data.encode_dataset`` to show a progress bar."""

    def __init__(self, vqvae, num_batches: int | None, verbose: int):
        self.vqvae = vqvae
        self.num_embeddings = vqvae.num_embeddings
        self._bar = progbar(num_batches, verbose, unit="batch")
        self._seen = 0

    def encode(self, images):
        with no_grad():
            codes = self.vqvae.encode(images)
        self._seen += 1
        self._bar.update(self._seen)
        return codes


def encode_split(vqvae, dataset, *, with_labels: bool, verbose: int, label: str, **kwargs):
    """``keras_vq.data.encode_dataset`` with a progress bar."""
    import keras_vq

    if verbose:
        print(f"Encoding {label} images into codes:", flush=True)
    encoder = ProgressEncoder(vqvae, dataset_length(dataset), verbose)
    return keras_vq.data.encode_dataset(encoder, dataset, with_labels=with_labels, **kwargs)


def load_model(path: str, expected: tuple[str, ...], flag: str):
    """Load a ``.keras`` file and check it is one of the ``expected`` keras_vq classes.

    A missing, truncated or corrupted file is a usage error: one line naming ``flag`` and the
    file (``keras_vq.saving.load_model`` says what is wrong and what to do).
    """
    import keras_vq

    try:
        model = keras_vq.saving.load_model(path)
    except FileNotFoundError:
        raise RecipeError(f"{flag} {path}: no such file.") from None
    except (ValueError, TypeError) as error:
        raise RecipeError(f"{flag}: {error}") from None
    if type(model).__name__ not in expected:
        raise RecipeError(
            f"{flag} {path} holds a {type(model).__name__}, expected {' or '.join(expected)}."
        )
    return model


def class_labels(spec: str | None, num_samples: int, num_classes: int | None):
    """``--labels`` → int32 ``(num_samples,)`` for a conditional prior, ``None`` otherwise."""
    import numpy as np

    if num_classes is None:
        if spec is not None:
            raise RecipeError("--labels needs a class-conditional prior (trained --conditional).")
        return None
    if spec is None or spec == "cycle":
        values = list(range(num_classes))
    else:
        try:
            values = [int(v) for v in spec.split(",") if v.strip()]
        except ValueError:
            raise RecipeError(f"--labels {spec!r}: expected ints like '3' or '0,1,2'.") from None
    if not values or min(values) < 0 or max(values) >= num_classes:
        raise RecipeError(f"--labels {spec!r}: classes must lie in [0, {num_classes - 1}].")
    return np.resize(np.asarray(values, np.int32), num_samples)


def sample_prior_images(
    vqvae,
    prior,
    num_samples: int,
    *,
    temperature: float,
    seed: int | None,
    labels=None,
    batch_size: int = 32,
    verbose: int = 1,
):
    """``keras_vq.models.generate`` in equal chunks (one compiled sampler) with a progress bar."""
    import numpy as np

    from keras_vq.models import generate

    chunk = min(batch_size, num_samples)
    num_chunks = math.ceil(num_samples / chunk)
    if verbose:
        print(f"Sampling {num_samples} images ({num_chunks} sampler calls):", flush=True)
    bar = progbar(num_chunks, verbose, unit="call")
    out = []
    for i in range(num_chunks):
        chunk_labels = None
        if labels is not None:
            chunk_labels = np.resize(np.roll(labels, -i * chunk), chunk)
        with no_grad():
            images = generate(
                vqvae,
                prior,
                chunk,
                temperature=temperature,
                seed=None if seed is None else seed + i,
                labels=chunk_labels,
            )
        out.append(to_numpy(images))
        bar.update(i + 1)
    return np.concatenate(out)[:num_samples]


# --------------------------------------------------------------------------- training


def _repair_backup(backup_dir: Path) -> None:
    """A kill while the metadata JSON was being written leaves it unreadable (BackupAndRestore
    only falls back on I/O errors of the weights): go back to the previous pair."""
    meta = backup_dir / "training_metadata.json"
    if not meta.is_file():
        return
    try:
        read_json(meta)
    except ValueError:
        prev_meta, prev_weights = Path(f"{meta}.bkp"), backup_dir / "latest.weights.h5.bkp"
        if prev_meta.is_file() and prev_weights.is_file():
            shutil.copyfile(prev_weights, backup_dir / "latest.weights.h5")
            shutil.copyfile(prev_meta, meta)
        else:
            shutil.rmtree(backup_dir)


def checkpoint_epoch(backup_dir: Path) -> int:
    try:
        return int(read_json(backup_dir / "training_metadata.json")["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def summary_images(name: str, images, step: int) -> None:
    """``tf.summary.image`` of (N, H, W, C) images in [0, 1] into the default writer."""
    import numpy as np
    import tensorflow as tf

    images = np.clip(np.nan_to_num(np.asarray(images, np.float32)), 0.0, 1.0)
    tf.summary.image(name, images, step=step, max_outputs=len(images))


def write_tensorboard_images(log_dir: Path, name: str, images, step: int = 0) -> None:
    """Write one set of images (e.g. the final samples) to ``log_dir/images``."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(log_dir / "images"))
    with writer.as_default():
        summary_images(name, images, step=step)
    writer.close()


def tensorboard_callback(log_dir: Path):
    """``keras.callbacks.TensorBoard`` (epoch logs to ``logs/train`` and ``logs/validation``)."""
    import keras

    return keras.callbacks.TensorBoard(str(log_dir), write_graph=False)


def image_logger(log_dir: Path, images, render: Callable[[Any], dict[str, Any]]):
    """A callback writing ``render(images)`` (name → (N, H, W, C) in [0, 1]) to TensorBoard
    (``logs/images``) at every epoch end."""
    import keras
    import tensorflow as tf

    class ImageLogger(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._writer = None

        def on_epoch_end(self, epoch, logs=None):
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(log_dir / "images"))
            with no_grad():
                rendered = render(images)
            with self._writer.as_default():
                for name, value in rendered.items():
                    summary_images(name, value, step=epoch)
            self._writer.flush()

        def on_train_end(self, logs=None):
            if self._writer is not None:
                self._writer.close()

    return ImageLogger()


def fit(
    model,
    run: Run,
    train_data,
    *,
    validation_data=None,
    extra_callbacks: tuple = (),
) -> dict[str, Any]:
    """``model.fit`` with BackupAndRestore (every epoch end), TensorBoard and resume.

    Returns a summary for metrics.json: epochs, the epoch it resumed from and the last
    epoch's logs.
    """
    import keras

    args = run.args
    _repair_backup(run.backup_dir)
    start_epoch = checkpoint_epoch(run.backup_dir)
    if start_epoch:
        print(f"Resuming from the checkpoint after epoch {start_epoch}/{args.epochs}.", flush=True)
    # One endless stream (reshuffled every pass with the run's seed) cut into epochs; a resumed
    # run skips the epochs it already trained on, so it sees exactly the batches an
    # uninterrupted run would.
    steps = args.steps_per_epoch or int(train_data.cardinality())
    train_data = train_data.repeat().skip(start_epoch * steps)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run.backup_dir), double_checkpoint=True),
        tensorboard_callback(run.log_dir),
        *extra_callbacks,
    ]
    history = model.fit(
        train_data,
        epochs=args.epochs,
        steps_per_epoch=steps,
        validation_data=validation_data,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=args.verbose,
    )
    logs = {k: float(v[-1]) for k, v in history.history.items() if v}
    return {
        "epochs": args.epochs,
        "resumed_from_epoch": history.epoch[0] if history.epoch else start_epoch,
        "final_epoch_logs": logs,
    }


# --------------------------------------------------------------------------- images


def image_grid(images, ncols: int | None = None, padding: int = 2, pad_value: float = 0.5):
    """Tile ``(N, H, W, C)`` images in [0, 1] into one ``(H', W', C)`` uint8 grid.

    ``ncols`` defaults to ``ceil(sqrt(N))``; ``rows = ceil(N / ncols)``; the grid is
    ``rows·H + (rows+1)·padding`` by ``ncols·W + (ncols+1)·padding`` pixels. Values are clipped.
    """
    import numpy as np

    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise ValueError(f"Expected (N, H, W, 1 or 3) images, got shape {images.shape}.")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / ncols)
    grid = np.full(
        (rows * h + (rows + 1) * padding, ncols * w + (ncols + 1) * padding, c),
        pad_value,
        np.float32,
    )
    for i, image in enumerate(np.clip(np.nan_to_num(images), 0.0, 1.0)):
        y = padding + (i // ncols) * (h + padding)
        x = padding + (i % ncols) * (w + padding)
        grid[y : y + h, x : x + w] = image
    return np.round(grid * 255.0).astype(np.uint8)


def save_grid(path: Path, images, ncols: int | None = None, padding: int = 2) -> Path:
    """Write :func:`image_grid` as a PNG with PIL (grayscale or RGB)."""
    from PIL import Image

    grid = image_grid(images, ncols=ncols, padding=padding)
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode).save(path)
    return path


def side_by_side(left, right):
    """``(N, H, W, C)`` pairs joined along the width: ``(N, H, 2W, C)``."""
    import numpy as np

    return np.concatenate([np.asarray(left, np.float32), np.asarray(right, np.float32)], axis=2)


def interleave_rows(originals, reconstructions, ncols: int):
    """Rows of ``ncols`` originals, each followed by the row of their reconstructions."""
    import numpy as np

    rows = []
    for start in range(0, len(originals), ncols):
        a, b = originals[start : start + ncols], reconstructions[start : start + ncols]
        pad = ncols - len(a)
        if pad:  # keep every row full so the pairs stay aligned
            blank = np.zeros((pad, *a.shape[1:]), a.dtype)
            a, b = np.concatenate([a, blank]), np.concatenate([b, blank])
        rows += [a, b]
    return np.concatenate(rows)


# --------------------------------------------------------------------------- evaluation


def evaluate_reconstructions(
    model, dataset, *, verbose: int, num_embeddings: int | None = None, prefix: str = "test"
):
    """Mean squared reconstruction error over ``dataset`` and, for a VQ-VAE, code usage
    (keys ``<prefix>_reconstruction_mse``, ``<prefix>_perplexity``, ``<prefix>_codes_used``)."""
    import numpy as np

    squared, pixels = 0.0, 0
    counts = np.zeros(num_embeddings or 1, np.int64)
    bar = progbar(dataset_length(dataset), verbose, unit="batch")
    for step, batch in enumerate(dataset.as_numpy_iterator(), start=1):
        images = batch[0] if isinstance(batch, tuple) else batch
        with no_grad():
            if num_embeddings:
                codes = model.encode(images)
                recon = to_numpy(model.decode(codes))
                counts += np.bincount(to_numpy(codes).ravel(), minlength=num_embeddings)
            else:
                recon = to_numpy(model(images, training=False))
        squared += float(np.sum((recon.astype(np.float64) - images) ** 2))
        pixels += images.size
        bar.update(step)
    metrics = {f"{prefix}_reconstruction_mse": squared / max(pixels, 1)}
    if num_embeddings:
        p = counts / max(counts.sum(), 1)
        metrics[f"{prefix}_perplexity"] = float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))
        metrics[f"{prefix}_codes_used"] = int(np.count_nonzero(counts))
    return metrics


def iter_batches(dataset) -> Iterator:
    for batch in dataset.as_numpy_iterator():
        yield batch[0] if isinstance(batch, tuple) else batch
