"""The VQ-VAE paper's networks as configuration (`filters`, `num_residual_blocks`, `downsample`).

The architecture is checked against a NumPy re-implementation of the paper's description
(strided 4×4 convolutions, residual blocks ReLU → 3×3 conv → ReLU → 1×1 conv + skip), with
random non-trivial weights; the models are trained one epoch on TFDS-mocked ``cifar10``.
"""

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_vq import data
from keras_vq.models import VAE, VQVAE, networks
from tests.test_case import TestCase, to_numpy

tfds.disable_progress_bar()

SHAPE = (32, 32, 3)


def perturb(model, seed=0, scale=0.3):
    """Random values in every weight, biases included."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(scale=scale, size=tuple(w.shape)).astype("float32"))


# ---------------------------------------------------------------------- NumPy reference
def same_pads(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def np_conv(x, kernel, bias, stride=1):
    """'same' convolution, kernel ``(k, k, C, F)``."""
    k = kernel.shape[0]
    out, lo, hi = same_pads(x.shape[1], k, stride)
    xp = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    y = np.zeros((x.shape[0], out, out, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i : i + stride * out : stride, j : j + stride * out : stride]
            y += patch @ kernel[i, j]
    return y + bias


def np_conv_transpose(x, kernel, bias, stride=2):
    """'same' transposed convolution (the adjoint of ``np_conv``), kernel ``(k, k, F, C)``."""
    k, size = kernel.shape[0], x.shape[1]
    full = (size - 1) * stride + k
    y = np.zeros((x.shape[0], full, full, kernel.shape[2]))
    for i in range(k):
        for j in range(k):
            contrib = x @ kernel[i, j].T
            y[:, i : i + stride * size : stride, j : j + stride * size : stride] += contrib
    _, lo, _ = same_pads(size * stride, k, stride)
    return y[:, lo : lo + size * stride, lo : lo + size * stride] + bias


def relu(x):
    return np.maximum(x, 0.0)


def np_residual_stack(x, net, num_blocks):
    for i in range(num_blocks):
        h = np_conv(relu(x), *weights(net, f"residual{i}_conv3x3"))
        x = x + np_conv(relu(h), *weights(net, f"residual{i}_conv1x1"))
    return relu(x) if num_blocks else x


def weights(net, name):
    return [w.astype("float64") for w in net.get_layer(name).get_weights()]


def np_encoder(x, net, num_stages, num_blocks):
    for i in range(num_stages):
        x = relu(np_conv(x, *weights(net, f"conv{i}"), stride=2))
    return np_conv(np_residual_stack(x, net, num_blocks), *weights(net, "project"))


def np_decoder(z, net, num_stages, num_blocks):
    if num_blocks:
        z = np_residual_stack(np_conv(z, *weights(net, "latent_conv")), net, num_blocks)
    for i in range(num_stages):
        z = relu(np_conv_transpose(z, *weights(net, f"deconv{i}")))
    return np_conv(z, *weights(net, "output"))


def mock_cifar10(tmp_path, batch_size=4, num_examples=8):
    with tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        return data.load("cifar10", batch_size=batch_size, seed=0, data_dir=tmp_path)


class TestPaperNetworks(TestCase):
    @pytest.mark.parametrize("downsample, num_blocks", [(4, 1), (8, 2), (2, 0)])
    def test_vqvae_networks_match_numpy_reference(self, downsample, num_blocks):
        model = VQVAE(
            input_shape=SHAPE,
            num_embeddings=16,
            embedding_dim=4,
            filters=8,
            num_residual_blocks=num_blocks,
            downsample=downsample,
        )
        perturb(model)
        stages = int(np.log2(downsample))
        assert model.latent_shape == (32 // downsample, 32 // downsample)
        # The paper's 4×4 strided kernels at every stage, one width for all.
        for i in range(stages):
            assert tuple(model.encoder.get_layer(f"conv{i}").kernel.shape) == (
                4,
                4,
                3 if i == 0 else 8,
                8,
            )
            deconv_in = 8 if i or num_blocks else 4  # the latents' D without a latent_conv
            assert tuple(model.decoder.get_layer(f"deconv{i}").kernel.shape) == (
                4,
                4,
                8,
                deconv_in,
            )
        x = np.random.default_rng(1).random((2, *SHAPE)).astype("float32")
        z_e = np_encoder(x.astype("float64"), model.encoder, stages, num_blocks)
        np.testing.assert_allclose(to_numpy(model.encoder(x)), z_e, rtol=1e-4, atol=1e-4)
        z = np.random.default_rng(2).normal(size=(2, *model.latent_shape, 4))
        expected = np_decoder(z, model.decoder, stages, num_blocks)
        assert expected.shape == (2, *SHAPE)
        got = to_numpy(model.decoder(z.astype("float32")))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    def test_tuple_filters_with_residual_blocks_match_reference(self):
        """Every combination: per-stage widths (3×3 kernels) with residual blocks too."""
        model = VQVAE(
            input_shape=(16, 16, 3),
            num_embeddings=8,
            embedding_dim=3,
            filters=(4, 6),
            num_residual_blocks=2,
        )
        perturb(model, seed=3)
        assert model.downsample == 4 and model.get_config()["filters"] == (4, 6)
        assert tuple(model.encoder.get_layer("conv1").kernel.shape) == (3, 3, 4, 6)
        assert tuple(model.decoder.get_layer("latent_conv").kernel.shape) == (3, 3, 3, 6)
        x = np.random.default_rng(4).random((2, 16, 16, 3)).astype("float32")
        z_e = np_encoder(x.astype("float64"), model.encoder, 2, 2)
        np.testing.assert_allclose(to_numpy(model.encoder(x)), z_e, rtol=1e-4, atol=1e-4)
        z = np.random.default_rng(5).normal(size=(2, 4, 4, 3))
        expected = np_decoder(z, model.decoder, 2, 2)
        got = to_numpy(model.decoder(z.astype("float32")))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    def test_default_networks(self):
        """Left at their defaults, the network arguments build the small 3×3 networks: VQVAE's
        (32, 128) widths (issue #17 §1), the VAE's (32, 64)."""
        model = VQVAE(input_shape=(28, 28, 1))
        assert model.filters == (32, 128) and model.downsample == 4
        assert model.num_residual_blocks == 0 and model.latent_shape == (7, 7)
        assert tuple(model.get_config()["filters"]) == (32, 128)
        shapes = {w.path: tuple(w.shape) for w in model.encoder.weights + model.decoder.weights}
        assert shapes == {
            "conv0/kernel": (3, 3, 1, 32),
            "conv0/bias": (32,),
            "conv1/kernel": (3, 3, 32, 128),
            "conv1/bias": (128,),
            "project/kernel": (1, 1, 128, 16),
            "project/bias": (16,),
            "deconv0/kernel": (3, 3, 128, 16),
            "deconv0/bias": (128,),
            "deconv1/kernel": (3, 3, 32, 128),
            "deconv1/bias": (32,),
            "output/kernel": (3, 3, 32, 1),
            "output/bias": (1,),
        }
        vae = VAE(input_shape=(28, 28, 1))
        assert vae.filters == (32, 64) and vae.downsample == 4
        assert [layer.name for layer in vae.decoder.layers[1:3]] == ["expand", "reshape"]
        assert tuple(vae.decoder.get_layer("deconv0").kernel.shape) == (3, 3, 64, 64)

    def test_downsample_alone_picks_default_widths(self):
        model = VQVAE(input_shape=(16, 16, 1), embedding_dim=2, downsample=8)
        assert model.filters == (32, 128, 128) and model.latent_shape == (2, 2)
        assert model.get_config()["downsample"] == 8
        assert VAE(input_shape=(16, 16, 1), latent_dim=2, downsample=8).filters == (32, 64, 128)

    def test_old_config_without_new_keys_loads_same_network(self, digits):
        model = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=3, filters=(4,))
        perturb(model, seed=6)
        config = model.get_config()
        for key in ("num_residual_blocks", "downsample"):
            del config[key]
        config["filters"] = [4]  # as JSON gives it back
        revived = VQVAE.from_config(config)
        revived.set_weights(model.get_weights())
        assert revived.downsample == 2 and revived.num_residual_blocks == 0
        self.assertAllClose(revived(digits[0][:4]), model(digits[0][:4]))

    @pytest.mark.parametrize("downsample", [4, 8])
    def test_vqvae_paper_config_trains_on_cifar10_and_round_trips(self, downsample, tmp_path):
        model = VQVAE(
            input_shape=SHAPE,
            num_embeddings=16,
            embedding_dim=4,
            filters=8,
            num_residual_blocks=1,
            downsample=downsample,
            seed=0,
        )
        before = [to_numpy(w).copy() for w in model.trainable_weights]
        model.compile(optimizer="adam")
        history = model.fit(mock_cifar10(tmp_path), epochs=1, verbose=0).history
        for key in ("loss", "reconstruction_loss", "vq_loss", "perplexity"):
            assert np.isfinite(history[key][0]), key
        changed = [
            not np.allclose(b, to_numpy(w)) for b, w in zip(before, model.trainable_weights)
        ]
        assert all(changed)
        images = next(iter(mock_cifar10(tmp_path)))
        codes = model.encode(images)
        assert tuple(codes.shape) == (4, 32 // downsample, 32 // downsample)
        assert tuple(model.decode(codes).shape) == (4, *SHAPE)
        revived = self.run_model_saving_test(model, images, tmp_path)
        assert revived.get_config() == model.get_config()
        assert revived.get_config()["filters"] == 8
        assert revived.get_config()["num_residual_blocks"] == 1
        np.testing.assert_array_equal(to_numpy(revived.encode(images)), to_numpy(codes))

    @pytest.mark.parametrize(
        "likelihood, downsample", [("gaussian", 4), ("discretized_logistic", 8)]
    )
    def test_vae_paper_config_trains_on_cifar10_and_round_trips(
        self, likelihood, downsample, tmp_path
    ):
        model = VAE(
            input_shape=SHAPE,
            latent_dim=4,
            filters=8,
            num_residual_blocks=1,
            downsample=downsample,
            likelihood=likelihood,
            seed=0,
        )
        grid = 32 // downsample
        assert tuple(model.encoder.get_layer("conv0").kernel.shape) == (4, 4, 3, 8)
        assert tuple(model.decoder.get_layer("expand").kernel.shape) == (4, grid * grid * 8)
        assert model.decoder.get_layer("residual0_conv3x3") is not None
        model.compile(optimizer="adam")
        history = model.fit(mock_cifar10(tmp_path), epochs=1, verbose=0).history
        for key in ("loss", "reconstruction_loss", "kl_loss"):
            assert np.isfinite(history[key][0]), key
        images = next(iter(mock_cifar10(tmp_path)))
        nll = -to_numpy(model.log_likelihood(images, num_samples=2, seed=0))
        assert nll.shape == (4,) and np.all(np.isfinite(nll))
        if likelihood == "discretized_logistic":
            assert np.all(nll > 0)  # a discrete likelihood: each p(x|z) ≤ 1
        revived = self.run_model_saving_test(model, images, tmp_path)
        assert revived.get_config() == model.get_config()
        np.testing.assert_allclose(
            to_numpy(revived.log_likelihood(images, num_samples=2, seed=0)), -nll, rtol=1e-5
        )

    def test_vae_tuple_filters_with_residual_blocks(self, digits):
        model = VAE(input_shape=(8, 8, 1), latent_dim=2, filters=(4, 6), num_residual_blocks=2)
        assert model.downsample == 4
        assert tuple(model.encoder.get_layer("residual1_conv1x1").kernel.shape) == (1, 1, 6, 6)
        assert tuple(model.decoder.get_layer("residual1_conv3x3").kernel.shape) == (3, 3, 6, 6)
        assert tuple(model(digits[0][:3]).shape) == (3, 8, 8, 1)

    def test_paper_config_under_mixed_bfloat16(self, tmp_path):
        keras.config.set_dtype_policy("mixed_bfloat16")
        model = VQVAE(
            input_shape=SHAPE,
            num_embeddings=16,
            embedding_dim=4,
            filters=8,
            num_residual_blocks=1,
            downsample=4,
        )
        assert model.encoder.get_layer("residual0_conv3x3").compute_dtype == "bfloat16"
        model.compile(optimizer="adam")
        history = model.fit(mock_cifar10(tmp_path), epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][0])
        images = next(iter(mock_cifar10(tmp_path)))
        assert keras.backend.standardize_dtype(model(images).dtype) == "float32"

    @pytest.mark.parametrize("model_class", [VQVAE, VAE])
    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"downsample": 6}, ValueError, "`downsample` must be a power of 2.*6"),
            ({"downsample": 1}, ValueError, "`downsample` must be >= 2"),
            ({"downsample": 4.0}, TypeError, "`downsample` must be an integer"),
            (
                {"filters": (8, 8), "downsample": 8},
                ValueError,
                r"`filters` \(8, 8\).*`downsample` is 8",
            ),
            ({"filters": 0}, ValueError, "`filters` must be >= 1"),
            ({"filters": (8, -1)}, ValueError, r"`filters\[1\]`"),
            ({"filters": ()}, TypeError, "`filters`"),
            ({"filters": "8"}, TypeError, "`filters`"),
            ({"num_residual_blocks": -1}, ValueError, "`num_residual_blocks` must be >= 0"),
            ({"num_residual_blocks": 1.5}, TypeError, "`num_residual_blocks`"),
            (
                {"input_shape": (20, 20, 3), "downsample": 8},
                ValueError,
                "divisible by 8.*downsample",
            ),
        ],
    )
    def test_bad_network_arguments_raise(self, model_class, kwargs, error, match):
        with pytest.raises(error, match=match):
            model_class(**{"input_shape": SHAPE, **kwargs})


def test_resolve_network():
    paper = networks.resolve_network(256, 8, 2)
    assert paper.stages == (256, 256, 256) and paper.kernel_size == 4
    assert paper.downsample == 8 and paper.filters == 256
    assert networks.resolve_network(256).downsample == 4
    small = networks.resolve_network([16, 32, 64])
    assert small.stages == (16, 32, 64) and small.downsample == 8 and small.kernel_size == 3
    assert networks.resolve_network().stages == (32, 64)
    wide = networks.vqvae_default_filters
    vqvae = networks.resolve_network(defaults=wide)
    assert vqvae.stages == vqvae.filters == (32, 128) and vqvae.downsample == 4
    assert networks.resolve_network(downsample=2, defaults=wide).stages == (32,)
    # Explicit widths win over the defaults.
    assert networks.resolve_network((8, 8), defaults=wide).stages == (8, 8)


# ---------------------------------------------------------------------- convolution layers
CONV_CASES = [
    # (kernel, stride, padding): odd/even kernels, crops (0, 1), (1, 1), (1, 2), none, and
    # the cases that keep Keras' path (kernel < stride, strided or even-kernel Conv2D).
    (3, 2, "same"),
    (4, 2, "same"),
    (5, 2, "same"),
    (3, 1, "same"),
    (4, 1, "same"),
    (3, 2, "valid"),
    (1, 1, "valid"),
    (1, 2, "same"),
]


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("kernel, stride, padding", CONV_CASES)
def test_conv_layers_match_keras(transposed, kernel, stride, padding):
    """Outputs and gradients (inputs, kernel, bias) equal Keras' own layers with those weights."""
    ours_class = networks.Conv2DTranspose if transposed else networks.Conv2D
    keras_class = keras.layers.Conv2DTranspose if transposed else keras.layers.Conv2D
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.normal(size=(2, 7, 6, 3)).astype("float32")
    layers_ = [
        c(4, kernel, strides=stride, padding=padding, activation="relu")
        for c in (ours_class, keras_class)
    ]
    for layer in layers_:
        layer.build(x.shape)
    values = [rng.normal(size=tuple(w.shape)).astype("float32") for w in layers_[1].weights]
    results = []
    for layer in layers_:
        layer.set_weights(values)
        results.append(_value_and_grads(layer, x))
    for ours, reference in zip(*results):
        np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=1e-5)


def _value_and_grads(layer, x):
    """``layer(x)`` and the gradients of ``Σ layer(x)·r`` for a fixed random ``r``."""
    r = np.random.default_rng(7).normal(size=tuple(layer.compute_output_shape(x.shape)))
    r = r.astype("float32")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            total = tf.reduce_sum(y * r)
        grads = tape.gradient(total, [xt, *layer.trainable_variables])
    elif backend == "jax":
        import jax

        def total(x, weights):
            y, _ = layer.stateless_call(weights, [], x)
            return (y * r).sum(), y

        (_, y), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
            x, [v.value for v in layer.trainable_variables]
        )
        grads = [grads[0], *grads[1]]
    else:
        import torch

        xt = torch.tensor(x, requires_grad=True)
        y = layer(xt)
        (y * torch.tensor(r)).sum().backward()
        grads = [xt.grad, *(v.value.grad for v in layer.trainable_variables)]
    return [to_numpy(y), *(to_numpy(g) for g in grads)]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's memory layout")
def test_decoder_convolutions_keep_channels_innermost_on_torch():
    """No NCHW copies: Keras' torch path returns a permuted NCHW buffer (channel stride H·W),
    which on CPU costs several times the output in reorder buffers (issue 27)."""
    import torch

    decoder = networks.build_dense_to_conv_decoder(4, (8, 8, 1), (8, 4))
    x = torch.randn(3, 4)
    convolutions = 0
    with torch.no_grad():
        for layer in decoder.layers[1:]:  # after the input layer, in order (a chain)
            x = layer(x)
            if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose):
                convolutions += 1
                assert x.stride()[-1] == 1, (layer.name, x.stride())
    assert convolutions == 3
