"""One accepted seed range everywhere: ``[0, 2**31 - 1]`` (int32 on every backend).

Every public argument named ``seed`` rejects a value outside it (or a bool / float) with an
error naming ``seed`` instead of aliasing another seed (TF, torch) or overflowing (JAX); seeds
derived from it (sampling chunks, residual stages, evaluation batches) wrap around inside it.
The exported ``sample_seeded`` signature is checked in tests/test_export.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_vq import callbacks, data, evaluation
from keras_vq._validation import MAX_SEED
from keras_vq.layers import ResidualVectorQuantizer, Sampling, VectorQuantizer
from keras_vq.models import VAE, VQVAE, PixelCNNPrior, TransformerPrior, generate
from tests.test_case import to_numpy

BAD_SEEDS = [
    (-1, ValueError),
    (MAX_SEED + 1, ValueError),
    (2**32 + 3, ValueError),  # aliased seed 3 (torch) or 7 (TF), overflowed on JAX
    (True, TypeError),
    (1.0, TypeError),
    ("3", TypeError),
]


@pytest.fixture(scope="module")
def models():
    vqvae = VQVAE(input_shape=(8, 8, 1), num_embeddings=6, embedding_dim=3, filters=(4,))
    prior = PixelCNNPrior(6, (4, 4), num_layers=1, filters=4, kernel_size=3)
    transformer = TransformerPrior(6, (4, 4), num_layers=1, num_heads=1, hidden_dim=4)
    vae = VAE(input_shape=(8, 8, 1), latent_dim=2, filters=(4,))
    rng = np.random.default_rng(0)
    for variable in prior.weights + transformer.weights:
        variable.assign(rng.normal(size=tuple(variable.shape)).astype("float32"))
    return {"vqvae": vqvae, "prior": prior, "transformer": transformer, "vae": vae}


def images():
    return np.random.default_rng(1).random((2, 8, 8, 1), dtype="float32")


# Every public way to pass a seed: (name, callable(models, seed)).
SEED_TAKERS = [
    ("PixelCNNPrior.sample", lambda m, s: m["prior"].sample(2, seed=s)),
    ("TransformerPrior.sample", lambda m, s: m["transformer"].sample(2, seed=s)),
    ("generate", lambda m, s: generate(m["vqvae"], m["prior"], 2, seed=s)),
    ("VAE.sample", lambda m, s: m["vae"].sample(2, seed=s)),
    ("VAE.log_likelihood", lambda m, s: m["vae"].log_likelihood(images(), 2, seed=s)),
    (
        "evaluate_likelihood",
        lambda m, s: evaluation.evaluate_likelihood(m["vae"], images(), seed=s),
    ),
    ("VAE", lambda m, s: VAE(input_shape=(8, 8, 1), latent_dim=2, filters=(4,), seed=s)),
    ("VQVAE", lambda m, s: VQVAE(input_shape=(8, 8, 1), filters=(4,), seed=s)),
    ("Sampling", lambda m, s: Sampling(seed=s)),
    ("VectorQuantizer", lambda m, s: VectorQuantizer(4, 2, seed=s)),
    ("ResidualVectorQuantizer", lambda m, s: ResidualVectorQuantizer(2, 4, 2, seed=s)),
    ("SampleImages", lambda m, s: callbacks.SampleImages("/nonexistent", seed=s)),
    ("data.load", lambda m, s: data.load("digits", split="test[:4]", batch_size=2, seed=s)),
    (
        "data.encode_dataset",
        lambda m, s: data.encode_dataset(
            m["vqvae"], data.load("digits", split="test[:2]"), seed=s
        ),
    ),
]


@pytest.mark.parametrize("name, call", SEED_TAKERS, ids=[n for n, _ in SEED_TAKERS])
def test_a_seed_outside_the_range_is_rejected_naming_seed(models, name, call):
    for seed, error in BAD_SEEDS:
        with pytest.raises(error, match="`seed`"):
            call(models, seed)


# The cheap ones; the priors' largest seed is drawn in the chunk test below.
ACCEPTING = ("VAE.sample", "ResidualVectorQuantizer", "Sampling", "SampleImages", "data.load")


@pytest.mark.parametrize("name", ACCEPTING)
def test_the_largest_seed_is_accepted(models, name):
    # Its derived seeds (the VAE's prior stream, the residual stages) wrap inside the range.
    dict(SEED_TAKERS)[name](models, MAX_SEED)


@pytest.mark.parametrize("kind", ["prior", "transformer"])
def test_chunk_seeds_wrap_around_inside_the_range(models, kind):
    prior = models[kind]
    # Chunk i draws with seed (seed + i) mod 2**31: the chunk after MAX_SEED draws seed 0's maps.
    chunked = to_numpy(prior.sample(2, seed=MAX_SEED, batch_size=1))
    np.testing.assert_array_equal(chunked[0], to_numpy(prior.sample(1, seed=MAX_SEED))[0])
    np.testing.assert_array_equal(chunked[1], to_numpy(prior.sample(1, seed=0))[0])
