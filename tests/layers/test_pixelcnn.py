import keras
import numpy as np
import pytest
from keras import ops

from keras_vq.layers import GatedPixelCNNBlock, MaskedConv2D
from keras_vq.layers.pixelcnn import causal_mask
from tests.test_case import TestCase, to_numpy


def reference_mask(kh, kw, mask_type):
    """Raster-order mask written out position by position."""
    ch, cw = kh // 2, kw // 2
    mask = np.zeros((kh, kw), "float32")
    for r in range(kh):
        for c in range(kw):
            before = r < ch or (r == ch and c < cw)
            centre = r == ch and c == cw
            mask[r, c] = float(before or (centre and mask_type == "B"))
    return mask


def dependency_matrix(fn, height, width, channels=2, seed=0):
    """D[q, p] = output at position q changes when the input at position p changes."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, height, width, channels)).astype("float32")
    batch = np.repeat(base, height * width + 1, axis=0)
    for p in range(height * width):
        batch[p + 1, p // width, p % width] += 3.0
    out = to_numpy(fn(batch)).reshape(height * width + 1, height * width, -1)
    diff = np.abs(out[1:] - out[:1]).max(axis=-1)  # (perturbed p, output q)
    return (diff > 1e-5).T


def strictly_before(height, width, include_self=False):
    n = height * width
    return np.tri(n, n, 0 if include_self else -1, dtype=bool)


class TestMaskedConv2D(TestCase):
    @pytest.mark.parametrize("mask_type", ["A", "B"])
    @pytest.mark.parametrize("kernel_size", [(3, 3), (5, 5), (3, 5), (1, 3)])
    def test_causal_mask_matches_numpy_reference(self, mask_type, kernel_size):
        np.testing.assert_array_equal(
            causal_mask(kernel_size, mask_type), reference_mask(*kernel_size, mask_type)
        )

    @pytest.mark.parametrize("mask_type", ["A", "B"])
    def test_layer_mask_is_a_constant_built_once(self, mask_type):
        layer = MaskedConv2D(2, (3, 5), mask_type=mask_type)
        layer.build((None, 6, 6, 2))
        mask = to_numpy(layer.kernel_mask)
        assert mask.shape == (3, 5, 1, 1)
        np.testing.assert_array_equal(mask[:, :, 0, 0], reference_mask(3, 5, mask_type))

    @pytest.mark.parametrize("mask_type", ["A", "B"])
    def test_output_is_conv_with_masked_kernel_and_kernel_is_unchanged(self, mask_type):
        layer = MaskedConv2D(3, 5, mask_type=mask_type)
        x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
        out = layer(x)
        kernel = to_numpy(layer.kernel)
        masked = kernel * reference_mask(5, 5, mask_type)[:, :, None, None]
        expected = to_numpy(ops.conv(x, masked, padding="same")) + to_numpy(layer.bias)
        self.assertAllClose(out, expected, atol=1e-5)
        assert np.count_nonzero(kernel[4]) > 0  # masked rows of the stored kernel are kept

    @pytest.mark.parametrize("mask_type", ["A", "B"])
    def test_dependencies_follow_the_mask(self, mask_type):
        layer = MaskedConv2D(2, 3, mask_type=mask_type)
        deps = dependency_matrix(layer, 4, 4)
        assert not np.any(deps & ~strictly_before(4, 4, include_self=mask_type == "B"))
        assert np.all(np.diag(deps)) == (mask_type == "B")

    def test_layer_battery(self, tmp_path):
        self.run_layer_test(
            MaskedConv2D,
            {"filters": 4, "kernel_size": (3, 3), "mask_type": "A"},
            np.ones((2, 5, 5, 2), "float32"),
            expected_output_shape=(2, 5, 5, 4),
            expected_output_dtype="float32",
            tmp_path=tmp_path,
        )

    def test_rejects_unknown_mask_type(self):
        with pytest.raises(ValueError, match="mask_type"):
            MaskedConv2D(4, 3, mask_type="C")


def gated_blocks(num_layers, filters=4, kernel_size=3, num_classes=None):
    return [
        GatedPixelCNNBlock(
            filters, kernel_size, num_classes=num_classes, mask_type="A" if i == 0 else "B"
        )
        for i in range(num_layers)
    ]


def gated_stack(num_layers, **kwargs):
    """``x → horizontal output`` of an A block followed by B blocks (eager, no tracing)."""
    blocks = gated_blocks(num_layers, **kwargs)

    def run(x, *labels):
        v, h = x, x
        for block in blocks:
            v, h = block([v, h, *labels])
        return h

    run.blocks = blocks
    return run


def randomize_weights(layer, rng):
    """Every weight of ``layer`` random and non-zero (Keras starts biases at zero)."""
    for variable in layer.weights:
        variable.assign(rng.normal(scale=0.5, size=tuple(variable.shape)).astype("float32"))
        assert np.all(to_numpy(variable) != 0)


def incremental_block(block, v, h, bias):
    """``block``'s ``[v_out, h_out]`` built only from its incremental sampling methods.

    Row by row: row 0's offset from ``first_row_offset``, row r+1's from ``vertical_row`` of
    row r; pixel by pixel: ``horizontal_pixel`` on the window left of (and at) the pixel.
    """
    batch, height, width, _ = v.shape
    n = block.half_width
    padded_v = np.pad(v, [(0, 0), (n, 0), (n, n), (0, 0)])
    padded_h = np.pad(h, [(0, 0), (0, 0), (n, 0), (0, 0)])
    offset = to_numpy(block.first_row_offset(batch, width, bias))
    v_rows, h_out = [], np.zeros((batch, height, width, block.filters), "float32")
    for i in range(height):
        for j in range(width):
            cols = slice(j, j + n) if block.first else slice(j, j + n + 1)
            pixel = block.horizontal_pixel(
                ops.convert_to_tensor(padded_h[:, i, cols].reshape(batch, -1)),
                ops.convert_to_tensor(offset[:, j]),
                h=ops.convert_to_tensor(h[:, i, j]),
            )
            h_out[:, i, j] = to_numpy(pixel)
        v_row, offset = block.vertical_row(ops.convert_to_tensor(padded_v[:, i : i + n + 1]), bias)
        v_rows.append(to_numpy(v_row))
        offset = to_numpy(offset)
    return np.concatenate(v_rows, axis=1), h_out


class TestGatedPixelCNNBlock(TestCase):
    def test_output_shapes_and_config_round_trip(self):
        block = GatedPixelCNNBlock(4, 3, num_classes=3, mask_type="A", name="blk")
        x = np.ones((2, 4, 5, 2), "float32")
        v, h = block([x, x, np.array([0, 2])])
        assert tuple(v.shape) == (2, 4, 5, 4) and tuple(h.shape) == (2, 4, 5, 4)
        assert block.compute_output_shape([x.shape, x.shape, (2,)]) == [(2, 4, 5, 4)] * 2
        config = block.get_config()
        assert {k: config[k] for k in ("filters", "kernel_size", "num_classes", "mask_type")} == {
            "filters": 4,
            "kernel_size": 3,
            "num_classes": 3,
            "mask_type": "A",
        }
        assert GatedPixelCNNBlock.from_config(config).get_config() == config

    def test_stack_is_causal_without_blind_spot(self):
        # 4 layers with k=3 reach 4 columns left/right and 5 rows up: the whole 5×5 past.
        deps = dependency_matrix(gated_stack(4), 5, 5)
        np.testing.assert_array_equal(deps, strictly_before(5, 5))

    def test_single_a_block_sees_left_pixels_and_rows_above(self):
        # k=3 (n=1): the horizontal stack sees (i, j-1); the vertical stack n+1 = 2 rows above.
        deps = dependency_matrix(gated_stack(1), 5, 5)
        q = 3 * 5 + 2  # (3, 2)
        seen = {(int(p) // 5, int(p) % 5) for p in np.flatnonzero(deps[q])}
        assert seen == {(3, 1), (2, 1), (2, 2), (2, 3), (1, 1), (1, 2), (1, 3)}

    def test_class_bias_changes_output(self):
        stack = gated_stack(2, num_classes=3)
        x = np.random.default_rng(0).normal(size=(2, 5, 5, 2)).astype("float32")
        stack(x, np.array([0, 0]))
        for block in stack.blocks:
            block.class_bias.embeddings.assign(np.random.default_rng(1).normal(size=(3, 8)))
        out_a = to_numpy(stack(x, np.array([0, 0])))
        out_b = to_numpy(stack(x, np.array([0, 2])))
        np.testing.assert_allclose(out_a[0], out_b[0])
        assert np.abs(out_a[1] - out_b[1]).max() > 1e-3

    def test_functional_model_saving_round_trip(self, tmp_path):
        x, labels = keras.Input((4, 4, 2)), keras.Input((), dtype="int32")
        v, h = GatedPixelCNNBlock(4, 3, num_classes=2, mask_type="A")([x, x, labels])
        model = keras.Model([x, labels], GatedPixelCNNBlock(4, 3, num_classes=2)([v, h, labels]))
        data = [np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype("float32")]
        self.run_model_saving_test(model, [*data, np.array([1, 0], "int32")], tmp_path)

    @pytest.mark.parametrize("mask_type", ["A", "B"])
    def test_incremental_methods_match_full_call(self, mask_type):
        n, width, labels = 1, 5, np.array([2, 0], "int32")
        block = GatedPixelCNNBlock(4, 3, num_classes=3, mask_type=mask_type)
        rng = np.random.default_rng(0)
        v = rng.normal(size=(2, 4, width, 4)).astype("float32")
        h = rng.normal(size=(2, 4, width, 4)).astype("float32")
        block([v, h, labels])  # build
        randomize_weights(block, rng)  # biases too: zero biases hide a dropped or extra bias
        v_out, h_out = (to_numpy(t) for t in block([v, h, labels]))
        bias = block.label_bias(labels)
        padded_v = ops.convert_to_tensor(np.pad(v, [(0, 0), (n, 0), (n, n), (0, 0)]))
        v_row, offset = block.vertical_row(padded_v[:, 1 : 1 + n + 1], bias)  # row r = 1
        self.assertAllClose(v_row, v_out[:, 1:2], atol=1e-5)
        padded_h = np.pad(h, [(0, 0), (0, 0), (n, 0), (0, 0)])
        i = 2  # the offset of row 1 feeds row 2
        for j in range(width):
            cols = slice(j, j + n) if mask_type == "A" else slice(j, j + n + 1)
            pixel = block.horizontal_pixel(
                ops.convert_to_tensor(padded_h[:, i, cols].reshape(2, -1)),
                ops.convert_to_tensor(to_numpy(offset)[:, j]),
                h=ops.convert_to_tensor(h[:, i, j]),
            )
            self.assertAllClose(pixel, h_out[:, i, j], atol=1e-5)

    @pytest.mark.parametrize("num_classes", [None, 3])
    @pytest.mark.parametrize("kernel_size", [3, 5])
    @pytest.mark.parametrize("mask_type", ["A", "B"])
    def test_incremental_methods_match_full_call_at_every_position(
        self, mask_type, kernel_size, num_classes
    ):
        rng = np.random.default_rng(kernel_size)
        v = rng.normal(size=(2, 4, 3, 4)).astype("float32")  # non-square, narrower than k=5
        h = rng.normal(size=(2, 4, 3, 4)).astype("float32")
        labels = [] if num_classes is None else [np.array([2, 0], "int32")]
        block = GatedPixelCNNBlock(4, kernel_size, num_classes=num_classes, mask_type=mask_type)
        block([v, h, *labels])  # build
        randomize_weights(block, rng)
        v_out, h_out = block([v, h, *labels])
        bias = block.label_bias(labels[0]) if labels else None
        v_inc, h_inc = incremental_block(block, v, h, bias)
        self.assertAllClose(v_inc, v_out, atol=1e-5)
        self.assertAllClose(h_inc, h_out, atol=1e-5)  # row 0 has no link term, bias included

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"filters": 0}, ValueError, "filters"),
            ({"filters": 4.0}, TypeError, "filters"),
            ({"kernel_size": 4}, ValueError, "kernel_size"),
            ({"kernel_size": 1}, ValueError, "kernel_size"),
            ({"num_classes": 0}, ValueError, "num_classes"),
            ({"mask_type": "a"}, ValueError, "mask_type"),
        ],
    )
    def test_rejects_bad_arguments(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            GatedPixelCNNBlock(**{"filters": 4, "kernel_size": 3, **kwargs})

    def test_rejects_missing_labels(self):
        block = GatedPixelCNNBlock(4, 3, num_classes=2)
        x = np.ones((1, 3, 3, 2), "float32")
        with pytest.raises(ValueError, match="labels"):
            block([x, x])
