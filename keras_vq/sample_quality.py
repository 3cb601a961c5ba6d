"""How good are generated images: Fréchet distance, precision and recall, classifier scores.

Everything is computed on the host in float64 from features of a feature model; by default
the bundled ``digits_classifier`` preset (a ``DigitClassifier`` trained on the train split of
the offline digits), for digit-like 32×32×1 images in ``[0, 1]``. Re-exported by
``keras_vq.evaluation``.

Example:
    >>> from keras_vq.evaluation import sample_quality
    >>> vqvae, prior = keras_vq.presets.load_pair("pixelcnn_digits")
    >>> images = keras_vq.models.generate(vqvae, prior, 500, labels=np.arange(500) % 10, seed=0)
    >>> test = keras_vq.data.load("digits", split="test", image_size=32, shuffle=False)
    >>> sample_quality(images, keras_vq.data.first_images(test, 10_000),
    ...                labels=np.arange(500) % 10)
    {'fd': 18.3, 'precision': 0.54, 'recall': 0.96, 'confident_share': 0.64,
     'class_histogram': [48, 41, 46, 50, 54, 44, 71, 34, 60, 52], 'accuracy': 0.61}
    >>> # 500 real training digits score fd 8.1, precision 0.92, recall 0.82,
    >>> # confident_share 0.96, accuracy 0.99 (the preset's metadata, "test_real_*").
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np

from keras_vq import _validation
from keras_vq.backend import no_grad, to_numpy

__all__ = ["frechet_distance", "precision_recall", "sample_quality"]

DEFAULT_FEATURE_PRESET = "digits_classifier"
CONFIDENCE = 0.9
# Images may leave [0, 1] by this much (a decoder's overshoot) and are clipped; more is a
# scaling mistake (0-255 or [-1, 1] pixels).
_OVERSHOOT = 0.25
# Host memory of one block of pairwise distances in precision_recall.
_DISTANCE_BLOCK_BYTES = 32 * 1024**2


# --------------------------------------------------------------------------- Fréchet distance


def _feature_matrix(name: str, features: Any, minimum_rows: int = 2) -> np.ndarray:
    """``features`` as a finite float64 ``(N, d)`` array with ``N >= minimum_rows``."""
    try:
        array = np.asarray(to_numpy(features))
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be an array of shape (N, d), got {features!r:.80}.") from (
            error
        )
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (N, d), got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {array.dtype}.")
    if array.shape[0] < minimum_rows or array.shape[1] < 1:
        raise ValueError(
            f"`{name}` must have at least {minimum_rows} rows of at least one feature, got "
            f"shape {array.shape}."
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"`{name}` contains {bad} NaN or Inf values; expected finite values.")
    return array


def _check_same_width(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same number of features, got shapes "
            f"{a.shape} and {b.shape}."
        )


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix (round-off negatives clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``FD = ||μ_a − μ_b||² + tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½)`` with the sample means and
    (unbiased) covariances, in float64. Both square roots are of symmetric PSD matrices,
    taken through an eigendecomposition with round-off negative eigenvalues clipped to 0, so
    the result is real and stable for rank-deficient covariances (``N <= d``) too.
    ``Σ_a^½ Σ_b Σ_a^½`` has the eigenvalues of ``Σ_a Σ_b``: the trace term equals that of
    ``sqrtm(Σ_a Σ_b)``, the usual FID implementation.

    Args:
        features_a: ``(N_a, d)`` NumPy array or backend tensor, ``N_a >= 2``.
        features_b: ``(N_b, d)``, ``N_b >= 2``.

    Returns:
        The distance, a float ``>= 0`` (0 for identical sets, up to round-off).

    Raises:
        ValueError: not 2-D, fewer than 2 rows, different ``d``, or NaN/Inf values.

    Example:
        >>> frechet_distance(np.random.randn(500, 64), np.random.randn(500, 64) + 1.0)  # ~64
    """
    a = _feature_matrix("features_a", features_a)
    b = _feature_matrix("features_b", features_b)
    _check_same_width(a, b, ("features_a", "features_b"))
    mean_term = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _symmetric_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    # tr(M^½) of a symmetric PSD M is the sum of the square roots of its eigenvalues.
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    distance = mean_term + float(np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * cross)
    return max(distance, 0.0)


# --------------------------------------------------------------------------- precision, recall


def _squared_distance_blocks(queries: np.ndarray, points: np.ndarray):
    """Yield ``(start, D)`` with ``D[i, j] = ||queries[start + i] − points[j]||²`` (float64),
    blocks of rows bounded to about ``_DISTANCE_BLOCK_BYTES``."""
    rows = max(1, _DISTANCE_BLOCK_BYTES // (8 * len(points)))
    point_norms = np.sum(points**2, axis=1)
    for start in range(0, len(queries), rows):
        block = queries[start : start + rows]
        squared = np.sum(block**2, axis=1)[:, None] + point_norms[None] - 2.0 * block @ points.T
        yield start, np.maximum(squared, 0.0)


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour among the others."""
    radii = np.empty(len(points))
    for start, squared in _squared_distance_blocks(points, points):
        rows = np.arange(len(squared))
        squared[rows, start + rows] = np.inf  # a point is not its own neighbour
        radii[start : start + len(squared)] = np.partition(squared, k - 1, axis=1)[:, k - 1]
    return radii


def _share_inside(queries: np.ndarray, points: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``queries`` within the k-NN ball of at least one of ``points``."""
    inside = 0
    for _, squared in _squared_distance_blocks(queries, points):
        inside += int(np.count_nonzero(np.any(squared <= radii[None], axis=1)))
    return inside / len(queries)


def precision_recall(real_features: Any, generated_features: Any, *, k: int = 3) -> dict:
    """Precision and recall of generated features against real ones (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, each of radius the distance
    to the point's k-th nearest neighbour within the set (itself excluded). Precision is the
    share of generated points inside the real manifold (are samples realistic?), recall the
    share of real points inside the generated manifold (is the data covered?). Euclidean
    distances in float64, computed in blocks of bounded memory.

    Args:
        real_features: ``(N_r, d)`` NumPy array or backend tensor, ``N_r > k``.
        generated_features: ``(N_g, d)``, ``N_g > k``.
        k: the neighbour that sets each radius (the paper uses 3).

    Returns:
        ``{"precision": float, "recall": float}``, each in ``[0, 1]``.

    Raises:
        ValueError: bad shapes, too few rows for ``k``, different ``d`` or NaN/Inf values.

    Example:
        >>> precision_recall(real, real[::-1])    # {'precision': 1.0, 'recall': 1.0}
    """
    k = _validation.check_int("k", k, minimum=1)
    real = _feature_matrix("real_features", real_features, minimum_rows=k + 1)
    generated = _feature_matrix("generated_features", generated_features, minimum_rows=k + 1)
    _check_same_width(real, generated, ("real_features", "generated_features"))
    return {
        "precision": _share_inside(generated, real, _knn_radii(real, k)),
        "recall": _share_inside(real, generated, _knn_radii(generated, k)),
    }


# --------------------------------------------------------------------------- sample_quality


@functools.cache
def _bundled_classifier(backend: str) -> keras.Model:
    from keras_vq.models import DigitClassifier

    return DigitClassifier.from_preset(DEFAULT_FEATURE_PRESET)


def default_feature_model() -> keras.Model:
    """The bundled ``digits_classifier`` preset (loaded once per backend and process)."""
    return _bundled_classifier(keras.backend.backend())


def _is_classifier(model: Any) -> bool:
    return callable(getattr(model, "features", None)) and callable(
        getattr(model, "predict_proba", None)
    )


def _expected_image_shape(model: Any) -> tuple | None:
    shape = getattr(model, "image_shape", None)
    if shape is None:
        try:
            shape = tuple(model.inputs[0].shape[1:])
        except (AttributeError, IndexError, TypeError, ValueError):
            return None
    return tuple(shape)


def _images(name: str, images: Any, expected: tuple | None) -> np.ndarray:
    """``images`` as a float32 NumPy ``(B, H, W, C)`` array in [0, 1], checked."""
    if not hasattr(images, "shape"):
        raise TypeError(
            f"`{name}` must be a NumPy array or backend tensor of images (B, H, W, C), got "
            f"{type(images).__name__}."
        )
    array = to_numpy(images)
    _validation.check_image_dtype(name, array)
    if array.ndim != 4:
        raise ValueError(f"`{name}` must have shape (B, H, W, C), got shape {array.shape}.")
    if expected is not None:
        _validation.check_images(name, array, expected)
    _validation.check_finite(name, array)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
    if low < -_OVERSHOOT or high > 1.0 + _OVERSHOOT:
        raise ValueError(
            f"`{name}` must lie in [0, 1], got values in [{low:.6g}, {high:.6g}]; scale pixels "
            "to [0, 1] (e.g. images / 255 for 8-bit images, (x + 1) / 2 for [-1, 1])."
        )
    # A decoder's outputs overshoot [0, 1] a little: judged as the pictures show them.
    return np.clip(array, 0.0, 1.0).astype("float32", copy=False)


def _batched(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    with no_grad():
        parts = [
            to_numpy(fn(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
    return np.concatenate(parts).reshape(len(images), -1).astype(np.float64)


def _labels(labels: Any, count: int) -> np.ndarray:
    array = np.asarray(to_numpy(labels))
    if array.shape != (count,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"`labels` must be {count} integer class labels (one per generated image), got "
            f"shape {array.shape} and dtype {array.dtype}."
        )
    return array


def _check_label_range(labels: np.ndarray, num_classes: int) -> None:
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}), got values in "
            f"[{labels.min()}, {labels.max()}]."
        )


def sample_quality(
    generated: Any,
    real: Any,
    feature_model: keras.Model | None = None,
    labels: Any = None,
    *,
    k: int = 3,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Quality of generated images against real ones, in the features of ``feature_model``.

    Args:
        generated: generated images ``(N_g, H, W, C)`` in ``[0, 1]``, NumPy or a backend
            tensor; ``N_g > k``. Values up to 0.25 outside ``[0, 1]`` (a decoder's
            overshoot) are clipped to it, as ``keras_vq.visualization`` shows them.
        real: real (held-out) images, the same ``(H, W, C)``; ``N_r > k``.
        feature_model: ``None`` for the bundled ``digits_classifier`` preset (32×32×1
            images), or any Keras model: a classifier with ``features(images)`` and
            ``predict_proba(images)`` (as ``DigitClassifier``), else its flattened outputs
            are the features (e.g. ``keras.applications.InceptionV3(include_top=False,
            pooling="avg")`` behind your own resizing, for the standard FID).
        labels: for a class-conditional generator with a classifier: the class each
            generated image was drawn for, int ``(N_g,)``.
        k: the neighbour that sets the k-NN radii of precision and recall.
        batch_size: images per feature-model call.

    Returns:
        ``fd`` (:func:`frechet_distance` of the two feature sets), ``precision`` and
        ``recall`` (:func:`precision_recall`); with a classifier also ``confident_share``
        (share of generated images whose top class probability exceeds 0.9) and
        ``class_histogram`` (list of ``num_classes`` counts of the top class: mode coverage);
        with ``labels`` also ``accuracy`` (share classified as their label).

    Raises:
        TypeError: non-float images or a non-array. ValueError: shapes that differ or that
        the feature model does not take, values far outside ``[0, 1]`` or non-finite, too few
        images, bad ``labels``, or ``labels`` without a classifier.

    Example:
        >>> sample_quality(samples, test_images, labels=requested)  # see the module docstring
        {'fd': 18.3, 'precision': 0.54, 'recall': 0.96, 'confident_share': 0.64,
         'class_histogram': [48, 41, ...], 'accuracy': 0.61}
    """
    k = _validation.check_int("k", k, minimum=1)
    batch_size = _validation.check_int("batch_size", batch_size, minimum=1)
    model = default_feature_model() if feature_model is None else feature_model
    if not callable(model):
        raise TypeError(f"`feature_model` must be a Keras model, got {type(model).__name__}.")
    expected = _expected_image_shape(model)
    generated = _images("generated", generated, expected)
    real = _images("real", real, expected if expected is not None else generated.shape[1:])
    for name, images in (("generated", generated), ("real", real)):
        if len(images) <= k:
            raise ValueError(f"`{name}` must hold more than k={k} images, got {len(images)}.")
    classifier = _is_classifier(model)
    if labels is not None and not classifier:
        raise ValueError(
            "`labels` needs a classifier `feature_model` (with `features` and "
            f"`predict_proba`), got {type(model).__name__}."
        )
    wanted = None if labels is None else _labels(labels, len(generated))
    num_classes = getattr(model, "num_classes", None)
    if wanted is not None and isinstance(num_classes, int):
        _check_label_range(wanted, num_classes)  # before the features are computed
    embed = model.features if classifier else (lambda x: model(x, training=False))
    generated_features = _batched(embed, generated, batch_size)
    real_features = _batched(embed, real, batch_size)
    quality: dict[str, Any] = {"fd": frechet_distance(generated_features, real_features)}
    quality.update(precision_recall(real_features, generated_features, k=k))
    if classifier:
        probabilities = _batched(model.predict_proba, generated, batch_size)
        predicted = probabilities.argmax(axis=1)
        quality["confident_share"] = float(np.mean(probabilities.max(axis=1) > CONFIDENCE))
        histogram = np.bincount(predicted, minlength=probabilities.shape[1])
        quality["class_histogram"] = [int(c) for c in histogram]
        if wanted is not None:
            _check_label_range(wanted, probabilities.shape[1])
            quality["accuracy"] = float(np.mean(predicted == wanted))
    return quality
