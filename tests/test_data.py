"""keras_vq.data: digits and TFDS pipelines, offline errors, encode_dataset, feeding fit."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from keras import ops

from keras_vq import data

tfds.disable_progress_bar()

NUM_DIGITS = 1797


class KerasVqFakeImages(tfds.core.GeneratorBasedBuilder):
    """A tiny TFDS dataset prepared locally, to run the real (unmocked) TFDS reading path."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to look for next to the code: TFDS's code-path lookup imports
    # `importlib_resources`, which TFDS 4.9 does not declare as a dependency on Python 3.11.
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(6, 6, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20, 0), "test": self._generate_examples(10, 1)}

    def _generate_examples(self, num_examples, seed):
        rng = np.random.default_rng(seed)
        for i in range(num_examples):
            image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            yield i, {"image": image, "label": i % 3}


FAKE = "keras_vq_fake_images"


def _collect(ds):
    """All batches of a dataset concatenated, as NumPy (tuples stay tuples)."""
    batches = list(ds.as_numpy_iterator())
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*batches))
    return np.concatenate(batches)


def _first(ds):
    return next(ds.as_numpy_iterator())


def _sorted_rows(images, labels):
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


# --------------------------------------------------------------------------- digits


def test_digits_yields_float32_unit_interval_batches():
    ds = data.load("digits", batch_size=32)
    assert ds.element_spec.shape.as_list() == [None, 8, 8, 1]
    images = _first(ds)
    assert images.shape == (32, 8, 8, 1)
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Pixels are 0..16 in scikit-learn: after scaling they are multiples of 1/16 up to 1.
    np.testing.assert_allclose(images * 16, np.round(images * 16), atol=1e-5)
    assert images.max() == 1.0


def test_digits_train_and_test_partition_all_examples():
    splits = {
        split: _collect(data.load("digits", split=split, shuffle=False, with_labels=True))
        for split in ("train", "test", "all")
    }
    num_train, num_test = len(splits["train"][0]), len(splits["test"][0])
    assert num_train + num_test == NUM_DIGITS
    assert num_train == round(0.8 * NUM_DIGITS)
    union = [np.concatenate(parts) for parts in zip(splits["train"], splits["test"])]
    np.testing.assert_array_equal(_sorted_rows(*union), _sorted_rows(*splits["all"]))


def test_digits_order_is_deterministic_for_a_fixed_seed():
    first = _first(data.load("digits", batch_size=64, seed=3))
    again = _first(data.load("digits", batch_size=64, seed=3))
    other = _first(data.load("digits", batch_size=64, seed=4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_digits_reshuffles_every_epoch():
    ds = data.load("digits", batch_size=64, seed=3)
    epoch_1, epoch_2 = _first(ds), _first(ds)
    assert not np.array_equal(epoch_1, epoch_2)


def test_digits_labels_are_int32_digits():
    images, labels = _collect(data.load("digits", split="all", with_labels=True))
    assert labels.dtype == np.int32
    assert labels.shape == (NUM_DIGITS,) and len(images) == NUM_DIGITS
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("image_size, expected", [(32, (32, 32)), ((16, 12), (16, 12))])
def test_digits_image_size_resizes_and_stays_in_unit_interval(image_size, expected):
    ds = data.load("digits", batch_size=16, image_size=image_size, shuffle=False)
    small = _first(data.load("digits", batch_size=16, shuffle=False))
    images = _first(ds)
    assert images.shape == (16, *expected, 1)
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    oracle = tf.image.resize(small, expected, method="bilinear").numpy()
    np.testing.assert_allclose(images, oracle, atol=1e-6)


def test_digits_drop_remainder_keeps_only_full_batches():
    num_train = round(0.8 * NUM_DIGITS)
    kept = [len(b) for b in data.load("digits", batch_size=100, drop_remainder=True)]
    assert kept == [100] * (num_train // 100)
    all_sizes = [len(b) for b in data.load("digits", batch_size=100)]
    assert sum(all_sizes) == num_train and all_sizes[-1] == num_train % 100


def test_digits_split_slices_select_parts_of_a_split():
    test_images = _collect(data.load("digits", split="test", shuffle=False))
    half = _collect(data.load("digits", split="train[:50%]", shuffle=False))
    assert len(half) == round(0.5 * round(0.8 * NUM_DIGITS))
    part = _collect(data.load("digits", split="test[10:20]", shuffle=False))
    np.testing.assert_array_equal(part, test_images[10:20])
    tail = _collect(data.load("digits", split="test[-10%:]", shuffle=False))
    np.testing.assert_array_equal(tail, test_images[-round(0.1 * len(test_images)) :])


@pytest.mark.parametrize("split", ["validation", "train+test", "train[:150%]", "test[5:5]"])
def test_digits_rejects_unsupported_splits(split):
    with pytest.raises(ValueError, match="split"):
        data.load("digits", split=split)


def test_digits_binarization_gives_zeros_and_ones():
    grey = _collect(data.load("digits", shuffle=False))
    fixed = _collect(data.load("digits", shuffle=False, binarize="fixed"))
    np.testing.assert_array_equal(fixed, (grey > 0.5).astype(np.float32))

    dynamic_ds = data.load("digits", shuffle=False, binarize="dynamic", seed=7)
    dynamic = _collect(dynamic_ds)
    assert set(np.unique(dynamic)) == {0.0, 1.0}
    # A Bernoulli sample with p = pixel value: the mean matches, 0 and 1 pixels stay put.
    assert abs(dynamic.mean() - grey.mean()) < 0.01
    assert np.all(dynamic[grey == 0.0] == 0.0) and np.all(dynamic[grey == 1.0] == 1.0)
    same_seed = _collect(data.load("digits", shuffle=False, binarize="dynamic", seed=7))
    np.testing.assert_array_equal(dynamic, same_seed)
    assert not np.array_equal(dynamic, _collect(dynamic_ds))  # fresh sample every epoch


# --------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_dataset_yields_unit_float_images_and_int32_labels(name, shape, tmp_path):
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load(
            name, split="train[:50%]", batch_size=5, with_labels=True, seed=0, data_dir=tmp_path
        )
        images, labels = _collect(ds)
    assert images.shape == (12, *shape)
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.5
    # uint8 pixels divided by 255.
    np.testing.assert_allclose(images * 255, np.round(images * 255), atol=1e-3)
    assert labels.dtype == np.int32 and labels.shape == (12,)
    assert labels.min() >= 0 and labels.max() < 10


@pytest.mark.parametrize("binarize", ["fixed", "dynamic"])
def test_tfds_binarize_gives_only_zeros_and_ones(binarize):
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        images = _collect(data.load("mnist", batch_size=4, binarize=binarize, seed=1))
    assert images.shape == (8, 28, 28, 1)
    assert set(np.unique(images)) == {0.0, 1.0}


def test_tfds_image_size_resizes():
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        images = _first(data.load("cifar10", batch_size=4, image_size=16))
    assert images.shape == (4, 16, 16, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_prepared_local_tfds_dataset_is_read_from_data_dir(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=FAKE):
        data.load(FAKE, data_dir=tmp_path)
    half = data.load(FAKE, split="train[:50%]", data_dir=tmp_path, download=True, with_labels=True)
    images, labels = _collect(half)
    assert images.shape == (10, 6, 6, 3) and labels.dtype == np.int32
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels)) <= {0, 1, 2}

    # Prepared now: no download needed; a fixed seed fixes the order.
    first = _collect(data.load(FAKE, data_dir=tmp_path, batch_size=20, seed=5))
    again = _collect(data.load(FAKE, data_dir=tmp_path, batch_size=20, seed=5))
    assert first.shape == (20, 6, 6, 3)
    np.testing.assert_array_equal(first, again)
    test_split = _collect(data.load(FAKE, split="test", data_dir=tmp_path, batch_size=3))
    assert test_split.shape == (10, 6, 6, 3)


def test_missing_tfds_dataset_fails_fast_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load("mnist", data_dir=tmp_path)
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert isinstance(error.value, OSError)
    for expected in ("'mnist'", str(tmp_path), "download=True", "tfds build", "digits"):
        assert expected in message


def test_tfds_dataset_without_label_feature_rejects_with_labels():
    # celeb_a has an "image" but no "label"; its info comes from code, offline.
    with pytest.raises(ValueError, match="no 'label' feature"):
        data.load("celeb_a", with_labels=True, image_size=32)


def test_tfds_dataset_without_image_feature_fails_clearly():
    with pytest.raises(ValueError, match="no 'image' feature"):
        data.load("imdb_reviews")


# --------------------------------------------------------------------------- validation


def test_unknown_name_lists_valid_choices():
    with pytest.raises(ValueError, match="Unknown dataset") as error:
        data.load("no_such_dataset")
    assert "'digits'" in str(error.value) and "'mnist'" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"image_size": 0}, ValueError, "image_size"),
        ({"image_size": (32,)}, ValueError, "image_size"),
        ({"image_size": "32"}, ValueError, "image_size"),
        ({"binarize": "soft"}, ValueError, "binarize"),
        ({"split": 3}, TypeError, "split"),
        ({"seed": -1}, ValueError, "seed"),
        ({"shuffle": "yes"}, TypeError, "shuffle"),
        ({"name": 7}, TypeError, "name"),
    ],
)
def test_invalid_arguments_are_named_in_the_error(kwargs, error, argument):
    kwargs = {"name": "digits", **kwargs}
    with pytest.raises(error, match=f"`{argument}`"):
        data.load(**kwargs)


def test_info_reports_image_shape_and_classes():
    assert data.info("digits") == ((8, 8, 1), 10)
    assert data.info("digits", image_size=32).image_shape == (32, 32, 1)
    assert data.info("mnist") == ((28, 28, 1), data.NUM_CLASSES["mnist"])
    assert data.info("cifar10").image_shape == (32, 32, 3)
    assert data.info("celeb_a", image_size=(64, 48)) == ((64, 48, 3), None)


# --------------------------------------------------------------------------- encode_dataset


class _ArgmaxEncoder:
    """A stand-in VQ-VAE: a strided conv and an argmax over channels as the codes."""

    def __init__(self, num_embeddings=6):
        self.conv = keras.layers.Conv2D(
            num_embeddings,
            2,
            strides=2,
            kernel_initializer=keras.initializers.RandomNormal(seed=0),
        )

    def encode(self, images):
        return ops.cast(ops.argmax(self.conv(images), axis=-1), "int32")


def _to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(ops.convert_to_numpy(x))


def test_encode_dataset_gives_the_codes_of_encode():
    encoder = _ArgmaxEncoder()
    images_ds = data.load("digits", split="test", batch_size=100, shuffle=False, with_labels=True)
    codes_ds = data.encode_dataset(encoder, images_ds, with_labels=True)
    batches = list(codes_ds.as_numpy_iterator())
    assert [len(codes) for codes, _ in batches] == [100, 100, 100, 59]
    codes, labels = (np.concatenate(parts) for parts in zip(*batches))
    assert codes.dtype == np.int32 and codes.shape == (359, 4, 4)
    assert labels.dtype == np.int32

    images, expected_labels = _collect(images_ds)
    expected = np.concatenate(
        [_to_numpy(encoder.encode(images[i : i + 100])) for i in range(0, len(images), 100)]
    )
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(labels, expected_labels)
    assert len(np.unique(codes)) > 1


def test_encode_dataset_of_unknown_length_drops_labels_when_not_asked():
    encoder = _ArgmaxEncoder()
    images_ds = data.load("digits", split="test", batch_size=64, shuffle=False, with_labels=True)
    unknown_length = images_ds.filter(lambda x, y: True)  # cardinality unknown: buffer grows
    codes = _collect(data.encode_dataset(encoder, unknown_length))
    expected = _collect(data.encode_dataset(encoder, images_ds, with_labels=True))[0]
    np.testing.assert_array_equal(codes, expected)


def test_encode_dataset_rejects_unsuitable_inputs():
    encoder = _ArgmaxEncoder()
    images_only = data.load("digits", split="test[:10]", batch_size=5)
    with pytest.raises(ValueError, match="with_labels"):
        data.encode_dataset(encoder, images_only, with_labels=True)
    with pytest.raises(ValueError, match="batch"):
        data.encode_dataset(encoder, images_only.unbatch())
    with pytest.raises(TypeError, match="encode"):
        data.encode_dataset(object(), images_only)


def test_encode_dataset_verbose_shows_one_progress_step_per_batch(capsys):
    encoder = _ArgmaxEncoder()
    images_ds = data.load("digits", split="test[:50]", batch_size=20, shuffle=False)
    quiet = _collect(data.encode_dataset(encoder, images_ds))
    assert capsys.readouterr().out == ""
    loud = _collect(data.encode_dataset(encoder, images_ds, verbose=1))
    out = capsys.readouterr().out
    assert "3/3" in out and "batch" in out, out
    np.testing.assert_array_equal(loud, quiet)
    with pytest.raises(ValueError, match="verbose"):
        data.encode_dataset(encoder, images_ds, verbose=-1)


def test_first_images_are_the_first_of_the_dataset():
    images_ds = data.load("digits", split="test", batch_size=16, shuffle=False, with_labels=True)
    all_images = _collect(images_ds)[0]
    for count in (0, 5, 16, 20):
        first = data.first_images(images_ds, count)
        assert first.dtype == np.float32
        np.testing.assert_array_equal(first, all_images[:count])
    assert len(data.first_images(images_ds.take(1), 100)) == 16  # fewer when there are fewer


# --------------------------------------------------------------------------- fit


def test_load_feeds_model_fit():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    ds = data.load("digits", batch_size=64).map(lambda x: (x, x))
    history = model.fit(ds, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
