"""Keras callbacks for keras_vq models: images in TensorBoard, codebook usage, safe resume.

Pass them to ``fit`` like any Keras callback; they work on TensorFlow, JAX and PyTorch::

    model.fit(
        train,
        epochs=10,
        callbacks=[
            keras_vq.callbacks.CodebookUsage(test),   # logs codebook_perplexity, ... per epoch
            keras_vq.callbacks.ReconstructionImages("logs/images", test_images[:8]),
            keras_vq.callbacks.BackupAndRestore("backup"),
            keras_vq.callbacks.RestoreBestWeights(),   # ends on the epoch of lowest val_loss
            keras.callbacks.TensorBoard("logs"),
        ],
        validation_data=test,
    )
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import keras

from keras_vq._validation import check_float, check_int, check_seed
from keras_vq.backend import no_grad, to_numpy
from keras_vq.evaluation import dataset_code_usage
from keras_vq.visualization import image_summary, side_by_side, summary_writer

__all__ = [
    "BackupAndRestore",
    "CodebookUsage",
    "ReconstructionImages",
    "RestoreBestWeights",
    "SampleImages",
    "TensorBoardImages",
]


class TensorBoardImages(keras.callbacks.Callback):
    """Write images rendered from the model to TensorBoard at the end of every n-th epoch.

    Subclasses define :meth:`render`; its images (``(N, H, W, C)`` in ``[0, 1]``, clipped) go
    into one event file in ``log_dir`` at step ``epoch``, under their names.

    Args:
        log_dir: folder of the event file, e.g. ``"logs/images"`` next to the
            ``keras.callbacks.TensorBoard`` folders (created if missing).
        every_n_epochs: render after epochs n, 2n, ... (1: every epoch).
    """

    def __init__(self, log_dir: str | os.PathLike, every_n_epochs: int = 1):
        super().__init__()
        if not isinstance(log_dir, str | os.PathLike) or not os.fspath(log_dir):
            raise TypeError(f"`log_dir` must be a non-empty path, got {log_dir!r}.")
        self.log_dir = os.fspath(log_dir)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self._writer = None

    def render(self) -> dict[str, Any]:
        """The images to write now: ``{name: (N, H, W, C) images in [0, 1]}``."""
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        if self._writer is None:
            self._writer = summary_writer(self.log_dir)
        with no_grad():
            rendered = self.render()
        with self._writer.as_default():
            for name, images in rendered.items():
                image_summary(name, images, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ReconstructionImages(TensorBoardImages):
    """Fixed images next to the model's reconstructions of them (``model(x)``), each pair side
    by side, in TensorBoard after every n-th epoch.

    Args:
        log_dir: folder of the event file.
        images: ``(N, H, W, C)`` images the model takes, e.g. a few held-out ones.
        name: the summary's tag.
        every_n_epochs: as in :class:`TensorBoardImages`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        images: Any,
        name: str = "inputs|reconstructions",
        every_n_epochs: int = 1,
    ):
        super().__init__(log_dir, every_n_epochs)
        self.images = to_numpy(images)
        if self.images.ndim != 4 or not len(self.images):
            raise ValueError(
                f"`images` must be a non-empty batch (N, H, W, C), got shape {self.images.shape}."
            )
        self.name = name

    def render(self) -> dict[str, Any]:
        reconstructions = self.model(self.images, training=False)
        return {self.name: side_by_side(self.images, reconstructions)}


class SampleImages(TensorBoardImages):
    """New samples of the model in TensorBoard after every n-th epoch, drawn with a fixed seed
    so that the epochs show the same noise.

    The model draws them with ``model.sample(num_samples, seed=seed, **sample_kwargs)`` (a
    ``VAE``); for a prior, pass its ``vqvae``: the images are then
    ``keras_vq.models.generate(vqvae, model, num_samples, seed=seed, **sample_kwargs)``.

    Args:
        log_dir: folder of the event file.
        num_samples: images per epoch, ≥ 1.
        seed: int in ``[0, 2**31 - 1]``.
        vqvae: the VQ-VAE decoding a prior's codes, or ``None``.
        name: the summary's tag.
        every_n_epochs: as in :class:`TensorBoardImages`.
        **sample_kwargs: more arguments of ``sample``/``generate``, e.g. ``temperature``.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        num_samples: int = 8,
        seed: int = 0,
        vqvae: Any = None,
        name: str = "samples",
        every_n_epochs: int = 1,
        **sample_kwargs: Any,
    ):
        super().__init__(log_dir, every_n_epochs)
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.seed = check_seed("seed", seed)
        self.vqvae = vqvae
        self.name = name
        self.sample_kwargs = sample_kwargs

    def render(self) -> dict[str, Any]:
        if self.vqvae is None:
            images = self.model.sample(self.num_samples, seed=self.seed, **self.sample_kwargs)
        else:
            from keras_vq.models import generate

            images = generate(
                self.vqvae, self.model, self.num_samples, seed=self.seed, **self.sample_kwargs
            )
        return {self.name: images}


class CodebookUsage(keras.callbacks.Callback):
    """Log how a VQ-VAE uses its codebook, as epoch metrics.

    At every epoch end the model encodes all of ``data`` and
    ``keras_vq.metrics.code_usage`` of the codes is added to the epoch's ``logs`` as
    ``<prefix>perplexity``, ``<prefix>used_codes``, ``<prefix>used_fraction`` and
    ``<prefix>dead_codes``. ``fit``'s History (and so its return value) and progress bar get
    them; so do ``keras.callbacks.TensorBoard``, ``CSVLogger`` and other callbacks listed
    **after** this one (callbacks see the logs in list order).

    Args:
        data: images to encode: a dataset of ``images`` or ``(images, labels)`` batches
            (e.g. the validation set) or an array of images.
        threshold: a code counts as used when assigned at least this many times.
        prefix: prefix of the log keys.
        batch_size: batch size when ``data`` is an array.

    Example:
        >>> history = vqvae.fit(train, epochs=5, callbacks=[CodebookUsage(test)])
        >>> history.history["codebook_dead_codes"]                  # one value per epoch
    """

    def __init__(
        self, data: Any, threshold: float = 1.0, prefix: str = "codebook_", batch_size: int = 128
    ):
        super().__init__()
        self.data = data
        self.threshold = check_float("threshold", threshold, minimum=0.0)
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a string, got {prefix!r}.")
        self.prefix = prefix
        self.batch_size = check_int("batch_size", batch_size, minimum=1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        usage = dataset_code_usage(
            self.model, self.data, batch_size=self.batch_size, threshold=self.threshold
        )
        if logs is not None:
            logs.update({f"{self.prefix}{key}": value for key, value in usage.items()})


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that also survives a kill while it writes.

    Keras writes ``training_metadata.json`` in place after the weights; a process killed in
    between leaves a torn file, and Keras' fallback to the previous checkpoint only covers
    unreadable weights. Here an unreadable metadata file makes it go back to the previous
    weights and metadata pair (kept with ``double_checkpoint=True``, the default here), or start
    afresh when there is none. :attr:`checkpoint_epoch` says, before ``fit``, where a resumed
    run will start (e.g. to skip the data it has already seen).

    Args:
        backup_dir: folder of the checkpoint.
        save_freq: ``"epoch"`` or a number of batches.
        double_checkpoint: keep the previous checkpoint as a fallback.
        delete_checkpoint: delete the checkpoint when training ends.
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = True,
        delete_checkpoint: bool = True,
    ):
        super().__init__(
            os.fspath(backup_dir),
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )

    def repair(self) -> None:
        """Restore a readable checkpoint (see the class docstring); a no-op when it is fine."""
        meta = Path(self._training_metadata_path)
        if _read_epoch(meta) is not None or not meta.is_file():
            return
        previous_meta = Path(self._prev_training_metadata_path)
        previous_weights = Path(self._prev_weights_path)
        if _read_epoch(previous_meta) is not None and previous_weights.is_file():
            shutil.copyfile(previous_weights, self._weights_path)
            shutil.copyfile(previous_meta, meta)
        else:
            shutil.rmtree(self.backup_dir)

    @property
    def checkpoint_epoch(self) -> int:
        """Epochs the checkpoint holds (0 without one): ``fit`` resumes after them."""
        self.repair()
        return _read_epoch(Path(self._training_metadata_path)) or 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.repair()
        super().on_train_begin(logs)


class RestoreBestWeights(keras.callbacks.Callback):
    """At the end of ``fit``, put back the weights of the epoch with the best ``monitor``.

    After each epoch whose ``logs[monitor]`` beats every earlier one (strictly lower with
    ``mode="min"``, higher with ``"max"``), the model's weights (``get_weights``: trainable
    and not) are copied to host memory; ``on_train_end`` sets them back if a later epoch was
    worse. Training runs all its epochs (unlike ``keras.callbacks.EarlyStopping``, which
    restores only when it stops early): a prior that overfits its small training set ends on
    its lowest held-out NLL. The optimizer's state is not restored. Epochs without
    ``monitor`` in their logs (``validation_freq`` > 1) are skipped; a ``fit`` without any
    warns and keeps its last weights. The best is per ``fit`` call: a run resumed from a
    checkpoint knows only the epochs it trained itself.

    Args:
        monitor: the epoch log to watch, e.g. ``"val_loss"`` (needs ``validation_data``).
        mode: ``"min"`` or ``"max"``.

    Attributes:
        best: the best ``monitor`` value seen (``None`` before one).
        best_epoch: its epoch index, 0-based as ``fit``'s (``None`` before one).

    Example:
        >>> best = RestoreBestWeights("val_loss")
        >>> prior.fit(train_codes, epochs=30, validation_data=test_codes, callbacks=[best])
        >>> best.best_epoch, best.best       # the weights now are that epoch's
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min"):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"`monitor` must be a non-empty string, got {monitor!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        self.monitor, self.mode = monitor, mode
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._best_weights: list | None = None
        self._last_epoch: int | None = None

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._last_epoch = epoch
        value = None if logs is None else logs.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if math.isfinite(value) and self._improves(value):
            self.best, self.best_epoch = value, epoch
            self._best_weights = [w.copy() for w in self.model.get_weights()]

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._best_weights is None:
            if self._last_epoch is not None:
                warnings.warn(
                    f"RestoreBestWeights: no epoch logged a finite {self.monitor!r} (pass "
                    "validation_data to fit); the last weights stay.",
                    stacklevel=2,
                )
            return
        if self.best_epoch != self._last_epoch:
            self.model.set_weights(self._best_weights)
        self._best_weights = None  # host memory back; best and best_epoch stay readable


def _read_epoch(path: Path) -> int | None:
    """The ``epoch`` of a BackupAndRestore metadata file; ``None`` if missing or unreadable."""
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
