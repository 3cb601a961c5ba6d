"""The recipes with presets: ``--preset`` in sample/reconstruct/export, the preset every
training run writes, and the recorded command of a bundled preset still running."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_vq import presets
from tests.test_recipes import RECIPES, check_run_dir, png_size, run, whole_pixel_shift

ROOT = RECIPES.parent

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="the recipes run under KERAS_BACKEND=tensorflow; once per suite is enough",
    ),
    pytest.mark.subprocess,
]

QUICK = "--epochs 1 --steps-per-epoch 2 --batch-size 16".split()


@pytest.mark.parametrize(
    ("preset", "num_samples", "quality_samples"),
    [("pixelcnn_digits", 10, 20), ("vae_digits", 6, 0)],
)
def test_sample_preset_writes_a_png_grid(preset, num_samples, quality_samples, tmp_path):
    out = tmp_path / "sample"
    flags = ["--num-samples", str(num_samples), "--quality-samples", str(quality_samples)]
    run("sample", "--preset", preset, *flags, "--out", str(out))
    metrics = check_run_dir(out, "sample")
    assert metrics["num_samples"] == num_samples
    assert metrics["image_shape"] == [32, 32, 1]
    width, height = png_size(out / "samples.png")
    assert width > 32 and height > 32
    assert 0.0 < metrics["pixel_mean"] < 1.0
    if not quality_samples:
        assert not any(key.startswith("sample_") for key in metrics)
        return
    # The conditional preset, asked for each digit in turn, draws it far above chance (0.1):
    # about 0.6 of the time over 500 samples (its metadata).
    assert metrics["sample_accuracy"] > 0.3
    assert sum(metrics["sample_class_histogram"]) == quality_samples
    assert metrics["sample_fd"] > 0.0 and 0.0 <= metrics["sample_precision"] <= 1.0


def test_sample_rejects_a_preset_that_cannot_sample_alone(tmp_path):
    result = run("sample", "--preset", "vqvae_digits", "--out", str(tmp_path / "s"), check=False)
    assert result.returncode == 2
    assert "holds a VQVAE" in result.stderr and "pixelcnn_digits" in result.stderr
    assert not (tmp_path / "s").exists()  # a failed input check writes nothing


def test_reconstruct_preset_reports_the_held_out_error_recorded_in_its_metadata(tmp_path):
    out = tmp_path / "recon"
    run("reconstruct", "--preset", "vqvae_digits", "--num-images", "8", "--out", str(out))
    metrics = check_run_dir(out, "reconstruct")
    recorded = presets.metadata("vqvae_digits")["metrics"]
    assert metrics["model"] == "VQVAE"
    np.testing.assert_allclose(
        metrics["test_reconstruction_mse"], recorded["test_reconstruction_mse"], rtol=1e-4
    )
    assert (out / "reconstructions.png").is_file()


def test_export_preset_writes_a_saved_model(tmp_path):
    out = tmp_path / "export"
    result = run("export", "--preset", "vae_digits", "--out", str(out))
    assert (out / "1" / "saved_model.pb").is_file()
    assert result.stdout.strip().endswith(str(out / "1"))


def shortened(command: str, work_dir: Path) -> list[str]:
    """A recorded recipe command, writing under ``work_dir``, shortened."""
    argv = shlex.split(command)
    assert argv[0] == "python" and argv[1].startswith("recipes/")
    argv = [a.replace("runs/presets", str(work_dir)) for a in argv[1:]]
    return [sys.executable, str(ROOT / argv[0]), *argv[1:], *QUICK]


def recorded_command(name: str, work_dir: Path) -> list[str]:
    """The command in the preset's metadata (the one that wrote the preset), shortened."""
    return shortened(presets.metadata(name)["recipe_command"], work_dir)


def run_earlier_commands(name: str, work_dir: Path) -> None:
    """Run the commands the preset's own command starts from (its metadata's
    ``earlier_recipe_commands``: a prior pre-trained before its fine-tune), shortened."""
    from tests.test_recipes import env

    for command in presets.metadata(name).get("earlier_recipe_commands", ()):
        argv = shortened(command, work_dir)
        result = subprocess.run(
            argv, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400
        )
        assert result.returncode == 0, result.stderr[-4000:]


def test_recorded_commands_of_the_bundled_pair_still_run_and_write_presets(tmp_path):
    """vqvae_digits' and pixelcnn_digits' recorded commands (shortened to two steps) run and
    write presets whose metadata holds their metrics, their command and the pair's link."""
    from tests.test_recipes import env

    for name, extra in (
        ("vqvae_digits", ["--num-images", "0"]),
        ("pixelcnn_digits", ["--num-samples", "0", "--quality-samples", "8"]),
    ):
        run_earlier_commands(name, tmp_path)
        argv = recorded_command(name, tmp_path) + extra
        result = subprocess.run(
            argv, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400
        )
        assert result.returncode == 0, result.stderr[-4000:]
        preset_dir = tmp_path / name / "preset"
        meta = json.loads((preset_dir / "metadata.json").read_text())
        assert meta["recipe"] == argv[1].split("/")[-1].removesuffix(".py")
        assert meta["metrics"] and meta["backend"] == "tensorflow"
        assert shlex.split(meta["recipe_command"])[2:] == argv[2:]
        assert max(presets.verify(preset_dir).values()) <= 1e-5  # the same backend
    assert meta["vqvae_preset"] == "../../vqvae_digits/preset"
    # The prior's preset carries its sample quality (train_prior's --quality-samples).
    assert meta["metrics"]["sample_fd"] >= 0.0 and 0.0 <= meta["metrics"]["sample_accuracy"] <= 1
    assert sum(meta["metrics"]["sample_class_histogram"]) == 8
    vqvae, prior = presets.load_pair(tmp_path / "pixelcnn_digits" / "preset")
    assert prior.num_classes == 10 and vqvae.num_embeddings == prior.num_embeddings


def test_recorded_command_of_the_classifier_still_runs_and_writes_a_preset(tmp_path):
    """digits_classifier's recorded command (shortened to two steps) runs and writes a preset
    whose metadata holds the held-out accuracy and the real digits' sample quality."""
    from tests.test_recipes import env

    argv = [*recorded_command("digits_classifier", tmp_path), "--num-reference", "20"]
    result = subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "digits_classifier"
    metrics = check_run_dir(out, "train_classifier")
    assert metrics["test_examples"] == 359 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["real_images"] == 20 and metrics["test_real_fd"] >= 0.0
    meta = json.loads((out / "preset" / "metadata.json").read_text())
    assert meta["class_name"] == "DigitClassifier"
    assert set(meta["metrics"]) >= {"test_accuracy", "test_real_fd", "test_real_accuracy"}
    assert max(presets.verify(out / "preset").values()) <= 1e-5  # the same backend
    assert (out / "classifier.keras").is_file()


def test_classifier_shift_augmentation_moves_each_image_by_at_most_max_shift(monkeypatch):
    """Every augmented image is its original shifted by whole pixels in [-2, 2] on each axis
    with zeros entering at the border (a NumPy oracle tries every shift), and shifts vary."""
    import tensorflow as tf

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import _inputs

    rng = np.random.default_rng(0)
    images = rng.random((12, 8, 8, 1)).astype("float32") + 0.1  # no zero pixels
    labels = np.arange(12, dtype="int32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    moved = list(_inputs.random_shifts(dataset, 2, seed=3).as_numpy_iterator())
    out_images = np.concatenate([x for x, _ in moved])
    np.testing.assert_array_equal(np.concatenate([y for _, y in moved]), labels)

    found = [whole_pixel_shift(image, out, 2) for image, out in zip(images, out_images)]
    assert len(set(found)) > 3
