import json

import keras
import numpy as np
import pytest

from keras_vq import callbacks, data
from keras_vq.visualization import side_by_side
from tests.test_case import to_numpy
from tests.test_evaluation import K, numpy_usage, randomize, tiny_vae, tiny_vqvae


def digits(n=32):
    return data.first_images(data.load("digits", split="test", batch_size=n, shuffle=False), n)


def image_events(log_dir):
    """``{(tag, step): (N, H, W, C) uint8}`` of the image summaries in ``log_dir``."""
    import tensorflow as tf

    found = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                pngs = tf.make_ndarray(value.tensor)[2:]
                found[(value.tag, event.step)] = np.stack(
                    [tf.io.decode_png(png).numpy() for png in pngs]
                )
    return found


# --------------------------------------------------------------------------- CodebookUsage


def test_codebook_usage_logs_the_usage_of_the_model_after_each_epoch(tmp_path):
    model = tiny_vqvae()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = digits()
    checked = []

    class CheckAgainstNumPy(keras.callbacks.Callback):
        """Listed after CodebookUsage: sees its logs and the model they were computed on."""

        def on_epoch_end(self, epoch, logs=None):
            codes = to_numpy(self.model.encode(images[:16]))
            codes = np.concatenate([codes, to_numpy(self.model.encode(images[16:]))])
            expected = numpy_usage(codes, K, threshold=2)
            for key, value in expected.items():
                np.testing.assert_allclose(logs[f"usage_{key}"], value, rtol=1e-5)
            checked.append(epoch)

    csv = tmp_path / "log.csv"
    history = model.fit(
        images,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[
            callbacks.CodebookUsage(images, threshold=2, prefix="usage_", batch_size=16),
            CheckAgainstNumPy(),
            keras.callbacks.CSVLogger(str(csv)),
        ],
    )
    assert checked == [0, 1]
    # The last epoch's numbers are those of the trained model (JAX: its synced state).
    final = numpy_usage(
        np.concatenate([to_numpy(model.encode(x)) for x in (images[:16], images[16:])]),
        K,
        threshold=2,
    )
    np.testing.assert_allclose(
        history.history["usage_perplexity"][-1], final["perplexity"], rtol=1e-5
    )
    for key in ("usage_perplexity", "usage_used_codes", "usage_used_fraction"):
        assert len(history.history[key]) == 2
    assert 1 <= history.history["usage_used_codes"][-1] <= K
    header, *rows = csv.read_text().splitlines()
    column = header.split(",").index("usage_dead_codes")
    dead = [float(row.split(",")[column]) for row in rows]
    assert dead == history.history["usage_dead_codes"]


def test_codebook_usage_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        callbacks.CodebookUsage(digits(), threshold=-1.0)
    with pytest.raises(TypeError, match="prefix"):
        callbacks.CodebookUsage(digits(), prefix=None)


# --------------------------------------------------------------------------- images


def test_reconstruction_and_sample_images_reach_tensorboard(tmp_path):
    model = tiny_vae()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = digits()
    shown = images[:3]
    model.fit(
        images,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[
            callbacks.ReconstructionImages(tmp_path, shown),
            callbacks.SampleImages(tmp_path, num_samples=4, seed=7, every_n_epochs=2),
        ],
    )
    events = image_events(tmp_path)
    assert set(events) == {
        ("inputs|reconstructions", 0),
        ("inputs|reconstructions", 1),
        ("samples", 1),
    }
    # The last epoch's pictures are the trained model's.
    pairs = side_by_side(shown, model(shown, training=False))
    np.testing.assert_allclose(events[("inputs|reconstructions", 1)], pairs * 255, atol=1)
    samples = to_numpy(model.sample(4, seed=7))
    np.testing.assert_allclose(events[("samples", 1)], samples * 255, atol=1)


def test_sample_images_of_a_prior_are_decoded_by_its_vqvae(tmp_path):
    from keras_vq.models import VQVAE, PixelCNNPrior, generate

    vqvae = VQVAE(input_shape=(8, 8, 1), num_embeddings=K, embedding_dim=4, filters=(4,))
    randomize(vqvae, seed=1, scale=1.0)  # images partly inside [0, 1], partly clipped
    prior = PixelCNNPrior(K, vqvae.latent_shape, num_layers=1, filters=4, kernel_size=3)
    randomize(prior, seed=1, scale=1.0)
    logger = callbacks.SampleImages(tmp_path, num_samples=2, seed=1, vqvae=vqvae, temperature=1)
    logger.set_model(prior)
    logger.on_epoch_end(0)
    logger.on_train_end()
    expected = np.clip(to_numpy(generate(vqvae, prior, 2, temperature=1, seed=1)), 0, 1)
    assert 0 < expected.mean() < 1
    np.testing.assert_allclose(image_events(tmp_path)[("samples", 0)], expected * 255, atol=1)


def test_image_callbacks_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="images"):
        callbacks.ReconstructionImages(tmp_path, np.zeros((8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="every_n_epochs"):
        callbacks.SampleImages(tmp_path, every_n_epochs=0)
    with pytest.raises(TypeError, match="log_dir"):
        callbacks.SampleImages(None)


# --------------------------------------------------------------------------- BackupAndRestore


def dense_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def train_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.after_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch[epoch + 1] = [to_numpy(w).copy() for w in self.model.weights]


def test_a_torn_metadata_file_falls_back_to_the_previous_checkpoint(tmp_path):
    backup_dir = tmp_path / "backup"
    x, y = train_data()
    model, record = dense_model(), RecordWeights()
    backup = callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[backup, record])
    assert backup.checkpoint_epoch == 2
    # A kill while Keras rewrites the metadata (after the weights of epoch 2).
    (backup_dir / "training_metadata.json").write_text('{"epo')
    plain = keras.callbacks.BackupAndRestore(str(backup_dir))
    plain.set_model(dense_model())
    with pytest.raises(ValueError):  # what Keras' own callback makes of it (a JSON error)
        plain.on_train_begin()

    resumed = callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False)
    assert resumed.checkpoint_epoch == 1
    assert json.loads((backup_dir / "training_metadata.json").read_text())["epoch"] == 1
    model = dense_model()
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[resumed])
    assert history.epoch == []  # nothing left to train: the weights are epoch 1's
    for restored, saved in zip(model.weights, record.after_epoch[1]):
        np.testing.assert_array_equal(to_numpy(restored), saved)
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[resumed])
    assert history.epoch == [1, 2]


def test_a_torn_metadata_file_without_a_previous_one_starts_afresh(tmp_path):
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "latest.weights.h5").write_bytes(b"half a file")
    (backup_dir / "training_metadata.json").write_text("")
    backup = callbacks.BackupAndRestore(backup_dir)
    assert backup.checkpoint_epoch == 0
    assert not backup_dir.exists()
    x, y = train_data()
    history = dense_model().fit(x, y, epochs=2, verbose=0, callbacks=[backup])
    assert history.epoch == [0, 1]


# --------------------------------------------------------------------------- RestoreBestWeights


def overfitting_fit(epochs=12, **fit_kwargs):
    """Full-batch SGD of a random Dense(2) towards targets ``y``, validated on targets halfway
    between its initial outputs and ``y``: the validation loss falls, then rises."""
    x, y = train_data()
    keras.utils.set_random_seed(1)
    model = dense_model()
    model.optimizer.learning_rate = 0.2
    halfway = (to_numpy(model(x)) + y) / 2
    record = RecordWeights()
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        validation_data=(x, halfway),
        callbacks=[record, *fit_kwargs.pop("callbacks", ())],
        **fit_kwargs,
    )
    return model, record, history, (x, halfway)


def numpy_val_losses(record, validation):
    """The validation MSE of each epoch's recorded weights, in NumPy."""
    x, target = validation
    return [
        float(np.mean((x @ kernel + bias - target) ** 2))
        for _, (kernel, bias) in sorted(record.after_epoch.items())
    ]


def test_restore_best_weights_ends_on_the_epoch_of_lowest_val_loss():
    best = callbacks.RestoreBestWeights("val_loss")
    model, record, history, validation = overfitting_fit(callbacks=[best])
    losses = numpy_val_losses(record, validation)
    expected = int(np.argmin(losses))
    assert 0 < expected < len(losses) - 1  # a real minimum: falls, then rises
    np.testing.assert_allclose(history.history["val_loss"], losses, rtol=1e-4)
    assert best.best_epoch == expected
    assert best.best == pytest.approx(losses[expected], rel=1e-4)
    for restored, saved in zip(model.weights, record.after_epoch[expected + 1]):
        np.testing.assert_array_equal(to_numpy(restored), saved)
    last = record.after_epoch[len(losses)]
    assert not np.array_equal(to_numpy(model.weights[0]), last[0])


def test_restore_best_weights_mode_max_and_without_validation():
    # mode="max" on val_loss picks the worst epoch: the first or the last.
    worst = callbacks.RestoreBestWeights("val_loss", mode="max")
    model, record, _, validation = overfitting_fit(callbacks=[worst])
    losses = numpy_val_losses(record, validation)
    assert worst.best_epoch == int(np.argmax(losses))
    for restored, saved in zip(model.weights, record.after_epoch[worst.best_epoch + 1]):
        np.testing.assert_array_equal(to_numpy(restored), saved)
    # No validation data: a warning, and the last weights stay.
    x, y = train_data()
    model, record = dense_model(), RecordWeights()
    unused = callbacks.RestoreBestWeights()
    with pytest.warns(UserWarning, match="val_loss"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[record, unused])
    assert unused.best_epoch is None
    np.testing.assert_array_equal(to_numpy(model.weights[0]), record.after_epoch[2][0])


def test_restore_best_weights_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        callbacks.RestoreBestWeights(mode="lowest")
    with pytest.raises(TypeError, match="monitor"):
        callbacks.RestoreBestWeights(monitor="")
