"""The recipes' flags, checked in-process (``main(argv)``, no training): every prior class is
accepted, every flag is checked before ``--out`` is touched, and unset model flags leave the
model's own defaults in place."""

from __future__ import annotations

import json

import keras
import pytest

from tests.test_recipes import RECIPES

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the recipes run under KERAS_BACKEND=tensorflow; once per suite is enough",
)


@pytest.fixture
def recipes(monkeypatch):
    """The recipe modules, importable as ``python recipes/x.py`` imports its siblings."""
    monkeypatch.syspath_prepend(str(RECIPES))
    import importlib

    return lambda name: importlib.import_module(name)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny VQ-VAE (8x8 images, 4x4 codes, K=8) and a transformer prior of its codes,
    saved as .keras files."""
    from keras_vq.models import VQVAE, TransformerPrior

    root = tmp_path_factory.mktemp("tiny")
    vqvae = VQVAE(input_shape=(8, 8, 1), num_embeddings=8, embedding_dim=4, filters=(4,), seed=1)
    prior = TransformerPrior(8, (4, 4), num_layers=1, num_heads=2, hidden_dim=8)
    vqvae.save(root / "vqvae.keras")
    prior.save(root / "prior.keras")
    return root


def test_sample_accepts_a_transformer_prior(recipes, tiny_models, tmp_path):
    out = tmp_path / "sample"
    argv = [
        "--vqvae",
        str(tiny_models / "vqvae.keras"),
        "--prior",
        str(tiny_models / "prior.keras"),
    ]
    argv += ["--num-samples", "3", "--verbose", "0", "--out", str(out)]
    assert recipes("sample").main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 3 and metrics["image_shape"] == [8, 8, 1]
    assert (out / "samples.png").is_file()
