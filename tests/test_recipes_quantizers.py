"""train_vqvae.py --quantizer rvq|fsq|lfq, and train_prior.py on their codes (TF only)."""

from __future__ import annotations

import math

import keras
import pytest

from tests.test_recipes import (
    TINY_PRIOR,
    TINY_RUN,
    check_run_dir,
    load,
    read_json,
    run,
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the recipes run under KERAS_BACKEND=tensorflow; once per suite is enough",
)

TINY_IMAGES = "--image-size 8 --filters 4".split()
# quantizer → (its flags, layer class, num_embeddings, code shape)
QUANTIZERS = {
    "rvq": (
        "--num-quantizers 2 --num-embeddings 8 --embedding-dim 4 --quantize-dropout".split(),
        "ResidualVectorQuantizer",
        8,
        [4, 4, 2],
    ),
    "fsq": ("--levels 3 3".split(), "FiniteScalarQuantizer", 9, [4, 4]),
    "lfq": ("--num-bits 3".split(), "LookupFreeQuantizer", 8, [4, 4]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny train_vqvae run per quantizer (paths), trained lazily."""
    base = tmp_path_factory.mktemp("quantizer_recipes")
    done = {}

    def get(quantizer):
        if quantizer not in done:
            out = base / quantizer
            flags = QUANTIZERS[quantizer][0]
            run("train_vqvae", "--out", str(out), "--quantizer", quantizer, *flags, *TINY_IMAGES,
                *TINY_RUN)  # fmt: skip
            done[quantizer] = out
        return done[quantizer]

    return get


@pytest.mark.subprocess
@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_train_vqvae_with_each_quantizer(runs, quantizer):
    _, class_name, num_embeddings, code_shape = QUANTIZERS[quantizer]
    out = runs(quantizer)
    metrics = check_run_dir(out, "train_vqvae")
    assert read_json(out / "config.json")["args"]["quantizer"] == quantizer
    assert metrics["quantizer"] == quantizer and metrics["code_shape"] == code_shape
    assert metrics["num_embeddings"] == num_embeddings
    assert math.isfinite(metrics["test_reconstruction_mse"])
    model = load(out / "vqvae.keras")
    assert type(model.quantizer).__name__ == class_name
    assert model.num_embeddings == num_embeddings and list(model.code_shape) == code_shape


@pytest.mark.subprocess
def test_train_prior_on_fsq_codes(runs):
    out = runs("fsq").parent / "fsq_prior"
    vqvae = str(runs("fsq") / "vqvae.keras")
    run("train_prior", "--vqvae", vqvae, "--out", str(out), *TINY_PRIOR, *TINY_RUN)
    metrics = check_run_dir(out, "train_prior")
    assert metrics["num_embeddings"] == 9 and math.isfinite(metrics["test_nll_nats_per_code"])
    assert load(out / "prior.keras").num_embeddings == 9


@pytest.mark.subprocess
def test_train_prior_refuses_residual_codes(runs):
    vqvae = str(runs("rvq") / "vqvae.keras")
    out = runs("rvq").parent / "rvq_prior"
    result = run("train_prior", "--vqvae", vqvae, "--out", str(out), *TINY_RUN, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "residual" in result.stderr and "--quantizer vq, fsq or lfq" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_default_quantizer_is_vq_with_its_flags(tmp_path):
    """--help lists the new flags; the default run config records vq (today's behaviour)."""
    help_text = run("train_vqvae", "--help").stdout
    for flag in (
        "--quantizer",
        "--num-quantizers",
        "--levels",
        "--num-bits",
        "--quantize-dropout",
    ):
        assert flag in help_text
    bad = run("train_vqvae", "--quantizer", "pq", "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "--quantizer" in bad.stderr
