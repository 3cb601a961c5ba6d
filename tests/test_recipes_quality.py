"""Sample quality in the recipes (--quality-samples): metrics.json, TensorBoard, the final line.

One tiny class-conditional pipeline on 32x32 digits (the size the default feature model
takes) is shared: its numbers are checked against an independent redraw in this process, and
sample.py runs on its models.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.test_recipes import TINY_PRIOR, TINY_RUN, check_run_dir, load, read_json, run

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="the recipes run under KERAS_BACKEND=tensorflow; once per suite is enough",
    ),
    pytest.mark.subprocess,
]

# 32x32 images, three halvings: 4x4 code maps, so the prior samples quickly.
TINY_VQVAE_32 = "--image-size 32 --filters 4 4 4 --num-embeddings 8 --embedding-dim 4".split()
QUALITY_SAMPLES = 12
SCALARS = (
    "sample_fd",
    "sample_precision",
    "sample_recall",
    "sample_confident_share",
    "sample_accuracy",
)


@pytest.fixture(scope="module")
def pipeline_32(tmp_path_factory):
    """(out, stdout) of a conditional pipeline on 32x32 digits with 12 quality samples."""
    out = tmp_path_factory.mktemp("quality") / "pipeline"
    flags = ["--conditional", "--prior-epochs", "1", "--num-samples", "4", "--no-export"]
    flags += ["--quality-samples", str(QUALITY_SAMPLES)]
    result = run("pipeline", "--out", str(out), *TINY_VQVAE_32, *TINY_PRIOR, *flags, *TINY_RUN)
    return out, result.stdout


def scalar_events(log_dir: Path) -> dict[str, float]:
    import tensorflow as tf

    return {
        value.tag: float(tf.make_ndarray(value.tensor))
        for path in log_dir.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }


def test_pipeline_reports_sample_quality_everywhere(pipeline_32):
    out, stdout = pipeline_32
    metrics = check_run_dir(out, "pipeline")
    assert math.isfinite(metrics["sample_fd"]) and metrics["sample_fd"] >= 0.0
    for name in SCALARS[1:]:
        assert 0.0 <= metrics[name] <= 1.0, name
    histogram = metrics["sample_class_histogram"]
    assert len(histogram) == 10 and sum(histogram) == QUALITY_SAMPLES
    # Every class is asked for in turn (0..9, 0, 1): per class, no more are right than were
    # asked for or were seen.
    asked = np.bincount(np.arange(QUALITY_SAMPLES) % 10, minlength=10)
    assert metrics["sample_accuracy"] * QUALITY_SAMPLES <= np.minimum(asked, histogram).sum()
    # The prior stage leaves the measuring to the pipeline.
    assert not any(key.startswith("sample_") for key in metrics["prior"])
    # TensorBoard holds the scalars, the final line repeats them next to the MSE.
    events = scalar_events(out / "logs" / "sample_quality")
    assert set(events) == set(SCALARS)
    for name in SCALARS:
        assert events[name] == pytest.approx(metrics[name], rel=1e-6)
    final = stdout.strip().splitlines()[-1]
    assert final.startswith(f"Finished pipeline: outputs in {out}")
    assert f"test_reconstruction_mse={metrics['test_reconstruction_mse']:.4g}" in final
    assert f"sample_fd={metrics['sample_fd']:.4g}" in final
    assert f"sample_accuracy={metrics['sample_accuracy']:.4g}" in final


def test_pipeline_quality_is_that_of_cycled_classes_against_the_test_split(pipeline_32):
    """An independent redraw: the same seed and sampler batch, labels 0, 1, ..., 9, 0, 1,
    judged against all 359 held-out digits, gives the recorded numbers."""
    import keras_vq
    from keras_vq.evaluation import sample_quality
    from keras_vq.models import generate

    out, _ = pipeline_32
    metrics = read_json(out / "metrics.json")
    vqvae, prior = load(out / "vqvae" / "vqvae.keras"), load(out / "prior" / "prior.keras")
    labels = np.arange(QUALITY_SAMPLES) % 10
    images = generate(vqvae, prior, QUALITY_SAMPLES, seed=0, labels=labels, batch_size=32)
    test = keras_vq.data.load("digits", split="test", image_size=32, shuffle=False)
    real = keras_vq.data.first_images(test, 10_000)
    assert len(real) == 359
    expected = sample_quality(keras.ops.convert_to_numpy(images), real, labels=labels)
    for name, value in expected.items():
        assert metrics[f"sample_{name}"] == pytest.approx(value, rel=1e-5, abs=1e-9), name


def test_sample_quality_samples_zero_turns_it_off(pipeline_32, tmp_path):
    out, _ = pipeline_32
    models = ["--vqvae", str(out / "vqvae" / "vqvae.keras")]
    models += ["--prior", str(out / "prior" / "prior.keras")]
    result = run(
        "sample",
        *models,
        "--num-samples",
        "3",
        "--quality-samples",
        "0",
        "--out",
        str(tmp_path / "off"),
    )
    metrics = check_run_dir(tmp_path / "off", "sample")
    assert not any(key.startswith("sample_") for key in metrics)
    assert not (tmp_path / "off" / "logs" / "sample_quality").exists()
    assert "sample_fd" not in result.stdout
    # Fewer images than precision and recall's k + 1 is a usage error, before any output.
    result = run(
        "sample", *models, "--quality-samples", "3", "--out", str(tmp_path / "bad"), check=False
    )
    assert result.returncode == 2 and "--quality-samples 3" in result.stderr
    assert not (tmp_path / "bad").exists()
