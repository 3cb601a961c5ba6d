"""VectorQuantizer options: k-means initialisation, cosine distance, factorised codes
(``codebook_dim``) and the rotation trick, each against a NumPy oracle."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.layers import VectorQuantizer, _codebook
from keras_vq.layers.vector_quantizer import rotation_trick
from tests.backend_grads import layer_gradients
from tests.test_case import TestCase, to_numpy
from tests.test_distribute import PRELUDE_TF, run_script

RNG = np.random.default_rng(11)


# ---- NumPy oracles ---------------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def nearest(z: np.ndarray, codebook: np.ndarray, distance: str = "euclidean") -> np.ndarray:
    """Nearest code by brute force: explicit differences, or the largest cosine."""
    if distance == "cosine":
        return np.argmax(unit(z) @ unit(codebook).T, axis=1)
    diff = z[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)
    return np.argmin((diff**2).sum(-1), axis=1)


def numpy_kmeans(points, num_codes, uniforms, iterations, spherical=False):
    """k-means++ by inverse CDF at the given uniforms, then Lloyd steps (float64)."""
    points = np.asarray(points, np.float64)
    n = len(points)

    def pick(weights, u):
        total = weights.sum()
        index = int(np.sum(np.cumsum(weights) <= u * total)) if total > 0 else int(u * n)
        return min(index, n - 1)

    centres = [points[pick(np.zeros(n), uniforms[0])]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for k in range(1, num_codes):
        centres.append(points[pick(d2, uniforms[k])])
        d2 = np.minimum(d2, ((points - centres[-1]) ** 2).sum(1))
    centres = np.array(centres)
    for _ in range(iterations):
        k = nearest(points, centres, "cosine" if spherical else "euclidean")
        for j in range(num_codes):
            if np.any(k == j):
                mean = points[k == j].mean(0)
                centres[j] = unit(mean) if spherical else mean
    return centres


def first_uniforms(seed: int, num_codes: int) -> np.ndarray:
    """The first draw of a layer's seed generator: what its k-means++ seeding uses."""
    return to_numpy(keras.random.uniform((num_codes,), seed=keras.random.SeedGenerator(seed)))


def rotation_matrix(z: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``λ R`` for one pair, formed explicitly: ``R = I - 2 r rᵀ + 2 ê ẑᵀ``."""
    z_hat, e_hat = unit(z), unit(e)
    r = unit(z_hat + e_hat)
    rotation = np.eye(len(z)) - 2.0 * np.outer(r, r) + 2.0 * np.outer(e_hat, z_hat)
    return np.linalg.norm(e) / np.linalg.norm(z) * rotation


def clustered(n: int, dim: int, centres: np.ndarray, spread: float = 0.3) -> np.ndarray:
    pick = RNG.integers(0, len(centres), size=n)
    return (centres[pick] + spread * RNG.normal(size=(n, dim))).astype("float32")


def smooth(n: np.ndarray, eps: float) -> np.ndarray:
    return (n + eps) / (n.sum() + len(n) * eps) * n.sum()


# ---- k-means initialisation -------------------------------------------------------------------
class TestKMeansInit(TestCase):
    @pytest.mark.parametrize("distance", ["euclidean", "cosine"])
    def test_first_training_call_sets_numpy_kmeans_codebook(self, distance):
        num_codes, dim, seed = 5, 3, 4
        x = clustered(60, dim, 3.0 * RNG.normal(size=(5, dim)))
        layer = VectorQuantizer(num_codes, dim, kmeans_init=True, distance=distance, seed=seed)
        layer.build((None, dim))
        assert not bool(to_numpy(layer.initialized))
        out, idx = layer(x.reshape(6, 10, dim), training=True, return_indices=True)
        points = unit(x) if distance == "cosine" else x
        expected = numpy_kmeans(
            points,
            num_codes,
            first_uniforms(seed, num_codes),
            layer.kmeans_iterations,
            spherical=distance == "cosine",
        )
        self.assertAllClose(layer.embeddings, expected, atol=1e-5, rtol=1e-5)
        assert bool(to_numpy(layer.initialized))
        # The batch that initialised the codebook is quantized with it.
        k = nearest(x, expected, distance)
        np.testing.assert_array_equal(to_numpy(idx).reshape(-1), k)
        self.assertAllClose(out, expected[k].reshape(6, 10, dim), atol=1e-5, rtol=1e-5)

    def test_kmeans_lowers_inertia_and_codes_are_cluster_means(self):
        dim = 2
        centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
        x = clustered(200, dim, centres, spread=0.2)
        layer = VectorQuantizer(4, dim, kmeans_init=True, seed=0)
        layer.build((None, dim))
        before = to_numpy(layer.embeddings)
        layer(x, training=True)
        after = to_numpy(layer.embeddings)

        def inertia(codebook):
            return ((x - codebook[nearest(x, codebook)]) ** 2).sum()

        assert inertia(after) < 0.1 * inertia(before)
        # Well-separated clusters: one code at each cluster's mean.
        k = nearest(x, after)
        assert sorted(np.unique(k)) == [0, 1, 2, 3]
        for j in range(4):
            np.testing.assert_allclose(after[j], x[k == j].mean(0), atol=1e-4)

    def test_ema_state_starts_from_kmeans_codebook(self):
        num_codes, dim, seed, decay, eps = 4, 2, 9, 0.8, 1e-5
        x = clustered(40, dim, 4.0 * RNG.normal(size=(4, dim)))
        layer = VectorQuantizer(
            num_codes, dim, ema_decay=decay, epsilon=eps, kmeans_init=True, seed=seed
        )
        layer(x, training=True)
        centres = numpy_kmeans(x, num_codes, first_uniforms(seed, num_codes), 10)
        # As set_codebook(centres) followed by one EMA update on this batch.
        n0 = np.ones(num_codes)
        k = nearest(x, centres)
        counts = np.bincount(k, minlength=num_codes)
        sums = np.zeros((num_codes, dim))
        np.add.at(sums, k, x)
        n1 = decay * n0 + (1 - decay) * counts
        m1 = decay * centres * smooth(n0, eps)[:, None] + (1 - decay) * sums
        self.assertAllClose(layer.ema_cluster_size, n1, atol=1e-5, rtol=1e-5)
        self.assertAllClose(layer.ema_sum, m1, atol=1e-4, rtol=1e-5)
        self.assertAllClose(layer.codebook, m1 / smooth(n1, eps)[:, None], atol=1e-4, rtol=1e-5)

    def test_initialises_once_and_only_in_training(self):
        dim = 3
        layer = VectorQuantizer(6, dim, kmeans_init=True, seed=1)
        layer.build((None, dim))
        initial = to_numpy(layer.embeddings)
        layer(RNG.normal(size=(20, dim)).astype("float32"), training=False)
        assert not bool(to_numpy(layer.initialized))
        self.assertAllClose(layer.embeddings, initial, atol=0)
        layer(RNG.normal(size=(20, dim)).astype("float32"), training=True)
        first = to_numpy(layer.embeddings)
        assert np.abs(first - initial).max() > 1e-3
        layer(10.0 + RNG.normal(size=(20, dim)).astype("float32"), training=True)
        self.assertAllClose(layer.embeddings, first, atol=0)  # no second k-means

    def test_non_finite_batch_does_not_initialise(self):
        layer = VectorQuantizer(3, 2, kmeans_init=True, ema_decay=0.9, seed=1)
        layer.build((None, 2))
        before = to_numpy(layer.codebook)
        x = RNG.normal(size=(10, 2)).astype("float32")
        x[2, 0] = np.nan
        layer(x, training=True)
        assert not bool(to_numpy(layer.initialized))
        self.assertAllClose(layer.codebook, before, atol=0)

    def test_set_codebook_counts_as_initialised(self):
        layer = VectorQuantizer(3, 2, kmeans_init=True, seed=1)
        vectors = RNG.normal(size=(3, 2)).astype("float32")
        layer.set_codebook(vectors)
        layer(RNG.normal(size=(10, 2)).astype("float32"), training=True)
        self.assertAllClose(layer.embeddings, vectors, atol=0)

    def test_fit_initialises_persistently_and_survives_saving(self, tmp_path):
        """In a user's fit (JAX: a stateless step) and through a .keras round trip."""
        num_codes, dim, seed = 4, 2, 3
        x = clustered(32, dim, 4.0 * RNG.normal(size=(4, dim)))
        inputs = keras.Input((dim,))
        vq = VectorQuantizer(num_codes, dim, kmeans_init=True, seed=seed, name="vq")
        model = keras.Model(inputs, vq(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        model.fit(x, x, batch_size=32, epochs=1, shuffle=False, verbose=0)
        expected = numpy_kmeans(x, num_codes, first_uniforms(seed, num_codes), 10)
        self.assertAllClose(vq.embeddings, expected, atol=1e-5, rtol=1e-5)
        assert bool(to_numpy(vq.initialized))
        self.assertAllClose(model.predict(x, verbose=0), expected[nearest(x, expected)], 1e-5)
        path = str(tmp_path / "vq.keras")
        model.save(path)
        revived = keras.saving.load_model(path)
        revived_vq = revived.get_layer("vq")
        assert bool(to_numpy(revived_vq.initialized))
        self.assertAllClose(revived_vq.embeddings, expected, atol=1e-5, rtol=1e-5)
        revived.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        revived.fit(x + 5.0, x, batch_size=32, epochs=1, verbose=0)  # no re-initialisation
        self.assertAllClose(revived_vq.embeddings, expected, atol=1e-5, rtol=1e-5)

    def test_kmeans_plus_plus_spreads_over_separated_clusters(self):
        centres = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0], [25.0, 90.0]])
        x = clustered(100, 2, centres, spread=0.1)
        picked = to_numpy(_codebook.kmeans_plus_plus(x, 5, RNG.uniform(size=5).astype("float32")))
        # Every seed is a data row, and each cluster gets one.
        assert all(np.any(np.all(x == row, axis=1)) for row in picked)
        assert sorted(nearest(picked, centres)) == [0, 1, 2, 3, 4]


MIRRORED_KMEANS = """
import json
import keras, numpy as np, tensorflow as tf
from keras_vq.layers import VectorQuantizer

x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with two.scope():
    inputs = keras.Input((3,))
    vq = VectorQuantizer(6, 3, kmeans_init=True, ema_decay=0.9, seed=2)
    model = keras.Model(inputs, vq(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    vq.set_codebook(np.zeros((6, 3), "float32"))
    vq.initialized.assign(False)
model.fit(x, x, batch_size=32, epochs=1, shuffle=False, verbose=0)
copies = [np.asarray(v) for v in two.experimental_local_results(vq.codebook.value)]
flags = [bool(v) for v in two.experimental_local_results(vq.initialized.value)]
sums = [np.asarray(v) for v in two.experimental_local_results(vq.ema_sum.value)]

# Residual stages with quantize dropout: one stage count and one k-means for all replicas.
from keras_vq.layers import ResidualVectorQuantizer
with two.scope():
    rvq = ResidualVectorQuantizer(3, 4, 3, quantize_dropout=True, kmeans_init=True,
                                  ema_decay=0.9, seed=1)
    rvq_model = keras.Model(inputs, rvq(inputs))
    rvq_model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
rvq_model.fit(x, x, batch_size=32, epochs=3, shuffle=False, verbose=0)
rvq_diff = 0.0
for variable in rvq.weights:
    local = [np.asarray(v) for v in two.experimental_local_results(variable.value)]
    rvq_diff = max(rvq_diff, float(np.abs(local[0].astype("float64") - local[1]).max()))
print("RESULT", json.dumps({
    "num_copies": len(copies),
    "codebook_diff": float(np.abs(copies[0] - copies[1]).max()),
    "ema_sum_diff": float(np.abs(sums[0] - sums[1]).max()),
    "moved": float(np.abs(copies[0]).max()),
    "flags": flags,
    "rvq_diff": rvq_diff,
}))
"""


@pytest.mark.subprocess
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="MirroredStrategy is TF's")
def test_kmeans_init_is_identical_on_every_replica():
    result = run_script(PRELUDE_TF + MIRRORED_KMEANS, {"KERAS_BACKEND": "tensorflow"})
    assert result["num_copies"] == 2, json.dumps(result)
    assert result["flags"] == [True, True]
    assert result["moved"] > 0.1  # initialised away from the zero codebook
    assert result["codebook_diff"] == 0.0
    assert result["ema_sum_diff"] == 0.0
    assert result["rvq_diff"] == 0.0


# ---- cosine distance --------------------------------------------------------------------------
class TestCosine(TestCase):
    def test_nearest_is_largest_cosine_and_output_is_unit_code(self):
        beta = 0.4
        codebook = (RNG.normal(size=(9, 4)) * RNG.uniform(0.2, 5.0, size=(9, 1))).astype("float32")
        layer = VectorQuantizer(9, 4, beta=beta, distance="cosine")
        layer.set_codebook(codebook)
        x = (RNG.normal(size=(30, 4)) * RNG.uniform(0.1, 10.0, size=(30, 1))).astype("float32")
        out, idx = layer(x, return_indices=True)
        k = nearest(x, codebook, "cosine")
        # The euclidean nearest differs for codes of different norms: the test can fail.
        assert np.any(k != nearest(x, codebook))
        np.testing.assert_array_equal(to_numpy(idx), k)
        np.testing.assert_array_equal(to_numpy(layer.encode(x)), k)
        self.assertAllClose(out, unit(codebook)[k], atol=1e-6)
        self.assertAllClose(layer.decode(k), unit(codebook)[k], atol=1e-6)
        expected_loss = (1.0 + beta) * np.mean((unit(x) - unit(codebook)[k]) ** 2)
        self.assertAllClose(layer.losses[0], expected_loss, atol=1e-6, rtol=1e-5)

    def test_gradient_reaches_inputs_through_the_normalisation(self):
        codebook = RNG.normal(size=(5, 3)).astype("float32")
        layer = VectorQuantizer(5, 3, distance="cosine")
        layer.set_codebook(codebook)
        x = (RNG.normal(size=(8, 3)) * 3.0).astype("float32")
        w = RNG.normal(size=x.shape).astype("float32")
        _, grad_x, _ = layer_gradients(
            layer, x, lambda out, losses: ops.sum(out * ops.convert_to_tensor(w))
        )
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x_hat = x / norm
        # d(x/|x|)/dx = (I - x̂ x̂ᵀ) / |x|.
        expected = (w - x_hat * (x_hat * w).sum(1, keepdims=True)) / norm
        np.testing.assert_allclose(grad_x, expected, atol=1e-5, rtol=1e-5)

    def test_ema_codebook_tracks_normalised_inputs(self):
        decay, eps = 0.5, 1e-5
        codebook = np.array([[1.0, 0.0], [0.0, 1.0]], dtype="float32")
        layer = VectorQuantizer(2, 2, distance="cosine", ema_decay=decay, epsilon=eps)
        layer.set_codebook(codebook)
        x = (RNG.uniform(0.5, 5.0, size=(20, 1)) * RNG.normal(size=(20, 2))).astype("float32")
        layer(x, training=True)
        k = nearest(x, codebook, "cosine")
        counts = np.bincount(k, minlength=2)
        sums = np.zeros((2, 2))
        np.add.at(sums, k, unit(x))
        n1 = decay + (1 - decay) * counts
        m1 = decay * codebook * smooth(np.ones(2), eps)[:, None] + (1 - decay) * sums
        self.assertAllClose(layer.codebook, m1 / smooth(n1, eps)[:, None], atol=1e-5)


# ---- factorised codes (codebook_dim) ------------------------------------------------------------
def randomise_projections(layer: VectorQuantizer) -> dict:
    weights = {}
    for name in ("project_in", "project_out"):
        dense = getattr(layer, name)
        kernel = RNG.normal(size=tuple(dense.kernel.shape)).astype("float32")
        bias = RNG.normal(size=tuple(dense.bias.shape)).astype("float32")
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)
        weights[name] = (kernel, bias)
    return weights


class TestCodebookDim(TestCase):
    def test_shapes_values_and_loss_in_code_space(self):
        beta, dim, code_dim = 0.3, 6, 2
        layer = VectorQuantizer(7, dim, beta=beta, codebook_dim=code_dim)
        codebook = RNG.normal(size=(7, code_dim)).astype("float32")
        layer.set_codebook(codebook)
        (w_in, b_in), (w_out, b_out) = randomise_projections(layer).values()
        assert tuple(layer.codebook.shape) == (7, code_dim)
        x = RNG.normal(size=(3, 5, dim)).astype("float32")
        out, idx = layer(x, return_indices=True)
        h = x.reshape(-1, dim) @ w_in + b_in
        k = nearest(h, codebook)
        expected = (codebook[k] @ w_out + b_out).reshape(3, 5, dim)
        assert tuple(out.shape) == (3, 5, dim)
        np.testing.assert_array_equal(to_numpy(idx).reshape(-1), k)
        self.assertAllClose(out, expected, atol=1e-5, rtol=1e-5)
        self.assertAllClose(layer.decode(k.reshape(3, 5)), expected, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(to_numpy(layer.encode(x)).reshape(-1), k)
        self.assertAllClose(
            layer.losses[0], (1 + beta) * np.mean((h - codebook[k]) ** 2), atol=1e-5, rtol=1e-5
        )

    def test_projections_get_the_analytic_gradients(self):
        beta, dim, code_dim = 0.5, 4, 2
        layer = VectorQuantizer(5, dim, beta=beta, codebook_dim=code_dim)
        codebook = RNG.normal(size=(5, code_dim)).astype("float32")
        layer.set_codebook(codebook)
        (w_in, b_in), (w_out, _) = randomise_projections(layer).values()
        x = RNG.normal(size=(12, dim)).astype("float32")
        w = RNG.normal(size=x.shape).astype("float32")

        def objective(out, losses):
            return ops.sum(out * ops.convert_to_tensor(w)) + losses[0]

        _, grad_x, grads = layer_gradients(layer, x, objective)
        names = [v.path.split("/")[-2] + "/" + v.name for v in layer.trainable_variables]
        grads = dict(zip(names, grads))
        h = x @ w_in + b_in
        q = codebook[nearest(h, codebook)]
        # Straight through in code space: dL/dh = W_out w + 2β(h - q)/(N·C).
        grad_h = w @ w_out.T + 2.0 * beta * (h - q) / h.size
        np.testing.assert_allclose(grads["project_out/kernel"], q.T @ w, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(grads["project_out/bias"], w.sum(0), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(grads["project_in/kernel"], x.T @ grad_h, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(grads["project_in/bias"], grad_h.sum(0), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(grad_x, grad_h @ w_in.T, atol=1e-4, rtol=1e-4)

    def test_fit_trains_both_projections(self):
        dim = 4
        inputs = keras.Input((dim,))
        vq = VectorQuantizer(8, dim, codebook_dim=2, kmeans_init=True, seed=0)
        model = keras.Model(inputs, vq(inputs))
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        before = {v.path: to_numpy(v).copy() for v in vq.trainable_variables}
        x = RNG.normal(size=(64, dim)).astype("float32")
        history = model.fit(x, x, batch_size=16, epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        for v in vq.trainable_variables:
            assert np.abs(to_numpy(v) - before[v.path]).max() > 1e-4, v.path


# ---- the rotation trick ------------------------------------------------------------------------
class TestRotationTrick(TestCase):
    def test_forward_value_is_the_code_and_gradient_is_lambda_r_transpose(self):
        codebook = RNG.normal(size=(6, 3)).astype("float32") * 2.0
        layer = VectorQuantizer(6, 3, gradient="rotation")
        layer.set_codebook(codebook)
        x = RNG.normal(size=(10, 3)).astype("float32")
        w = RNG.normal(size=x.shape).astype("float32")
        out = layer(x)
        k = nearest(x, codebook)
        self.assertAllClose(out, codebook[k], atol=1e-6)
        _, grad_x, (grad_codebook,) = layer_gradients(
            layer, x, lambda out, losses: ops.sum(out * ops.convert_to_tensor(w))
        )
        expected = np.stack([rotation_matrix(x[i], codebook[k[i]]).T @ w[i] for i in range(10)])
        for i in range(10):  # the oracle's λR does map z onto e
            np.testing.assert_allclose(
                rotation_matrix(x[i], codebook[k[i]]) @ x[i], codebook[k[i]], atol=1e-5
            )
        assert np.abs(expected - w).max() > 0.1  # differs from straight-through
        np.testing.assert_allclose(grad_x, expected, atol=1e-5, rtol=1e-4)
        assert grad_codebook is None or np.allclose(grad_codebook, 0.0)

    def test_codebook_and_commitment_gradients_as_straight_through(self):
        beta = 0.25
        codebook = RNG.normal(size=(4, 3)).astype("float32")
        layer = VectorQuantizer(4, 3, beta=beta, gradient="rotation")
        layer.set_codebook(codebook)
        x = RNG.normal(size=(20, 3)).astype("float32")
        _, grad_x, (grad_codebook,) = layer_gradients(layer, x, lambda out, losses: losses[0])
        k = nearest(x, codebook)
        expected = np.zeros_like(codebook, dtype=np.float64)
        np.add.at(expected, k, -2.0 * (x - codebook[k]) / x.size)
        np.testing.assert_allclose(grad_codebook, expected, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(grad_x, 2 * beta * (x - codebook[k]) / x.size, atol=1e-6)

    def test_with_cosine_distance_rotates_unit_vectors(self):
        codebook = RNG.normal(size=(5, 3)).astype("float32")
        layer = VectorQuantizer(5, 3, distance="cosine", gradient="rotation")
        layer.set_codebook(codebook)
        x = (RNG.normal(size=(7, 3)) * 2.0).astype("float32")
        w = RNG.normal(size=x.shape).astype("float32")
        _, grad_x, _ = layer_gradients(
            layer, x, lambda out, losses: ops.sum(out * ops.convert_to_tensor(w))
        )
        k = nearest(x, codebook, "cosine")
        expected = []
        for i in range(7):
            x_hat = unit(x[i])
            g_hat = rotation_matrix(x_hat, unit(codebook[k[i]])).T @ w[i]  # λ = 1
            norm = np.linalg.norm(x[i])
            expected.append((g_hat - x_hat * (x_hat @ g_hat)) / norm)
        np.testing.assert_allclose(grad_x, np.stack(expected), atol=1e-5, rtol=1e-4)

    def test_function_matches_oracle_on_random_pairs(self):
        z = RNG.normal(size=(16, 5)).astype("float32")
        e = RNG.normal(size=(16, 5)).astype("float32")
        value = rotation_trick(z, e)
        self.assertAllClose(value, e, atol=0)


# ---- the battery, precision, errors -----------------------------------------------------------
ALL_OPTIONS = {
    "num_embeddings": 8,
    "embedding_dim": 6,
    "beta": 0.5,
    "ema_decay": 0.9,
    "dead_code_threshold": 0.1,
    "seed": 5,
    "kmeans_init": True,
    "distance": "cosine",
    "codebook_dim": 3,
    "gradient": "rotation",
}


class TestOptionsBattery(TestCase):
    def test_layer_battery_with_every_option(self, tmp_path):
        x = RNG.normal(size=(2, 4, 6)).astype("float32")
        layer = self.run_layer_test(
            VectorQuantizer,
            ALL_OPTIONS,
            x,
            expected_output_shape=(2, 4, 6),
            expected_output_dtype="float32",
            tmp_path=tmp_path,
        )
        assert tuple(layer.codebook.shape) == (8, 3)

    def test_trained_state_round_trips_through_keras_file(self, tmp_path):
        inputs = keras.Input((6,))
        vq = VectorQuantizer(**ALL_OPTIONS, name="vq")
        model = keras.Model(inputs, vq(inputs))
        model.compile(optimizer="adam", loss="mse")
        x = RNG.normal(size=(32, 6)).astype("float32")
        model.fit(x, x, batch_size=16, epochs=1, verbose=0)
        revived = self.run_model_saving_test(model, x, tmp_path, atol=1e-5)
        assert bool(to_numpy(revived.get_layer("vq").initialized))
        for a, b in zip(vq.weights, revived.get_layer("vq").weights):
            self.assertAllClose(a, b, atol=0)

    def test_float32_internals_under_mixed_precision(self):
        keras.config.set_dtype_policy("mixed_float16")
        layer = VectorQuantizer(**ALL_OPTIONS)
        x = ops.cast(RNG.normal(size=(4, 6)), "float16")
        out, loss = layer(x, training=True, return_loss=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"
        for variable in layer.weights:
            if variable.name != "initialized":
                assert keras.backend.standardize_dtype(variable.dtype) == "float32", variable
        assert np.isfinite(to_numpy(out)).all()

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"kmeans_init": 1}, TypeError, "kmeans_init"),
            ({"distance": "manhattan"}, ValueError, "distance"),
            ({"codebook_dim": 0}, ValueError, "codebook_dim"),
            ({"codebook_dim": 2.0}, TypeError, "codebook_dim"),
            ({"gradient": "rotate"}, ValueError, "gradient"),
        ],
    )
    def test_bad_option_raises(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            VectorQuantizer(4, **kwargs)

    def test_set_codebook_checks_code_space_shape(self):
        layer = VectorQuantizer(4, 6, codebook_dim=2)
        with pytest.raises(ValueError, match=r"codebook_dim\) = \(4, 2\)"):
            layer.set_codebook(np.zeros((4, 6), "float32"))
        with pytest.raises(ValueError, match="embedding_dim"):
            VectorQuantizer(4, codebook_dim=2).set_codebook(np.zeros((4, 2), "float32"))
