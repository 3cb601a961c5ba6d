"""The public contract the four quantizer layers share, pinned exactly.

The quantizers share their output spec, input checks, decode checks and config listing
(``keras_vq/layers/_quantizer.py``, ``_projection.py``); these tests pin the config keys and
their order, the weight paths and their order, the error types and messages and the output
specs, so that sharing code can never change what users see.
"""

import keras
import numpy as np
import pytest

from keras_vq.layers import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from tests.test_case import TestCase, to_numpy

BASE_KEYS = ["name", "trainable", "dtype"]
VQ_KEYS = [
    "num_embeddings",
    "embedding_dim",
    "beta",
    "ema_decay",
    "epsilon",
    "dead_code_threshold",
    "chunk_size",
    "codebook_initializer",
    "seed",
    "kmeans_init",
    "distance",
    "codebook_dim",
    "gradient",
]
RVQ_KEYS = [
    "num_quantizers",
    "num_embeddings",
    "embedding_dim",
    "shared_codebook",
    "quantize_dropout",
    "seed",
    "commitment",
    "beta",
    "ema_decay",
    "epsilon",
    "dead_code_threshold",
    "chunk_size",
    "codebook_initializer",
    "kmeans_init",
    "distance",
    "codebook_dim",
    "gradient",
]
LFQ_KEYS = [
    "num_bits",
    "codebook_size",
    "entropy_loss_weight",
    "commitment_weight",
    "diversity_gamma",
    "temperature",
    "chunk_size",
]
PROJECTIONS = ["project_in/kernel", "project_in/bias", "project_out/kernel", "project_out/bias"]


def assert_equal(actual, expected):
    assert actual == expected, f"{actual!r} != {expected!r}"


def layers_under_test():
    return [
        VectorQuantizer(4),
        ResidualVectorQuantizer(2, 4),
        FiniteScalarQuantizer([3]),
        LookupFreeQuantizer(2),
    ]


class TestConfigAndWeights(TestCase):
    def test_config_keys_and_order(self):
        cases = [
            (VectorQuantizer(8, codebook_dim=3, seed=4), VQ_KEYS),
            (ResidualVectorQuantizer(2, 8, codebook_dim=2, seed=4), RVQ_KEYS),
            (FiniteScalarQuantizer([3, 4]), ["levels", "standardize", "momentum"]),
            (LookupFreeQuantizer(3), LFQ_KEYS),
        ]
        for layer, keys in cases:
            config = layer.get_config()
            assert_equal(list(config), BASE_KEYS + keys)
            clone = type(layer).from_config(config)
            assert_equal(clone.get_config(), config)

    def test_config_values(self):
        vq = VectorQuantizer(8, embedding_dim=4, beta=0.5, ema_decay=0.9, kmeans_init=True)
        config = vq.get_config()
        assert_equal(config["beta"], 0.5)
        assert_equal(config["ema_decay"], 0.9)
        assert config["kmeans_init"] is True
        assert_equal(config["embedding_dim"], 4)
        # Serialized, not the initializer object.
        assert isinstance(config["codebook_initializer"], dict)
        lfq = LookupFreeQuantizer(codebook_size=16, temperature=0.5)
        assert_equal(lfq.get_config()["num_bits"], 4)
        assert_equal(lfq.get_config()["codebook_size"], 16)
        assert_equal(lfq.get_config()["temperature"], 0.5)
        rvq = ResidualVectorQuantizer(3, 8, shared_codebook=True, beta=0.3)
        assert rvq.get_config()["shared_codebook"] is True
        assert_equal(rvq.get_config()["beta"], 0.3)

    def test_weight_paths_and_order(self):
        cases = [
            (
                VectorQuantizer(
                    8, ema_decay=0.9, kmeans_init=True, codebook_dim=3, dead_code_threshold=1.0
                ),
                [
                    "codebook",
                    "ema_cluster_size",
                    "ema_sum",
                    "initialized",
                    "perplexity",
                    *PROJECTIONS,
                ],
            ),
            (
                VectorQuantizer(8, dead_code_threshold=1.0),
                ["codebook", "ema_cluster_size", "codebook_offset", "perplexity"],
            ),
            (
                ResidualVectorQuantizer(2, 8, codebook_dim=2),
                [
                    f"quantizer_{s}/{name}"
                    for s in range(2)
                    for name in ["codebook", "perplexity", *PROJECTIONS]
                ],
            ),
            (
                FiniteScalarQuantizer([3, 4]),
                ["moving_mean", "moving_variance", "moving_updates", *PROJECTIONS],
            ),
            (FiniteScalarQuantizer([3, 4], standardize=False), PROJECTIONS),
            (LookupFreeQuantizer(3), PROJECTIONS),
        ]
        for layer, names in cases:
            layer.build((None, 5))
            prefix = layer.name + "/"
            assert_equal([w.path.removeprefix(prefix) for w in layer.weights], names)
        vq = cases[0][0]
        assert_equal(
            [w.dtype for w in vq.weights[:5]], ["float32", "float32", "float32", "bool", "float32"]
        )
        assert_equal([w.trainable for w in vq.weights[:5]], [False] * 5)
        assert cases[1][0].codebook.trainable


class TestErrors(TestCase):
    def test_decode_needs_a_built_layer(self):
        for layer in layers_under_test():
            with pytest.raises(ValueError) as info:
                layer.decode(np.zeros((2, 1), "int32"))
            expected = f"{type(layer).__name__}.decode needs a built layer (call it once first)."
            assert_equal(str(info.value), expected)

    def test_unknown_last_axis_at_build(self):
        for layer in layers_under_test():
            name = type(layer).__name__
            with pytest.raises(ValueError) as info:
                layer.build((2, None))
            if isinstance(layer, VectorQuantizer | ResidualVectorQuantizer):
                expected = f"{name} needs a known last axis (embedding_dim) at build."
            else:
                expected = f"{name} needs a known last axis at build, got shape (2, None)."
            assert_equal(str(info.value), expected)

    def test_wrong_last_axis(self):
        for layer in layers_under_test():
            layer.build((None, 4))
            name = type(layer).__name__
            if isinstance(layer, VectorQuantizer | ResidualVectorQuantizer):
                axis = "embedding_dim=4"
            else:
                axis = f"4 (the axis this {name} was built for)"
            with pytest.raises(ValueError, match="must have last axis") as info:
                layer.encode(np.zeros((2, 7), "float32"))
            assert f"`inputs` must have last axis {axis}, got shape (2, 7)." in str(info.value)

    def test_decode_rejects_float_and_out_of_range_codes(self):
        for layer in layers_under_test():
            layer.build((None, 4))
            codes = np.zeros((2, 2), "float32")
            with pytest.raises(TypeError, match=r"`indices` must have an integer dtype"):
                layer.decode(codes)
            with pytest.raises(ValueError, match=r"`indices`"):
                layer.decode(np.full((2, 2), layer.codebook_size, "int32"))


class TestOutputSpec(TestCase):
    def test_output_specs(self):
        x = keras.KerasTensor((2, 3, 4), dtype="float16")
        for layer in layers_under_test():
            stages = (2,) if isinstance(layer, ResidualVectorQuantizer) else ()
            outputs, indices, loss = layer.compute_output_spec(
                x, return_indices=True, return_loss=True
            )
            assert_equal((outputs.shape, outputs.dtype), ((2, 3, 4), "float16"))
            assert_equal((indices.shape, indices.dtype), ((2, 3, *stages), "int32"))
            assert_equal((loss.shape, loss.dtype), ((), "float32"))
            alone = layer.compute_output_spec(x)
            assert isinstance(alone, keras.KerasTensor)
            assert_equal(alone.shape, (2, 3, 4))
            pair = layer.compute_output_spec(x, return_loss=True)
            assert_equal([t.shape for t in pair], [(2, 3, 4), ()])

    def test_projected_encode_decode_match_call(self):
        # Random, non-zero projection weights (biases too): encode/decode go through both.
        rng = np.random.default_rng(3)
        for layer in (FiniteScalarQuantizer([3, 5]), LookupFreeQuantizer(3)):
            layer.build((None, 6))
            for weight in layer.weights:
                value = rng.normal(size=weight.shape)
                if "variance" in weight.path:  # FSQ's moving variance: positive
                    value = np.abs(value) + 0.1
                weight.assign(value.astype("float32"))
            x = rng.normal(size=(4, 5, 6)).astype("float32")
            outputs, indices = layer(x, return_indices=True)
            np.testing.assert_array_equal(to_numpy(layer.encode(x)), to_numpy(indices))
            self.assertAllClose(
                to_numpy(layer.decode(indices)), to_numpy(outputs), atol=1e-5, rtol=1e-5
            )


def checked_layers():
    """Every quantizer, plain and with the options that change its look-up (random weights)."""
    rng = np.random.default_rng(7)
    layers = [
        *layers_under_test(),
        VectorQuantizer(6, codebook_dim=2, distance="cosine", gradient="rotation"),
        VectorQuantizer(6, ema_decay=0.9, dead_code_threshold=1.0, seed=1),
        ResidualVectorQuantizer(3, 6, codebook_dim=3),
        FiniteScalarQuantizer([3, 4]),  # projects 4 → 2 → 4
        LookupFreeQuantizer(3, commitment_weight=0.5),  # projects 4 → 3 → 4
    ]
    for layer in layers:
        layer.build((None, 4))
        for weight in layer.trainable_weights:
            weight.assign(rng.normal(size=tuple(weight.shape)).astype("float32"))
    return layers


def non_finite_batch():
    """``(2, 4, 4)`` inputs whose vectors 1, 2, 3 and 6 hold NaN, +inf, -inf (all), -inf."""
    x = np.random.default_rng(5).normal(size=(8, 4)).astype("float32")
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    x[3, :] = -np.inf
    x[6, 1] = -np.inf
    return x.reshape(2, 4, 4), np.array([1, 2, 3, 6])


class TestInputValues(TestCase):
    """The rules every quantizer shares for input dtypes and non-finite values."""

    @pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
    def test_integer_and_boolean_inputs_raise_a_type_error(self, dtype):
        match = rf"`inputs` must have a floating-point dtype, got dtype {dtype}"
        for layer in checked_layers():
            x = np.ones((2, 3, 4), dtype)
            with pytest.raises(TypeError, match=match):
                layer(x)
            with pytest.raises(TypeError, match=match):
                layer.encode(x)
            with pytest.raises(TypeError, match=match):
                layer(keras.Input((3, 4), dtype=dtype))

    def test_encode_rejects_non_finite_inputs(self):
        x, _ = non_finite_batch()
        for layer in checked_layers():
            with pytest.raises(ValueError) as info:
                layer.encode(x)
            expected = "`inputs` contains 7 NaN or Inf values; expected finite values."
            assert_equal(str(info.value), expected)

    @pytest.mark.parametrize("training", [False, True])
    def test_calls_code_non_finite_vectors_as_zero_and_output_nan(self, training):
        x, bad = non_finite_batch()
        good = np.setdiff1d(np.arange(8), bad)
        for layer in checked_layers():
            expected = to_numpy(layer.encode(x.reshape(8, 4)[good]))
            outputs, indices = layer(x, training=training, return_indices=True)
            outputs, indices = to_numpy(outputs), to_numpy(indices)
            stages = indices.shape[2:]
            indices = indices.reshape(8, *stages)
            outputs = outputs.reshape(8, 4)
            name = type(layer).__name__
            np.testing.assert_array_equal(indices[bad], np.zeros((4, *stages)), err_msg=name)
            assert np.isnan(outputs[bad]).all(), name
            assert np.isfinite(outputs[good]).all(), name
            if not training:  # training moves codebooks: the codes of inference only
                np.testing.assert_array_equal(indices[good], expected, err_msg=name)

    def test_traced_encode_codes_non_finite_vectors_as_zero(self):
        backend = keras.backend.backend()
        if backend == "torch":
            pytest.skip("torch runs eagerly: encode always sees values and raises")
        if backend == "tensorflow":
            import tensorflow as tf

            def trace(fn):
                return tf.function(fn)
        else:
            import jax

            trace = jax.jit
        x, bad = non_finite_batch()
        for layer in checked_layers():
            indices = to_numpy(trace(layer.encode)(x))
            stages = indices.shape[2:]
            indices = indices.reshape(8, *stages)
            np.testing.assert_array_equal(indices[bad], np.zeros((4, *stages)))
