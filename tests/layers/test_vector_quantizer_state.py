"""VectorQuantizer state under real use: optimizer steps, restarts in users' models,
``set_codebook``, frozen layers and empty batches (random, non-symmetric weights).

The optimizer-step oracle is the same Keras optimizer applied to the analytic, dense codebook
gradient ``∂L/∂e_k = 2/(N·D) Σ_{i: k_i = k} (e_k - z_i)`` of ``L = mean((sg[z] - e)²)``: every
backend must land on it (TensorFlow once stepped √uses too far with Adam/RMSprop).
"""

import keras
import numpy as np
import pytest

from keras_vq.layers import VectorQuantizer
from keras_vq.models import VQVAE
from tests.test_case import TestCase, to_numpy

RNG = np.random.default_rng(7)


def nearest(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    diff = z[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)
    return np.argmin((diff**2).sum(-1), axis=1)


def codebook_gradient(z: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Analytic gradient of ``mean((sg[z] - e_k(z))²)`` w.r.t. the codebook."""
    k = nearest(z, codebook)
    grad = np.zeros_like(codebook, dtype=np.float64)
    np.add.at(grad, k, codebook[k] - z)
    return (2.0 * grad / z.size).astype("float32")


def make_optimizer(name: str) -> keras.optimizers.Optimizer:
    return {
        "adam": lambda: keras.optimizers.Adam(0.05),
        "rmsprop": lambda: keras.optimizers.RMSprop(0.05),
        "sgd": lambda: keras.optimizers.SGD(0.5, momentum=0.9),
    }[name]()


def reference_step(name: str, codebook: np.ndarray, grad: np.ndarray) -> np.ndarray:
    variable = keras.Variable(codebook.copy())
    optimizer = make_optimizer(name)
    optimizer.build([variable])
    optimizer.apply([keras.ops.convert_to_tensor(grad)], [variable])
    return to_numpy(variable)


def clustered(n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    """``n`` vectors around a few centres, so every used code is used many times."""
    pick = RNG.integers(0, len(centres), size=n)
    return (centres[pick] + 0.3 * RNG.normal(size=(n, dim))).astype("float32")


class TestOptimizerStep(TestCase):
    @pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
    def test_step_in_functional_model_equals_dense_gradient_step(self, optimizer):
        num_codes, dim = 6, 3
        codebook = RNG.normal(size=(num_codes, dim)).astype("float32")
        z = clustered(64 * 4, dim, codebook[:4] + 0.2).reshape(64, 2, 2, dim)
        inputs = keras.Input((2, 2, dim))
        vq = VectorQuantizer(num_codes, dim, beta=0.3)
        model = keras.Model(inputs, vq(inputs))
        vq.set_codebook(codebook)
        model.compile(optimizer=make_optimizer(optimizer), loss="mse")
        model.fit(z, z, batch_size=64, epochs=1, shuffle=False, verbose=0)
        flat = z.reshape(-1, dim)
        expected = reference_step(optimizer, codebook, codebook_gradient(flat, codebook))
        assert np.abs(expected - codebook).max() > 1e-3  # the step moved the used codes
        self.assertAllClose(vq.codebook, expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
    def test_vqvae_train_step_equals_dense_gradient_step(self, optimizer):
        model = VQVAE(
            input_shape=(8, 8, 1),
            num_embeddings=8,
            embedding_dim=3,
            filters=(4,),
            ema_decay=None,
            dead_code_threshold=0.0,
        )
        x = RNG.uniform(size=(16, 8, 8, 1)).astype("float32")
        z_e = to_numpy(model.encoder(x)).reshape(-1, 3)
        # Put the codes among the encoder outputs so that several are used, unevenly.
        codebook = z_e[RNG.choice(len(z_e), 8, replace=False)] + 0.01
        model.quantizer.set_codebook(codebook)
        model.compile(optimizer=make_optimizer(optimizer))
        model.train_on_batch(x)
        expected = reference_step(optimizer, codebook, codebook_gradient(z_e, codebook))
        self.assertAllClose(model.quantizer.codebook, expected, rtol=1e-5, atol=1e-6)


class TestRestartsInUsersModels(TestCase):
    def _far_codebook(self, num_codes: int, dim: int) -> np.ndarray:
        codebook = 50.0 + RNG.normal(size=(num_codes, dim)).astype("float32")
        codebook[0] = 0.0  # the only code near the data
        return codebook

    def test_restart_in_plain_model_fit_revives_codes(self):
        num_codes, dim = 8, 2
        z = RNG.normal(size=(128, dim)).astype("float32")
        inputs = keras.Input((dim,))
        vq = VectorQuantizer(num_codes, dim, dead_code_threshold=0.9, seed=5)
        model = keras.Model(inputs, vq(inputs))
        vq.set_codebook(self._far_codebook(num_codes, dim))
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        # Usage decays from 1 by 0.99 per step: unused codes die after ~11 steps.
        model.fit(z, z, batch_size=32, epochs=5, verbose=0)
        codebook = to_numpy(vq.embeddings)
        distance = np.min(np.abs(z[:, None] - codebook[None]).sum(-1), axis=0)
        assert (distance < 0.5).all(), codebook  # every code restarted onto a data vector
        assert len(np.unique(to_numpy(vq.encode(z)))) > num_codes // 2
        # The model's outputs use the restarted codes too.
        predicted = model.predict(z, verbose=0)
        self.assertAllClose(predicted, codebook[nearest(z, codebook)], atol=1e-5)
        # Usage statistics and codebook agree: restarted codes carry usage again.
        assert (to_numpy(vq.ema_cluster_size) > 0.5).all()

    def test_vqvae_restarts_are_folded_into_the_codebook(self):
        model = VQVAE(
            input_shape=(8, 8, 1),
            num_embeddings=16,
            embedding_dim=2,
            filters=(4,),
            ema_decay=None,
            dead_code_threshold=0.9,
            seed=1,
        )
        model.quantizer.set_codebook(self._far_codebook(16, 2))
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        x = RNG.uniform(size=(64, 8, 8, 1)).astype("float32")
        model.fit(x, batch_size=16, epochs=4, verbose=0)
        quantizer = model.quantizer
        self.assertAllClose(quantizer.codebook_offset, np.zeros((16, 2)), atol=0)
        self.assertAllClose(quantizer.codebook, quantizer.embeddings, atol=0)
        assert np.abs(to_numpy(quantizer.codebook)).max() < 40.0  # far codes restarted


def assert_rows_are_vectors_of(rows: np.ndarray, vectors: np.ndarray, ulps: float) -> None:
    """Each row equals some row of ``vectors`` to ``ulps`` units in the last place."""
    for row in rows:
        error = np.abs(vectors - row[None]).max(axis=1)
        j = int(np.argmin(error))
        assert error[j] <= ulps * np.spacing(np.abs(vectors[j]).max()), (row, vectors[j])


class TestRestartsAreExact(TestCase):
    """A restarted code is the chosen encoder output itself, even when the old code is ~1e3
    (JAX once stored ``new - old`` in ``codebook_offset``: 3e-5 away after ``old + offset``)."""

    @staticmethod
    def _huge_codebook(num_codes: int, dim: int) -> np.ndarray:
        codebook = 1e3 + 10.0 * RNG.normal(size=(num_codes, dim)).astype("float32")
        codebook[0] = 0.0  # the only code near the data: the others die in the first call
        return codebook

    @pytest.mark.parametrize("ema_decay", [None, 0.9])
    def test_layer_call(self, ema_decay):
        vq = VectorQuantizer(8, 2, ema_decay=ema_decay, dead_code_threshold=1.0, seed=3)
        vq.set_codebook(self._huge_codebook(8, 2))
        z = RNG.normal(size=(64, 2)).astype("float32")
        vq(z, training=True)
        codebook = to_numpy(vq.embeddings)
        restarted = codebook[1:]  # codes 1..7, unused, all restarted
        assert (np.abs(restarted) < 100.0).all(), codebook
        assert_rows_are_vectors_of(restarted, z, ulps=0)

    def test_vqvae_fit(self):
        model = VQVAE(
            input_shape=(8, 8, 1),
            num_embeddings=8,
            embedding_dim=2,
            filters=(4,),
            ema_decay=None,
            dead_code_threshold=1.0,
            seed=2,
        )
        model.quantizer.set_codebook(self._huge_codebook(8, 2))
        # Learning rate 0: the step leaves the weights, the restarts alone change the codebook.
        model.compile(optimizer=keras.optimizers.SGD(0.0))
        x = RNG.uniform(size=(16, 8, 8, 1)).astype("float32")
        model.fit(x, batch_size=16, epochs=1, verbose=0)
        z = to_numpy(model.encoder(x, training=False)).reshape(-1, 2)
        codebook = to_numpy(model.quantizer.embeddings)
        restarted = codebook[1:]  # codes 1..7, unused, all restarted
        assert (np.abs(restarted) < 100.0).all(), codebook
        # The step's encoder ran compiled, this one eagerly: equal to an ulp or two.
        assert_rows_are_vectors_of(restarted, z, ulps=2)


class TestSetCodebook(TestCase):
    def test_ema_training_call_starts_from_set_codebook(self):
        decay, eps, dim = 0.9, 1e-5, 2
        layer = VectorQuantizer(3, dim, ema_decay=decay, epsilon=eps)
        z0 = RNG.normal(size=(40, dim)).astype("float32")
        layer(z0, training=True)  # non-trivial EMA state before the reset
        vectors = np.array([[0.0, 0.0], [3.0, 3.0], [-3.0, 1.0]], dtype="float32")
        layer.set_codebook(vectors)
        self.assertAllClose(layer.codebook, vectors, atol=0)
        n_before = to_numpy(layer.ema_cluster_size).astype("float64")
        z = np.concatenate([RNG.normal(0, 0.3, (30, 2)), RNG.normal(3, 0.3, (10, 2))])
        z = z.astype("float32")
        layer(z, training=True)

        def smooth(n):
            return (n + eps) / (n.sum() + 3 * eps) * n.sum()

        k = nearest(z, vectors)
        counts = np.bincount(k, minlength=3)
        sums = np.zeros((3, dim))
        np.add.at(sums, k, z)
        n = decay * n_before + (1 - decay) * counts
        m = decay * vectors * smooth(n_before)[:, None] + (1 - decay) * sums
        self.assertAllClose(layer.codebook, m / smooth(n)[:, None], atol=1e-5, rtol=1e-5)

    def test_builds_an_unbuilt_layer(self):
        layer = VectorQuantizer(4)
        vectors = RNG.normal(size=(4, 5)).astype("float32")
        layer.set_codebook(vectors)
        assert layer.embedding_dim == 5
        self.assertAllClose(layer.decode(np.arange(4)), vectors, atol=0)

    @pytest.mark.parametrize(
        "vectors, error, match",
        [
            (np.zeros((3, 2), "float32"), ValueError, r"\(4, 2\), got shape \(3, 2\)"),
            (np.zeros((4,), "float32"), ValueError, "got shape"),
            (np.zeros((4, 2), "int32"), TypeError, "float dtype"),
            (np.full((4, 2), np.nan, "float32"), ValueError, "NaN"),
        ],
    )
    def test_rejects_bad_vectors(self, vectors, error, match):
        layer = VectorQuantizer(4, 2)
        layer.build((None, 2))
        with pytest.raises(error, match=match):
            layer.set_codebook(vectors)


def _state(layer) -> list[np.ndarray]:
    return [to_numpy(v).copy() for v in layer.weights]


class TestStateUpdates(TestCase):
    @pytest.mark.parametrize("ema_decay", [None, 0.9])
    def test_frozen_layer_keeps_its_state(self, ema_decay):
        layer = VectorQuantizer(4, 2, ema_decay=ema_decay, dead_code_threshold=2.0, seed=0)
        layer.set_codebook(RNG.normal(size=(4, 2)).astype("float32"))
        layer.trainable = False
        before = _state(layer)
        for _ in range(3):
            layer(RNG.normal(size=(16, 2)).astype("float32"), training=True)
        for a, b in zip(_state(layer), before):
            self.assertAllClose(a, b, atol=0)

    def test_frozen_layer_keeps_its_state_in_fit(self):
        inputs = keras.Input((2,))
        vq = VectorQuantizer(4, 2, ema_decay=0.9, dead_code_threshold=2.0, seed=0)
        model = keras.Model(inputs, keras.layers.Dense(2)(vq(inputs)))
        vq.trainable = False
        before = _state(vq)
        model.compile(optimizer="adam", loss="mse")
        x = RNG.normal(size=(32, 2)).astype("float32")
        model.fit(x, x, epochs=2, batch_size=8, verbose=0)
        for a, b in zip(_state(vq), before):
            self.assertAllClose(a, b, atol=0)

    @pytest.mark.parametrize("ema_decay", [None, 0.9])
    def test_empty_batch_is_a_no_op(self, ema_decay):
        layer = VectorQuantizer(4, 2, ema_decay=ema_decay, dead_code_threshold=0.5, seed=0)
        layer.set_codebook(RNG.normal(size=(4, 2)).astype("float32"))
        layer(RNG.normal(size=(8, 2)).astype("float32"), training=True)
        before = _state(layer)
        outputs, loss = layer(np.zeros((0, 3, 2), "float32"), training=True, return_loss=True)
        assert tuple(outputs.shape) == (0, 3, 2)
        assert float(to_numpy(loss)) == 0.0
        for a, b in zip(_state(layer), before):
            self.assertAllClose(a, b, atol=0)
