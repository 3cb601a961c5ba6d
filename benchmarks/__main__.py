"""Run the whole benchmark suite and write a Markdown report.

    python -m benchmarks                                   # everything, defaults (long)
    python -m benchmarks --quick                           # smoke configuration, minutes
    python -m benchmarks --only peers_vq train_throughput --markdown /tmp/r.md
    python -m benchmarks --backends tensorflow             # per-backend scripts on TF only

Each script runs as a subprocess, one after the other (the scripts time things: never run
two at once). Every JSON line they print is echoed here as it arrives, and all of them are
written as one Markdown table per figure type, one section per script, to ``--markdown``
(default ``benchmarks/RESULTS.md``), headed by the machine and library versions. A script
that is missing, fails or times out is recorded as such and the suite goes on.

Scripts that measure "the current backend" (``vq_layer``, ``data_pipeline``,
``prior_sampling``) run once per ``--backends`` entry with ``KERAS_BACKEND`` set; the others
run their own per-backend subprocesses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

from benchmarks import _harness

ROOT = _harness.ROOT
HERE = os.path.join(ROOT, "benchmarks")

# name -> (runs once per --backends entry, arguments for --quick when it has no --quick flag)
SCRIPTS = {
    "vq_layer": (True, ["--sizes", "4096x64x512", "--repeats", "2"]),
    "peers_vq": (False, None),
    "train_throughput": (False, None),
    "step_guard": (False, ["--backends", "tensorflow", "--steps", "5", "--repeats", "2"]),
    "prior_sampling": (True, None),
    "data_pipeline": (True, ["--epochs", "1", "--steps", "5"]),
    "quality": (False, None),
    "iwae_memory": (False, ["--configs", "16x50"]),
    "prior_quality": (False, None),
    "generation_quality": (False, None),
    "precision": (False, None),
    "paper_networks": (False, None),
}
# Keys shown in the header instead of every row.
MACHINE_KEYS = {"cpu_count", "machine", "python", *_harness.DISTRIBUTIONS}
# Columns that identify a row come first, then the headline figures.
FIRST_COLUMNS = (
    "backend",
    "model",
    "dataset",
    "peer",
    "mode",
    "policy",
    "jit_compile",
    "num_vectors",
    "embedding_dim",
    "num_embeddings",
    "latent_size",
    "num_samples",
    "error",
    "skipped",
    "ratio",
    "ratio_vs_plain_ae",
    "speedup_vs_float32",
    "images_per_s",
    "mse",
    "mse_vs_naive",
    "used_fraction",
    "used_codes",
    "perplexity",
    "elbo_nats",
    "iwae_nll_nats",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke configuration of every script")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=None)
    parser.add_argument("--backends", nargs="+", choices=_harness.BACKENDS, default=None)
    parser.add_argument("--markdown", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--jsonl", default=None, help="also write every JSON line here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per script run")
    args = parser.parse_args(argv)
    if args.backends is None:
        args.backends = ["tensorflow"] if args.quick else list(_harness.BACKENDS)
    return args


# ------------------------------------------------------------------ machine description
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_description() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        if out.returncode == 0 and names:
            return ", ".join(names)
    except (OSError, subprocess.SubprocessError):
        pass
    return "none (CPU only)"


def versions() -> dict[str, str]:
    found = _harness.versions(_harness.DISTRIBUTIONS)
    return {dist: found.get(dist, "not installed") for dist in _harness.DISTRIBUTIONS}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ------------------------------------------------------------------ running
def has_quick_flag(path: str) -> bool:
    with open(path) as f:
        return '"--quick"' in f.read()


def run_script(name: str, backend: str | None, args) -> dict:
    """Run one script; returns {"records": [...], "status": str, "seconds": float}."""
    path = os.path.join(HERE, f"{name}.py")
    if not os.path.exists(path):
        return {"records": [], "status": "missing (no benchmarks/" + name + ".py)", "seconds": 0}
    argv = []
    if args.quick:
        quick_args = SCRIPTS[name][1]
        argv = ["--quick"] if has_quick_flag(path) or quick_args is None else quick_args
    label = f"{name}" + (f" [{backend}]" if backend else "")
    print(f"# running {label}: {' '.join(argv)}", file=sys.stderr, flush=True)
    run = _harness.run_module(name, argv, backend=backend, timeout=args.timeout, echo=True)
    status = "ok" if run.error is None else f"failed: {run.error}"
    return {"records": run.records, "status": status, "seconds": run.seconds}


# ------------------------------------------------------------------ Markdown
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    elif isinstance(value, list | tuple):
        text = "×".join(map(str, value))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(records: list[dict]) -> list[str]:
    keys = {k for r in records for k in r} - MACHINE_KEYS - {"benchmark"}
    columns = [k for k in FIRST_COLUMNS if k in keys] + sorted(keys - set(FIRST_COLUMNS))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in columns) + " |")
    return lines


def markdown(results: dict, started: str, load_before: str, args) -> str:
    v = versions()
    lines = [
        "# keras_vq benchmark results",
        "",
        f"- Date: {started} (UTC); written by `python -m benchmarks"
        + (" --quick" if args.quick else "")
        + (f" --only {' '.join(args.only)}" if args.only else "")
        + f"`, backends for per-backend scripts: {', '.join(args.backends)}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}; "
        f"GPU: {gpu_description()}",
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_average()} "
        "(the machine is shared: compare ratios measured in one process, not absolute times)",
        f"- Python {platform.python_version()}; "
        + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- keras_vq commit: {git_commit()}",
        "",
        "Ratios: `ratio` in peers_vq is ours / peer *time* (below 1: ours faster); in "
        "train_throughput it is ours / the naive VQ-VAE's *images per second* (above 1: ours "
        "faster); "
        "`speedup_vs_float32` is float32 step time / the policy's.",
        "",
    ]
    for name, runs in results.items():
        lines += [f"## {name}", ""]
        for label, run in runs:
            lines.append(f"- {label}: {run['status']} ({run['seconds']:.0f} s)")
        lines.append("")
        records = [r for _, run in runs for r in run["records"]]
        kinds: dict[str, list[dict]] = {}
        for r in records:
            kinds.setdefault(r.get("benchmark", name), []).append(r)
        for kind, rows in kinds.items():
            if len(kinds) > 1:
                lines += [f"### {kind}", ""]
            lines += [*table(rows), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_before = load_average()
    results: dict[str, list] = {}
    jsonl = open(args.jsonl, "w") if args.jsonl else None
    try:
        for name in args.only or list(SCRIPTS):
            per_backend = SCRIPTS[name][0]
            runs = []
            for backend in args.backends if per_backend else [None]:
                run = run_script(name, backend, args)
                runs.append((f"`{name}`" + (f" on {backend}" if backend else ""), run))
                if jsonl:
                    for record in run["records"]:
                        jsonl.write(json.dumps(record, sort_keys=True) + "\n")
                    jsonl.flush()
            results[name] = runs
    finally:
        if jsonl:
            jsonl.close()
    with open(args.markdown, "w") as f:
        f.write(markdown(results, started, load_before, args))
    print(f"# wrote {args.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()
