"""The output directory of a run: its config, its state (new, resumed, finished), stages.

An output directory holds one run::

    config.json     the resolved arguments, backend and versions (written at the start)
    backup/         BackupAndRestore checkpoint (every epoch end; removed when fit ends)
    logs/           TensorBoard event files
    *.keras *.png   models and image grids
    preset/         the trained model as a keras_vq preset (training recipes; see
                    keras_vq.presets), with the held-out metrics and the command
    metrics.json    final numbers
    DONE            written last: the run finished

Rerunning the same command on an unfinished run resumes it from ``backup/``; a finished run
or a different configuration is an error unless ``--overwrite`` is passed. Nothing here
imports Keras: ``--out`` is checked before Keras loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _configdiff import config_differences, saved_flags
from _flags import RecipeError, resolve_backend

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
DONE_FILE = "DONE"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
PRESET_DIR = "preset"
# What --overwrite removes from --out (never anything else the user may keep there).
_RUN_FILES = (CONFIG_FILE, METRICS_FILE, DONE_FILE, BACKUP_DIR, LOG_DIR, PRESET_DIR, "export")
_RUN_SUFFIXES = (".keras", ".png")


def _versions(backend: str) -> dict[str, str | None]:
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "keras": version("keras"),
        "keras_vq": version("keras-vq"),
        backend: version(backend),
    }


def make_config(recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    backend = os.environ.get("KERAS_BACKEND") or resolve_backend(None)
    return {
        "recipe": recipe,
        "args": {k: v for k, v in sorted(vars(args).items())},
        "backend": backend,
        "versions": _versions(backend),
    }


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=json_default)
        f.write("\n")
    os.replace(tmp, path)


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy / backend scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def clear_run(out: Path) -> None:
    """Remove what a recipe writes (and nothing else) from ``out``."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if entry.name in _RUN_FILES or entry.suffix in _RUN_SUFFIXES or _is_run_dir(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _is_run_dir(path: Path) -> bool:
    """A pipeline stage directory (it holds its own config.json)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


class Run:
    """One output directory: its paths, its state (new, resumed, finished) and where its
    models are built (``strategy``: the ``--distribute mirrored`` strategy, or ``None``)."""

    def __init__(
        self,
        out: str | os.PathLike,
        config: dict[str, Any],
        args: argparse.Namespace,
        strategy: Any = None,
    ):
        self.out = Path(out)
        self.config = config
        self.args = args
        self.strategy = strategy
        self.resumed = False
        self._backup_dir: Path | None = None
        # Set by a training recipe: writes preset/ from the final metrics (before DONE).
        self.write_preset: Callable[[dict[str, Any]], None] | None = None

    def scope(self) -> contextlib.AbstractContextManager:
        """Where to create and compile models: the strategy's scope, or nothing."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def path(self, *names: str) -> Path:
        return self.out.joinpath(*names)

    @property
    def backup_dir(self) -> Path:
        return self._backup_dir or self.path(BACKUP_DIR)

    @property
    def shares_backup(self) -> bool:
        """Whether the checkpoint is another process's to write (see :meth:`write_elsewhere`)."""
        return self._backup_dir is not None

    def write_elsewhere(self, private_out: str | os.PathLike) -> None:
        """Write to ``private_out`` (removed at exit) instead of ``--out``, and only read
        ``--out``'s checkpoint: a multi_process run's processes other than process 0."""
        import atexit

        self._backup_dir = self.backup_dir
        self.out = Path(private_out)
        atexit.register(shutil.rmtree, self.out, ignore_errors=True)

    @property
    def log_dir(self) -> Path:
        return self.path(LOG_DIR)

    @property
    def finished(self) -> bool:
        return self.path(DONE_FILE).is_file()

    def saved_config(self) -> dict | None:
        try:
            return read_json(self.path(CONFIG_FILE))
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise RecipeError(f"{self.path(CONFIG_FILE)} is not valid JSON ({error}).") from None

    def check(self, overwrite: bool, unset_later: bool = False) -> None:
        """Check ``--out`` against the saved run; writes nothing (runs before importing Keras,
        with ``unset_later``: flags still unset are compared once the models resolved them).

        Raises:
            RecipeError: a finished run, a different configuration, or a directory that is not
                a run, and ``overwrite`` is false.
        """
        self.resumed = False
        if self.out.exists() and not self.out.is_dir():
            raise RecipeError(f"--out {self.out} exists and is not a directory.")
        saved = self.saved_config() if self.out.is_dir() else None
        if not overwrite and self.finished:
            raise RecipeError(
                f"--out {self.out} already holds a finished {(saved or {}).get('recipe', '')} run "
                f"(found {self.path(DONE_FILE)}). Pass --overwrite to replace it, or choose "
                "another --out."
            )
        if not overwrite and saved is not None:
            diffs = config_differences(saved, self.config, unset_later)
            if diffs:
                resume = saved_flags(saved, self.config, unset_later)
                raise RecipeError(
                    f"--out {self.out} holds an unfinished run with a different configuration "
                    "(config mismatch), so it cannot be resumed:\n  "
                    + "\n  ".join(diffs)
                    + f"\nTo finish it, rerun with the saved values ({resume}); to discard it "
                    "and start over, add --overwrite; or choose another --out."
                )
            self.resumed = True
        elif not overwrite and self.out.is_dir() and any(self.out.iterdir()):
            names = {p.name for p in self.out.iterdir()}
            if names & set(_RUN_FILES) or any(Path(n).suffix in _RUN_SUFFIXES for n in names):
                raise RecipeError(
                    f"--out {self.out} holds files of a run without {CONFIG_FILE}. Pass "
                    "--overwrite to replace them, or choose another --out."
                )

    def start(self, overwrite: bool) -> None:
        """Write config.json (after :meth:`check` and every input check passed); with
        ``overwrite``, first remove the previous run's files."""
        if overwrite:
            clear_run(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.path(CONFIG_FILE), self.config)
        if self.resumed:
            print(
                f"Resuming the unfinished {self.config['recipe']} run in {self.out}.", flush=True
            )

    def finish(self, metrics: dict[str, Any]) -> None:
        if self.write_preset is not None:
            self.write_preset(metrics)
        write_json(self.path(METRICS_FILE), metrics)
        self.path(DONE_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")

    # ------------------------------------------------------------------ pipeline stages
    def stage(
        self,
        recipe: str,
        args: argparse.Namespace,
        fn: Callable[..., dict],
        setup: Callable[[argparse.Namespace, Run], dict[str, Any]] | None = None,
    ) -> dict:
        """Run a recipe's ``setup`` and ``fn`` as a sub-run in ``args.out`` (a pipeline stage).

        ``args`` are the recipe's own (see :func:`stage_args`), so the stage's config.json
        reads like the standalone recipe's. A finished stage is not run again, its metrics are
        returned: this is how a resumed pipeline skips the stages it already completed.
        """
        name = Path(args.out).name
        child = Run(args.out, make_config(recipe, args), args, self.strategy)
        saved = child.saved_config()
        stale = saved is not None and bool(config_differences(saved, child.config))
        if child.finished and not stale:
            print(f"Stage {name!r} already finished in {child.out}; reusing it.", flush=True)
            return read_json(child.path(METRICS_FILE))
        print(f"Stage {name!r} ({recipe}) in {child.out}", flush=True)
        child.check(overwrite=stale)
        inputs = setup(args, child) if setup is not None else {}
        child.start(overwrite=stale)
        metrics = fn(args, child, **inputs)
        child.finish(metrics)
        return metrics


def stage_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser, *, out: Path, **overrides: Any
) -> argparse.Namespace:
    """The arguments of a pipeline stage writing to ``out``: the recipe's own (``parser``),
    taken from ``args`` where they share a name, then ``overrides``."""
    defaults = vars(parser.parse_args([]))
    values = {key: getattr(args, key, value) for key, value in defaults.items()}
    values.update(overrides, out=str(out), overwrite=False)
    return argparse.Namespace(**values)
