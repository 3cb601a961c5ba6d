"""Run a TensorFlow-only function (SavedModel export) from any Keras backend.

Keras writes SavedModels from the TensorFlow backend only: torch cannot export without
``torch_xla`` and JAX's ``jax2tf`` leaves no room for TensorFlow input assertions. A function
decorated with :func:`runs_in_tensorflow` runs in-process on the TensorFlow backend; elsewhere
its model arguments are saved to temporary ``.keras`` files and the same function runs in a
``KERAS_BACKEND=tensorflow`` subprocess that loads them, so every backend produces the same
artifact.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import keras

# The child imports the very keras_vq that the parent runs (an install or a checkout).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from keras_vq.backend.tensorflow_bridge import _child_main; _child_main(sys.argv[2])"
)


def runs_in_tensorflow(*model_arguments: str) -> Callable:
    """Decorate a function to run on the TensorFlow backend whatever the active one.

    Args:
        *model_arguments: names of the parameters that are Keras models (passed to the
            subprocess as ``.keras`` files). Every other argument must be JSON-serialisable,
            and so must the return value.

    Example:
        >>> @runs_in_tensorflow("model")
        ... def write(model, target: str) -> str: ...
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if keras.backend.backend() == "tensorflow":
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return _call_in_subprocess(fn, model_arguments, dict(bound.arguments))

        return wrapper

    return decorate


def _call_in_subprocess(fn: Callable, model_arguments: tuple, arguments: dict) -> Any:
    with tempfile.TemporaryDirectory(prefix="keras_vq_tf_") as tmp:
        models = {}
        for name in model_arguments:
            path = os.path.join(tmp, f"{name}.keras")
            arguments.pop(name).save(path)
            models[name] = path
        request = {
            "module": fn.__module__,
            "function": fn.__qualname__,
            "models": models,
            "arguments": arguments,
            "result": os.path.join(tmp, "result.json"),
        }
        request_path = os.path.join(tmp, "request.json")
        with open(request_path, "w") as f:
            json.dump(request, f)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # cwd is the temporary directory, so no stray `keras_vq/` folder there shadows ours.
        process = subprocess.run(
            [sys.executable, "-c", _CHILD, _PACKAGE_ROOT, request_path],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if process.returncode != 0:
            raise RuntimeError(
                f"On the {keras.backend.backend()} backend keras_vq runs "
                f"{fn.__qualname__} in a TensorFlow-backend subprocess, which failed (exit "
                f"code {process.returncode}):\n{process.stderr[-4000:]}"
            )
        with open(request["result"]) as f:
            return json.load(f)


def _child_main(request_path: str) -> None:
    """Entry point of the subprocess: load the models, call the function, write its result."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"expected KERAS_BACKEND=tensorflow, got {keras.backend.backend()}")
    with open(request_path) as f:
        request = json.load(f)
    fn = importlib.import_module(request["module"])
    for part in request["function"].split("."):
        fn = getattr(fn, part)
    arguments = dict(request["arguments"])
    for name, path in request["models"].items():
        arguments[name] = keras.saving.load_model(path, compile=False)
    result = fn(**arguments)
    with open(request["result"], "w") as f:
        json.dump(result, f)
