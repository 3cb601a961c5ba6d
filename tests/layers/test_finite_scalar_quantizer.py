import itertools

import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.layers import FiniteScalarQuantizer
from keras_vq.layers.finite_scalar_quantizer import bound_constants
from tests.backend_grads import layer_gradients
from tests.test_case import TestCase, to_numpy

RNG = np.random.default_rng(0)
LEVEL_SETS = ([8, 5, 5, 5], [3, 4, 6, 7], [4])


def fsq_reference(z: np.ndarray, levels, clip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """FSQ from the paper's equations in float32 NumPy: ``(codes in [-1, 1], indices)``.

    Channel ``i`` with ``L`` levels: ``f(z) = tanh(z + atanh(o / h)) · h - o`` with
    ``h = (L - 1)(1 + 1e-3) / 2`` and ``o = ½`` for even ``L``; the level is
    ``round(f(z)) + ⌊L/2⌋`` and the index ``Σ_i level_i · Π_{j<i} L_j``. With ``clip``,
    ``round(f(z))`` is clipped to ``[-⌊L/2⌋, ⌈L/2⌉ - 1]`` (the layer's exact bound, which
    matters from ``L = 1001`` on).
    """
    z = np.asarray(z, np.float32)
    codes = np.empty_like(z)
    index = np.zeros(z.shape[:-1], np.int64)
    stride = 1
    for i, num_levels in enumerate(levels):
        h = np.float32(num_levels - 1) * np.float32(1.001) / np.float32(2)
        o = np.float32(0.5 if num_levels % 2 == 0 else 0.0)
        f = np.tanh(z[..., i] + np.arctanh(o / h)) * h - o
        integer = np.round(f)
        if clip:
            integer = np.clip(integer, -(num_levels // 2), (num_levels - 1) // 2)
        half_width = num_levels // 2
        level = integer.astype(np.int64) + half_width
        assert level.min() >= 0 and level.max() < num_levels
        codes[..., i] = integer / np.float32(half_width)
        index += level * stride
        stride *= num_levels
    return codes, index


def bound_gradient(z: np.ndarray, levels) -> np.ndarray:
    """``∂ẑ/∂z`` of the straight-through estimator: ``(1 - tanh²(z + s)) · h / ⌊L/2⌋``."""
    out = np.empty(z.shape, np.float64)
    for i, num_levels in enumerate(levels):
        h = (num_levels - 1) * 1.001 / 2
        s = np.arctanh((0.5 if num_levels % 2 == 0 else 0.0) / h)
        out[..., i] = (1 - np.tanh(z[..., i] + s) ** 2) * h / (num_levels // 2)
    return out


def standardize_reference(z: np.ndarray, mean, variance) -> np.ndarray:
    """``(z - μ) / √(σ² + 10⁻⁸)`` per channel, in float64."""
    return (np.asarray(z, np.float64) - mean) / np.sqrt(np.asarray(variance, np.float64) + 1e-8)


def randomize_weights(layer, rng=RNG) -> None:
    """Non-trivial weights, biases and moving moments included (zero biases hide bugs)."""
    for w in layer.weights:
        value = rng.normal(scale=0.7, size=tuple(w.shape))
        if "variance" in w.path:
            value = np.abs(value) + 0.1
        w.assign(value.astype("float32"))


def unstandardized(levels) -> FiniteScalarQuantizer:
    """The bound and rounding alone (``standardize=False``): the paper's and the peer's FSQ."""
    return FiniteScalarQuantizer(levels, standardize=False)


def projected_layer(levels, input_dim: int) -> FiniteScalarQuantizer:
    layer = FiniteScalarQuantizer(levels)
    layer.build((None, input_dim))
    randomize_weights(layer)
    return layer


class TestFiniteScalarQuantizer(TestCase):
    @pytest.mark.parametrize("dim", [4, 6])
    def test_layer_battery(self, tmp_path, dim):
        x = RNG.normal(size=(2, 3, 3, dim)).astype("float32")
        self.run_layer_test(
            FiniteScalarQuantizer,
            {"levels": [8, 5, 5, 5]},
            x,
            expected_output_shape=(2, 3, 3, dim),
            expected_output_dtype="float32",
            tmp_path=tmp_path,
        )

    def test_saving_keeps_projection_weights(self, tmp_path):
        inputs = keras.Input((5, 6))
        layer = FiniteScalarQuantizer([5, 4, 3], name="fsq")
        model = keras.Model(inputs, layer(inputs, return_indices=True))
        randomize_weights(layer)
        x = RNG.normal(size=(3, 5, 6)).astype("float32")
        revived = self.run_model_saving_test(model, x, tmp_path)
        for a, b in zip(layer.weights, revived.get_layer("fsq").weights):
            self.assertAllClose(a, b, atol=0, rtol=0)

    @pytest.mark.parametrize("levels", LEVEL_SETS)
    def test_codes_and_indices_match_numpy(self, levels):
        # Scale 3 reaches the saturated ends of tanh, where the outer levels live.
        z = (3.0 * RNG.normal(size=(4, 25, len(levels)))).astype("float32")
        layer = unstandardized(levels)
        out, indices = layer(z, return_indices=True)
        codes, expected = fsq_reference(z, levels)
        assert keras.backend.standardize_dtype(indices.dtype) == "int32"
        assert tuple(indices.shape) == z.shape[:-1]
        np.testing.assert_array_equal(to_numpy(indices), expected)
        np.testing.assert_array_equal(to_numpy(out), codes)
        np.testing.assert_array_equal(to_numpy(layer.encode(z)), expected)
        assert layer.codebook_size == int(np.prod(levels))
        # Without standardisation training changes nothing, and there is no state.
        _, trained = layer(z, training=True, return_indices=True)
        np.testing.assert_array_equal(to_numpy(trained), expected)
        assert layer.weights == []

    def test_every_level_combination_gets_its_index(self):
        levels = [3, 4, 5]
        layer = unstandardized(levels)
        # Inputs whose bound lands exactly on each level: f⁻¹(integer) per channel.
        combos = np.array(list(itertools.product(*[range(n) for n in levels])))
        z = np.empty(combos.shape, np.float64)
        for i, n in enumerate(levels):
            h, o = (n - 1) * 1.001 / 2, (0.5 if n % 2 == 0 else 0.0)
            z[:, i] = np.arctanh((combos[:, i] - n // 2 + o) / h) - np.arctanh(o / h)
        indices = to_numpy(layer.encode(z.astype("float32")))
        expected = combos[:, 0] + 3 * combos[:, 1] + 12 * combos[:, 2]
        np.testing.assert_array_equal(indices, expected)
        assert sorted(indices.tolist()) == list(range(layer.codebook_size))
        # Channel 0 is the least significant digit of the index.
        np.testing.assert_array_equal(to_numpy(layer.level_indices(indices)), combos)

    def test_straight_through_gradient(self):
        levels = [8, 5, 4]
        layer = unstandardized(levels)
        z = (1.5 * RNG.normal(size=(6, 7, 3))).astype("float32")
        weights = RNG.normal(size=z.shape).astype("float32")

        def objective(outputs, losses):
            return ops.sum(outputs * ops.convert_to_tensor(weights))

        _, grad_z, _ = layer_gradients(layer, z, objective)
        expected = weights * bound_gradient(z, levels)
        np.testing.assert_allclose(grad_z, expected, atol=1e-5, rtol=1e-5)

    def test_projection_gradient_reaches_both_dense_layers(self):
        layer = projected_layer([5, 5, 3], 6)
        z = RNG.normal(size=(10, 6)).astype("float32")
        _, grad_z, grads = layer_gradients(layer, z, lambda out, losses: ops.sum(out**2))
        assert len(grads) == 4
        for g in [grad_z, *grads]:
            assert g is not None and np.abs(g).max() > 0

    @pytest.mark.parametrize("dim", [3, 5])
    def test_decode_of_encode_equals_call(self, dim):
        levels = [7, 4, 3]
        layer = projected_layer(levels, dim) if dim != 3 else FiniteScalarQuantizer(levels)
        z = (2.0 * RNG.normal(size=(2, 4, 4, dim))).astype("float32")
        out = layer(z)
        codes = layer.encode(z)
        decoded = layer.decode(codes)
        assert tuple(decoded.shape) == z.shape
        assert keras.backend.standardize_dtype(decoded.dtype) == "float32"
        self.assertAllClose(decoded, out, atol=1e-6, rtol=1e-6)

    def test_decode_all_codes_covers_the_grid(self):
        levels = [3, 4]
        layer = FiniteScalarQuantizer(levels)
        layer.build((None, 2))
        vectors = to_numpy(layer.decode(np.arange(12, dtype="int32")))
        expected = [[a, b] for b in (-1, -0.5, 0, 0.5) for a in (-1, 0, 1)]
        np.testing.assert_array_equal(vectors, np.array(expected, "float32"))

    @pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
    def test_mixed_precision_indices_equal_float32(self, policy):
        levels = [8, 5, 5, 5]
        reference = projected_layer(levels, 6)
        z = (2.0 * RNG.normal(size=(4, 16, 6))).astype("float32")
        expected = to_numpy(reference.encode(z))
        keras.config.set_dtype_policy(policy)
        layer = FiniteScalarQuantizer(levels)
        layer.build((None, 6))
        for a, b in zip(layer.weights, reference.weights):
            a.assign(b)
        out, indices = layer(z, return_indices=True)
        np.testing.assert_array_equal(to_numpy(indices), expected)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        # Low-precision inputs: codes computed in float32 from their values.
        low = ops.cast(z, policy.split("_")[1])
        out_low, indices_low = layer(low, return_indices=True)
        assert keras.backend.standardize_dtype(out_low.dtype) == policy.split("_")[1]
        np.testing.assert_array_equal(
            to_numpy(indices_low), to_numpy(reference.encode(ops.cast(low, "float32")))
        )

    def test_return_loss_is_a_zero_scalar_and_no_loss_is_added(self):
        layer = FiniteScalarQuantizer([5, 5])
        _, _, loss = layer(
            RNG.normal(size=(3, 2)).astype("float32"), return_indices=True, return_loss=True
        )
        assert tuple(loss.shape) == () and float(to_numpy(loss)) == 0.0
        assert layer.losses == []
        symbolic = FiniteScalarQuantizer([5, 5])(
            keras.Input((4, 2)), return_indices=True, return_loss=True
        )
        assert [tuple(s.shape) for s in symbolic] == [(None, 4, 2), (None, 4), ()]
        assert symbolic[1].dtype == "int32"

    def test_empty_batch(self):
        out, indices = FiniteScalarQuantizer([5, 3])(
            np.zeros((0, 2), "float32"), return_indices=True
        )
        assert tuple(out.shape) == (0, 2) and tuple(indices.shape) == (0,)

    @pytest.mark.parametrize(
        "levels, error, match",
        [
            ([], ValueError, "levels"),
            ([5, 2], ValueError, r"levels\[1\]"),
            ([5, 3.5], TypeError, r"levels\[1\]"),
            ("555", TypeError, "levels"),
            (5, TypeError, "levels"),
            ([1024] * 4, ValueError, "int32"),
        ],
    )
    def test_bad_levels_raise(self, levels, error, match):
        with pytest.raises(error, match=match):
            FiniteScalarQuantizer(levels)

    def test_wrong_last_axis_raises(self):
        layer = FiniteScalarQuantizer([5, 5, 5])
        layer(np.zeros((2, 3), "float32"))
        with pytest.raises(ValueError, match="last axis 3"):
            layer(np.zeros((2, 4), "float32"))

    def test_decode_rejects_bad_codes(self):
        layer = FiniteScalarQuantizer([5, 4])
        with pytest.raises(ValueError, match="built"):
            layer.decode(np.zeros((2,), "int32"))
        layer.build((None, 2))
        with pytest.raises(TypeError, match="indices"):
            layer.decode(np.zeros((2,), "float32"))
        with pytest.raises(ValueError, match="codebook_size=20"):
            layer.decode(np.array([0, 20], "int32"))
        with pytest.raises(ValueError, match="indices"):
            layer.decode(np.array([-1, 0], "int32"))


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the peer is torch-only; the other backends are checked against fsq_reference",
)
def test_matches_vector_quantize_pytorch():
    """Same codes, values and indices as lucidrains' ``FSQ``, projections included."""
    peer_module = pytest.importorskip("vector_quantize_pytorch")
    import torch

    for levels, dim in [([8, 5, 5, 5], 4), ([7, 6, 4], 3), ([8, 6, 5], 7)]:
        z = (2.5 * RNG.normal(size=(3, 40, dim))).astype("float32")
        peer = peer_module.FSQ(levels=levels, dim=dim).eval()
        layer = unstandardized(levels)
        layer.build((None, dim))
        if dim != len(levels):
            randomize_weights(layer)
            with torch.no_grad():
                pairs = [
                    (layer.project_in, peer.project_in),
                    (layer.project_out, peer.project_out),
                ]
                for ours, theirs in pairs:
                    theirs.weight.copy_(torch.tensor(to_numpy(ours.kernel).T))
                    theirs.bias.copy_(torch.tensor(to_numpy(ours.bias)))
        with torch.no_grad():
            peer_out, peer_indices = peer(torch.tensor(z))
        out, indices = layer(z, return_indices=True)
        np.testing.assert_array_equal(to_numpy(indices), peer_indices.numpy())
        if dim == len(levels):
            np.testing.assert_array_equal(to_numpy(out), peer_out.numpy())
        else:
            np.testing.assert_allclose(to_numpy(out), peer_out.numpy(), atol=1e-5, rtol=1e-5)


class TestBoundAndRounding(TestCase):
    @pytest.mark.parametrize("levels", [[1001], [1002, 3], [2000, 1001]])
    def test_levels_from_1001_keep_codes_and_indices_in_range(self, levels):
        # ±30 saturates tanh: the stretched bound used to round one level past the end.
        z = np.concatenate(
            [
                np.full((2, len(levels)), 30.0),
                np.full((2, len(levels)), -30.0),
                3.0 * RNG.normal(size=(40, len(levels))),
            ]
        ).astype("float32")
        layer = unstandardized(levels)
        outputs, indices = layer(z, return_indices=True)
        outputs, indices = to_numpy(outputs), to_numpy(indices)
        assert outputs.min() >= -1.0 and outputs.max() <= 1.0
        assert indices.min() >= 0 and indices.max() < layer.codebook_size
        codes, expected = fsq_reference(z, levels, clip=True)
        np.testing.assert_array_equal(indices, expected)
        # level / ⌊L/2⌋: XLA may divide by multiplying with the reciprocal (1 ulp).
        self.assertAllClose(outputs, codes, atol=1e-7, rtol=0)
        np.testing.assert_array_equal(to_numpy(layer.encode(z)), expected)
        self.assertAllClose(layer.decode(indices), codes, atol=1e-7, rtol=0)

    def test_exact_ties_round_half_to_even_eager_and_traced(self):
        # z = -s gives tanh(0) = 0 exactly, so f(z) = -½ exactly for every even L: half to
        # even gives level ⌊L/2⌋ (code 0), half away from zero would give ⌊L/2⌋ - 1.
        levels = [4, 6, 8, 3]
        layer = unstandardized(levels)
        _, _, shift = bound_constants(levels)
        z = np.stack([-shift, -shift]).astype("float32")
        expected_levels = np.array([2, 3, 4, 1])
        expected = int(np.sum(expected_levels * np.cumprod([1, 4, 6, 8])))
        outputs, indices = layer(z, return_indices=True)
        np.testing.assert_array_equal(to_numpy(indices), [expected, expected])
        np.testing.assert_array_equal(to_numpy(outputs), np.zeros((2, 4), "float32"))
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            traced = tf.function(layer.encode)(z)
        elif backend == "jax":
            import jax

            traced = jax.jit(layer.encode)(z)
        else:
            traced = layer.encode(z)
        np.testing.assert_array_equal(to_numpy(traced), [expected, expected])

    @pytest.mark.parametrize(
        "level, reason",
        [
            (2, "the bound puts two levels at {-1, 0}"),
            (1, "one level is one code for every input"),
            (0, "a channel with no levels has no code at all"),
            (-3, "a level count cannot be negative"),
        ],
    )
    def test_too_few_levels_get_their_own_message(self, level, reason):
        with pytest.raises(ValueError) as info:
            FiniteScalarQuantizer([5, level])
        assert str(info.value).startswith(f"`levels[1]` must be >= 3, got {level}: {reason}")

    def test_codebook_beyond_int32_is_rejected(self):
        with pytest.raises(ValueError, match=r"`levels` gives a codebook of 2147549184 codes"):
            FiniteScalarQuantizer([2**16, 2**15 + 1])


class TestStandardization(TestCase):
    """The default ``standardize=True``: each channel to zero mean and unit variance before
    the bound, by the batch's moments in training and moving ones at inference."""

    @staticmethod
    def layer_with_state(levels, momentum=0.8):
        layer = FiniteScalarQuantizer(levels, momentum=momentum)
        layer.build((None, len(levels)))
        mean = RNG.normal(size=len(levels)).astype("float32")
        variance = RNG.uniform(0.3, 3.0, size=len(levels)).astype("float32")
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
        layer.moving_updates.assign(50.0)  # past the even average of the first batches
        return layer, mean.astype(np.float64), variance.astype(np.float64)

    def test_training_uses_the_batch_moments_of_finite_rows_and_moves_the_state(self):
        levels = [8, 5, 5]
        layer, mean0, variance0 = self.layer_with_state(levels)
        # Channels of very different scales and offsets, as a trained encoder's.
        z = RNG.normal(size=(4, 6, 3)) * [0.05, 0.4, 3.0] + [0.3, -1.0, 0.2]
        z[1, 2, 0], z[3, 0, 2] = np.nan, np.inf  # two vectors that must not count
        z = z.astype("float32")
        out, indices = layer(z, training=True, return_indices=True)
        finite = np.isfinite(z).all(axis=-1)
        rows = z[finite].astype(np.float64)
        mean, variance = rows.mean(axis=0), rows.var(axis=0)
        codes, expected = fsq_reference(
            standardize_reference(np.where(finite[..., None], z, 0), mean, variance), levels
        )
        np.testing.assert_array_equal(to_numpy(indices), np.where(finite, expected, 0))
        out = to_numpy(out)
        assert np.isnan(out[~finite]).all()
        np.testing.assert_allclose(out[finite], codes[finite], atol=1e-6)
        self.assertAllClose(layer.moving_mean, 0.8 * mean0 + 0.2 * mean, atol=1e-6, rtol=1e-5)
        self.assertAllClose(
            layer.moving_variance, 0.8 * variance0 + 0.2 * variance, atol=1e-6, rtol=1e-5
        )
        assert float(to_numpy(layer.moving_updates)) == 51.0
        # Every channel spreads over its levels, whatever its scale.
        levels_used = to_numpy(layer.level_indices(indices))[finite]
        assert [len(np.unique(levels_used[:, i])) for i in range(3)] >= [4, 4, 4]

    def test_the_first_batches_are_averaged_evenly(self):
        # decay min(momentum, (t - 1) / t): batch 1 replaces the initial identity, batch 2
        # averages with it, then exponentially (an initial variance of 1 would otherwise
        # linger for ~1 / (1 - momentum) batches and squash small encoder outputs).
        layer = FiniteScalarQuantizer([5, 5], momentum=0.6)
        batches = [(RNG.normal(size=(16, 2)) * s + s).astype("float32") for s in (0.1, 0.5, 2)]
        moments = [(b.astype(np.float64).mean(0), b.astype(np.float64).var(0)) for b in batches]
        expected_mean, expected_variance = moments[0]
        for t, (batch, (mean, variance)) in enumerate(zip(batches, moments), start=1):
            layer(batch, training=True)
            if t > 1:
                decay = min(0.6, (t - 1) / t)
                expected_mean = decay * expected_mean + (1 - decay) * mean
                expected_variance = decay * expected_variance + (1 - decay) * variance
            self.assertAllClose(layer.moving_mean, expected_mean, atol=1e-6, rtol=1e-5)
            self.assertAllClose(layer.moving_variance, expected_variance, atol=1e-6, rtol=1e-5)
            assert float(to_numpy(layer.moving_updates)) == t

    def test_inference_uses_the_moving_moments_and_keeps_them(self):
        levels = [7, 4, 3]
        layer, mean, variance = self.layer_with_state(levels)
        z = (RNG.normal(size=(5, 9, 3)) * 2.0).astype("float32")
        codes, expected = fsq_reference(standardize_reference(z, mean, variance), levels)
        out, indices = layer(z, return_indices=True)
        np.testing.assert_array_equal(to_numpy(indices), expected)
        np.testing.assert_allclose(to_numpy(out), codes, atol=1e-6)
        np.testing.assert_array_equal(to_numpy(layer.encode(z)), expected)
        # A frozen layer runs as at inference in training too (as BatchNormalization).
        layer.trainable = False
        _, frozen = layer(z, training=True, return_indices=True)
        np.testing.assert_array_equal(to_numpy(frozen), expected)
        self.assertAllClose(layer.moving_mean, mean, atol=0, rtol=0)
        self.assertAllClose(layer.moving_variance, variance, atol=0, rtol=0)

    @pytest.mark.parametrize("rows", ["empty", "non_finite"])
    def test_a_batch_without_finite_rows_keeps_the_state(self, rows):
        layer, mean, variance = self.layer_with_state([5, 5])
        z = np.zeros((0, 2)) if rows == "empty" else np.array([[np.nan, 1.0], [0.0, -np.inf]])
        out, indices = layer(z.astype("float32"), training=True, return_indices=True)
        assert np.isnan(to_numpy(out)).all() and (to_numpy(indices) == 0).all()
        self.assertAllClose(layer.moving_mean, mean, atol=0, rtol=0)
        self.assertAllClose(layer.moving_variance, variance, atol=0, rtol=0)

    def test_gradient_flows_through_the_batch_moments(self):
        # d/dz of Σ w · f((z - μ(z)) / σ(z)): the moments depend on z (batch normalisation),
        # checked against central finite differences of the NumPy reference.
        levels = [5, 4]
        layer = FiniteScalarQuantizer(levels)
        z = (RNG.normal(size=(12, 2)) * [0.5, 2.0] + [1.0, -0.5]).astype("float32")
        weights = RNG.normal(size=z.shape)

        def surrogate(z64):  # the straight-through value: f(x) / ⌊L/2⌋ without rounding
            x = standardize_reference(z64, z64.mean(axis=0), z64.var(axis=0))
            total = 0.0
            for i, num_levels in enumerate(levels):
                h = (num_levels - 1) * 1.001 / 2
                o = 0.5 if num_levels % 2 == 0 else 0.0
                f = np.tanh(x[:, i] + np.arctanh(o / h)) * h - o
                total += np.sum(weights[:, i] * f / (num_levels // 2))
            return total

        expected = np.zeros(z.shape)
        z64, step = z.astype(np.float64), 1e-5
        for index in np.ndindex(z.shape):
            plus, minus = z64.copy(), z64.copy()
            plus[index] += step
            minus[index] -= step
            expected[index] = (surrogate(plus) - surrogate(minus)) / (2 * step)

        def objective(outputs, losses):
            return ops.sum(outputs * ops.convert_to_tensor(weights.astype("float32")))

        _, grad_z, _ = layer_gradients(layer, z, objective, training=True)
        np.testing.assert_allclose(grad_z, expected, atol=2e-4, rtol=1e-3)

    def test_config_round_trip(self):
        layer = FiniteScalarQuantizer([5, 4], standardize=True, momentum=0.95, name="q")
        config = layer.get_config()
        assert (config["standardize"], config["momentum"]) == (True, 0.95)
        assert FiniteScalarQuantizer.from_config(config).get_config() == config
        off = FiniteScalarQuantizer([5, 4], standardize=False).get_config()
        assert FiniteScalarQuantizer.from_config(off).standardize is False
        # A config written before `standardize` existed describes the unstandardised layer.
        older = {k: v for k, v in config.items() if k not in ("standardize", "momentum")}
        assert FiniteScalarQuantizer.from_config(older).standardize is False

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"standardize": 1}, TypeError, "standardize"),
            ({"momentum": 1.0}, ValueError, "momentum"),
            ({"momentum": 0.0}, ValueError, "momentum"),
            ({"momentum": "0.9"}, TypeError, "momentum"),
        ],
    )
    def test_bad_standardize_arguments_raise(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            FiniteScalarQuantizer([5, 5], **kwargs)

    def test_training_spreads_each_channel_over_its_levels(self):
        """Positive inputs through a small encoder (a fresh convolutional encoder's outputs
        are ~0.04, a trained one's channels each on one side of zero): after a short training
        every channel uses all its levels, none more than half the time. Without the
        standardisation the same training leaves channels on one or two levels."""
        levels = [5, 5, 5]
        base = RNG.uniform(size=(512, 3))
        data = np.concatenate([base, base @ RNG.uniform(size=(3, 3))], axis=1).astype("float32")

        def level_shares(standardize):
            keras.utils.set_random_seed(1)
            inputs = keras.Input((6,))
            encoder = keras.layers.Dense(
                3, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)
            )
            quantizer = FiniteScalarQuantizer(levels, standardize=standardize)
            outputs = keras.layers.Dense(6)(quantizer(encoder(inputs)))
            model = keras.Model(inputs, outputs)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
            model.fit(data, data, batch_size=32, epochs=2, verbose=0)
            used = to_numpy(quantizer.level_indices(quantizer.encode(encoder(data))))
            return np.stack([np.bincount(used[:, i], minlength=5) for i in range(3)]) / len(data)

        def spread(shares):
            return bool((shares > 0.02).all() and shares.max() < 0.55)

        standardized, plain = level_shares(True), level_shares(False)
        assert spread(standardized), standardized
        assert not spread(plain), plain
