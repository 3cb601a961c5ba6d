"""ResidualVectorQuantizer against NumPy residual loops and single VectorQuantizers."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.layers import ResidualVectorQuantizer, VectorQuantizer
from tests.backend_grads import layer_gradients
from tests.layers.test_vector_quantizer_options import (
    first_uniforms,
    nearest,
    numpy_kmeans,
    rotation_matrix,
)
from tests.test_case import TestCase, to_numpy

RNG = np.random.default_rng(23)


def make_rvq(num_quantizers=3, num_embeddings=6, dim=4, scale=1.0, **kwargs):
    """An RVQ whose stage codebooks shrink like real residuals do (random, set explicitly)."""
    rvq = ResidualVectorQuantizer(num_quantizers, num_embeddings, dim, **kwargs)
    rvq.build((None, dim))
    codebooks = []
    for s in range(len(rvq.quantizers)):
        codebook = (scale * 0.5**s * RNG.normal(size=(num_embeddings, dim))).astype("float32")
        rvq.quantizers[s].set_codebook(codebook)
        codebooks.append(codebook)
    return rvq, codebooks


def residual_oracle(x, codebooks, num_stages=None):
    """NumPy RVQ: per-stage residuals, indices and codes."""
    residual = x.astype(np.float64)
    residuals, indices, codes = [], [], []
    for s in range(num_stages or len(codebooks)):
        codebook = codebooks[s % len(codebooks)]
        k = nearest(residual, codebook)
        residuals.append(residual)
        indices.append(k)
        codes.append(codebook[k].astype(np.float64))
        residual = residual - codebook[k]
    return residuals, np.stack(indices, -1), codes


class TestResidualVectorQuantizer(TestCase):
    def test_layer_battery(self, tmp_path):
        x = RNG.normal(size=(2, 5, 4)).astype("float32")
        layer = self.run_layer_test(
            ResidualVectorQuantizer,
            {
                "num_quantizers": 3,
                "num_embeddings": 8,
                "embedding_dim": 4,
                "quantize_dropout": True,
                "seed": 2,
                "beta": 0.4,
                "ema_decay": 0.9,
                "kmeans_init": True,
                "codebook_dim": 2,
                "commitment": "per_stage",
            },
            x,
            expected_output_shape=(2, 5, 4),
            expected_output_dtype="float32",
            tmp_path=tmp_path,
        )
        assert layer.codebook_size == 8
        assert len(layer.quantizers) == 3

    @pytest.mark.parametrize("commitment", ["per_stage", "total"])
    def test_each_stage_is_a_vector_quantizer_on_its_residual(self, commitment):
        beta = 0.3
        rvq, codebooks = make_rvq(beta=beta, commitment=commitment)
        x = RNG.normal(size=(5, 6, 4)).astype("float32")
        out, idx, loss = rvq(x, return_indices=True, return_loss=True)
        flat = x.reshape(-1, 4)
        residuals, expected_idx, codes = residual_oracle(flat, codebooks)
        assert keras.backend.standardize_dtype(idx.dtype) == "int32"
        assert tuple(idx.shape) == (5, 6, 3)
        np.testing.assert_array_equal(to_numpy(idx).reshape(-1, 3), expected_idx)
        self.assertAllClose(out, sum(codes).reshape(x.shape), atol=1e-5, rtol=1e-5)
        total = codebook_terms = 0.0
        for s, codebook in enumerate(codebooks):
            # The oracle: a standalone VectorQuantizer on residual s.
            vq = VectorQuantizer(6, 4, beta=beta)
            vq.set_codebook(codebook)
            residual = residuals[s].astype("float32")
            stage_out, stage_idx, stage_loss = vq(residual, return_indices=True, return_loss=True)
            np.testing.assert_array_equal(to_numpy(stage_idx), expected_idx[:, s])
            self.assertAllClose(stage_out, codes[s], atol=1e-5)
            total += float(to_numpy(stage_loss))
            codebook_terms += np.mean((residuals[s] - codes[s]) ** 2)
        if commitment == "total":
            # Each stage's codebook term, and β once for what the last stage left.
            total = codebook_terms + beta * np.mean((flat - sum(codes)) ** 2)
        self.assertAllClose(loss, total, atol=1e-5, rtol=1e-5)
        rvq(x)
        assert len(rvq.losses) == 1
        self.assertAllClose(rvq.losses[0], total, atol=1e-5, rtol=1e-5)

    def test_encode_decode_round_trip_and_num_stages(self):
        rvq, codebooks = make_rvq()
        x = RNG.normal(size=(3, 7, 4)).astype("float32")
        codes = rvq.encode(x)
        _, expected_idx, stage_codes = residual_oracle(x.reshape(-1, 4), codebooks)
        np.testing.assert_array_equal(to_numpy(codes).reshape(-1, 3), expected_idx)
        self.assertAllClose(rvq.decode(codes), rvq(x), atol=1e-5)
        two = rvq.encode(x, num_stages=2)
        assert tuple(two.shape) == (3, 7, 2)
        np.testing.assert_array_equal(to_numpy(two), to_numpy(codes)[..., :2])
        coarse = sum(stage_codes[:2]).reshape(x.shape)
        self.assertAllClose(rvq.decode(two), coarse, atol=1e-5)
        self.assertAllClose(rvq.decode(codes, num_stages=2), coarse, atol=1e-5)
        self.assertAllClose(rvq.decode(codes[..., :1]), stage_codes[0].reshape(x.shape), 1e-6)
        # More stages never code worse.
        errors = [np.mean((x - to_numpy(rvq.decode(codes, num_stages=n))) ** 2) for n in (1, 2, 3)]
        assert errors[0] > errors[1] > errors[2]

    @pytest.mark.parametrize("commitment", ["per_stage", "total"])
    def test_gradient_is_straight_through_overall(self, commitment):
        beta = 0.25
        rvq, codebooks = make_rvq(beta=beta, commitment=commitment)
        x = RNG.normal(size=(10, 4)).astype("float32")
        w = RNG.normal(size=x.shape).astype("float32")

        def objective(out, losses):
            return ops.sum(out * ops.convert_to_tensor(w)) + losses[0]

        _, grad_x, grads = layer_gradients(rvq, x, objective)
        residuals, idx, codes = residual_oracle(x, codebooks)
        if commitment == "per_stage":
            # Identity through the output; each stage's commitment reaches x (r_s = x - const).
            expected = w + sum(2 * beta * (r - q) / x.size for r, q in zip(residuals, codes))
        else:  # only the residual after the last stage: x is pulled onto the sum of the codes
            expected = w + 2 * beta * (x - sum(codes)) / x.size
        np.testing.assert_allclose(grad_x, expected, atol=1e-5, rtol=1e-5)
        for s, grad in enumerate(grads):  # each stage's codebook: its own codebook loss
            expected_codebook = np.zeros_like(codebooks[s], dtype=np.float64)
            np.add.at(expected_codebook, idx[:, s], -2.0 * (residuals[s] - codes[s]) / x.size)
            np.testing.assert_allclose(grad, expected_codebook, atol=1e-6, rtol=1e-5)

    def test_rotation_gradient_rotates_input_onto_total_code(self):
        rvq, codebooks = make_rvq(gradient="rotation", scale=2.0)
        x = RNG.normal(size=(6, 4)).astype("float32")
        w = RNG.normal(size=x.shape).astype("float32")
        _, grad_x, _ = layer_gradients(
            rvq, x, lambda out, losses: ops.sum(out * ops.convert_to_tensor(w))
        )
        total = sum(residual_oracle(x, codebooks)[2])
        expected = np.stack([rotation_matrix(x[i], total[i]).T @ w[i] for i in range(6)])
        np.testing.assert_allclose(grad_x, expected, atol=1e-4, rtol=1e-4)

    def test_codebook_dim_stages_train_their_output_projections(self):
        rvq = ResidualVectorQuantizer(2, 5, 4, codebook_dim=2)
        rvq.build((None, 4))
        weights = []
        for quantizer in rvq.quantizers:
            for variable in quantizer.trainable_variables:
                variable.assign(RNG.normal(size=tuple(variable.shape)).astype("float32"))
            weights.append(
                {v.path.split("/")[-2] + "/" + v.name: to_numpy(v) for v in quantizer.weights}
            )
        x = RNG.normal(size=(9, 4)).astype("float32")
        w = RNG.normal(size=x.shape).astype("float32")
        _, grad_x, grads = layer_gradients(
            rvq, x, lambda out, losses: ops.sum(out * ops.convert_to_tensor(w))
        )
        residual, total = x.astype(np.float64), 0.0
        expected_grads = []
        for s in range(2):
            p = weights[s]
            h = residual @ p["project_in/kernel"] + p["project_in/bias"]
            q = p[f"quantizer_{s}/codebook"][nearest(h, p[f"quantizer_{s}/codebook"])]
            code = q @ p["project_out/kernel"] + p["project_out/bias"]
            expected_grads.append({"project_out/kernel": q.T @ w, "project_out/bias": w.sum(0)})
            residual, total = residual - code, total + code
        self.assertAllClose(rvq(x), total, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(grad_x, w, atol=1e-5)
        names = [v.path.split("/")[-3:] for v in rvq.trainable_variables]
        checked = 0
        for (stage, layer, name), grad in zip(names, grads):
            if layer == "project_out":
                s = int(stage.split("_")[-1])
                expected = expected_grads[s][f"project_out/{name}"]
                np.testing.assert_allclose(grad, expected, atol=1e-4, rtol=1e-4)
                checked += 1
        assert checked == 4, names  # kernel and bias of both stages

    def test_total_commitment_with_codebook_dim_trains_project_in_not_the_input(self):
        beta = 0.4
        rvq = ResidualVectorQuantizer(2, 5, 4, codebook_dim=2, beta=beta)
        rvq.build((None, 4))
        for variable in rvq.trainable_variables:
            variable.assign(RNG.normal(size=tuple(variable.shape)).astype("float32"))
        params = [
            {v.path.split("/")[-2] + "/" + v.name: to_numpy(v) for v in q.weights}
            for q in rvq.quantizers
        ]
        x = RNG.normal(size=(9, 4)).astype("float32")
        _, grad_x, grads = layer_gradients(rvq, x, lambda out, losses: losses[0])
        residual, total, expected = x.astype(np.float64), 0.0, {}
        for s, p in enumerate(params):
            h = residual @ p["project_in/kernel"] + p["project_in/bias"]
            q = p[f"quantizer_{s}/codebook"][nearest(h, p[f"quantizer_{s}/codebook"])]
            # The stage's code-space commitment, with the residual stopped: project_in only.
            dh = 2 * beta * (h - q) / h.size
            expected[(s, "kernel")], expected[(s, "bias")] = residual.T @ dh, dh.sum(0)
            code = q @ p["project_out/kernel"] + p["project_out/bias"]
            residual, total = residual - code, total + code
        np.testing.assert_allclose(grad_x, 2 * beta * (x - total) / x.size, atol=1e-6, rtol=1e-4)
        checked = 0
        for variable, grad in zip(rvq.trainable_variables, grads):
            stage, layer, name = variable.path.split("/")[-3:]
            if layer == "project_in":
                want = expected[(int(stage.split("_")[-1]), name)]
                np.testing.assert_allclose(grad, want, atol=1e-5, rtol=1e-4)
                checked += 1
        assert checked == 4

    def test_quantize_dropout_only_in_training_and_seeded(self):
        def run(seed):
            rvq, codebooks = make_rvq(4, 5, 3, quantize_dropout=True, seed=seed, ema_decay=0.9)
            x = RNG.normal(size=(12, 3)).astype("float32")
            counts = []
            for _ in range(12):
                before = [to_numpy(q.ema_cluster_size).copy() for q in rvq.quantizers]
                codebooks = [to_numpy(q.codebook).copy() for q in rvq.quantizers]
                out, idx, loss = rvq(x, training=True, return_indices=True, return_loss=True)
                idx = to_numpy(idx)
                active = int((idx[0] >= 0).sum())
                counts.append(active)
                # The first `active` stages run, the rest report -1, output and loss nothing.
                _, expected_idx, codes = residual_oracle(x, codebooks, active)
                np.testing.assert_array_equal(idx[:, :active], expected_idx)
                assert (idx[:, active:] == -1).all()
                self.assertAllClose(out, sum(codes), atol=1e-5)
                # EMA stages: the commitment to the active stages' sum is the whole loss.
                expected_loss = 0.25 * np.mean((x - sum(codes)) ** 2)
                self.assertAllClose(loss, expected_loss, atol=1e-6, rtol=1e-5)
                for s, quantizer in enumerate(rvq.quantizers):
                    changed = np.abs(to_numpy(quantizer.ema_cluster_size) - before[s]).max()
                    assert (changed > 0) == (s < active), (s, active)
            full = to_numpy(rvq(x, return_indices=True)[1])
            assert (full >= 0).all()  # inference uses every stage
            return counts

        counts = run(seed=7)
        assert len(set(counts)) >= 3, counts
        assert run(seed=7) == counts
        assert run(seed=8) != counts

    def test_shared_codebook_updates_once_from_every_stage(self):
        decay, eps = 0.8, 1e-5
        rvq, (codebook,) = make_rvq(3, 6, 2, shared_codebook=True, ema_decay=decay, epsilon=eps)
        assert len(rvq.quantizers) == 1
        codebook_vars = [v for v in rvq.weights if v.name == "codebook"]
        assert len(codebook_vars) == 1
        x = RNG.normal(size=(15, 2)).astype("float32")
        residuals, idx, codes = residual_oracle(x, [codebook] * 3)
        out, got_idx = rvq(x, training=True, return_indices=True)
        np.testing.assert_array_equal(to_numpy(got_idx), idx)
        self.assertAllClose(out, sum(codes), atol=1e-5)
        counts = np.bincount(idx.reshape(-1), minlength=6)
        sums = np.zeros((6, 2))
        for s in range(3):
            np.add.at(sums, idx[:, s], residuals[s])
        smooth1 = (np.ones(6) + eps) / (6 + 6 * eps) * 6
        n1 = decay + (1 - decay) * counts
        m1 = decay * codebook * smooth1[:, None] + (1 - decay) * sums
        smooth2 = (n1 + eps) / (n1.sum() + 6 * eps) * n1.sum()
        quantizer = rvq.quantizers[0]
        self.assertAllClose(quantizer.ema_cluster_size, n1, atol=1e-5, rtol=1e-5)
        self.assertAllClose(quantizer.codebook, m1 / smooth2[:, None], atol=1e-4, rtol=1e-4)

    def test_kmeans_init_runs_per_stage_on_its_residual(self):
        num_codes, dim, seed = 4, 2, 5
        rvq = ResidualVectorQuantizer(2, num_codes, dim, kmeans_init=True, seed=seed)
        x = RNG.normal(size=(40, dim)).astype("float32") * 3.0
        rvq(x, training=True)
        residual = x.astype(np.float64)
        for s, quantizer in enumerate(rvq.quantizers):
            assert bool(to_numpy(quantizer.initialized))
            # Stage s draws from seed + s + 1.
            expected = numpy_kmeans(residual, num_codes, first_uniforms(seed + s + 1, 4), 10)
            self.assertAllClose(quantizer.embeddings, expected, atol=1e-4, rtol=1e-4)
            residual = residual - expected[nearest(residual, expected)]

    def test_fit_in_a_model_updates_every_stage(self):
        dim = 3
        inputs = keras.Input((4, dim))
        hidden = keras.layers.Dense(dim)(inputs)
        rvq = ResidualVectorQuantizer(
            3,
            8,
            dim,
            quantize_dropout=True,
            seed=1,
            ema_decay=0.9,
            kmeans_init=True,
            dead_code_threshold=0.05,
            name="rvq",
        )
        model = keras.Model(inputs, keras.layers.Dense(dim)(rvq(hidden)))
        model.compile(optimizer="adam", loss="mse")
        x = RNG.normal(size=(32, 4, dim)).astype("float32")
        before = [to_numpy(q.codebook).copy() for q in rvq.quantizers]
        history = model.fit(x, x, batch_size=8, epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        for quantizer, old in zip(rvq.quantizers, before):
            assert bool(to_numpy(quantizer.initialized))
            assert np.abs(to_numpy(quantizer.codebook) - old).max() > 1e-3

    def test_frozen_layer_or_stage_and_empty_batch_keep_state(self):
        rvq, _ = make_rvq(2, 4, 2, ema_decay=0.9, dead_code_threshold=0.5, seed=0)
        x = RNG.normal(size=(16, 2)).astype("float32")

        def state(quantizer):
            return [to_numpy(v).copy() for v in quantizer.weights]

        def unchanged(a, b):
            return all(np.array_equal(u, v) for u, v in zip(a, b))

        rvq.quantizers[1].trainable = False
        before = [state(q) for q in rvq.quantizers]
        rvq(x, training=True)
        assert not unchanged(state(rvq.quantizers[0]), before[0])
        assert unchanged(state(rvq.quantizers[1]), before[1])
        rvq.quantizers[1].trainable = True
        rvq.trainable = False
        before = [state(q) for q in rvq.quantizers]
        rvq(x, training=True)
        rvq.trainable = True
        out, loss = rvq(np.zeros((0, 2), "float32"), training=True, return_loss=True)
        assert tuple(out.shape) == (0, 2) and float(to_numpy(loss)) == 0.0
        for quantizer, old in zip(rvq.quantizers, before):
            assert unchanged(state(quantizer), old)

    def test_float32_internals_under_mixed_precision(self):
        keras.config.set_dtype_policy("mixed_float16")
        rvq = ResidualVectorQuantizer(2, 8, 4, ema_decay=0.9, codebook_dim=2, kmeans_init=True)
        x = ops.cast(RNG.normal(size=(6, 4)), "float16")
        out, loss = rvq(x, training=True, return_loss=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"
        for variable in rvq.weights:
            if variable.name != "initialized":
                assert keras.backend.standardize_dtype(variable.dtype) == "float32", variable
        assert np.isfinite(to_numpy(out)).all()

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"num_quantizers": 0}, ValueError, "num_quantizers"),
            ({"num_quantizers": 1.5}, TypeError, "num_quantizers"),
            ({"num_embeddings": 0}, ValueError, "num_embeddings"),
            ({"shared_codebook": "yes"}, TypeError, "shared_codebook"),
            ({"quantize_dropout": 1}, TypeError, "quantize_dropout"),
            ({"distance": "cosine"}, ValueError, "distance"),
            ({"beta": -1.0}, ValueError, "beta"),
            ({"seed": -1}, ValueError, "seed"),
            ({"commitment": "last"}, ValueError, "commitment"),
        ],
    )
    def test_bad_constructor_arguments_raise(self, kwargs, error, match):
        arguments = {"num_quantizers": 2, "num_embeddings": 4, **kwargs}
        with pytest.raises(error, match=match):
            ResidualVectorQuantizer(**arguments)

    def test_bad_encode_and_decode_arguments_raise(self):
        rvq, _ = make_rvq(3, 4, 2)
        x = RNG.normal(size=(5, 2)).astype("float32")
        with pytest.raises(ValueError, match="num_stages"):
            rvq.encode(x, num_stages=4)
        with pytest.raises(ValueError, match="num_stages"):
            rvq.encode(x, num_stages=0)
        with pytest.raises(ValueError, match="indices"):
            rvq.decode(np.zeros((5, 4), "int32"))
        with pytest.raises(ValueError, match="num_stages"):
            rvq.decode(np.zeros((5, 2), "int32"), num_stages=3)
        with pytest.raises(TypeError, match="indices"):
            rvq.decode(np.zeros((5, 3), "float32"))
        with pytest.raises(ValueError, match="indices"):
            rvq.decode(np.full((5, 3), 4, "int32"))
        with pytest.raises(ValueError, match="embedding_dim=2"):
            rvq(np.zeros((5, 3), "float32"))


def test_num_embeddings_beyond_int32_indices_is_rejected():
    with pytest.raises(ValueError, match=r"`num_embeddings` gives a codebook of 2147483648"):
        ResidualVectorQuantizer(2, 2**31, 4)


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the peer is torch-only; the other backends are checked against residual_oracle",
)
def test_per_stage_commitment_matches_vector_quantize_pytorch():
    """``commitment="per_stage"`` is the peer's ``ResidualVQ``: same codes, output, per-stage
    commitment losses (summed) and input gradient; ``"total"`` differs from it."""
    peer_module = pytest.importorskip("vector_quantize_pytorch")
    import torch

    beta, stages, size, dim = 0.3, 3, 6, 4
    x = RNG.normal(size=(2, 7, dim)).astype("float32")
    peer = peer_module.ResidualVQ(
        dim=dim, num_quantizers=stages, codebook_size=size, commitment_weight=beta, decay=0.9
    )
    rvq, codebooks = make_rvq(stages, size, dim, ema_decay=0.9, beta=beta, commitment="per_stage")
    with torch.no_grad():
        for layer, codebook in zip(peer.layers, codebooks):
            layer._codebook.embed.copy_(torch.tensor(codebook)[None])
            layer._codebook.initted.fill_(True)
    xt = torch.tensor(x, requires_grad=True)
    # Training mode for the losses; the frozen codebook leaves the EMA state alone.
    peer_out, peer_indices, peer_losses = peer.train()(xt, freeze_codebook=True)
    peer_losses.sum().backward()
    peer_loss = float(peer_losses.detach().sum())
    out, indices, loss = rvq(x, return_indices=True, return_loss=True)
    np.testing.assert_array_equal(to_numpy(indices), peer_indices.numpy())
    np.testing.assert_allclose(to_numpy(out), peer_out.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(to_numpy(loss), peer_loss, rtol=1e-5)
    _, grad_x, _ = layer_gradients(rvq, x, lambda out, losses: losses[0])
    np.testing.assert_allclose(grad_x, xt.grad.numpy(), atol=1e-7, rtol=1e-5)
    total, _ = make_rvq(stages, size, dim, ema_decay=0.9, beta=beta)
    for quantizer, codebook in zip(total.quantizers, codebooks):
        quantizer.set_codebook(codebook)
    _, total_loss = total(x, return_loss=True)
    assert abs(float(to_numpy(total_loss)) - peer_loss) > 1e-3
