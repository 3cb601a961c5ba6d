"""Reading image batches on the host: from a dataset or an array, with a progress bar.

Shared by ``data.encode_dataset``, ``evaluation`` and ``callbacks.CodebookUsage``. A dataset is
anything with ``as_numpy_iterator()`` (a ``tf.data.Dataset``) yielding ``images`` or
``(images, labels, ...)`` batches; TensorFlow is never imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from keras_vq.backend import no_grad, to_numpy


def is_dataset(data: Any) -> bool:
    return callable(getattr(data, "as_numpy_iterator", None))


def num_batches(data: Any, batch_size: int = 1) -> int | None:
    """Batches :func:`image_batches` will yield, ``None`` when unknown (or infinite)."""
    if is_dataset(data):
        count = int(data.cardinality())
        return count if count >= 0 else None
    return -(-len(data) // batch_size)


def image_batches(data: Any, batch_size: int = 128) -> Iterator[np.ndarray]:
    """The image batches of ``data`` as NumPy arrays.

    Args:
        data: a dataset of ``images`` or ``(images, ...)`` batches, or an array (NumPy or any
            backend tensor) of images ``(N, H, W, C)``, cut into batches of ``batch_size``.
        batch_size: batch size for an array.
    """
    if is_dataset(data):
        for batch in data.as_numpy_iterator():
            yield batch[0] if isinstance(batch, tuple | list) else batch
        return
    if not hasattr(data, "shape"):
        raise TypeError(
            "`data` must be a tf.data.Dataset of image batches or an array of images, got "
            f"{type(data).__name__}."
        )
    images = to_numpy(data)
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def progress_bar(target: int | None, verbose: int, unit: str = "batch") -> keras.utils.Progbar:
    """``keras.utils.Progbar`` over ``target`` steps (``None``: unknown); silent for 0."""
    return keras.utils.Progbar(
        target if target and target > 0 else None, verbose=verbose, unit_name=unit
    )


def for_each_batch(
    data: Any, fn: Callable[[int, np.ndarray], None], *, batch_size: int, verbose: int
) -> int:
    """Call ``fn(step, images)`` (step = 1, 2, ...) on every image batch of ``data`` without
    gradient tracking, with a progress bar; returns the number of batches."""
    bar = progress_bar(num_batches(data, batch_size), verbose)
    step = 0
    for step, images in enumerate(image_batches(data, batch_size), start=1):
        with no_grad():
            fn(step, images)
        bar.update(step)
    return step
