"""End-to-end tests of the command-line recipes, each run in a fresh interpreter.

Every recipe runs once on a tiny configuration (8x8 digits, one epoch of two steps); the
trained VQ-VAE, VAE and prior are shared by the tests that need a model. Resume is checked by
killing a training run with SIGKILL once it has written a checkpoint and running the same
command again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ALL_RECIPES = (
    "train_vae",
    "train_vqvae",
    "train_prior",
    "train_classifier",
    "sample",
    "reconstruct",
    "pipeline",
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the recipes run under KERAS_BACKEND=tensorflow; once per suite is enough",
)

TINY_RUN = "--batch-size 16 --epochs 1 --steps-per-epoch 2 --verbose 2".split()
TINY_VQVAE = "--image-size 8 --filters 4 --num-embeddings 8 --embedding-dim 4".split()
TINY_PRIOR = "--num-layers 2 --prior-filters 8 --kernel-size 3".split()
TINY_VAE = "--image-size 8 --filters 4 --latent-dim 2 --iwae-samples 4".split()


def env() -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}


def command(recipe: str, *args: str) -> list[str]:
    return [sys.executable, str(RECIPES / f"{recipe}.py"), *args]


def run(recipe: str, *args: str, check: bool = True, timeout: float = 240):
    result = subprocess.run(
        command(recipe, *args), env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{recipe} exited with {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.size


def grid_size(num_images: int, ncols: int, side: int = 8, padding: int = 2) -> tuple[int, int]:
    """(width, height) of the PNG grid of ``num_images`` side x side images."""
    rows = math.ceil(num_images / ncols)
    return ncols * side + (ncols + 1) * padding, rows * side + (rows + 1) * padding


def event_tags(log_dir: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for path in log_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def event_scalars(log_dir: Path, tag: str) -> list[float]:
    """The values of scalar summary ``tag`` in ``log_dir``, in step order."""
    import tensorflow as tf

    found = {}
    for path in log_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return [found[step] for step in sorted(found)]


def check_run_dir(out: Path, recipe: str) -> dict:
    """config.json and DONE are there; returns metrics.json."""
    config = read_json(out / "config.json")
    assert config["recipe"] == recipe
    assert config["backend"] == "tensorflow"
    assert config["versions"]["keras"] == keras.__version__
    assert config["versions"]["keras_vq"]
    assert config["args"]["out"] == str(out)
    assert (out / "DONE").is_file()
    assert not (out / "backup").exists(), "BackupAndRestore removes its checkpoint at the end"
    return read_json(out / "metrics.json")


def load(path: Path):
    import keras_vq  # noqa: F401  (registers the classes)

    return keras.saving.load_model(path)


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes") / "vqvae"
    run("train_vqvae", "--out", str(out), *TINY_VQVAE, *TINY_RUN)
    return out


@pytest.fixture(scope="module")
def prior_dir(vqvae_dir):
    out = vqvae_dir.parent / "prior"
    vqvae = str(vqvae_dir / "vqvae.keras")
    extra = "--conditional --label-dropout 0.2 --guidance-scale 2 --top-p 0.95".split()
    extra += ["--num-samples", "10"]
    run("train_prior", "--vqvae", vqvae, "--out", str(out), *extra, *TINY_PRIOR, *TINY_RUN)
    return out


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes") / "vae"
    run("train_vae", "--out", str(out), *TINY_VAE, "--num-samples", "12", *TINY_RUN)
    return out


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_help_answers_without_importing_keras(recipe):
    probe = (
        "import runpy, sys\n"
        # `python recipes/<recipe>.py` puts the script's folder first on sys.path; run_path
        # does not.
        f"sys.path.insert(0, {str(RECIPES)!r})\n"
        f"sys.argv = [{str(RECIPES / (recipe + '.py'))!r}, '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "print('IMPORTED', sorted(m for m in ('keras', 'tensorflow', 'keras_vq') "
        "if m in sys.modules))\n"
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env(), capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--out" in result.stdout
    assert "IMPORTED []" in result.stdout
    assert elapsed < 10


# --------------------------------------------------------------------------- training


@pytest.mark.subprocess
def test_train_vqvae_writes_model_logs_grid_and_metrics(vqvae_dir):
    metrics = check_run_dir(vqvae_dir, "train_vqvae")
    for key in ("test_reconstruction_mse", "test_perplexity", "test_codes_used"):
        assert key in metrics
    assert 1 <= metrics["test_codes_used"] <= 8
    assert metrics["epochs"] == 1 and metrics["resumed_from_epoch"] == 0
    assert metrics["latent_shape"] == [4, 4]
    model = load(vqvae_dir / "vqvae.keras")
    assert type(model).__name__ == "VQVAE" and model.num_embeddings == 8
    assert png_size(vqvae_dir / "reconstructions.png") == grid_size(64, 8)  # 32 pairs
    assert {"epoch_loss", "epoch_perplexity", "epoch_vq_loss"} <= event_tags(
        vqvae_dir / "logs" / "train"
    )
    assert "epoch_loss" in event_tags(vqvae_dir / "logs" / "validation")
    assert event_tags(vqvae_dir / "logs" / "images")


@pytest.mark.subprocess
def test_train_vae_writes_model_samples_and_likelihoods(vae_dir):
    metrics = check_run_dir(vae_dir, "train_vae")
    for key in ("test_reconstruction_mse", "test_elbo_nats", "test_iwae_nll_nats"):
        assert math.isfinite(metrics[key])
    # The IWAE bound is at least as tight as the ELBO (up to Monte-Carlo noise).
    assert metrics["test_iwae_nll_nats"] <= -metrics["test_elbo_nats"] + 1.0
    assert type(load(vae_dir / "vae.keras")).__name__ == "VAE"
    assert png_size(vae_dir / "samples.png") == grid_size(12, 4)
    assert png_size(vae_dir / "reconstructions.png") == grid_size(64, 8)
    assert "epoch_kl_loss" in event_tags(vae_dir / "logs" / "train")


@pytest.mark.subprocess
def test_train_vae_with_the_discretized_logistic_likelihood(tmp_path):
    out = tmp_path / "vae_logistic"
    flags = ["--likelihood", "discretized_logistic", "--num-samples", "4"]
    run("train_vae", "--out", str(out), *TINY_VAE, *flags, *TINY_RUN)
    metrics = check_run_dir(out, "train_vae")
    assert math.isfinite(metrics["test_iwae_nll_nats"])
    assert load(out / "vae.keras").likelihood == "discretized_logistic"


@pytest.mark.subprocess
def test_train_prior_on_vqvae_codes_with_labels(prior_dir):
    metrics = check_run_dir(prior_dir, "train_prior")
    assert math.isfinite(metrics["test_nll_nats_per_code"])
    assert metrics["num_classes"] == 10 and metrics["latent_shape"] == [4, 4]
    prior = load(prior_dir / "prior.keras")
    assert type(prior).__name__ == "PixelCNNPrior"
    assert prior.num_classes == 10 and prior.num_embeddings == 8
    assert prior.label_dropout == 0.2 and prior.null_label == 10  # guidance-ready
    # --guidance-scale and --top-p are the saved prior's own sampling defaults.
    assert (prior.guidance_scale, prior.top_p) == (2.0, 0.95)
    assert read_json(prior_dir / "config.json")["args"]["top_p"] == 0.95
    want = {"temperature": 1.0, "top_k": None, "top_p": 0.95, "guidance_scale": 2.0}
    assert metrics["sampling"] == want  # what the draws used
    # One class per column: ten samples fill one row.
    assert png_size(prior_dir / "samples.png") == grid_size(10, 10)
    assert "epoch_accuracy" in event_tags(prior_dir / "logs" / "train")


# --------------------------------------------------------------------------- sampling


@pytest.mark.subprocess
def test_sample_vqvae_with_prior_and_labels(vqvae_dir, prior_dir, tmp_path):
    out = tmp_path / "sample"
    models = ["--vqvae", str(vqvae_dir / "vqvae.keras"), "--prior", str(prior_dir / "prior.keras")]
    extra = "--labels 3,4 --num-samples 6 --sample-batch-size 4 --verbose 2".split()
    extra += "--guidance-scale 3 --top-k 6 --top-p 0.9".split()
    run("sample", *models, *extra, "--out", str(out))
    metrics = check_run_dir(out, "sample")
    args = read_json(out / "config.json")["args"]
    assert (args["guidance_scale"], args["top_k"], args["top_p"]) == (3.0, 6, 0.9)
    assert metrics["sampling"] == {
        "temperature": 1.0,
        "top_k": 6,
        "top_p": 0.9,
        "guidance_scale": 3.0,
    }
    assert metrics["num_samples"] == 6 and metrics["image_shape"] == [8, 8, 1]
    assert png_size(out / "samples.png") == grid_size(6, 3)
    # The default feature model judges 32x32x1 images only: 8x8 samples are not measured.
    assert "takes 32x32x1 images, these are 8x8x1" in metrics["sample_quality_note"]
    assert "sample_fd" not in metrics


@pytest.mark.subprocess
def test_sample_vae(vae_dir, tmp_path):
    out = tmp_path / "sample"
    run("sample", "--vae", str(vae_dir / "vae.keras"), "--num-samples", "5", "--out", str(out))
    check_run_dir(out, "sample")
    assert png_size(out / "samples.png") == grid_size(5, 3)


@pytest.mark.subprocess
def test_sample_needs_a_model(tmp_path):
    result = run("sample", "--out", str(tmp_path / "s"), check=False, timeout=60)
    assert result.returncode == 2
    assert "--vae" in result.stderr and "--prior" in result.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.subprocess
def test_reconstruct_writes_pairs_and_mse(vqvae_dir, tmp_path):
    out = tmp_path / "reconstruct"
    extra = "--num-images 10 --ncols 5".split()
    run("reconstruct", "--model", str(vqvae_dir / "vqvae.keras"), *extra, "--out", str(out))
    metrics = check_run_dir(out, "reconstruct")
    assert metrics["model"] == "VQVAE" and metrics["split"] == "test"
    assert metrics["test_reconstruction_mse"] >= 0 and metrics["test_codes_used"] >= 1
    assert png_size(out / "reconstructions.png") == grid_size(20, 5)


# --------------------------------------------------------------------------- pipeline


@pytest.mark.subprocess
def test_pipeline_trains_samples_and_exports(tmp_path):
    out = tmp_path / "pipeline"
    extra = "--prior-epochs 1 --prior-fine-tune-epochs 1 --num-samples 4 --top-k 6 --top-p 0.95"
    extra = extra.split()
    run("pipeline", "--out", str(out), *TINY_VQVAE, *TINY_PRIOR, *extra, *TINY_RUN)
    metrics = check_run_dir(out, "pipeline")
    assert math.isfinite(metrics["test_reconstruction_mse"])
    assert math.isfinite(metrics["prior_test_nll_nats_per_code"])
    assert check_run_dir(out / "vqvae", "train_vqvae")["epochs"] == 1
    prior_config = read_json(out / "prior" / "config.json")["args"]
    assert prior_config["vqvae"] == str(out / "vqvae" / "vqvae.keras")
    # The prior trains on two shifted copies too, then is fine-tuned on the unshifted codes.
    shifted_config = read_json(out / "prior_shifted" / "config.json")["args"]
    assert (shifted_config["shifted_copies"], shifted_config["init_prior"]) == (2, None)
    assert (prior_config["shifted_copies"], prior_config["learning_rate"]) == (0, 3e-4)
    assert prior_config["init_prior"] == str(out / "prior_shifted" / "prior.keras")
    prior = load(out / "prior" / "prior.keras")
    assert type(prior).__name__ == "PixelCNNPrior"
    # The main job's defaults: a class-conditional prior with label dropout and guidance.
    assert (prior.num_classes, prior.label_dropout, prior.guidance_scale) == (10, 0.1, 1.35)
    assert prior.top_p == 0.95  # --top-p: saved with the prior, like the guidance
    assert metrics["sampling"] == {
        "temperature": 1.0,
        "top_k": 6,
        "top_p": 0.95,
        "guidance_scale": 1.35,
    }
    assert png_size(out / "samples.png") == grid_size(4, 10)  # one column per digit
    assert metrics["export"] == {"vqvae": "export/vqvae/1", "generator": "export/generator/1"}

    import numpy as np
    import tensorflow as tf

    served = tf.saved_model.load(str(out / "export" / "vqvae" / "1"))
    codes = served.signatures["encode"](images=tf.zeros((2, 8, 8, 1)))["codes"]
    assert codes.shape == (2, 4, 4) and codes.dtype == tf.int32
    generator = tf.saved_model.load(str(out / "export" / "generator" / "1"))
    labels = tf.constant([3, 7], tf.int32)
    images = generator.signatures["sample"](num_samples=tf.constant(2), labels=labels)["images"]
    assert images.shape == (2, 8, 8, 1) and np.all(np.isfinite(images.numpy()))


# --------------------------------------------------------------------------- output dir


@pytest.mark.subprocess
def test_finished_run_is_not_overwritten_without_flag(vqvae_dir, tmp_path):
    out = tmp_path / "vqvae"
    shutil.copytree(vqvae_dir, out)
    before = (out / "metrics.json").read_text()
    args = ["--out", str(out), *TINY_VQVAE, *TINY_RUN]
    result = run("train_vqvae", *args, check=False, timeout=60)
    assert result.returncode == 2
    assert "already holds a finished train_vqvae run" in result.stderr
    assert "--overwrite" in result.stderr
    assert (out / "metrics.json").read_text() == before

    # --overwrite replaces it, here with another configuration (MirroredStrategy, bf16).
    extra = "--overwrite --distribute mirrored --precision mixed_bfloat16".split()
    run("train_vqvae", *args, *extra)
    metrics = check_run_dir(out, "train_vqvae")
    config = read_json(out / "config.json")
    assert config["args"]["distribute"] == "mirrored"
    assert config["args"]["precision"] == "mixed_bfloat16"
    assert math.isfinite(metrics["test_reconstruction_mse"])


@pytest.mark.subprocess
def test_unfinished_run_with_other_config_is_refused(vqvae_dir, tmp_path):
    out = tmp_path / "vqvae"
    shutil.copytree(vqvae_dir, out)
    (out / "DONE").unlink()
    args = ["--out", str(out), *TINY_VQVAE, *TINY_RUN, "--learning-rate", "0.01"]
    result = run("train_vqvae", *args, check=False, timeout=60)
    assert result.returncode == 2
    assert "config mismatch" in result.stderr and "--learning-rate" in result.stderr


@pytest.mark.subprocess
def test_distribution_the_backend_lacks_is_an_error(tmp_path):
    args = ["--out", str(tmp_path / "dp"), *TINY_VQVAE, *TINY_RUN, "--distribute", "data_parallel"]
    result = run("train_vqvae", *args, check=False, timeout=60)
    assert result.returncode == 2
    assert "needs the JAX backend" in result.stderr
    assert not (tmp_path / "dp").exists(), "refused before touching --out"


@pytest.mark.subprocess
def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "vqvae"
    long_run = "--batch-size 16 --epochs 6 --steps-per-epoch 150 --num-images 0 --verbose 2"
    args = ["--out", str(out), *TINY_VQVAE, *long_run.split()]
    metadata = out / "backup" / "training_metadata.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command("train_vqvae", *args), env=env(), **quiet)
    try:
        deadline = time.monotonic() + 180
        while not metadata.is_file():
            assert process.poll() is None, "training ended before it wrote a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.05)
        assert process.poll() is None, "training finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not (out / "DONE").exists()

    result = run("train_vqvae", *args)
    assert "Resuming from the checkpoint after epoch" in result.stdout
    assert "Epoch 6/6" in result.stdout and "Epoch 1/6" not in result.stdout
    metrics = check_run_dir(out, "train_vqvae")
    assert metrics["epochs"] == 6 and 1 <= metrics["resumed_from_epoch"] < 6
    # The resumed run ends with the weights of an uninterrupted one (same seed, TF, CPU).
    reference = tmp_path / "reference"
    run("train_vqvae", "--out", str(reference), *TINY_VQVAE, *long_run.split())
    assert_same_weights(out / "vqvae.keras", reference / "vqvae.keras")


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    model_a, model_b = load(path_a), load(path_b)
    assert len(model_a.weights) == len(model_b.weights)
    for a, b in zip(model_a.weights, model_b.weights):
        assert (keras.ops.convert_to_numpy(a) == keras.ops.convert_to_numpy(b)).all(), a.path


def test_same_seed_gives_bit_identical_weights(tmp_path):
    args = [*TINY_VAE, "--batch-size", "16", "--epochs", "2", "--steps-per-epoch", "10"]
    args += ["--num-samples", "4", "--verbose", "0", "--seed", "3"]
    run("train_vae", "--out", str(tmp_path / "a"), *args)
    run("train_vae", "--out", str(tmp_path / "b"), *args)
    assert_same_weights(tmp_path / "a" / "vae.keras", tmp_path / "b" / "vae.keras")


# --------------------------------------------------------------------------- input errors

# TensorFlow's start-up notices that recipes filter from stderr.
STARTUP_NOISE = ("oneDNN", "cuInit", "cudart", "cuda drivers", "absl::InitializeLog")


def user_env() -> dict[str, str]:
    """The environment of a user's shell: no TF_CPP_MIN_LOG_LEVEL set."""
    return {k: v for k, v in env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def run_as_user(recipe: str, *args: str, timeout: float = 240):
    return subprocess.run(
        command(recipe, *args), env=user_env(), capture_output=True, text=True, timeout=timeout
    )


def assert_no_startup_noise(stderr: str) -> None:
    noisy = [line for line in stderr.splitlines() if any(n in line for n in STARTUP_NOISE)]
    assert not noisy, noisy


@pytest.mark.subprocess
def test_broken_model_file_is_one_line_and_writes_nothing(vqvae_dir, tmp_path):
    blob = (vqvae_dir / "vqvae.keras").read_bytes()
    half = tmp_path / "half.keras"
    half.write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "reconstruct"
    result = run("reconstruct", "--model", str(half), "--out", str(out), check=False, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: --model: ")
    for expected in (str(half), "not a valid .keras file", "re-run the recipe"):
        assert expected in lines[0]
    assert not out.exists(), "nothing is written before the inputs are checked"

    # The corrected command is a new run, not "an unfinished run with a different config".
    model = str(vqvae_dir / "vqvae.keras")
    run("reconstruct", "--model", model, "--num-images", "4", "--out", str(out))
    assert check_run_dir(out, "reconstruct")["model"] == "VQVAE"


@pytest.mark.subprocess
def test_missing_tfds_data_names_the_flags_and_writes_nothing(tmp_path):
    out = tmp_path / "vqvae"
    args = ["--out", str(out), *TINY_VQVAE, *TINY_RUN, "--num-images", "0"]
    missing = ["--dataset", "mnist", "--data-dir", str(tmp_path / "tfds")]
    result = run_as_user("train_vqvae", *args, *missing, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: --dataset mnist: split 'train' is not prepared")
    for expected in ("--download", f"--data-dir {tmp_path / 'tfds'}", "--data-dir DIR", "digits"):
        assert expected in message, message
    assert f"(looked for {tmp_path / 'tfds' / 'mnist'}" in message
    # The recipe's flags, not the library's arguments (`--data_dir=DIR` is tfds build's flag).
    assert "download=True" not in result.stderr and "pass data_dir=DIR" not in result.stderr
    assert_no_startup_noise(result.stderr)
    assert not out.exists(), "nothing is written before the data is found"

    result = run_as_user("train_vqvae", *args)  # the corrected command: offline digits
    assert result.returncode == 0, result.stderr[-4000:]
    assert_no_startup_noise(result.stderr)
    assert check_run_dir(out, "train_vqvae")["epochs"] == 1


@pytest.mark.subprocess
def test_pipeline_checks_the_prior_flags_before_training(tmp_path):
    out = tmp_path / "pipeline"
    args = ["--out", str(out), *TINY_VQVAE, *TINY_PRIOR, *TINY_RUN, "--kernel-size", "4"]
    result = run("pipeline", *args, check=False, timeout=60)
    assert result.returncode == 2
    assert "kernel_size" in result.stderr and "Traceback" not in result.stderr
    assert "Epoch" not in result.stdout, "refused before the VQ-VAE stage trained"
    assert not out.exists()


@pytest.mark.subprocess
def test_guidance_flags_that_do_not_fit_the_prior_are_usage_errors(vqvae_dir, tmp_path):
    vqvae = str(vqvae_dir / "vqvae.keras")
    for flags, message in [
        ("--conditional --guidance-scale 2", "`guidance_scale` needs a class-conditional"),
        ("--label-dropout 0.2", "--label-dropout needs --conditional"),
    ]:
        out = tmp_path / "bad"
        args = ["--vqvae", vqvae, "--out", str(out), *flags.split(), *TINY_PRIOR, *TINY_RUN]
        result = run("train_prior", *args, check=False, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()


@pytest.mark.subprocess
def test_export_recipe_reports_a_broken_model_in_one_line(tmp_path):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip archive")
    args = ["--model", str(garbage), "--out", str(tmp_path / "exports")]
    result = run_as_user("export", *args, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: --model: ") and str(garbage) in lines[0]
    assert "not a zip archive" in lines[0]
    assert not (tmp_path / "exports").exists()


def test_download_flag_reaches_data_load(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    import _inputs
    import _rundir
    import train_vqvae

    import keras_vq

    calls, real_load = [], keras_vq.data.load

    def fake_load(name, **kwargs):
        calls.append((name, kwargs))
        return real_load("digits", batch_size=2, split="test[:4]")

    monkeypatch.setattr(keras_vq.data, "load", fake_load)
    for flags, expected in (([], False), (["--download"], True)):
        args = train_vqvae.build_parser().parse_args(["--dataset", "mnist", *flags])
        _inputs.load_split(args, "train", image_size=None, batch_size=2, shuffle=False)
        assert calls[-1][0] == "mnist" and calls[-1][1]["download"] is expected
    # A rerun that only adds --download resumes the same run (it changes no result).
    config = _rundir.make_config("train_vqvae", args)
    saved = {**config, "args": {**config["args"], "download": False}}
    assert _rundir.config_differences(saved, config) == []


# --------------------------------------------------------------------------- layout


def test_recipes_are_short_scripts_over_the_installed_library():
    """Recipes hold flags and run-directory code only: each file is short, and none edits
    sys.path (``python recipes/x.py`` finds its sibling modules by itself; keras_vq comes from
    the installed package)."""
    for path in sorted(RECIPES.glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 300, f"{path.name} is over 300 lines"
        assert "sys.path" not in source, f"{path.name} edits sys.path"


@pytest.mark.subprocess
def test_train_prior_init_prior_starts_from_the_saved_weights(vqvae_dir, prior_dir, tmp_path):
    """--init-prior with a vanishing learning rate ends on the saved prior's weights (a fresh
    build does not), with --shifted-copies on; weights of another shape are a usage error."""
    vqvae, source = str(vqvae_dir / "vqvae.keras"), prior_dir / "prior.keras"
    out = tmp_path / "tuned"
    flags = "--conditional --label-dropout 0.2 --shifted-copies 1 --learning-rate 1e-12".split()
    run(
        "train_prior",
        "--vqvae",
        vqvae,
        "--out",
        str(out),
        "--init-prior",
        str(source),
        *flags,
        *TINY_PRIOR,
        *TINY_RUN,
        "--num-samples",
        "0",
    )
    args = read_json(out / "config.json")["args"]
    assert (args["shifted_copies"], args["init_prior"]) == (1, str(source))
    tuned, saved = load(out / "prior.keras"), load(source)
    for got, want in zip(tuned.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    fresh = out.parent / "fresh"
    run(
        "train_prior",
        "--vqvae",
        vqvae,
        "--out",
        str(fresh),
        *flags,
        *TINY_PRIOR,
        *TINY_RUN,
        "--num-samples",
        "0",
        "--seed",
        "1",
    )
    gaps = [
        np.abs(a - b).max()
        for a, b in zip(
            load(fresh / "prior.keras").get_weights(), saved.get_weights(), strict=True
        )
    ]
    assert max(gaps) > 1e-3
    bad = tmp_path / "bad"
    result = run(
        "train_prior",
        "--vqvae",
        vqvae,
        "--out",
        str(bad),
        "--init-prior",
        str(source),
        "--conditional",
        "--prior-filters",
        "4",
        *TINY_RUN,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--init-prior" in result.stderr and "do not fit" in result.stderr
    assert not bad.exists()


def whole_pixel_shift(image, moved, max_shift: int) -> tuple[int, int]:
    """A NumPy oracle: the one shift ``(dy, dx)``, each in ``[-max_shift, max_shift]``, that
    moves ``image`` (H, W, C) onto ``moved`` with zeros entering at the border; fails unless
    exactly one does."""
    m, (height, width) = max_shift, image.shape[:2]
    padded = np.pad(image, ((m, m), (m, m), (0, 0)))
    shifts = [(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
    matches = [
        (dy, dx)
        for dy, dx in shifts
        if np.array_equal(padded[m - dy : m - dy + height, m - dx : m - dx + width], moved)
    ]
    assert len(matches) == 1, matches
    return matches[0]


def test_shifted_copies_follow_the_originals_each_image_moved_by_at_most_a_pixel(monkeypatch):
    """train_prior's --shifted-copies (``_inputs.shifted_copies``): the originals in order,
    then each copy, its images the originals shifted by whole pixels in [-1, 1] on each axis
    (a NumPy oracle tries every shift, zeros entering at the border); copies differ."""
    import tensorflow as tf

    monkeypatch.syspath_prepend(str(RECIPES))
    import _inputs

    rng = np.random.default_rng(0)
    images = rng.random((10, 6, 6, 1)).astype("float32") + 0.1  # no zero pixels
    labels = np.arange(10, dtype="int32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    batches = list(_inputs.shifted_copies(dataset, 2, seed=5).as_numpy_iterator())
    out_images = np.concatenate([x for x, _ in batches])
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.tile(labels, 3))
    np.testing.assert_array_equal(out_images[:10], images)

    pairs = zip(np.tile(images, (2, 1, 1, 1)), out_images[10:])
    offsets = [whole_pixel_shift(image, moved, 1) for image, moved in pairs]
    assert len(set(offsets)) > 3 and offsets[:10] != offsets[10:]
    assert _inputs.shifted_copies(dataset, 0, seed=5) is dataset


# --------------------------------------------------------------------------- transformer prior


@pytest.mark.subprocess
def test_train_prior_transformer_records_the_prior_and_checks_its_flags(vqvae_dir, tmp_path):
    vqvae = str(vqvae_dir / "vqvae.keras")
    out = tmp_path / "transformer"
    flags = "--prior transformer --num-layers 1 --num-heads 2 --hidden-dim 8".split()
    three_epochs = ["--epochs", "3", "--learning-rate", "0.03"]
    run(
        "train_prior",
        *("--vqvae", vqvae, "--out", str(out), *flags, "--num-samples", "4"),
        *TINY_RUN,
        *three_epochs,
    )
    metrics = check_run_dir(out, "train_prior")
    assert metrics["prior"] == "TransformerPrior"
    assert math.isfinite(metrics["test_nll_nats_per_code"]) and metrics["latent_shape"] == [4, 4]
    # --keep-best (the default): the saved prior is the epoch of the lowest held-out loss.
    val_losses = event_scalars(out / "logs" / "validation", "epoch_loss")
    assert len(val_losses) == 3
    assert metrics["best_epoch"] == 1 + min(range(3), key=val_losses.__getitem__)
    assert metrics["test_nll_nats_per_code"] == pytest.approx(min(val_losses), rel=1e-4)
    args = read_json(out / "config.json")["args"]
    assert (args["prior"], args["num_heads"], args["hidden_dim"]) == ("transformer", 2, 8)
    prior = load(out / "prior.keras")
    assert type(prior).__name__ == "TransformerPrior" and prior.num_embeddings == 8
    assert (prior.num_layers, prior.num_heads, prior.hidden_dim) == (1, 2, 8)
    assert png_size(out / "samples.png") == grid_size(4, 2)  # ceil(sqrt(4)) columns
    # A width that the heads do not divide is a usage error, before anything is written.
    bad = tmp_path / "bad"
    flags = "--prior transformer --num-heads 3 --hidden-dim 8".split()
    result = run("train_prior", "--vqvae", vqvae, "--out", str(bad), *flags, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hidden_dim" in result.stderr and "num_heads" in result.stderr
    assert not bad.exists()


def test_a_followers_checkpoints_never_recreate_the_shared_backup(tmp_path, monkeypatch):
    """A multi-process run's process other than 0 resumes from process 0's ``--out/backup``
    but saves into its own directory, also after process 0 has removed the shared one."""
    monkeypatch.syspath_prepend(str(RECIPES))
    import _train

    shared, private = tmp_path / "out" / "backup", tmp_path / "private"
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = _train.follower_backup(shared, private)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0)
    assert not shared.exists() and (private / "latest.weights.h5").is_file()
