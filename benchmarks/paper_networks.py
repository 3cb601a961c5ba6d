"""Training images/s of the VQ-VAE paper's networks per image size, dtype policy and backend.

    python -m benchmarks.paper_networks                      # 3 backends, 32² and 128², 2 policies
    python -m benchmarks.paper_networks --quick              # TF only, 32×32×3, a few steps
    python -m benchmarks.paper_networks --filters 256 --sizes 128 --batch-size 2 --policies float32

The model is ``VQVAE(input_shape=(S, S, 3), num_embeddings=512, embedding_dim=64,
filters=F, num_residual_blocks=2, downsample=4)`` — the paper's ImageNet configuration
(van den Oord et al., 2017: 4×4 stride-2 convolutions, two residual 3×3/1×1 blocks, 256
channels, 128×128×3 → 32×32 codes, K=512) with the width ``F`` a flag: the paper's 256 is
far too heavy for a 2-core CPU (128×128: about 1.7 s per image and step on TensorFlow,
minutes per step on JAX), so the default is
32, with batch 8 and 3 steps (2 timed) per fit (say which in a report). EMA codebook (0.99),
Adam, ``compile()`` defaults, synthetic uniform images in [0, 1].

One subprocess per backend builds one model per (size, policy) (the global policy is read
when layers are built), warms each up (``--warmup`` steps: tracing, compilation), then times
them in alternating rounds of one ``fit`` each (``benchmarks._harness.compare_training``,
timed from the end of the first step). One JSON line per (backend, size, policy): median and
best images/s, step time and ``speedup_vs_float32`` (above 1: faster than float32 at that
size). On a CPU without native bfloat16 math, ``mixed_bfloat16`` is usually slower.
"""

from __future__ import annotations

import argparse

from benchmarks import _harness

POLICIES = ("float32", "mixed_bfloat16")
SIZES = (32, 128)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends", nargs="+", default=list(_harness.BACKENDS), choices=_harness.BACKENDS
    )
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="S of S×S×3")
    parser.add_argument("--filters", type=int, default=32, help="width F (the paper: 256)")
    parser.add_argument("--num-residual-blocks", type=int, default=2)
    parser.add_argument("--downsample", type=int, default=4)
    parser.add_argument("--num-embeddings", type=int, default=512)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed fit")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (compilation)")
    parser.add_argument("--max-seconds", type=float, default=20, help="cap per timed fit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per backend")
    parser.add_argument("--quick", action="store_true", help="TF only, 32×32×3, 3 steps")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.backends, args.sizes = ["tensorflow"], [32]
        args.steps, args.repeats, args.warmup = 3, 1, 1
    return args


def build(args, size: int, policy: str):
    """A compiled paper-configuration VQVAE built under ``policy``."""
    import keras

    from keras_vq.models import VQVAE

    keras.config.set_dtype_policy(policy)
    try:
        model = VQVAE(
            input_shape=(size, size, 3),
            num_embeddings=args.num_embeddings,
            embedding_dim=args.embedding_dim,
            ema_decay=0.99,
            filters=args.filters,
            num_residual_blocks=args.num_residual_blocks,
            downsample=args.downsample,
        )
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.Adam())
    return model


def run_child(args) -> None:
    import keras
    import numpy as np

    backend = keras.backend.backend()
    base = {
        "benchmark": "paper_networks",
        "backend": backend,
        "batch_size": args.batch_size,
        "filters": args.filters,
        "num_residual_blocks": args.num_residual_blocks,
        "downsample": args.downsample,
        "num_embeddings": args.num_embeddings,
        "embedding_dim": args.embedding_dim,
    }
    rng = np.random.default_rng(0)
    models = {}
    for size in args.sizes:
        images = rng.random((args.batch_size * args.steps, size, size, 3), dtype=np.float32)
        for policy in args.policies:
            name = f"{size}x{size}x3 {policy}"
            try:
                models[name] = (build(args, size, policy), images, None)
            except Exception as error:
                _harness.emit({**base, "model": name, "error": _harness.error_text(error)})
    results = _harness.compare_training(
        keras, models, args.batch_size, args.warmup, args.repeats, args.max_seconds
    )
    for name, figures in results.items():
        size, policy = name.split(" ")
        record = {**base, "image_shape": size, "policy": policy, **figures}
        if "images_per_s" in figures:
            model = models[name][0]
            record.update(
                step_ms=round(1000 * args.batch_size / figures["images_per_s"], 1),
                latent_shape="x".join(map(str, model.latent_shape)),
                params=model.count_params(),
                **_harness.versions(),
                **_harness.machine(),
            )
        _harness.emit(record)


def add_speedups(records: list[dict]) -> list[dict]:
    """``speedup_vs_float32`` = float32 step time / this policy's, same backend and size."""
    float32 = {
        (r["backend"], r["image_shape"]): r["step_ms"]
        for r in records
        if r.get("policy") == "float32" and "step_ms" in r
    }
    for r in records:
        reference = float32.get((r.get("backend"), r.get("image_shape")))
        if "step_ms" in r and reference:
            r["speedup_vs_float32"] = round(reference / r["step_ms"], 3)
    return records


def run_all(args) -> list[dict]:
    """One child process per backend; then the speed-ups over float32."""
    forwarded = _harness.flags(
        args,
        "policies",
        "sizes",
        "filters",
        "num_residual_blocks",
        "downsample",
        "num_embeddings",
        "embedding_dim",
        "batch_size",
        "steps",
        "repeats",
        "warmup",
        "max_seconds",
    )
    configurations = [
        (backend, [*forwarded, "--_child"], {"benchmark": "paper_networks", "backend": backend})
        for backend in args.backends
    ]
    records = _harness.run_configurations("paper_networks", configurations, timeout=args.timeout)
    return add_speedups(records)


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
