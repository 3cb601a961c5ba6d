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


def readme_examples() -> list[str]:
    """The Python blocks of README's section on using the models."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
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
