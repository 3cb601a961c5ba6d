"""README's "Using the models in your own code" examples run as written, without warnings
from Keras about arguments it ignores."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using the models in your own code"


def readme_examples(title: str = SECTION) -> list[str]:
    """The Python blocks of a README section (by default: on using the models)."""
    text = README.read_text()
    section = text[text.index(title) :]
    section = section[: section.index("\n## ", len(title))]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


# The warning comes from Keras' backend-independent data adapters, and the models' numerics are
# tested per backend elsewhere: once per suite (on the default backend) is enough.
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="README's examples run on the default TensorFlow backend; once per suite is enough",
)
def test_readme_examples_run_without_ignored_argument_warnings(tmp_path, monkeypatch):
    blocks = readme_examples()
    assert len(blocks) == 3 and all("fit(" in b or "compile(" in b for b in blocks)
    code = "\n".join(blocks)
    assert code.count("epochs=10") == 2 and "num_samples=500" in code
    # Shorter runs (two steps, a few importance samples); every other argument as written.
    code = code.replace("epochs=10", "epochs=1, steps_per_epoch=2")
    code = code.replace("num_samples=500", "num_samples=3")
    monkeypatch.chdir(tmp_path)  # the example saves vqvae.keras in the working directory
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, str(README), "exec"), namespace)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "will be ignored" in m], messages
    # The examples did what they say: codes, a saved VQ-VAE, finite VAE numbers.
    assert (tmp_path / "vqvae.keras").is_file()
    assert tuple(namespace["reconstructions"].shape) == (64, 32, 32, 1)
    codes = keras.ops.convert_to_numpy(namespace["codes"])
    assert codes.shape == (64, 8, 8) and codes.dtype == np.int32
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(namespace["nll"])))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="README's examples run on the default TensorFlow backend; once per suite is enough",
)
def test_readme_training_helpers_run(tmp_path, monkeypatch):
    """README's "Callbacks, evaluation and pictures" example, after the VQ-VAE example it
    continues, with two-step epochs."""
    helpers = readme_examples("## Callbacks, evaluation and pictures")
    # The second block (sample quality, and FID with downloaded InceptionV3 weights) is not
    # run here; tests/test_sample_quality.py covers sample_quality.
    assert len(helpers) == 2 and "sample_quality" in helpers[1]
    code = readme_examples()[0] + helpers[0]
    assert code.count("epochs=10") == 2
    code = code.replace("epochs=10", "epochs=2, steps_per_epoch=2")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    usage = namespace["history"].history
    assert len(usage["codebook_used_codes"]) == 2 and len(usage["codebook_dead_codes"]) == 2
    assert (tmp_path / "reconstructions.png").is_file()
    assert list((tmp_path / "logs" / "images").glob("events.out.tfevents.*"))
    import tensorflow as tf

    tags = {
        value.tag
        for path in (tmp_path / "logs" / "train").glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert "epoch_codebook_perplexity" in tags, "TensorBoard gets CodebookUsage's metrics"
    assert not (tmp_path / "backup").exists(), "removed when fit ends"
