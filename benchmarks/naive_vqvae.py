"""The benchmarks' baseline: a naive VQ-VAE written straight from the paper's equations.

van den Oord, Vinyals, Kavukcuoglu, "Neural Discrete Representation Learning" (NeurIPS 2017,
arXiv:1711.00937), section 3. For a batch of images ``x``:

    z_e = enc(x)                               (B, h, w, D), seen as N = B·h·w vectors
    d[n, k] = ||z_e[n]||² - 2 z_e[n]·e[k] + ||e[k]||²      the whole (N, K) matrix at once
    k*[n] = argmin_k d[n, k]
    z_q = onehot(k*) @ e                       (N, K) @ (K, D)
    x̂ = dec(z_e + sg[z_q - z_e])              straight-through: dL/dz_e := dL/dz_q
    L = mean((x - x̂)²) + mean((sg[z_e] - z_q)²) + β · mean((z_e - sg[z_q])²)

The codebook ``e`` (K, D) is an ordinary trainable weight learnt by gradient descent on the
second term. Nothing else: no chunking of the distance matrix, no EMA, no dead-code restarts,
no float32 or non-finite guards, and Keras' stock ``train_step`` (the VQ terms go through
``add_loss``, the reconstruction term is ``compile(loss="mse")``, so train with
``fit(x, x)``). It is pure ``keras.ops`` and runs on TensorFlow, JAX and PyTorch.

It is what a reader of the paper would write in an afternoon, so "ours vs naive" measures
what ``keras_vq.models.VQVAE`` adds or costs over the textbook method, on the same backend,
with the same encoder and decoder.
"""

from __future__ import annotations

import keras
from keras import ops


class NaiveVQVAE(keras.Model):
    """Textbook VQ-VAE around a given encoder and decoder (see the module docstring).

    Args:
        encoder: ``keras.Model`` images ``(B, H, W, C)`` → ``(B, h, w, D)``, already built.
        decoder: ``keras.Model`` ``(B, h, w, D)`` → images.
        num_embeddings: K, the codebook size.
        beta: commitment weight β.

    Example:
        >>> model = NaiveVQVAE(encoder, decoder, num_embeddings=128)
        >>> model.compile(optimizer="adam", loss="mse")
        >>> model.fit(images, images, batch_size=128)
        >>> codes = model.encode(images)          # int (B, h, w)
    """

    def __init__(self, encoder, decoder, num_embeddings: int, beta: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_embeddings, int) or num_embeddings < 1:
            raise ValueError(f"`num_embeddings` must be a positive int, got {num_embeddings!r}.")
        self.encoder = encoder
        self.decoder = decoder
        self.num_embeddings = num_embeddings
        self.beta = float(beta)
        self.embedding_dim = int(encoder.outputs[0].shape[-1])
        # The same initializer as keras_vq's VectorQuantizer, so a quality gap comes from the
        # training method, not from a luckier start.
        self.codebook = self.add_weight(
            name="codebook",
            shape=(num_embeddings, self.embedding_dim),
            initializer="variance_scaling",
        )
        self.built = True

    def assign_codes(self, flat_z):
        """Index of the nearest code for each row of ``flat_z`` ``(N, D)``: int ``(N,)``."""
        squared_norms = ops.sum(flat_z * flat_z, axis=1, keepdims=True)
        code_norms = ops.sum(self.codebook * self.codebook, axis=1)
        distances = squared_norms - 2.0 * ops.matmul(flat_z, ops.transpose(self.codebook))
        return ops.argmin(distances + code_norms[None, :], axis=1)

    def call(self, images, training=None):
        z_e = self.encoder(images, training=training)
        flat_z = ops.reshape(z_e, (-1, self.embedding_dim))
        one_hot = ops.one_hot(self.assign_codes(flat_z), self.num_embeddings, dtype=z_e.dtype)
        z_q = ops.reshape(ops.matmul(one_hot, self.codebook), ops.shape(z_e))
        codebook_term = ops.mean(ops.square(ops.stop_gradient(z_e) - z_q))
        commitment_term = ops.mean(ops.square(z_e - ops.stop_gradient(z_q)))
        self.add_loss(codebook_term + self.beta * commitment_term)
        return self.decoder(z_e + ops.stop_gradient(z_q - z_e), training=training)

    def encode(self, images):
        """Images ``(B, H, W, C)`` → code indices ``(B, h, w)``."""
        z_e = self.encoder(images, training=False)
        codes = self.assign_codes(ops.reshape(z_e, (-1, self.embedding_dim)))
        return ops.reshape(codes, ops.shape(z_e)[:-1])
