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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")
BACKENDS = ("tensorflow", "jax", "torch")

# name -> (runs once per --backends entry, arguments for --quick when it has no --quick flag)
SCRIPTS = {
    "vq_layer": (True, ["--sizes", "4096x64x512", "--repeats", "2"]),
    "peers_vq": (False, None),
    "train_throughput": (False, None),
    "prior_sampling": (True, None),
    "data_pipeline": (True, ["--epochs", "1", "--steps", "5"]),
    "quality": (False, None),
    "precision": (False, None),
}
# Keys shown in the header instead of every row.
MACHINE_KEYS = {
    "cpu_count",
    "machine",
    "python",
    "keras",
    "tensorflow",
    "tf_keras",
    "jax",
    "torch",
}
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
    "ratio_vs_keras3_port",
    "ratio_vs_plain_ae",
    "speedup_vs_float32",
    "images_per_s",
    "mse",
    "mse_vs_kerasio",
    "codes_used",
    "perplexity",
    "elbo_nats",
    "iwae_nll_nats",
)
DIST_VERSIONS = (
    "keras",
    "tensorflow",
    "tf_keras",
    "jax",
    "jaxlib",
    "torch",
    "numpy",
    "dm-sonnet",
    "vector-quantize-pytorch",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke configuration of every script")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=None)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None)
    parser.add_argument("--markdown", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--jsonl", default=None, help="also write every JSON line here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per script run")
    args = parser.parse_args(argv)
    if args.backends is None:
        args.backends = ["tensorflow"] if args.quick else list(BACKENDS)
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
    from importlib import metadata

    out = {}
    for dist in DIST_VERSIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


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
    cmd = [sys.executable, "-m", f"benchmarks.{name}"]
    if args.quick:
        quick_args = SCRIPTS[name][1]
        cmd += ["--quick"] if has_quick_flag(path) or quick_args is None else quick_args
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if backend:
        env["KERAS_BACKEND"] = backend
    records, start = [], time.perf_counter()
    label = f"{name}" + (f" [{backend}]" if backend else "")
    print(f"# running {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        status = f"timed out after {args.timeout:.0f} s"
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if backend and "backend" not in record:
            record["backend"] = backend
        records.append(record)
        print(json.dumps(record, sort_keys=True), flush=True)
    if status == "ok" and not records:
        status = "failed (no JSON output)"
    if status != "ok":
        tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [""]
        status += f": {tail[0][-300:]}"
        print(f"# {label}: {status}", file=sys.stderr, flush=True)
    return {"records": records, "status": status, "seconds": time.perf_counter() - start}


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
        "train_throughput it is ours / baseline *images per second* (above 1: ours faster); "
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
