"""VectorQuantizer forward+backward time and peak memory, one JSON line per configuration.

    KERAS_BACKEND=jax python -m benchmarks.vq_layer                 # the three sizes
    python -m benchmarks.vq_layer --sizes 4096x64x512 --repeats 10

Each configuration runs in a fresh subprocess so its peak memory is its own:
``step_peak_mib`` is the growth of ``ru_maxrss`` over the resident size once the inputs
exist (the working memory of forward + backward); ``inputs_resident_mib`` is what the inputs
took. The step is the
layer's forward pass, the VQ loss plus a unit-weight sum of the outputs, and the gradients
with respect to the inputs and the codebook, compiled where the backend compiles
(``tf.function``, ``jax.jit``; torch runs eagerly).
"""

from __future__ import annotations

import argparse

from benchmarks import _harness

DEFAULT_SIZES = ("4096x64x512", "32768x64x512", "1048576x64x8192")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="NxDxK triples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_one(size: str, repeats: int, chunk_size: int) -> None:
    n, d, k = (int(v) for v in size.split("x"))
    import keras
    import numpy as np

    from keras_vq.layers import VectorQuantizer

    layer = VectorQuantizer(k, d, chunk_size=chunk_size)
    layer.build((None, d))
    warm = np.random.default_rng(0).normal(size=(chunk_size + 1, d)).astype("float32")
    # Imports and kernels are loaded before the baseline is read.
    _harness.forward_backward(layer, warm, training=False, codebook=True)()
    before_inputs = _harness.rss_mib()
    x = np.random.default_rng(1).normal(size=(n, d)).astype("float32")
    step = _harness.forward_backward(layer, x, training=False, codebook=True)
    # Working memory of the step: growth beyond the inputs (NumPy + backend copies).
    baseline = _harness.rss_mib()
    timing = _harness.time_call(step, repeats=repeats, warmup=1)
    _harness.emit(
        {
            "benchmark": "vq_layer",
            "backend": keras.backend.backend(),
            "num_vectors": n,
            "embedding_dim": d,
            "num_embeddings": k,
            "chunk_size": chunk_size,
            "fwd_bwd_median_s": round(timing["median_s"], 4),
            "fwd_bwd_min_s": round(timing["min_s"], 4),
            "vectors_per_s": round(n / timing["median_s"]),
            "step_peak_mib": round(_harness.peak_rss_mib() - baseline, 1),
            "inputs_resident_mib": round(baseline - before_inputs, 1),
            "input_mib": round(x.nbytes / 2**20, 1),
            **_harness.machine(),
        }
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._one:
        run_one(args._one, args.repeats, args.chunk_size)
        return
    failed = False
    for size in args.sizes:
        run = _harness.run_module(
            "vq_layer", ["--_one", size, *_harness.flags(args, "repeats", "chunk_size")], echo=True
        )
        if run.error:
            failed = True
            _harness.emit({"benchmark": "vq_layer", "size": size, "error": run.error})
    if failed:
        raise SystemExit("vq_layer: some sizes failed (see the error lines)")


if __name__ == "__main__":
    main()
