"""Training in a run directory: models built in its scope, ``fit`` with a checkpoint to
resume from, and what the training recipes write (metric names, reconstruction grids).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import _inputs
from _flags import RecipeError
from _rundir import Run


def build_model(run: Run, learning_rate: float, build: Callable[[], Any]):
    """``build()`` compiled with Adam(``learning_rate``) in ``run.scope()``; a ``ValueError``
    of the constructor (a bad flag) is a usage error."""
    import keras

    with run.scope():
        try:
            model = build()
        except ValueError as error:  # e.g. an image size the encoder cannot halve enough
            raise RecipeError(str(error)) from None
        model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model


def setup_autoencoder(
    args, run: Run, model_class: Callable[..., Any], flags: tuple[str, ...], recorded=()
) -> dict[str, Any]:
    """The inputs of :func:`fit_autoencoder`: the data (``_inputs.training_data``) and the
    compiled model (see :func:`build_model`) ``model_class(input_shape=..., seed=...)`` with
    the values of the set ``flags`` (named like its arguments; an unset flag passes nothing,
    so the model's default applies). The unset ``flags`` and ``recorded`` then take the
    values the model reports (``get_config``), for config.json."""
    from _defaults import record_model_values

    data = _inputs.training_data(args)
    kwargs = {flag: getattr(args, flag) for flag in flags if getattr(args, flag) is not None}
    kwargs.update(input_shape=data.pop("image_shape"), seed=args.seed)
    model = build_model(run, args.learning_rate, lambda: model_class(**kwargs))
    config = model.get_config()
    record_model_values(args, {flag: config.get(flag) for flag in (*flags, *recorded)})
    return {"model": model, "data": data}


def fit(
    model,
    run: Run,
    train_data,
    *,
    validation_data=None,
    extra_callbacks: tuple = (),
) -> dict[str, Any]:
    """``model.fit`` with a checkpoint in ``backup/`` (every epoch end), TensorBoard logs in
    ``logs/`` and resume from the checkpoint.

    Returns a summary for metrics.json: epochs, the epoch it resumed from and the last
    epoch's logs.
    """
    import keras

    import keras_vq

    args = run.args
    multi_process = args.distribute == "multi_process"
    if run.shares_backup:  # a multi_process or multi_worker run's process other than the chief
        backup = follower_backup(run.backup_dir, run.path("backup"))
    else:
        backup = keras_vq.callbacks.BackupAndRestore(run.backup_dir)
    start_epoch = backup.checkpoint_epoch
    if multi_process or args.distribute == "multi_worker":
        check_same_checkpoint(run, start_epoch)
    if multi_process:
        # TensorBoard images call the model on one process's images: not with a model that
        # spans every process.
        extra_callbacks = drop_image_callbacks(extra_callbacks)
    if start_epoch:
        print(f"Resuming from the checkpoint after epoch {start_epoch}/{args.epochs}.", flush=True)
    # One endless stream (reshuffled every pass with the run's seed) cut into epochs; a resumed
    # run skips the epochs it already trained on, so it sees exactly the batches an
    # uninterrupted run would.
    steps = args.steps_per_epoch or int(train_data.cardinality())
    train_data = train_data.repeat().skip(start_epoch * steps)
    callbacks = [
        backup,
        keras.callbacks.TensorBoard(str(run.log_dir), write_graph=False),
        *extra_callbacks,
    ]
    if args.distribute == "multi_worker":
        train_data, validation_data = map(shard_batches, (train_data, validation_data))
    history = model.fit(
        process_rows(train_data) if multi_process else train_data,
        epochs=args.epochs,
        steps_per_epoch=steps,
        validation_data=process_rows(validation_data) if multi_process else validation_data,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=args.verbose,
    )
    if multi_process:  # from here on each process evaluates and saves on its own
        keras.distribution.set_distribution(None)
        from keras_vq.backend import distribute

        distribute.localize_variables(model)
    logs = {k: float(v[-1]) for k, v in history.history.items() if v}
    reference = first_examples(train_data if validation_data is None else validation_data, model)
    run.write_preset = lambda metrics: write_preset(run, model, metrics, reference)
    return {
        "epochs": args.epochs,
        "resumed_from_epoch": history.epoch[0] if history.epoch else start_epoch,
        "final_epoch_logs": logs,
    }


def follower_backup(shared_dir, private_dir):
    """The checkpoint callback of a multi_process run's process other than 0: resumes from
    process 0's checkpoint in ``shared_dir`` and saves its own copies in ``private_dir``
    (saving is a collective step: every process must take part, one writes ``--out``)."""
    import os

    import keras_vq

    os.makedirs(private_dir, exist_ok=True)

    class FollowerBackup(keras_vq.callbacks.BackupAndRestore):
        def repair(self) -> None:  # process 0 repairs the checkpoint it wrote
            pass

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            follower = keras_vq.callbacks.BackupAndRestore(private_dir)
            for name in ("weights", "training_metadata", "prev_weights", "prev_training_metadata"):
                name = f"_{name}_path"
                setattr(self, name, getattr(follower, name))
            # Keras recreates backup_dir before each save: it must not bring back the shared
            # one after process 0 has removed it at the end of training.
            self.backup_dir = follower.backup_dir

    return FollowerBackup(shared_dir, delete_checkpoint=False)


def check_same_checkpoint(run: Run, epoch: int) -> None:
    """Every process of a multi_process or multi_worker run must resume from the same epoch."""
    from _distribute import gather_processes

    epochs = gather_processes(run, epoch)
    if len(set(epochs)) > 1:
        raise RecipeError(
            f"The processes found checkpoints of different epochs ({epochs}, by process): "
            "every process reads process 0's --out/backup, so --out must be a directory "
            "they all share."
        )


def drop_image_callbacks(callbacks: tuple) -> tuple:
    """``callbacks`` without keras_vq's TensorBoard image callbacks (saying so)."""
    from keras_vq.callbacks import TensorBoardImages

    kept = tuple(c for c in callbacks if not isinstance(c, TensorBoardImages))
    if len(kept) < len(callbacks):
        print("multi_process: no images in TensorBoard during training.", flush=True)
    return kept


def shard_batches(data):
    """``data`` for ``MultiWorkerMirroredStrategy``: each worker reads the whole pipeline and
    keeps its equal part of every batch, in worker order (TensorFlow's ``DATA`` sharding), so
    the workers together train on the batches one process would; never by files, which would
    give each worker other images."""
    if data is None:
        return None
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def process_rows(data):
    """This process's rows of every batch of ``data`` (``x`` or tuples): the ``i``-th of
    ``num_processes`` equal parts, so the processes together feed each whole batch, in order."""
    if data is None:
        return None
    import tensorflow as tf

    from keras_vq.backend import distribute

    index, count = distribute.process_index(), distribute.process_count()

    def rows(tensor):
        size = tf.shape(tensor)[0] // count
        return tensor[index * size : (index + 1) * size]

    return data.map(
        lambda *parts: tf.nest.map_structure(rows, parts[0] if len(parts) == 1 else parts)
    )


def first_examples(data, model, count: int = 4):
    """The first ``count`` inputs of ``model`` in a dataset of ``x`` or ``(x, y)`` batches
    (NumPy; ``[codes, labels]`` for a class-conditional prior): the reference inputs stored
    with a preset."""
    batch = next(iter(data.take(1)))
    parts = [x.numpy()[:count] for x in (batch if isinstance(batch, tuple | list) else [batch])]
    return parts[:2] if getattr(model, "num_classes", None) is not None else parts[0]


def write_preset(run: Run, model, metrics: dict[str, Any], reference) -> None:
    """Save the trained ``model`` as a keras_vq preset in ``<out>/preset/`` whose metadata holds
    the held-out metrics (``test_*``) and sample quality (``sample_*``), the command that
    trained it and, for a prior, the VQ-VAE preset (``<dir of --vqvae>/preset``, relative to
    this one) it was trained on."""
    import os
    import shlex
    import sys
    from pathlib import Path

    from _rundir import PRESET_DIR, json_default

    args = run.args
    script = os.path.relpath(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    metadata = {
        "recipe": run.config["recipe"],
        "recipe_command": shlex.join(["python", script, *sys.argv[1:]]),
        "recipe_args": run.config["args"],
        "dataset": getattr(args, "dataset", None),
        "eval_split": getattr(args, "eval_split", None),
        "metrics": {k: v for k, v in metrics.items() if k.startswith(("test_", "sample_"))},
    }
    metadata = json.loads(json.dumps(metadata, default=json_default))  # NumPy scalars too
    preset_dir = run.path(PRESET_DIR)
    vqvae_file = getattr(args, "vqvae", None)
    if vqvae_file:
        vqvae_preset = Path(vqvae_file).resolve().parent / PRESET_DIR
        if vqvae_preset.is_dir():
            metadata["vqvae_preset"] = os.path.relpath(vqvae_preset, preset_dir.resolve())
    model.save_to_preset(preset_dir, metadata=metadata, reference_inputs=reference, overwrite=True)


def fit_autoencoder(
    args, run: Run, model, data: dict[str, Any], model_file: str, extra_callbacks: tuple = ()
) -> dict[str, Any]:
    """Fit a VAE or VQ-VAE on ``data`` (see ``_inputs.training_data``) with held-out images and
    their reconstructions in TensorBoard every epoch, save it as ``model_file``, evaluate its
    reconstructions (and a VQ-VAE's code usage) and write reconstructions.png (``--num-images``
    test images, each row followed by its reconstructions); returns the metrics."""
    from keras_vq import callbacks, evaluation
    from keras_vq.data import first_images

    shown = first_images(data["eval_data"], max(args.num_images, 8))
    extra_callbacks = (
        callbacks.ReconstructionImages(run.log_dir / "images", shown[:8]),
        *extra_callbacks,
    )
    summary = fit(
        model,
        run,
        data["train_data"],
        validation_data=data["fit_eval_data"],
        extra_callbacks=extra_callbacks,
    )
    model.save(run.path(model_file))
    evaluated = evaluation.evaluate_reconstructions(model, data["eval_data"], verbose=args.verbose)
    if args.num_images:
        write_reconstructions(run.path("reconstructions.png"), model, shown[: args.num_images], 8)
    return {**summary, **held_out_metrics(evaluated), "model": model_file}


def held_out_metrics(evaluation: dict, prefix: str = "test") -> dict:
    """metrics.json's names for ``keras_vq.evaluation.evaluate_reconstructions``' numbers."""
    names = {
        "reconstruction_mse": "reconstruction_mse",
        "perplexity": "perplexity",
        "used_codes": "codes_used",
    }
    return {f"{prefix}_{names[k]}": v for k, v in evaluation.items() if k in names}


def write_reconstructions(path, model, images, ncols: int):
    """A PNG of rows of ``images``, each followed by the row of their reconstructions;
    returns the reconstructions (NumPy)."""
    from keras_vq.backend import no_grad, to_numpy
    from keras_vq.visualization import interleave_rows, save_image_grid

    with no_grad():
        recon = to_numpy(model(images, training=False))
    save_image_grid(path, interleave_rows(images, recon, ncols), ncols=ncols)
    return recon
