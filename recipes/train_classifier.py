"""Train a digit classifier (keras_vq.models.DigitClassifier), the feature model of
keras_vq.evaluation.sample_quality.

Trains on the train split only (Adam, learning rate decayed to 0 by a cosine over the run),
with random shifts of up to --max-shift pixels (so that it
also recognises digits drawn a little off centre, as generated ones are), and evaluates on
--eval-split. Writes to --out: config.json, classifier.keras, logs/ (TensorBoard), backup/
(checkpoint every epoch; rerun the same command to resume), preset/ and metrics.json
(held-out accuracy, cross-entropy and confident share; and the sample quality of
--num-reference real training images against the held-out split, the reference that
generated images are compared with).

Example:
    python recipes/train_classifier.py --out runs/classifier
"""

from __future__ import annotations

import sys

import _flags
import _inputs
import _run
import _train
from _flags import RecipeError
from _rundir import Run

RECIPE = "train_classifier"
MODEL_FILE = "classifier.keras"


def classifier_args(parser) -> None:
    group = parser.add_argument_group("classifier")
    group.add_argument(
        "--filters",
        type=_flags.positive_int,
        nargs="+",
        default=None,
        help="widths of the convolution stages (unset: the model's default)",
    )
    group.add_argument(
        "--feature-dim",
        type=_flags.positive_int,
        default=None,
        help="size of the feature layer (unset: the model's default)",
    )
    group.add_argument(
        "--dropout", type=float, default=None, help="feature dropout (unset: the model's)"
    )
    group.add_argument(
        "--max-shift",
        type=_flags.non_negative_int,
        default=3,
        help="random shifts of training images by up to this many pixels (0: none)",
    )


def evaluation_args(parser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--num-reference",
        type=_flags.non_negative_int,
        default=500,
        help="real training images whose sample quality against the held-out split is "
        "recorded (0: none)",
    )


def build_parser():
    parser = _flags.training_parser(
        __doc__, "runs/train_classifier", classifier_args, evaluation_args
    )
    parser.set_defaults(epochs=60)
    return parser


def setup(args, run: Run) -> dict:
    """Open the labelled data and build the compiled classifier; writes nothing."""
    import keras

    from keras_vq.models import DigitClassifier

    size = _inputs.image_size(args)
    info = _inputs.dataset_info(args, size)
    if info.num_classes is None:
        raise RecipeError(f"--dataset {args.dataset} has no labels to train a classifier on.")
    train_data = _inputs.load_split(
        args,
        "train",
        image_size=size,
        batch_size=args.batch_size,
        shuffle=True,
        with_labels=True,
        drop_remainder=True,
    )
    eval_data = _inputs.load_split(
        args,
        args.eval_split,
        image_size=size,
        batch_size=_inputs.eval_batch_size(args),
        shuffle=False,
        with_labels=True,
    )
    options = {"filters": tuple(args.filters) if args.filters else None}
    options.update(feature_dim=args.feature_dim, dropout=args.dropout)
    options = {key: value for key, value in options.items() if value is not None}
    with run.scope():
        keras.utils.set_random_seed(args.seed)
        try:
            model = DigitClassifier(
                input_shape=info.image_shape, num_classes=info.num_classes, **options
            )
        except (TypeError, ValueError) as error:
            raise RecipeError(str(error)) from None
        # Cosine decay to 0 over the run: the last epochs settle instead of jittering.
        steps = args.epochs * (args.steps_per_epoch or int(train_data.cardinality()))
        schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
        model.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return {
        "model": model,
        "train_data": _inputs.random_shifts(train_data, args.max_shift, args.seed),
        "eval_data": eval_data,
    }


def labelled_arrays(dataset, count: int | None = None):
    """The first ``count`` (all when ``None``) images and labels of a labelled dataset."""
    import numpy as np

    images, labels = [], []
    for batch_images, batch_labels in dataset.as_numpy_iterator():
        images.append(batch_images)
        labels.append(batch_labels)
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images, labels) if count is None else (images[:count], labels[:count])


def held_out_metrics(model, images, labels) -> dict:
    """Accuracy, mean cross-entropy (nats) and share classified with probability > 0.9."""
    import numpy as np

    from keras_vq.backend import to_numpy

    probabilities = np.concatenate(
        [to_numpy(model.predict_proba(images[i : i + 256])) for i in range(0, len(images), 256)]
    ).astype("float64")
    chosen = probabilities[np.arange(len(labels)), labels]
    return {
        "test_accuracy": float(np.mean(probabilities.argmax(-1) == labels)),
        "test_cross_entropy": float(-np.mean(np.log(np.maximum(chosen, 1e-30)))),
        "test_confident_share": float(np.mean(probabilities.max(-1) > 0.9)),
        "test_examples": len(labels),
    }


def reference_quality(args, model, eval_images) -> dict:
    """``sample_quality`` of the first ``--num-reference`` (unshuffled) training images,
    with their labels, against the held-out images: what real digits score."""
    from keras_vq import evaluation

    train = _inputs.load_split(
        args,
        "train",
        image_size=_inputs.image_size(args),
        batch_size=256,
        shuffle=False,
        with_labels=True,
    )
    images, labels = labelled_arrays(train, args.num_reference)
    quality = evaluation.sample_quality(images, eval_images, model, labels=labels)
    keys = ("fd", "precision", "recall", "confident_share", "accuracy")
    return {f"test_real_{key}": quality[key] for key in keys} | {"real_images": len(images)}


def train(args, run: Run, *, model, train_data, eval_data) -> dict:
    """Fit, save and evaluate the classifier built by :func:`setup`; returns the metrics."""
    summary = _train.fit(model, run, train_data, validation_data=eval_data)
    model.save(run.path(MODEL_FILE))
    images, labels = labelled_arrays(eval_data)
    metrics = {**summary, **held_out_metrics(model, images, labels), "model": MODEL_FILE}
    metrics["parameter_count"] = int(model.count_params())
    if args.num_reference:
        metrics.update(reference_quality(args, model, images))
    # The preset's reference outputs: the logits of a few held-out images.
    run.write_preset = lambda final: _train.write_preset(run, model, final, images[:4])
    return metrics


def main(argv=None) -> int:
    return _run.main(RECIPE, build_parser(), train, setup, argv)


if __name__ == "__main__":
    sys.exit(main())
