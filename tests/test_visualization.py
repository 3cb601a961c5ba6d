import numpy as np
import pytest
from keras import ops
from PIL import Image

from keras_vq import visualization


def random_images(n, h=3, w=4, c=1, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, h, w, c)).astype("float32")


def reference_grid(images, ncols, padding, pad_value):
    """Pixel by pixel: which image (if any) covers each grid position."""
    n, h, w, c = images.shape
    rows = -(-n // ncols)
    height, width = rows * h + (rows + 1) * padding, ncols * w + (ncols + 1) * padding
    grid = np.empty((height, width, c))
    for y in range(height):
        for x in range(width):
            row, y_in = divmod(y - padding, h + padding)
            col, x_in = divmod(x - padding, w + padding)
            index = row * ncols + col
            inside = y >= padding and x >= padding and y_in < h and x_in < w and col < ncols
            if inside and index < n:
                grid[y, x] = min(max(np.nan_to_num(images[index, y_in, x_in, 0]), 0.0), 1.0)
            else:
                grid[y, x] = pad_value
    return np.round(grid * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "n, ncols, padding, pad_value", [(5, None, 2, 0.5), (7, 3, 1, 0.0), (1, 4, 0, 1.0)]
)
def test_image_grid_matches_a_pixel_by_pixel_reference(n, ncols, padding, pad_value):
    images = random_images(n)
    images[0, 0, 0, 0], images[-1, -1, -1, 0], images[0, 1, 1, 0] = 1.7, -0.3, np.nan
    grid = visualization.image_grid(images, ncols=ncols, padding=padding, pad_value=pad_value)
    expected = reference_grid(images, ncols or int(np.ceil(np.sqrt(n))), padding, pad_value)
    assert grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, expected)


def test_image_grid_takes_backend_tensors_rgb_and_missing_channel_axis():
    images = random_images(4, c=3, seed=1)
    grid = visualization.image_grid(ops.convert_to_tensor(images), ncols=2)
    assert grid.shape == (2 * 3 + 3 * 2, 2 * 4 + 3 * 2, 3)
    np.testing.assert_array_equal(grid[2:5, 2:6], np.round(images[0] * 255).astype(np.uint8))
    gray = random_images(3, seed=2)
    np.testing.assert_array_equal(
        visualization.image_grid(gray[..., 0]), visualization.image_grid(gray)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": np.zeros((2, 3, 4, 2))}, "images"),
        ({"images": np.zeros((0, 3, 4, 1))}, "images"),
        ({"images": np.zeros((3, 4))}, "images"),
        ({"ncols": 0}, "ncols"),
        ({"padding": -1}, "padding"),
        ({"pad_value": 2.0}, "pad_value"),
    ],
)
def test_image_grid_rejects_bad_arguments(kwargs, match):
    kwargs = {"images": random_images(2), **kwargs}
    with pytest.raises(ValueError, match=match):
        visualization.image_grid(**kwargs)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_image_grid_writes_the_grid_as_png(tmp_path, channels):
    images = random_images(5, c=channels, seed=3)
    path = visualization.save_image_grid(tmp_path / "grid.png", images, ncols=2, padding=1)
    with Image.open(path) as png:
        assert png.mode == ("L" if channels == 1 else "RGB")
        pixels = np.asarray(png)
    expected = visualization.image_grid(images, ncols=2, padding=1)
    np.testing.assert_array_equal(pixels.reshape(expected.shape), expected)


def test_side_by_side_and_interleave_rows():
    a, b = random_images(5, seed=4), random_images(5, seed=5)
    pairs = visualization.side_by_side(a, b)
    assert pairs.shape == (5, 3, 8, 1)
    np.testing.assert_array_equal(pairs[:, :, :4], a)
    np.testing.assert_array_equal(pairs[:, :, 4:], b)

    rows = visualization.interleave_rows(a, b, ncols=3)
    # Row 1: a[0:3]; row 2: b[0:3]; row 3: a[3:5] + one blank; row 4: b[3:5] + one blank.
    assert rows.shape == (12, 3, 4, 1)
    for got, want in zip(rows, [*a[:3], *b[:3], *a[3:], np.zeros_like(a[0]), *b[3:]]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rows[-1], 0.0)
    with pytest.raises(ValueError, match="same shape"):
        visualization.interleave_rows(a, b[:4], ncols=3)
    with pytest.raises(ValueError, match="same shape"):
        visualization.side_by_side(a, random_images(5, w=5))


def test_write_tensorboard_images_holds_every_image(tmp_path):
    import tensorflow as tf

    images = random_images(3, seed=6)
    visualization.write_tensorboard_images(tmp_path, "pictures", images, step=4)
    values = [
        (event.step, value)
        for path in tmp_path.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    ]
    assert [(step, value.tag) for step, value in values] == [(4, "pictures")]
    # An image summary: width, height, then one PNG per image.
    encoded = tf.make_ndarray(values[0][1].tensor)
    assert encoded[:2].tolist() == [b"4", b"3"] and len(encoded) == 2 + 3
    for png, image in zip(encoded[2:], images):
        decoded = tf.io.decode_png(png).numpy()
        np.testing.assert_allclose(decoded, image * 255, atol=1)


def test_write_tensorboard_scalars_holds_every_value(tmp_path):
    import tensorflow as tf

    scalars = {"sample_fd": 18.25, "sample_recall": np.float32(0.5), "count": 7}
    visualization.write_tensorboard_scalars(tmp_path, scalars, step=3)
    written = {
        value.tag: (event.step, float(tf.make_ndarray(value.tensor)))
        for path in tmp_path.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert written == {"sample_fd": (3, 18.25), "sample_recall": (3, 0.5), "count": (3, 7.0)}
    with pytest.raises(TypeError, match="histogram"):
        visualization.write_tensorboard_scalars(tmp_path, {"histogram": [1, 2]})
    with pytest.raises(TypeError, match="flag"):
        visualization.write_tensorboard_scalars(tmp_path, {"flag": True})
