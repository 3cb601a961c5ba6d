"""Image grids: tile a batch into one picture, write it as a PNG or to TensorBoard.

Everything here takes images ``(N, H, W, C)`` (C = 1 or 3; ``(N, H, W)`` is read as C = 1) with
values in ``[0, 1]``, as NumPy arrays or tensors of any backend, and works the same on
TensorFlow, JAX and PyTorch. Values outside ``[0, 1]`` are clipped and NaN is drawn as 0, so a
diverged model still gives a picture.

Example:
    >>> images = vae.sample(16, seed=0)
    >>> save_image_grid("samples.png", images)            # a 4 x 4 grid
    >>> save_image_grid("pairs.png", interleave_rows(x, vqvae(x), ncols=8), ncols=8)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from keras_vq.backend import to_numpy

__all__ = [
    "image_grid",
    "interleave_rows",
    "save_image_grid",
    "side_by_side",
    "write_tensorboard_images",
    "write_tensorboard_scalars",
]


def _as_images(images: Any, name: str = "images") -> np.ndarray:
    """float32 ``(N, H, W, C)`` with C in (1, 3), N ≥ 1; raises ValueError otherwise."""
    array = np.asarray(to_numpy(images), dtype=np.float32)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or not len(array):
        raise ValueError(
            f"`{name}` must be a non-empty batch of shape (N, H, W, 1 or 3) or (N, H, W), got "
            f"shape {array.shape}."
        )
    return array


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def image_grid(
    images: Any, ncols: int | None = None, padding: int = 2, pad_value: float = 0.5
) -> np.ndarray:
    """Tile images into one uint8 picture, row by row.

    With ``rows = ceil(N / ncols)`` the grid is ``rows·H + (rows+1)·padding`` pixels high and
    ``ncols·W + (ncols+1)·padding`` wide; cells past the last image and the borders are
    ``pad_value``. Pixel values are clipped to ``[0, 1]`` (NaN → 0) and scaled to 0..255.

    Args:
        images: ``(N, H, W, C)`` with C = 1 or 3 (or ``(N, H, W)``), values in ``[0, 1]``.
        ncols: images per row; ``None`` takes ``ceil(sqrt(N))``.
        padding: pixels between images and around the grid, ≥ 0.
        pad_value: grey level of the padding, in ``[0, 1]``.

    Returns:
        uint8 NumPy array ``(height, width, C)``.

    Raises:
        ValueError: a batch of another shape, or a bad ``ncols``/``padding``/``pad_value``.
    """
    images = _as_images(images)
    n, h, w, c = images.shape
    ncols = math.ceil(math.sqrt(n)) if ncols is None else _check_int("ncols", ncols, 1)
    padding = _check_int("padding", padding, 0)
    if not isinstance(pad_value, int | float | np.floating) or not 0.0 <= pad_value <= 1.0:
        raise ValueError(f"`pad_value` must be a float in [0, 1], got {pad_value!r}.")
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


def save_image_grid(
    path: str | os.PathLike,
    images: Any,
    ncols: int | None = None,
    padding: int = 2,
    pad_value: float = 0.5,
) -> Path:
    """Write :func:`image_grid` as a PNG (greyscale for C = 1, RGB for C = 3).

    Args:
        path: the file to write (its folder must exist).
        images, ncols, padding, pad_value: as in :func:`image_grid`.

    Returns:
        ``path`` as a ``Path``.
    """
    from PIL import Image

    grid = image_grid(images, ncols=ncols, padding=padding, pad_value=pad_value)
    path = Path(path)
    # uint8 (H, W) is mode "L" and (H, W, 3) is "RGB".
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def side_by_side(left: Any, right: Any) -> np.ndarray:
    """Pairs joined along the width: ``(N, H, W, C)`` twice → float32 ``(N, H, 2W, C)``.

    Raises:
        ValueError: the two batches differ in shape.
    """
    left, right = _as_images(left, "left"), _as_images(right, "right")
    if left.shape != right.shape:
        raise ValueError(
            f"`left` and `right` must have the same shape, got {left.shape} and {right.shape}."
        )
    return np.concatenate([left, right], axis=2)


def interleave_rows(originals: Any, reconstructions: Any, ncols: int) -> np.ndarray:
    """Rows of ``ncols`` originals, each followed by the row of their reconstructions.

    Shown with ``image_grid(..., ncols=ncols)`` every original sits right above its
    reconstruction. A short last row is filled with black images so the pairs stay aligned.

    Args:
        originals, reconstructions: ``(N, H, W, C)`` of the same shape.
        ncols: images per row, ≥ 1.

    Returns:
        float32 ``(2 · ceil(N / ncols) · ncols, H, W, C)``.
    """
    originals = _as_images(originals, "originals")
    reconstructions = _as_images(reconstructions, "reconstructions")
    if originals.shape != reconstructions.shape:
        raise ValueError(
            "`originals` and `reconstructions` must have the same shape, got "
            f"{originals.shape} and {reconstructions.shape}."
        )
    ncols = _check_int("ncols", ncols, 1)
    rows = []
    for start in range(0, len(originals), ncols):
        a, b = originals[start : start + ncols], reconstructions[start : start + ncols]
        pad = ncols - len(a)
        if pad:
            blank = np.zeros((pad, *a.shape[1:]), a.dtype)
            a, b = np.concatenate([a, blank]), np.concatenate([b, blank])
        rows += [a, b]
    return np.concatenate(rows)


def write_tensorboard_images(
    log_dir: str | os.PathLike, name: str, images: Any, step: int = 0
) -> None:
    """Write one set of images to TensorBoard (an image summary in a new event file in
    ``log_dir``).

    Args:
        log_dir: folder of the event file (created if missing).
        name: the summary's tag.
        images: ``(N, H, W, C)`` in ``[0, 1]`` (clipped; NaN → 0); all N are shown.
        step: the step (e.g. epoch) the images belong to.
    """
    writer = summary_writer(log_dir)
    with writer.as_default():
        image_summary(name, images, step)
    writer.close()


def write_tensorboard_scalars(
    log_dir: str | os.PathLike, scalars: dict[str, float], step: int = 0
) -> None:
    """Write named numbers to TensorBoard (scalar summaries in a new event file in ``log_dir``),
    e.g. a run's final metrics, so that runs compare side by side in the Scalars tab.

    Args:
        log_dir: folder of the event file (created if missing).
        scalars: ``{tag: value}``; each value a real number (an int, float or 0-d array).
        step: the step (e.g. epoch) the values belong to.

    Raises:
        TypeError: a tag that is not a string or a value that is not a real number.

    Example:
        >>> write_tensorboard_scalars("runs/x/logs/quality", {"sample_fd": 18.3})
    """
    values = {}
    for tag, value in scalars.items():
        if not isinstance(tag, str) or isinstance(value, bool | np.bool_):
            raise TypeError(f"`scalars` must map names to numbers, got {tag!r}: {value!r}.")
        try:
            values[tag] = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"`scalars` must map names to numbers, got {tag!r}: {value!r}."
            ) from None
    import tensorflow as tf

    writer = summary_writer(log_dir)
    with writer.as_default():
        for tag, value in values.items():
            tf.summary.scalar(tag, value, step=step)
    writer.close()


def summary_writer(log_dir: str | os.PathLike) -> Any:
    """A ``tf.summary`` file writer into ``log_dir``.

    TensorBoard's event files are written with ``tf.summary`` on every Keras backend (as
    ``keras.callbacks.TensorBoard`` does): TensorFlow is imported here, on first use only.
    """
    import tensorflow as tf

    return tf.summary.create_file_writer(os.fspath(log_dir))


def image_summary(name: str, images: Any, step: int) -> None:
    """``tf.summary.image`` of all ``images`` into the default summary writer."""
    import tensorflow as tf

    images = np.clip(np.nan_to_num(_as_images(images)), 0.0, 1.0)
    tf.summary.image(name, images, step=step, max_outputs=len(images))
