"""A small CNN image classifier: the feature model that judges generated digits.

``keras_vq.evaluation.sample_quality`` uses the bundled ``digits_classifier`` preset (trained
by ``recipes/train_classifier.py`` on the train split of the offline digits only) to embed
images for the Fréchet distance and to classify samples.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_vq import _validation
from keras_vq.backend import inference
from keras_vq.models import _common
from keras_vq.presets import PresetMixin

DEFAULT_INPUT_SHAPE = (32, 32, 1)
DEFAULT_FILTERS = (16, 32, 64)
DEFAULT_FEATURE_DIM = 64


@keras.saving.register_keras_serializable(package="keras_vq")
class DigitClassifier(PresetMixin, keras.Model):
    """Convolutional classifier: images → logits, with its penultimate features exposed.

    ``features(x) = ReLU(Dense(GAP(convs(x))))`` (``feature_dim`` values per image) and
    ``logits = Dense(Dropout(features))``. Each width of ``filters`` is a stage of two 3×3
    ReLU convolutions; every stage but the last ends with a 2×2 max-pool, and the global
    average pool over the last stage makes the features insensitive to small shifts.

    The interface ``keras_vq.evaluation.sample_quality`` looks for:

    - ``call(images)`` → logits ``(B, num_classes)`` (train with
      ``SparseCategoricalCrossentropy(from_logits=True)``);
    - ``features(images)`` → float32 ``(B, feature_dim)``, the activations the Fréchet
      distance compares;
    - ``predict_proba(images)`` → float32 ``(B, num_classes)``, softmax of the logits.

    Images are float ``(B, *input_shape)`` in ``[0, 1]``.

    Args:
        input_shape: ``(H, W, C)`` of the images.
        num_classes: number of classes.
        filters: widths of the convolution stages.
        feature_dim: size of the penultimate (feature) layer.
        dropout: dropout rate on the features while training.

    Example:
        >>> classifier = DigitClassifier.from_preset("digits_classifier")
        >>> probabilities = classifier.predict_proba(images)   # (B, 10)
        >>> features = classifier.features(images)              # (B, 64)
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE,
        num_classes: int = 10,
        filters: tuple[int, ...] = DEFAULT_FILTERS,
        feature_dim: int = DEFAULT_FEATURE_DIM,
        dropout: float = 0.25,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = _check_shape(input_shape)
        self.num_classes = _validation.check_int("num_classes", num_classes, minimum=2)
        if isinstance(filters, int) or not filters:
            raise TypeError(f"`filters` must be a non-empty tuple of ints, got {filters!r}.")
        self.filters = tuple(_validation.check_int("filters", f, minimum=1) for f in filters)
        self.feature_dim = _validation.check_int("feature_dim", feature_dim, minimum=1)
        self.dropout = _validation.check_float("dropout", dropout, minimum=0.0, maximum=0.99)
        self.backbone = _backbone(self.image_shape, self.filters, self.feature_dim)
        self.feature_dropout = keras.layers.Dropout(self.dropout, name="feature_dropout")
        self.head = keras.layers.Dense(self.num_classes, name="logits")
        self.build((None, *self.image_shape))

    def build(self, input_shape):
        self.head.build((None, self.feature_dim))
        self.built = True

    def call(self, inputs, training=None):
        images = _common.checked_images(inputs, self.image_shape)
        features = self.backbone(images, training=training)
        return self.head(self.feature_dropout(features, training=training))

    @inference
    def features(self, images):
        """Penultimate activations, float32 ``(B, feature_dim)``.

        Raises:
            TypeError: integer images. ValueError: wrong shape or non-finite values.
        """
        images = _common.checked_images(images, self.image_shape, finite=True)
        return self.backbone(images, training=False)

    @inference
    def predict_proba(self, images):
        """Class probabilities, float32 ``(B, num_classes)`` (softmax of the logits)."""
        images = _common.checked_images(images, self.image_shape, finite=True)
        return ops.softmax(self(images, training=False), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            input_shape=self.image_shape,
            num_classes=self.num_classes,
            filters=self.filters,
            feature_dim=self.feature_dim,
            dropout=self.dropout,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("input_shape", "filters"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        return cls(**config)


def _check_shape(shape) -> tuple[int, int, int]:
    if not isinstance(shape, tuple | list) or len(shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C), got {shape!r}.")
    return tuple(_validation.check_int("input_shape", d, minimum=1) for d in shape)


def _backbone(image_shape, filters, feature_dim) -> keras.Model:
    """Images → features: the stages of two convolutions, global pooling and a dense layer."""
    images = keras.Input(image_shape)
    x = images
    for i, width in enumerate(filters):
        for j in range(2):
            x = keras.layers.Conv2D(
                width, 3, padding="same", activation="relu", name=f"conv{i + 1}_{j + 1}"
            )(x)
        if i < len(filters) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    features = keras.layers.Dense(feature_dim, activation="relu", name="features")(x)
    return keras.Model(images, features, name="backbone")
