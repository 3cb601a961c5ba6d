"""PixelCNN prior: sampling seconds, training codes/s, and speed-up over per-pixel ``predict``.

    KERAS_BACKEND=jax python -m benchmarks.prior_sampling            # a few minutes on CPU
    KERAS_BACKEND=torch python -m benchmarks.prior_sampling --quick  # smaller prior, 7×7 only

For the current backend and each code-map size (7×7, 16×16) and codebook size (K = 128, 512),
an untrained ``PixelCNNPrior`` (default 6 gated layers × 64 filters) is timed on:

- ``prior_sampling``: ``prior.sample(n)`` for n = 10 and 100 maps — ``first_call_s`` includes
  tracing/compilation, ``seconds`` is the median of ``--repeats`` later calls;
- ``prior_training``: ``fit`` throughput in codes/s (batch ``--train-batch``, after warm-up).

Then ``prior_sampling_vs_per_pixel`` compares ``prior.sample`` with the keras.io PixelCNN /
VQ-VAE examples' sampler — a Python loop over positions that calls ``model.predict`` on the
full map and keeps the draw at the current position — for 10 maps of 7×7, K = 128 (goal:
speed-up ≥ 20×). The baseline draws with NumPy Gumbel-max (the examples use a TFP categorical;
the draw is a negligible part of either loop) and its ``predict`` function is compiled before
timing, so the comparison is of warm loops. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latent-sizes", type=int, nargs="+", default=[7, 16])
    parser.add_argument("--num-embeddings", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--num-samples", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--num-layers", type=int, default=6)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--baseline-samples", type=int, default=10)
    parser.add_argument("--baseline-size", type=int, default=7)
    parser.add_argument("--baseline-num-embeddings", type=int, default=128)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="7×7, K=128, 10 maps, 3 layers × 32 filters"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.latent_sizes, args.num_embeddings, args.num_samples = [7], [128], [10]
        args.num_layers, args.filters, args.repeats, args.train_steps = 3, 32, 1, 4
    return args


def main(argv=None) -> None:
    args = parse_args(argv)  # before importing Keras: --help answers at once

    import keras
    import numpy as np

    from benchmarks import _harness
    from keras_vq.models import PixelCNNPrior

    backend = keras.backend.backend()
    common = {
        "backend": backend,
        "num_layers": args.num_layers,
        "filters": args.filters,
        "kernel_size": args.kernel_size,
        **_harness.machine(),
    }

    def make_prior(size: int, k: int) -> PixelCNNPrior:
        keras.utils.set_random_seed(0)
        return PixelCNNPrior(
            k,
            (size, size),
            num_layers=args.num_layers,
            filters=args.filters,
            kernel_size=args.kernel_size,
        )

    def time_sampler(prior, num_samples: int) -> dict:
        start = time.perf_counter()
        _harness.block(prior.sample(num_samples, seed=0))
        first = time.perf_counter() - start
        timing = _harness.time_call(
            lambda: _harness.block(prior.sample(num_samples, seed=1)),
            repeats=args.repeats,
            warmup=0,
        )
        return {"first_call_s": round(first, 4), "seconds": round(timing["median_s"], 4)}

    for size in args.latent_sizes:
        for k in args.num_embeddings:
            prior = make_prior(size, k)
            shape = {"latent_shape": [size, size], "num_embeddings": k}
            for num_samples in args.num_samples:
                timing = time_sampler(prior, num_samples)
                _harness.emit(
                    {
                        "benchmark": "prior_sampling",
                        **shape,
                        "num_samples": num_samples,
                        **timing,
                        "codes_per_s": round(num_samples * size * size / timing["seconds"], 1),
                        **common,
                    }
                )

            batch = args.train_batch
            codes = np.random.default_rng(0).integers(0, k, (batch * args.train_steps, size, size))
            prior.compile(optimizer="adam")
            prior.fit(codes[: 2 * batch], batch_size=batch, epochs=1, verbose=0)  # compile
            start = time.perf_counter()
            prior.fit(codes, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            seconds = time.perf_counter() - start
            _harness.emit(
                {
                    "benchmark": "prior_training",
                    **shape,
                    "batch_size": batch,
                    "steps": args.train_steps,
                    "codes_per_s": round(codes.size / seconds, 1),
                    **common,
                }
            )

    if args.skip_baseline:
        return
    size, k, n = args.baseline_size, args.baseline_num_embeddings, args.baseline_samples
    prior = make_prior(size, k)
    fast = time_sampler(prior, n)
    per_pixel = per_pixel_predict_seconds(prior, n, np)
    _harness.emit(
        {
            "benchmark": "prior_sampling_vs_per_pixel",
            "latent_shape": [size, size],
            "num_embeddings": k,
            "num_samples": n,
            "fast_seconds": fast["seconds"],
            "fast_first_call_s": fast["first_call_s"],
            "per_pixel_seconds": round(per_pixel, 4),
            "speedup": round(per_pixel / fast["seconds"], 1),
            "speedup_including_compile": round(per_pixel / fast["first_call_s"], 1),
            "goal": 20,
            **common,
        }
    )


def per_pixel_predict_seconds(prior, num_samples: int, np) -> float:
    """The keras.io sampler: one ``predict`` of the full map per position (warm)."""
    height, width = prior.latent_shape
    codes = np.zeros((num_samples, height, width), "int32")
    prior.predict(codes, verbose=0)  # build the predict function before timing
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for row in range(height):
        for col in range(width):
            logits = prior.predict(codes, verbose=0)[:, row, col]
            gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, logits.shape)))
            codes[:, row, col] = np.argmax(logits + gumbel, axis=-1)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
