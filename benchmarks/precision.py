"""VQ-VAE train-step time per dtype policy (float32, mixed_float16, mixed_bfloat16) and backend.

    python -m benchmarks.precision                    # 3 backends x 3 policies
    python -m benchmarks.precision --quick            # TF only, a few steps
    python -m benchmarks.precision --backends jax --steps 30

The model is keras_vq's default ``VQVAE`` (32×32×1 synthetic images, filters (32, 64),
K=128, D=16, EMA codebook decay 0.99), batch 128, Adam, ``compile()`` defaults (so
``mixed_float16`` gets its ``LossScaleOptimizer``; ``jit_compile="auto"``). One subprocess per
backend builds one model per policy (the global policy is read when layers are built), warms
each up, then times them in alternating rounds of one ``fit`` each (see
``benchmarks/train_throughput.py``). One JSON line per (backend, policy) with the median step
time, images/s and ``speedup_vs_float32`` (float32 step time / this policy's; above 1 is
faster). The GPU target is ≥ 1.8× for a mixed policy; on a CPU this is reported only (CPUs
without native float16 math are usually slower in float16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
IMAGE_SHAPE = (32, 32, 1)
GPU_TARGET = 1.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="steps per timed fit")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per policy")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
    parser.add_argument("--max-seconds", type=float, default=25, help="cap per timed fit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per backend")
    parser.add_argument("--quick", action="store_true", help="TF only, 4 steps, 1 round")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.backends, args.steps, args.repeats, args.warmup = ["tensorflow"], 4, 1, 1
    return args


def run_child(args) -> None:
    import keras
    import numpy as np

    from benchmarks import _harness
    from benchmarks.train_throughput import time_fit, versions
    from keras_vq.models import VQVAE

    backend = keras.backend.backend()
    images = np.random.default_rng(0).random(
        (args.batch_size * args.steps, *IMAGE_SHAPE), dtype=np.float32
    )
    built = {}
    for policy in args.policies:
        record = {
            "benchmark": "precision",
            "backend": backend,
            "policy": policy,
            "batch_size": args.batch_size,
        }
        try:
            keras.config.set_dtype_policy(policy)
            try:
                model = VQVAE(
                    input_shape=IMAGE_SHAPE, num_embeddings=128, embedding_dim=16, ema_decay=0.99
                )
            finally:
                keras.config.set_dtype_policy("float32")
            model.compile(optimizer=keras.optimizers.Adam())
            start = time.perf_counter()
            warm = images[: args.batch_size * args.warmup]
            history = model.fit(warm, batch_size=args.batch_size, verbose=0, shuffle=False)
            record["warmup_s"] = round(time.perf_counter() - start, 2)
            record["optimizer"] = type(model.optimizer).__name__
            record["codebook_dtype"] = str(model.quantizer.codebook.dtype)
            record["warmup_loss"] = round(float(history.history["loss"][-1]), 5)
            built[policy] = (model, record, [])
        except Exception as error:
            _harness.emit({**record, "error": f"{type(error).__name__}: {error}"[:400]})
    for _ in range(args.repeats):
        for policy, (model, record, rates) in list(built.items()):
            try:
                rates.append(time_fit(keras, model, images, args.batch_size, args.max_seconds)[0])
            except Exception as error:
                _harness.emit({**record, "error": f"{type(error).__name__}: {error}"[:400]})
                del built[policy]
    for _, record, rates in built.values():
        images_per_s = statistics.median(rates)
        record["images_per_s"] = round(images_per_s, 1)
        record["step_ms"] = round(1000 * args.batch_size / images_per_s, 1)
        record["loss_finite"] = bool(np.isfinite(record["warmup_loss"]))
        record["repeats"] = len(rates)
        record.update(versions())
        record.update(_harness.machine())
        _harness.emit(record)


def add_speedups(records: list[dict]) -> list[dict]:
    float32 = {
        r["backend"]: r["step_ms"]
        for r in records
        if r.get("policy") == "float32" and "step_ms" in r
    }
    for r in records:
        if "step_ms" in r and r["backend"] in float32:
            r["speedup_vs_float32"] = round(float32[r["backend"]] / r["step_ms"], 3)
            r["gpu_target"] = GPU_TARGET
    return records


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        run_child(args)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    records = []
    for backend in args.backends:
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        cmd = [sys.executable, "-m", "benchmarks.precision", "--_child"]
        cmd += ["--policies", *args.policies]
        for flag in ("batch_size", "steps", "repeats", "warmup", "max_seconds"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        failed = {"benchmark": "precision", "backend": backend}
        try:
            result = subprocess.run(
                cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout
            )
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            records += [json.loads(line) for line in lines]
            if result.returncode or not lines:
                print(result.stderr[-3000:], file=sys.stderr)
                tail = result.stderr.strip().splitlines()[-1:] or [""]
                records.append({**failed, "error": f"exit {result.returncode}: {tail[0][-300:]}"})
        except subprocess.TimeoutExpired:
            records.append({**failed, "error": f"timeout after {args.timeout:.0f} s"})
    for record in add_speedups(records):
        print(json.dumps(record, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
