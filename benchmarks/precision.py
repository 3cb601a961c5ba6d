"""VQ-VAE train-step time per dtype policy (float32, mixed_float16, mixed_bfloat16) and backend.

    python -m benchmarks.precision                    # 3 backends x 3 policies
    python -m benchmarks.precision --quick            # TF only, a few steps
    python -m benchmarks.precision --backends jax --steps 30

The model is keras_vq's default ``VQVAE`` (32×32×1 synthetic images, filters (32, 64),
K=128, D=16, EMA codebook decay 0.99), batch 128, Adam, ``compile()`` defaults (so
``mixed_float16`` gets its ``LossScaleOptimizer``; ``jit_compile="auto"``). One subprocess per
backend builds one model per policy (the global policy is read when layers are built), warms
each up, then times them in alternating rounds of one ``fit`` each
(``benchmarks._harness.compare_training``). One JSON line per (backend, policy) with the
median step time, images/s and ``speedup_vs_float32`` (float32 step time / this policy's;
above 1 is faster). The GPU target is ≥ 1.8× for a mixed policy; on a CPU this is reported
only (CPUs without native float16 math are usually slower in float16).
"""

from __future__ import annotations

import argparse

from benchmarks import _harness

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
IMAGE_SHAPE = (32, 32, 1)
GPU_TARGET = 1.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends", nargs="+", default=list(_harness.BACKENDS), choices=_harness.BACKENDS
    )
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

    from keras_vq.models import VQVAE

    backend = keras.backend.backend()
    images = np.random.default_rng(0).random(
        (args.batch_size * args.steps, *IMAGE_SHAPE), dtype=np.float32
    )
    base = {"benchmark": "precision", "backend": backend, "batch_size": args.batch_size}
    models = {}
    for policy in args.policies:
        try:
            keras.config.set_dtype_policy(policy)
            try:
                model = VQVAE(
                    input_shape=IMAGE_SHAPE, num_embeddings=128, embedding_dim=16, ema_decay=0.99
                )
            finally:
                keras.config.set_dtype_policy("float32")
            model.compile(optimizer=keras.optimizers.Adam())
        except Exception as error:
            _harness.emit({**base, "policy": policy, "error": _harness.error_text(error)})
            continue
        models[policy] = (model, images, None)
    results = _harness.compare_training(
        keras, models, args.batch_size, args.warmup, args.repeats, args.max_seconds
    )
    for policy, figures in results.items():
        record = {**base, "policy": policy, **figures}
        if "images_per_s" in figures:
            model = models[policy][0]
            record.update(
                step_ms=round(1000 * args.batch_size / figures["images_per_s"], 1),
                optimizer=type(model.optimizer).__name__,
                codebook_dtype=str(model.quantizer.codebook.dtype),
                loss_finite=bool(np.isfinite(figures["warmup_loss"])),
                **_harness.versions(),
                **_harness.machine(),
            )
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


def run_all(args) -> list[dict]:
    """One child process per backend; then the speed-ups over float32."""
    forwarded = _harness.flags(
        args, "policies", "batch_size", "steps", "repeats", "warmup", "max_seconds"
    )
    configurations = [
        (backend, [*forwarded, "--_child"], {"benchmark": "precision", "backend": backend})
        for backend in args.backends
    ]
    records = _harness.run_configurations("precision", configurations, timeout=args.timeout)
    return add_speedups(records)


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
