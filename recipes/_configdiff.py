"""What differs between a saved run's config.json and this run's: the lines a refused resume
prints, and the saved flags that would finish that run."""

from __future__ import annotations

# Arguments that do not change what a run computes: a rerun may differ in them.
_NOT_COMPARED = (
    "overwrite",
    "verbose",
    "backend",
    "download",
    # Where the processes of a multi_process run meet: they compute the same either way.
    "coordinator_address",
    "num_processes",
    "process_id",
    "heartbeat_timeout",
)


def config_differences(saved: dict, config: dict, unset_later: bool = False) -> list[str]:
    """What differs between two configs, as lines; with ``unset_later``, arguments unset now
    are left out (a model flag takes the model's value in the recipe's setup)."""
    diffs = []
    if saved.get("recipe") != config["recipe"]:
        diffs.append(f"recipe: {saved.get('recipe')!r} (saved) vs {config['recipe']!r} (now)")
    if saved.get("backend") != config["backend"]:
        diffs.append(f"backend: {saved.get('backend')!r} (saved) vs {config['backend']!r} (now)")
    old, new = saved.get("args", {}), config["args"]
    for key in _differing_keys(old, new):
        if not (unset_later and new.get(key) is None):
            diffs.append(
                f"--{key.replace('_', '-')}: {old.get(key)!r} (saved) vs {new.get(key)!r}"
            )
    return diffs


def saved_flags(saved: dict, config: dict, unset_later: bool) -> str:
    """The differing arguments as flags with their saved values, e.g. ``--filters 32 64``."""
    flags = []
    for key in _differing_keys(saved.get("args", {}), config["args"]):
        if unset_later and config["args"].get(key) is None:
            continue
        value, flag = saved["args"].get(key), f"--{key.replace('_', '-')}"
        if isinstance(value, bool) or value is None:
            flags.append(f"{flag}: {'unset' if value is None else value}")
        else:
            values = value if isinstance(value, list) else [value]
            flags.append(" ".join([flag, *map(str, values)]))
    return ", ".join(flags) if flags else "the same flags"


def _differing_keys(old: dict, new: dict) -> list[str]:
    # A flag the saved run does not know came later: the run had that flag's behaviour.
    keys = sorted(old)
    return [k for k in keys if k not in _NOT_COMPARED and old.get(k) != new.get(k)]
