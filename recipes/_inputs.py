"""The recipes' inputs: data and model files opened from the flags, failures worded in flags.

Every function raises :class:`RecipeError` (one ``error: ...`` line, exit status 2) for a bad
input, naming the flag rather than the library's argument.
"""

from __future__ import annotations

import argparse

from _flags import RecipeError

# The prior classes every recipe accepts wherever it takes a prior.
PRIORS = ("PixelCNNPrior", "TransformerPrior")


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


def random_shifts(dataset, max_shift: int, seed: int):
    """Batches of ``images`` or ``(images, labels)`` with every image shifted by a random whole
    number of pixels in ``[-max_shift, max_shift]`` along each axis (zeros enter at the
    border); labels pass unchanged. Each batch draws its offsets from ``seed`` and its index."""
    import tensorflow as tf

    if not max_shift:
        return dataset
    seeds = tf.data.Dataset.random(seed=seed).batch(2)

    def shift(batch, pair):
        images = batch[0] if isinstance(batch, tuple) else batch
        count = tf.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        offsets = tf.random.stateless_uniform(
            (count, 2), seed=pair, minval=0, maxval=2 * max_shift + 1, dtype=tf.int32
        )
        padded = tf.pad(images, [[0, 0], [max_shift] * 2, [max_shift] * 2, [0, 0]])
        rows = offsets[:, :1] + tf.range(height)[None]
        cols = offsets[:, 1:] + tf.range(width)[None]
        moved = tf.gather(padded, rows, axis=1, batch_dims=1)
        moved = tf.gather(moved, cols, axis=2, batch_dims=1)
        return (moved, *batch[1:]) if isinstance(batch, tuple) else moved

    return tf.data.Dataset.zip((dataset, seeds)).map(shift, num_parallel_calls=tf.data.AUTOTUNE)


def shifted_copies(dataset, copies: int, seed: int):
    """``dataset`` followed by ``copies`` copies of it, every image of a copy shifted by a
    random whole pixel in [-1, 1] along each axis (:func:`random_shifts`, a seed per copy)."""
    result = dataset
    for index in range(copies):
        result = result.concatenate(random_shifts(dataset, 1, seed + 1 + index))
    return result


def training_data(args: argparse.Namespace) -> dict:
    """What train_vae and train_vqvae train on: ``image_shape`` (after ``--image-size``) and the
    datasets of :func:`load_train_and_eval`, as ``train_data``, ``eval_data`` and
    ``fit_eval_data``."""
    size = image_size(args)
    image_shape = dataset_info(args, size).image_shape
    train_data, eval_data, fit_eval_data = load_train_and_eval(args, size)
    return {
        "image_shape": image_shape,
        "train_data": train_data,
        "eval_data": eval_data,
        "fit_eval_data": fit_eval_data,
    }


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
    """Under data_parallel, multi_process and multi_worker every batch given to
    ``fit``/``evaluate`` must split evenly over the devices: held-out data for them drops its
    last short batch there."""
    return args.distribute in ("data_parallel", "multi_process", "multi_worker")


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


def load_weights_into(model, path: str, expected: tuple[str, ...], flag: str) -> None:
    """Set ``model``'s weights to those of the ``.keras`` file at ``path`` (checked as
    :func:`load_model` does); weights of another architecture are a usage error."""
    source = load_model(path, expected, flag)
    try:
        model.set_weights(source.get_weights())
    except ValueError as error:
        raise RecipeError(
            f"{flag} {path}: its weights do not fit the model these flags build ({error})"
        ) from None


def load_preset(name: str, expected: tuple[str, ...], flag: str = "--preset"):
    """``keras_vq.presets.load`` of ``name`` (a bundled name, a preset directory or a remote
    handle), checked to be one of the ``expected`` classes; any failure is a usage error."""
    import keras_vq.presets

    try:
        model = keras_vq.presets.load(name)
    except (FileNotFoundError, ImportError, ValueError, TypeError) as error:
        raise RecipeError(f"{flag} {name}: {error}") from None
    if type(model).__name__ not in expected:
        raise RecipeError(
            f"{flag} {name} holds a {type(model).__name__}, expected {' or '.join(expected)}"
            f"{preset_hint(expected)}."
        )
    return model


def load_preset_pair(name: str, flag: str = "--preset"):
    """``(vqvae, prior)`` of a prior preset (its metadata names its VQ-VAE preset); a usage
    error if that fails."""
    import keras_vq.presets

    try:
        return keras_vq.presets.load_pair(name)
    except (FileNotFoundError, ImportError, ValueError, TypeError) as error:
        raise RecipeError(f"{flag} {name}: {error}") from None


def preset_hint(expected: tuple[str, ...]) -> str:
    """``" (bundled: a, b)"``: the bundled presets of the ``expected`` classes."""
    import keras_vq.presets

    names = [n for n, c in keras_vq.presets.list().items() if c in expected]
    return f" (bundled: {', '.join(names)})" if names else ""


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
