"""Model flags whose default is the model's own: unset (``None``) passes nothing to the model.

A model flag never holds a default of its own, so the recipes cannot drift from the library:
an unset flag leaves the argument out of the constructor call and the model's default
applies. ``--help`` shows that default, read from the constructor's signature in keras_vq's
source (with :mod:`ast`, so that ``--help`` still answers without importing Keras), and
config.json records the value the built model reports (:func:`record_model_values`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
from functools import cache
from pathlib import Path
from typing import Any

# What a constructor's ``None`` default stands for, where the signature alone does not say
# (tests/test_recipes_flags.py checks each against a model built with the default).
NONE_MEANS = {
    ("models/vqvae.py", "VQVAE", "filters"): "(32, 128): 32 then 128 per halving",
    ("models/vae.py", "VAE", "filters"): "(32, 64): 32 doubling per halving",
    ("models/vqvae.py", "VQVAE", "downsample"): "4, or 2**len(--filters) when --filters is set",
}


@cache
def _module_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec("keras_vq")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        import keras_vq  # not found that way: importing it says why, or finds it

        root = Path(keras_vq.__file__).parent
    else:
        root = Path(next(iter(spec.submodule_search_locations)))
    return ast.parse((root / module).read_text(encoding="utf-8"))


def model_default(module: str, class_name: str, arg: str) -> Any:
    """The default of ``arg`` in ``class_name.__init__`` of ``keras_vq/<module>``: a literal,
    ``Unset(literal)``, or a module constant (``DEFAULT_<ARG>`` stands in for a ``None``
    default when it exists).

    Example:
        >>> model_default("models/vqvae.py", "VQVAE", "ema_decay")    # 0.7
    """
    tree = _module_tree(module)
    constants = _constants(tree)
    init = next(
        item
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == class_name
        for item in node.body
        if isinstance(item, ast.FunctionDef) and item.name == "__init__"
    )
    args = init.args.args[len(init.args.args) - len(init.args.defaults) :]
    defaults = dict(zip((a.arg for a in args), init.args.defaults, strict=True))
    defaults.update((a.arg, d) for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults))
    node = defaults[arg]
    if isinstance(node, ast.Call) and len(node.args) == 1:
        node = node.args[0]  # ``Unset(value)``: a default that tells whether it was passed
    if isinstance(node, ast.Name):
        node = constants[node.id]
    value = ast.literal_eval(node)
    if value is None and f"DEFAULT_{arg.upper()}" in constants:
        value = ast.literal_eval(constants[f"DEFAULT_{arg.upper()}"])
    return value


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    """A module's top-level ``NAME = value`` assignments (the value's syntax tree)."""
    return {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def module_constant(module: str, name: str) -> Any:
    """The literal value of the constant ``name`` in ``keras_vq/<module>``, read without
    importing it (``--help`` answers without Keras).

    Example:
        >>> module_constant("backend/distribute.py", "DEFAULT_HEARTBEAT_TIMEOUT_S")  # 60
    """
    return ast.literal_eval(_constants(_module_tree(module))[name])


def describe_default(module: str, class_name: str, arg: str) -> str:
    """The default as ``--help`` shows it."""
    value = model_default(module, class_name, arg)
    if value is None and (module, class_name, arg) in NONE_MEANS:
        return NONE_MEANS[module, class_name, arg]
    return "unset (None)" if value is None else str(value)


# (label, module, class, argument) of each model a flag is passed to.
Owner = tuple[str, str, str, str]


def add_model_arg(group, flag: str, owners: list[Owner], help_text: str, **kwargs) -> None:
    """``group.add_argument(flag, default=None, ...)`` whose help ends with the model's
    default ("unset: the model's default, currently 0.7"), one per owner."""
    shown = [f"{label}{describe_default(*where)}" for label, *where in owners]
    note = f"unset: the model's default, currently {'; '.join(shown)}"
    group.add_argument(flag, default=None, help=f"{help_text} ({note})", **kwargs)


def record_model_values(args: argparse.Namespace, values: dict[str, Any]) -> dict[str, Any]:
    """Fill the unset flags of ``args`` with what the built model used (``values``: flag
    ``dest`` → the model's ``get_config`` value), so config.json records them; returns the
    flags filled."""
    filled = {}
    for dest, value in values.items():
        if hasattr(args, dest) and getattr(args, dest) is None and value is not None:
            filled[dest] = list(value) if isinstance(value, tuple) else value
            setattr(args, dest, filled[dest])
    return filled


# --------------------------------------------------------------------------- parsing


class RecipeError(Exception):
    """A user-facing failure: printed as ``error: ...`` without a traceback, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        """A bad flag: one line on stderr (as every recipe error), exit status 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _number(kind: type, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def ranged(kind: type, low=None, high=None, *, low_open=False, high_open=False, invalid=()):
    """An argparse ``type``: ``kind`` in a range (``None``: unbounded), with the invalid
    examples the tests try (``.invalid``)."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"

    def parse(text: str):
        value = _number(kind, text)
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} in {span}"
    parse.invalid = invalid
    return parse


positive_float = ranged(float, 0.0, low_open=True, invalid=("0", "-1", "nan"))
non_negative_float = ranged(float, 0.0, invalid=("-1", "inf"))
unit_interval = ranged(float, 0.0, 1.0, high_open=True, invalid=("-0.5", "1"))
# Seeds: keras_vq's range, [0, 2**31 - 1] (keras_vq._validation.MAX_SEED).
seed_int = ranged(int, 0, 2**31 - 1, invalid=("-1", str(2**31), "1.5"))
