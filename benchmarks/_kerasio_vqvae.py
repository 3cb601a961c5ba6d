"""The keras.io VQ-VAE example, reproduced as the baseline of the benchmarks.

Source: "Vector-Quantized Variational Autoencoders", Sayak Paul, 2021
(https://keras.io/examples/generative/vq_vae/, keras-io ``examples/generative/vq_vae.py``).
What is kept from it, unchanged in substance:

- ``VectorQuantizer``: the codebook is a raw ``tf.Variable`` of shape ``(D, K)`` with a
  ``tf.random_uniform_initializer()``; distances ``||z||² + ||e||² - 2 z·e`` and ``argmin``
  with TF ops on the whole ``(N, K)`` matrix; quantisation as ``one_hot @ codebook``;
  ``add_loss(β·mean((sg[q] - z)²) + mean((q - sg[z])²))``; straight-through estimator.
- encoder Conv2D(32, 3, s2, relu) → Conv2D(64, 3, s2, relu) → Conv2D(D, 1); decoder
  Conv2DTranspose(64, 3, s2, relu) → Conv2DTranspose(32, 3, s2, relu) →
  Conv2DTranspose(1, 3), all ``padding="same"``.
- ``VQVAETrainer``: a ``tf.GradientTape`` step on ``mean((x - x̂)²) / train_variance +
  sum(vqvae.losses)``, three ``Mean`` trackers, Adam with default settings, batch 128.

The only change: the builders take the ``keras`` module and the input shape as arguments, so
one definition runs on

- ``tf_keras`` (Keras 2, what the example was written for with ``from tensorflow import
  keras`` on TF ≤ 2.15): the ``tf.Variable`` attribute is tracked, so the codebook trains;
- Keras 3 on the TensorFlow backend (what ``from tensorflow import keras`` gives today):
  Keras 3 tracks only ``keras.Variable``s, so the raw ``tf.Variable`` codebook is silently
  left out of ``trainable_variables`` and keeps its random initial values.

Both need TensorFlow (``KERAS_BACKEND=tensorflow`` for the Keras 3 flavour).
"""

from __future__ import annotations

from types import ModuleType

FLAVOURS = ("tf_keras", "keras3")


def import_keras(flavour: str) -> ModuleType:
    """``tf_keras`` (Keras 2) or Keras 3, which must be on its TensorFlow backend."""
    if flavour == "tf_keras":
        import tf_keras

        return tf_keras
    if flavour != "keras3":
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("the keras.io example is TF-only: set KERAS_BACKEND=tensorflow")
    return keras


def get_encoder(keras: ModuleType, input_shape=(28, 28, 1), latent_dim: int = 16):
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(inputs)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    outputs = layers.Conv2D(latent_dim, 1, padding="same")(x)
    return keras.Model(inputs, outputs, name="encoder")


def get_decoder(keras: ModuleType, input_shape=(28, 28, 1), latent_dim: int = 16):
    layers = keras.layers
    h, w = -(-input_shape[0] // 4), -(-input_shape[1] // 4)
    inputs = keras.Input(shape=(h, w, latent_dim))
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(inputs)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    outputs = layers.Conv2DTranspose(input_shape[-1], 3, padding="same")(x)
    return keras.Model(inputs, outputs, name="decoder")


def _vector_quantizer_class(keras: ModuleType):
    import tensorflow as tf

    class VectorQuantizer(keras.layers.Layer):
        def __init__(self, num_embeddings, embedding_dim, beta=0.25, **kwargs):
            super().__init__(**kwargs)
            self.embedding_dim = embedding_dim
            self.num_embeddings = num_embeddings
            self.beta = beta
            init = tf.random_uniform_initializer()
            self.embeddings = tf.Variable(
                initial_value=init(shape=(embedding_dim, num_embeddings), dtype="float32"),
                trainable=True,
                name="embeddings_vqvae",
            )

        def call(self, x):
            input_shape = tf.shape(x)
            flattened = tf.reshape(x, [-1, self.embedding_dim])
            encodings = tf.one_hot(self.get_code_indices(flattened), self.num_embeddings)
            quantized = tf.reshape(
                tf.matmul(encodings, self.embeddings, transpose_b=True), input_shape
            )
            commitment_loss = self.beta * tf.reduce_mean((tf.stop_gradient(quantized) - x) ** 2)
            codebook_loss = tf.reduce_mean((quantized - tf.stop_gradient(x)) ** 2)
            self.add_loss(commitment_loss + codebook_loss)
            return x + tf.stop_gradient(quantized - x)

        def get_code_indices(self, flattened_inputs):
            similarity = tf.matmul(flattened_inputs, self.embeddings)
            distances = (
                tf.reduce_sum(flattened_inputs**2, axis=1, keepdims=True)
                + tf.reduce_sum(self.embeddings**2, axis=0)
                - 2 * similarity
            )
            return tf.argmin(distances, axis=1)

    return VectorQuantizer


def get_vqvae(keras: ModuleType, input_shape=(28, 28, 1), latent_dim=16, num_embeddings=64):
    vq_layer = _vector_quantizer_class(keras)(num_embeddings, latent_dim, name="vector_quantizer")
    encoder = get_encoder(keras, input_shape, latent_dim)
    decoder = get_decoder(keras, input_shape, latent_dim)
    inputs = keras.Input(shape=tuple(input_shape))
    reconstructions = decoder(vq_layer(encoder(inputs)))
    return keras.Model(inputs, reconstructions, name="vq_vae")


def build_trainer(
    keras: ModuleType,
    train_variance: float,
    input_shape=(28, 28, 1),
    latent_dim: int = 16,
    num_embeddings: int = 128,
):
    """The example's ``VQVAETrainer`` (compile it with ``keras.optimizers.Adam()``)."""
    import tensorflow as tf

    class VQVAETrainer(keras.models.Model):
        def __init__(self, train_variance, latent_dim=32, num_embeddings=128, **kwargs):
            super().__init__(**kwargs)
            self.train_variance = train_variance
            self.latent_dim = latent_dim
            self.num_embeddings = num_embeddings
            self.vqvae = get_vqvae(keras, input_shape, latent_dim, num_embeddings)
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
            self.vq_loss_tracker = keras.metrics.Mean(name="vq_loss")

        @property
        def metrics(self):
            return [
                self.total_loss_tracker,
                self.reconstruction_loss_tracker,
                self.vq_loss_tracker,
            ]

        def train_step(self, x):
            with tf.GradientTape() as tape:
                reconstructions = self.vqvae(x)
                reconstruction_loss = (
                    tf.reduce_mean((x - reconstructions) ** 2) / self.train_variance
                )
                total_loss = reconstruction_loss + sum(self.vqvae.losses)
            grads = tape.gradient(total_loss, self.vqvae.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.vqvae.trainable_variables))
            self.total_loss_tracker.update_state(total_loss)
            self.reconstruction_loss_tracker.update_state(reconstruction_loss)
            self.vq_loss_tracker.update_state(sum(self.vqvae.losses))
            return {
                "loss": self.total_loss_tracker.result(),
                "reconstruction_loss": self.reconstruction_loss_tracker.result(),
                "vqvae_loss": self.vq_loss_tracker.result(),
            }

    return VQVAETrainer(train_variance, latent_dim=latent_dim, num_embeddings=num_embeddings)


def quantizer(trainer):
    return trainer.vqvae.get_layer("vector_quantizer")


def codebook_trains(trainer) -> bool:
    """Whether the codebook is among the variables the example's step differentiates."""
    codebook = quantizer(trainer).embeddings
    return any(v is codebook for v in trainer.vqvae.trainable_variables)
