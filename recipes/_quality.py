"""Sample quality of a recipe's generator: ``--quality-samples`` new images judged against the
held-out split (``--dataset``'s ``--eval-split``) by ``keras_vq.evaluation.sample_quality``.

The recipes that train or sample a prior (train_prior, sample, pipeline) put the numbers in
metrics.json as ``sample_fd``, ``sample_precision``, ``sample_recall``,
``sample_confident_share``, ``sample_class_histogram`` and, for a class-conditional
generator, ``sample_accuracy``; the scalars also go to TensorBoard (``logs/sample_quality``)
and the final summary line. A conditional generator is asked for every class in turn
(0, 1, ..., K-1, 0, ...), whatever ``--labels`` picks for the grid, so that the numbers measure
the model. The default feature model, the bundled ``digits_classifier``, takes 32x32x1
images only: for other image shapes the metrics are skipped and ``sample_quality_note`` says
why (features of another model would not be comparable with the digits' numbers).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import _inputs
from _flags import RecipeError
from _rundir import Run

# Held-out images compared with (the whole split of the offline digits; a cap for TFDS sets).
MAX_REAL_IMAGES = 10_000
# The k of the k-NN precision and recall: both sets need more than K_NEIGHBOURS images.
K_NEIGHBOURS = 3
TENSORBOARD_DIR = "sample_quality"


def enabled(args: argparse.Namespace) -> bool:
    """Whether ``--quality-samples`` asks for the metrics; a count of 1 to 3 is a usage
    error (precision and recall need more images than their k)."""
    count = getattr(args, "quality_samples", 0)
    if 0 < count <= K_NEIGHBOURS:
        raise RecipeError(
            f"--quality-samples {count}: expected 0 (off) or more than {K_NEIGHBOURS} images "
            "(precision and recall compare each image with its 3 nearest neighbours)."
        )
    return count > 0


def unsupported(image_shape: tuple[int, ...]) -> str | None:
    """Why the default feature model cannot judge images of ``image_shape``, or ``None``."""
    from keras_vq.evaluation import default_feature_model

    expected = tuple(default_feature_model().image_shape)
    if tuple(image_shape) == expected:
        return None
    size = "x".join(str(n) for n in expected)
    return (
        f"skipped: the default feature model (the digits_classifier preset) takes {size} "
        f"images, these are {'x'.join(str(n) for n in image_shape)}"
    )


def held_out(args: argparse.Namespace, image_shape: tuple[int, ...]) -> Any:
    """The held-out images to compare with (``None`` when no metric will be computed); a
    usage error, before anything is written, if they cannot be loaded."""
    import keras_vq

    if not enabled(args) or unsupported(image_shape):
        return None
    split = _inputs.load_split(
        args, args.eval_split, image_size=tuple(image_shape[:2]), batch_size=256, shuffle=False
    )
    images = keras_vq.data.first_images(split, MAX_REAL_IMAGES)
    if len(images) <= K_NEIGHBOURS:
        raise RecipeError(
            f"--eval-split {args.eval_split} holds {len(images)} images; sample quality needs "
            f"more than {K_NEIGHBOURS} (or pass --quality-samples 0)."
        )
    return images


def prior_sampler(args: argparse.Namespace, vqvae, prior) -> Callable[[int, Any], Any]:
    """``draw(count, labels)``: images decoded from codes ~ ``prior``, with the recipe's
    sampling flags (and ``--top-k``, ``--top-p``, ``--guidance-scale`` where the recipe has
    them)."""
    from keras_vq.models import generate

    options = {
        name: getattr(args, name)
        for name in ("top_k", "top_p", "guidance_scale")
        if getattr(args, name, None) is not None
    }

    def draw(count: int, labels: Any) -> Any:
        return generate(
            vqvae,
            prior,
            count,
            temperature=args.temperature,
            seed=args.seed,
            labels=labels,
            batch_size=args.sample_batch_size,
            **options,
        )

    return draw


def measure(
    args: argparse.Namespace,
    run: Run,
    draw: Callable[[int, Any], Any],
    image_shape: tuple[int, ...],
    num_classes: int | None = None,
    real: Any = None,
) -> dict[str, Any]:
    """Draw ``--quality-samples`` images with ``draw(count, labels)`` and judge them against
    ``real`` (from :func:`held_out`; loaded here when ``None``).

    Returns:
        The flat ``sample_*`` metrics (with ``quality_wall_s``, the seconds drawing and
        judging took); ``{"sample_quality_note": ...}`` when skipped; ``{}`` when
        ``--quality-samples`` is 0.
    """
    import numpy as np

    from keras_vq.backend import to_numpy
    from keras_vq.evaluation import sample_quality
    from keras_vq.visualization import write_tensorboard_scalars

    if not enabled(args):
        return {}
    reason = unsupported(image_shape)
    if reason:
        return {"sample_quality_note": reason}
    if real is None:
        real = held_out(args, image_shape)
    count = args.quality_samples
    if args.verbose:
        print(f"Sample quality: drawing {count} images, judged against {len(real)}.", flush=True)
    start = time.time()
    labels = None if num_classes is None else np.arange(count, dtype="int32") % num_classes
    images = to_numpy(draw(count, labels))
    quality = sample_quality(images, real, labels=labels, k=K_NEIGHBOURS)
    metrics = {f"sample_{name}": value for name, value in quality.items()}
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    write_tensorboard_scalars(run.log_dir / TENSORBOARD_DIR, scalars)
    metrics["quality_wall_s"] = round(time.time() - start, 1)
    return metrics
