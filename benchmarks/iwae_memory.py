"""Peak memory of ``VAE.log_likelihood`` (the IWAE bound) per backend, one JSON line each.

    python -m benchmarks.iwae_memory                          # 64×300 and 32×500, 3 backends
    python -m benchmarks.iwae_memory --configs 64x300 --backends torch tensorflow

Each (backend, configuration) runs in a fresh subprocess so its peak is its own. The model is
the default ``VAE(input_shape=(28, 28, 1), latent_dim=16)`` (random weights: memory does not
depend on them); the images are uniform noise in [0, 1]. ``peak_mib`` is the growth of
``ru_maxrss`` over the resident size measured just before the timed call (model built, images
in memory, no warm-up call: a first call is what a user's evaluation makes), the same
method on every backend; ``ratio_vs_tensorflow`` divides it by TensorFlow's for the same
configuration (issue 27: torch ≤ 1.3×). ``chunk_size`` is ``log_likelihood``'s default, so a
chunk decodes ``chunk_size · batch`` images at once.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import _harness

DEFAULT_CONFIGS = ("64x300", "32x500")
IMAGE_SHAPE = (28, 28, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="BATCHxSAMPLES pairs"
    )
    parser.add_argument("--backends", nargs="+", default=list(_harness.BACKENDS))
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_one(config: str) -> None:
    batch, num_samples = (int(v) for v in config.split("x"))
    import keras
    import numpy as np

    from keras_vq.models import VAE

    model = VAE(input_shape=IMAGE_SHAPE, latent_dim=16)
    images = np.random.default_rng(0).uniform(size=(batch, *IMAGE_SHAPE)).astype("float32")
    baseline = _harness.rss_mib()
    start = time.process_time()
    log_px = model.log_likelihood(images, num_samples=num_samples, seed=0)
    cpu_s = time.process_time() - start
    _harness.emit(
        {
            "benchmark": "iwae_memory",
            "backend": keras.backend.backend(),
            "batch_size": batch,
            "num_samples": num_samples,
            "peak_mib": round(_harness.peak_rss_mib() - baseline, 1),
            "cpu_s": round(cpu_s, 2),
            "mean_log_px_nats": round(float(np.mean(keras.ops.convert_to_numpy(log_px))), 2),
            **_harness.machine(),
        }
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._one:
        run_one(args._one)
        return
    failed = False
    for config in args.configs:
        peaks = {}
        for backend in args.backends:
            run = _harness.run_module("iwae_memory", ["--_one", config], backend=backend)
            if run.error:
                failed = True
                _harness.emit(
                    {
                        "benchmark": "iwae_memory",
                        "backend": backend,
                        "config": config,
                        "error": run.error,
                    }
                )
                continue
            record = run.records[0]
            peaks[backend] = record["peak_mib"]
            if "tensorflow" in peaks:
                record["ratio_vs_tensorflow"] = round(peaks[backend] / peaks["tensorflow"], 3)
            _harness.emit(record)
    if failed:
        raise SystemExit("iwae_memory: some runs failed (see the error lines)")


if __name__ == "__main__":
    main()
