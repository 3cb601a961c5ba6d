"""tf.data input pipelines: the offline ``digits`` set and TensorFlow Datasets image sets.

Every pipeline yields float32 image batches ``(B, H, W, C)`` with values in ``[0, 1]``
(optionally with int32 labels), shuffled with a seed, cached in memory when the data fits,
batched and prefetched. ``fit`` accepts them on TensorFlow, JAX and PyTorch alike.

``name="digits"`` is the 1,797 8x8 handwritten digits bundled with scikit-learn: it needs no
download and is the default of every recipe. Any TFDS image dataset (``mnist``,
``fashion_mnist``, ``cifar10``, ``celeb_a``, ...) is read from ``data_dir``; it is downloaded
only when ``download=True`` is passed, so a machine without network fails at once with a
:class:`DatasetNotFoundError` that says how to get the data.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, NamedTuple

# keras first: with the torch backend it imports torch before TensorFlow (avoids a crash).
import keras  # noqa: F401
import numpy as np
import tensorflow as tf

from keras_vq import _batches
from keras_vq._validation import check_choice, check_int, check_seed
from keras_vq.backend import no_grad, to_numpy

__all__ = [
    "BINARIZE_MODES",
    "DIGITS",
    "KNOWN_IMAGE_DATASETS",
    "NUM_CLASSES",
    "DatasetNotFoundError",
    "ImageDatasetInfo",
    "encode_dataset",
    "first_images",
    "info",
    "load",
]

DIGITS = "digits"

# TFDS image datasets known to work here (an "image" feature; "label" where with_labels is
# used). Any other builder in `tfds.list_builders()` with an "image" feature works too; this
# tuple keeps the error message short and the name check offline and instant.
KNOWN_IMAGE_DATASETS = (
    "binarized_mnist",
    "celeb_a",
    "cifar10",
    "cifar100",
    "emnist",
    "fashion_mnist",
    "imagenet_resized",
    "kmnist",
    "mnist",
    "omniglot",
    "quickdraw_bitmap",
    "stl10",
    "svhn_cropped",
)

NUM_CLASSES = {
    DIGITS: 10,
    "cifar10": 10,
    "cifar100": 100,
    "fashion_mnist": 10,
    "kmnist": 10,
    "mnist": 10,
    "quickdraw_bitmap": 345,
    "stl10": 10,
    "svhn_cropped": 10,
}

BINARIZE_MODES = ("fixed", "dynamic")

# Datasets whose uint8 pixels are not 0..255.
_PIXEL_MAX = {DIGITS: 16.0, "binarized_mnist": 1.0}

_DIGITS_SHAPE = (8, 8, 1)
_DIGITS_TRAIN_FRACTION = 0.8
_DIGITS_SPLIT_SEED = 0
_DIGITS_SPLIT_RE = re.compile(r"^(train|test|all)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")

# Cache decoded examples in memory only below this size; larger sets are streamed.
_CACHE_LIMIT_BYTES = 2 * 1024**3
_SHUFFLE_BUFFER = 10_000


class DatasetNotFoundError(FileNotFoundError):
    """A TFDS dataset is not prepared in ``data_dir`` and downloading was not requested.

    Attributes:
        name, split: the dataset and split asked for.
        data_dir: the ``data_dir`` argument (``None``: TFDS's default).
        looked_in: the dataset's versioned directory that was searched.
    Callers such as the recipes use them to phrase their own hint (flags, not arguments).
    """

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        split: str | None = None,
        data_dir: str | None = None,
        looked_in: str | None = None,
    ):
        super().__init__(message)
        self.name, self.split, self.data_dir, self.looked_in = name, split, data_dir, looked_in


class ImageDatasetInfo(NamedTuple):
    """What a model needs to know about a dataset before seeing it.

    Attributes:
        image_shape: ``(H, W, C)`` of the images ``load`` yields (after ``image_size``);
            ``None`` entries for datasets of variable size.
        num_classes: number of label classes, or ``None`` without a ``label`` feature.
    """

    image_shape: tuple
    num_classes: int | None


def load(
    name: str,
    split: str = "train",
    batch_size: int = 128,
    shuffle: bool = True,
    with_labels: bool = False,
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    binarize: str | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    cache: bool = True,
    download: bool = False,
) -> tf.data.Dataset:
    """Load an image dataset as a batched, prefetched ``tf.data.Dataset``.

    Images are float32 in ``[0, 1]`` with shape ``(B, H, W, C)``; labels are int32 ``(B,)``.
    The same ``seed`` gives the same order (and the same dynamic binarization) every time.

    Args:
        name: ``"digits"`` (offline, scikit-learn's 8x8 digits) or a TFDS image dataset name
            such as ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"celeb_a"``
            (a config or version suffix such as ``"imagenet_resized/32x32"`` is allowed).
        split: ``"train"``, ``"test"`` or ``"all"`` for digits, optionally sliced like
            ``"train[:50%]"`` or ``"test[10:20]"``; any TFDS split string for TFDS datasets.
            Digits uses a fixed 80/20 train/test partition (permutation with seed 0).
        batch_size: examples per batch, >= 1.
        shuffle: shuffle examples (and TFDS files) every epoch.
        with_labels: yield ``(images, labels)`` instead of ``images``.
        data_dir: TFDS data directory (default: TFDS's, ``~/tensorflow_datasets``);
            ignored for digits.
        image_size: resize to ``(H, W)`` (an int means square) with bilinear interpolation.
            Required for datasets whose images vary in size.
        binarize: ``None``; ``"fixed"`` (pixel > 0.5 becomes 1) or ``"dynamic"`` (pixel
            becomes 1 with probability equal to its value, a fresh sample every epoch).
        seed: seed for shuffling and dynamic binarization; ``None`` for a random order.
        drop_remainder: drop the last short batch (keeps shapes static, e.g. for JAX).
        cache: keep decoded images in memory when they fit (below 2 GiB).
        download: download and prepare a missing TFDS dataset (needs network). Without it a
            missing dataset raises :class:`DatasetNotFoundError` at once.

    Returns:
        A ``tf.data.Dataset`` of ``images`` or ``(images, labels)`` batches.

    Raises:
        ValueError / TypeError: an invalid argument or an unknown dataset name.
        DatasetNotFoundError: the TFDS dataset is not in ``data_dir`` and ``download=False``.

    Example:
        >>> ds = load("digits", batch_size=64, image_size=32, seed=0)
        >>> images = next(iter(ds))
        >>> tuple(images.shape), images.dtype.name
        ((64, 32, 32, 1), 'float32')
    """
    name = _check_name(name)
    if not isinstance(split, str) or not split.strip():
        raise TypeError(f"`split` must be a non-empty string such as 'train', got {split!r}.")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    for arg_name, value in (
        ("shuffle", shuffle),
        ("with_labels", with_labels),
        ("drop_remainder", drop_remainder),
        ("cache", cache),
        ("download", download),
    ):
        _check_bool(arg_name, value)
    image_size = _check_image_size(image_size)
    check_choice("binarize", binarize, (None, *BINARIZE_MODES))
    seed = check_seed("seed", seed)
    data_dir = _check_data_dir(data_dir)

    if name == DIGITS:
        images, labels = _digits_split(split)
        ds = tf.data.Dataset.from_tensor_slices((images, labels) if with_labels else images)
        pixel_max = _PIXEL_MAX[DIGITS]
        shuffle_buffer = len(images)
    else:
        ds, pixel_max = _tfds_examples(
            name, split, data_dir, with_labels, shuffle, seed, image_size, download
        )
        shuffle_buffer = _SHUFFLE_BUFFER

    cardinality = int(ds.cardinality())
    if cache and cardinality >= 0 and cardinality * _element_bytes(ds) <= _CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if shuffle:
        if cardinality >= 0:
            shuffle_buffer = max(1, min(shuffle_buffer, cardinality))
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    # Scaling, resizing and binarizing run once per batch (vectorised), after the cache so
    # that the cache holds the compact uint8 pixels.
    to_unit = functools.partial(_to_unit_interval, pixel_max=pixel_max, image_size=image_size)
    if binarize == "dynamic":
        noise_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, noise_seeds))
        batch_fn = functools.partial(
            _finish_dynamic_batch, to_unit=to_unit, with_labels=with_labels
        )
    else:
        batch_fn = functools.partial(
            _finish_batch, to_unit=to_unit, with_labels=with_labels, binarize=binarize
        )
    ds = ds.map(batch_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def info(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
) -> ImageDatasetInfo:
    """Image shape and number of classes of a dataset, without reading its examples.

    Works offline: TFDS metadata comes from the prepared files in ``data_dir`` when present,
    otherwise from the dataset's code.

    Args:
        name: ``"digits"`` or a TFDS image dataset name (see :func:`load`).
        data_dir: TFDS data directory; ignored for digits.
        image_size: the ``image_size`` that will be passed to :func:`load`.

    Returns:
        ``ImageDatasetInfo(image_shape, num_classes)``.

    Example:
        >>> info("digits")
        ImageDatasetInfo(image_shape=(8, 8, 1), num_classes=10)
        >>> info("digits", image_size=32).image_shape
        (32, 32, 1)
    """
    name = _check_name(name)
    image_size = _check_image_size(image_size)
    data_dir = _check_data_dir(data_dir)
    if name == DIGITS:
        shape, num_classes = _DIGITS_SHAPE, NUM_CLASSES[DIGITS]
    else:
        features = _tfds_builder(name, data_dir).info.features
        _require_feature(name, features, "image")
        shape = tuple(features["image"].shape)
        num_classes = (
            getattr(features["label"], "num_classes", None) if "label" in features else None
        )
    if image_size is not None:
        shape = (*image_size, shape[-1])
    return ImageDatasetInfo(tuple(shape), num_classes)


def encode_dataset(
    vqvae: Any,
    dataset: tf.data.Dataset,
    with_labels: bool = False,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    verbose: int = 0,
) -> tf.data.Dataset:
    """Encode an image dataset once into a dataset of int32 code maps, e.g. for a prior.

    ``vqvae.encode(images)`` runs batch by batch (on any backend) and the codes go into one
    preallocated NumPy array; images are never all held in memory.

    Args:
        vqvae: any object with ``encode(images) -> int codes (B, h, w)``, e.g. a ``VQVAE``.
        dataset: batches of ``images`` or ``(images, labels)``, as made by :func:`load`.
            Its order is kept; pass ``shuffle=True`` here to reshuffle every epoch.
        with_labels: yield ``(codes, labels)``; ``dataset`` must then yield labels.
        batch_size: batch size of the result; defaults to the first input batch's size.
        shuffle: shuffle the encoded examples every epoch.
        seed: shuffle seed.
        drop_remainder: drop the last short batch.
        verbose: 0 silent, 1 a progress bar (one step per batch encoded).

    Returns:
        A prefetched ``tf.data.Dataset`` of int32 ``codes`` ``(B, h, w)`` or
        ``(codes, labels)`` batches.

    Example:
        >>> images = load("digits", batch_size=256, shuffle=False, with_labels=True)
        >>> codes = encode_dataset(vqvae, images, with_labels=True)  # (B, h, w), (B,)
        >>> prior.fit(codes, epochs=10)
    """
    if not callable(getattr(vqvae, "encode", None)):
        raise TypeError(
            f"`vqvae` must have an `encode(images)` method, got {type(vqvae).__name__}."
        )
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(f"`dataset` must be a tf.data.Dataset, got {type(dataset).__name__}.")
    for arg_name, value in (
        ("with_labels", with_labels),
        ("shuffle", shuffle),
        ("drop_remainder", drop_remainder),
    ):
        _check_bool(arg_name, value)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_seed("seed", seed)
    verbose = check_int("verbose", verbose, minimum=0)

    spec = dataset.element_spec
    has_labels = isinstance(spec, tuple)
    images_spec = spec[0] if has_labels else spec
    if with_labels and not (has_labels and len(spec) >= 2):
        raise ValueError(
            "`with_labels=True` needs a `dataset` of (images, labels) batches, got elements "
            f"{spec}. Use load(..., with_labels=True)."
        )
    if not isinstance(images_spec, tf.TensorSpec) or images_spec.shape.rank != 4:
        raise ValueError(
            "`dataset` must yield batches of images with shape (batch, height, width, "
            f"channels), got elements {spec}. Batch it first, e.g. dataset.batch(128)."
        )
    num_batches = int(dataset.cardinality())
    if num_batches == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("`dataset` is infinite (e.g. `.repeat()`); pass a finite dataset.")

    codes_buffer = labels_buffer = None
    count = 0
    bar = _batches.progress_bar(num_batches, verbose)
    for step, element in enumerate(dataset.as_numpy_iterator(), start=1):
        images = element[0] if has_labels else element
        with no_grad():
            codes = to_numpy(vqvae.encode(images))
        if codes.ndim != 3 or codes.shape[0] != images.shape[0]:
            raise ValueError(
                "`vqvae.encode(images)` must return codes of shape (batch, h, w) = "
                f"({images.shape[0]}, h, w), got shape {codes.shape}."
            )
        if codes.dtype.kind not in "iu":
            raise TypeError(
                f"`vqvae.encode(images)` must return integer codes, got dtype {codes.dtype}."
            )
        size = codes.shape[0]
        if codes_buffer is None:
            batch_size = batch_size or size
            # Batches never exceed the first one, so this bound is exact unless unknown.
            capacity = size * num_batches if num_batches > 0 else 4 * size
            codes_buffer = np.empty((capacity, *codes.shape[1:]), np.int32)
            if with_labels:
                labels_buffer = np.empty((capacity,), np.int32)
        codes_buffer = _reserve(codes_buffer, count + size)
        codes_buffer[count : count + size] = codes
        if with_labels:
            labels_buffer = _reserve(labels_buffer, count + size)
            labels_buffer[count : count + size] = np.asarray(element[1]).astype(np.int32)
        count += size
        bar.update(step)
    if codes_buffer is None:
        raise ValueError("`dataset` is empty; nothing to encode.")

    codes_buffer = codes_buffer[:count]
    tensors = (codes_buffer, labels_buffer[:count]) if with_labels else codes_buffer
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def first_images(dataset: Any, count: int) -> np.ndarray:
    """The first ``count`` images of ``dataset`` (fewer if it holds fewer), e.g. to show.

    Args:
        dataset: batches of ``images`` or ``(images, labels)``, as made by :func:`load`.
        count: number of images, >= 0.

    Returns:
        float32 NumPy array ``(count, H, W, C)``; only the batches needed are read.
    """
    count = check_int("count", count, minimum=0)
    chunks, total = [], 0
    for images in _batches.image_batches(dataset):
        chunks.append(images)
        total += len(images)
        if total >= count:
            break
    if not chunks:
        raise ValueError("`dataset` is empty; it holds no images.")
    return np.concatenate(chunks)[:count]


# --------------------------------------------------------------------------- validation


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be True or False, got {value!r} ({type(value).__name__}).")


def _check_image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int | np.integer) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, tuple | list)
        or len(image_size) != 2
        or any(isinstance(s, bool) or not isinstance(s, int | np.integer) for s in image_size)
        or any(s < 1 for s in image_size)
    ):
        raise ValueError(
            "`image_size` must be None, a positive int or a (height, width) pair of positive "
            f"ints, got {image_size!r}."
        )
    return (int(image_size[0]), int(image_size[1]))


def _check_data_dir(data_dir: Any) -> str | None:
    if data_dir is None:
        return None
    if not isinstance(data_dir, str | os.PathLike):
        raise TypeError(f"`data_dir` must be a path or None, got {data_dir!r}.")
    return os.path.expanduser(os.fspath(data_dir))


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"`name` must be a dataset name string, got {name!r}.")
    if name == DIGITS:
        return name
    base = name.split("/")[0].split(":")[0]
    if base in KNOWN_IMAGE_DATASETS:
        return name
    import tensorflow_datasets as tfds

    if base in tfds.list_builders(with_community_datasets=False):
        return name
    raise ValueError(
        f"Unknown dataset `name`={name!r}. Valid choices: {[DIGITS, *KNOWN_IMAGE_DATASETS]}, "
        "or any other TFDS image dataset in tfds.list_builders() with an 'image' feature."
    )


def _require_feature(name: str, features: Any, key: str) -> None:
    if key not in features:
        hint = "use with_labels=False" if key == "label" else "only image datasets are supported"
        raise ValueError(
            f"Dataset {name!r} has no {key!r} feature (its features: {sorted(features.keys())})"
            f"; keras_vq.data reads 'image' and 'label'. {hint[0].upper()}{hint[1:]}."
        )


# --------------------------------------------------------------------------- backends


def _reserve(buffer: np.ndarray, size: int) -> np.ndarray:
    if size <= len(buffer):
        return buffer
    grown = np.empty((max(size, 2 * len(buffer)), *buffer.shape[1:]), buffer.dtype)
    grown[: len(buffer)] = buffer
    return grown


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8).reshape((-1, *_DIGITS_SHAPE))
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(images))
    num_train = round(_DIGITS_TRAIN_FRACTION * len(images))
    train = np.sort(order[:num_train])
    for array in (images, labels, train):
        array.setflags(write=False)
    return images, labels, train


def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    match = _DIGITS_SPLIT_RE.match(split.replace(" ", ""))
    if match is None:
        raise ValueError(
            f"Unsupported `split`={split!r} for 'digits'. Expected 'train', 'test' or 'all', "
            "optionally sliced like 'train[:50%]' or 'test[10:20]'."
        )
    images, labels, train = _digits_arrays()
    base, start, stop = match.groups()
    if base == "all":
        indices = np.arange(len(images))
    elif base == "train":
        indices = train
    else:
        indices = np.setdiff1d(np.arange(len(images)), train)
    indices = indices[_slice_bound(start, len(indices)) : _slice_bound(stop, len(indices))]
    if not len(indices):
        raise ValueError(f"`split`={split!r} selects no examples of 'digits'.")
    return images[indices], labels[indices]


def _slice_bound(bound: str | None, size: int) -> int | None:
    if bound is None:
        return None
    if not bound.endswith("%"):
        return int(bound)
    percent = int(bound[:-1])
    if not -100 <= percent <= 100:
        raise ValueError(f"Percent slice bounds in `split` must be in [-100, 100], got {bound}.")
    # Rounded to the closest example, as TFDS does.
    return int(np.sign(percent)) * round(abs(percent) * size / 100)


# --------------------------------------------------------------------------- TFDS


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=data_dir)


def _tfds_examples(
    name: str,
    split: str,
    data_dir: str | None,
    with_labels: bool,
    shuffle: bool,
    seed: int | None,
    image_size: tuple[int, int] | None,
    download: bool,
) -> tuple[tf.data.Dataset, float]:
    """Unbatched uint8 images (or (images, int32 labels)) of a TFDS dataset."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    _require_feature(name, features, "image")
    if with_labels:
        _require_feature(name, features, "label")
    image_feature = features["image"]
    image_shape = tuple(image_feature.shape)
    if None in image_shape[:2] and image_size is None:
        raise ValueError(
            f"Images of {name!r} vary in size ({image_shape}); pass `image_size`, e.g. "
            "image_size=64."
        )
    dtype = np.dtype(image_feature.np_dtype)
    pixel_max = _PIXEL_MAX.get(name.split("/")[0].split(":")[0])
    if pixel_max is None:
        pixel_max = float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0

    if download:
        builder.download_and_prepare()
    kept = {"image": True, "label": True} if with_labels else {"image": True}
    try:
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            decoders=tfds.decode.PartialDecoding(kept),
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except AssertionError as error:  # TFDS's way of saying "not prepared"
        if builder.is_prepared():
            raise
        raise DatasetNotFoundError(
            _not_found_message(name, split, data_dir, builder),
            name=name,
            split=split,
            data_dir=data_dir,
            looked_in=str(builder.data_dir),
        ) from error

    if with_labels:
        ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
    else:
        ds = ds.map(lambda ex: ex["image"])
    if None in image_shape[:2]:
        # Variable sizes cannot be batched: resize each image now (float32, same scale).
        resize = functools.partial(tf.image.resize, size=image_size, method="bilinear")
        ds = ds.map(
            (lambda x, y: (resize(x), y)) if with_labels else resize,
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds, pixel_max


def _not_found_message(name: str, split: str, data_dir: str | None, builder: Any) -> str:
    searched = f"data_dir={data_dir!r}" if data_dir is not None else "the default TFDS data_dir"
    dir_arg = f", data_dir={data_dir!r}" if data_dir is not None else ""
    return (
        f"Dataset {name!r} (split {split!r}) is not prepared in {searched} (looked for "
        f"{builder.data_dir}) and downloading was not requested (download=False).\n"
        "To get it, either:\n"
        f"  * pass download=True here on a machine with internet: "
        f"keras_vq.data.load({name!r}{dir_arg}, download=True);\n"
        "  * or on a machine with internet run\n"
        f"      tfds build {name} --data_dir=DIR\n"
        f'    (or python -c "import tensorflow_datasets as tfds; tfds.load({name!r}, '
        "data_dir='DIR')\"), copy DIR here and pass data_dir=DIR;\n"
        f"  * or use name={DIGITS!r}, bundled with scikit-learn, which needs no download."
    )


# --------------------------------------------------------------------------- batches


def _element_bytes(ds: tf.data.Dataset) -> int:
    total = 0
    for spec in tf.nest.flatten(ds.element_spec):
        if not spec.shape.is_fully_defined():
            return _CACHE_LIMIT_BYTES + 1  # unknown: do not cache
        total += spec.shape.num_elements() * spec.dtype.size
    return total


def _to_unit_interval(
    images: tf.Tensor, pixel_max: float, image_size: tuple[int, int] | None
) -> tf.Tensor:
    images = tf.cast(images, tf.float32)
    if image_size is not None and tuple(images.shape[1:3]) != image_size:
        images = tf.image.resize(images, image_size, method="bilinear")
    # Bilinear weights are convex, the clip only removes float rounding.
    return tf.clip_by_value(images / pixel_max, 0.0, 1.0)


def _finish_batch(*batch, to_unit, with_labels: bool, binarize: str | None):
    images = to_unit(batch[0])
    if binarize == "fixed":
        images = tf.cast(images > 0.5, tf.float32)
    return (images, batch[1]) if with_labels else images


def _finish_dynamic_batch(batch, noise_seed, *, to_unit, with_labels: bool):
    images = to_unit(batch[0] if with_labels else batch)
    # A stateless draw keyed by Dataset.random keeps it reproducible under parallel map.
    key = tf.stack([noise_seed, tf.constant(0x5EED, tf.int64)])
    noise = tf.random.stateless_uniform(tf.shape(images), seed=key)
    images = tf.cast(noise < images, tf.float32)
    return (images, batch[1]) if with_labels else images
