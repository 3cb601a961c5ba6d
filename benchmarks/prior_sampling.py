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
timing, so the comparison is of warm loops.

``transformer_sampling_vs_full_pass`` times ``TransformerPrior.sample`` (key/value cache,
4 layers × 4 heads × 128 wide, the former defaults) for 10 maps of 8×8, K = 512, against two
samplers without a cache that run one full forward pass per position: the same ``fori_loop``
compiled like the cached one (``full_pass_seconds``: the cache's own gain), and a Python loop
of ``predict`` calls (``per_position_predict_seconds``). ``--transformer-only`` runs just
this. One JSON line per figure.

``--table`` runs only ``prior_sampling_table`` (the issue-16 table): both priors at their
defaults, K = 512, code maps of 8×8 and 16×16 (``--table-sizes``), 10 and 100 maps
(``--table-samples``): the warm ``prior.sample`` time against the per-position full-pass
loop (``predict`` of the whole maps per position, timed over ``--table-passes`` positions and
scaled to all h·w: every position costs the same). On TensorFlow also the exported generator
(``keras_vq.export.export_generator``, loaded with ``tf.saved_model.load``): its
``sample_seeded`` signature against in-process ``generate`` (sample + decode) on the same
seed, codes checked equal. A VQ-VAE of the matching latent size (untrained) decodes.

``--preset pixelcnn_digits`` runs only ``prior_preset_sampling``: that prior preset's cached
sampler for ``--num-samples`` maps by process CPU time, with each ``--stored-defaults``
setting (``guidance_scale:top_p``) stored in a copy of the prior, as ``train_prior.py
--guidance-scale S --top-p P`` would store it; the settings take turns.
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
    parser.add_argument("--transformer-only", action="store_true")
    parser.add_argument("--skip-transformer", action="store_true")
    parser.add_argument("--transformer-size", type=int, default=8)
    parser.add_argument("--transformer-num-embeddings", type=int, default=512)
    parser.add_argument(
        "--table",
        action="store_true",
        help="only the prior_sampling_table figures: both priors, K=512, 8×8 and 16×16, "
        "10 and 100 maps, vs the per-position full-pass loop (and the exported sampler on TF)",
    )
    parser.add_argument("--table-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--table-samples", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--table-passes", type=int, default=2, help="timed full passes")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="7×7, K=128, 10 maps, 3 layers × 32 filters"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="only prior_preset_sampling: this prior preset's cached sampler, by process CPU "
        "time, with each of --stored-defaults stored in it (labels cycle through the classes)",
    )
    parser.add_argument(
        "--stored-defaults",
        nargs="+",
        default=["own", "1.75:none", "1.25:none", "1.25:0.95"],
        help="guidance_scale:top_p pairs stored in the preset's prior ('none': unset); "
        "'own': its saved ones",
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (TF, torch)")
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

    if args.preset:
        preset_sampling(args, common)
        return
    if args.table:
        sampling_table(args, common)
        return
    if not args.skip_transformer:
        transformer_vs_full_pass(args, common)
    if args.transformer_only:
        return

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


PIXELCNN_KEYS = ("num_layers", "filters", "kernel_size")


def transformer_vs_full_pass(args, common: dict) -> None:
    """Cached vs uncached transformer sampling on the same noise (codes checked equal)."""
    import keras
    import numpy as np
    from keras import ops

    from benchmarks import _harness
    from keras_vq.backend import compile_function, to_numpy
    from keras_vq.models import TransformerPrior

    size, k, n = args.transformer_size, args.transformer_num_embeddings, args.baseline_samples
    keras.utils.set_random_seed(0)
    prior = TransformerPrior(k, (size, size), num_layers=4, num_heads=4, hidden_dim=128)
    length = size * size
    uniform = np.random.default_rng(0).uniform(1e-6, 1.0, (n, size, size, k)).astype("float32")
    labels = np.zeros((n,), "int32")
    variables = list(prior.variables)

    def full_pass_loop(state, uniform):
        with keras.StatelessScope(state_mapping=list(zip(variables, state))):
            noise = ops.reshape(-ops.log(-ops.log(uniform)), (n, length, k))

            def position(t, codes):
                logits = prior._forward(ops.reshape(codes, (n, size, size)))
                logits = ops.reshape(logits, (n, length, k))
                scores = ops.take(logits + noise, t, axis=1)
                code = ops.cast(ops.argmax(scores, axis=-1), "int32")
                return ops.slice_update(codes, [0, t], ops.reshape(code, (n, 1)))

            codes = ops.fori_loop(0, length, position, ops.zeros((n, length), "int32"))
            return ops.reshape(codes, (n, size, size))

    full_pass = compile_function(full_pass_loop)

    def cached():
        return _harness.block(prior._sample_from_uniform(uniform, 1.0, labels))

    def uncached():
        return _harness.block(full_pass([v.value for v in variables], uniform))

    timings = {}
    for name, fn in (("cached", cached), ("full_pass", uncached)):
        start = time.perf_counter()
        first = fn()
        timings[name + "_first_call_s"] = round(time.perf_counter() - start, 4)
        timing = _harness.time_call(fn, repeats=args.repeats, warmup=0)
        timings[name + "_seconds"] = round(timing["median_s"], 4)
        timings[name + "_codes"] = to_numpy(first)
    same = bool(np.array_equal(timings.pop("cached_codes"), timings.pop("full_pass_codes")))
    per_position = per_pixel_predict_seconds(prior, n, np)
    _harness.emit(
        {
            "benchmark": "transformer_sampling_vs_full_pass",
            "latent_shape": [size, size],
            "num_embeddings": k,
            "num_samples": n,
            "num_layers": prior.num_layers,
            "num_heads": prior.num_heads,
            "hidden_dim": prior.hidden_dim,
            **timings,
            "per_position_predict_seconds": round(per_position, 4),
            "speedup_vs_full_pass": round(
                timings["full_pass_seconds"] / timings["cached_seconds"], 1
            ),
            "speedup_vs_predict_loop": round(per_position / timings["cached_seconds"], 1),
            "same_codes": same,
            **{key: value for key, value in common.items() if key not in PIXELCNN_KEYS},
        }
    )


def sampling_table(args, common: dict) -> None:
    """``prior_sampling_table``: for each prior, code-map size and number of maps, the warm
    ``prior.sample`` time against the per-position full-pass loop; on TensorFlow also the
    exported generator's ``sample_seeded`` against in-process ``generate`` (sample + decode).

    The full-pass loop (one ``predict`` of the whole map per position, the keras.io sampler)
    costs the same at every position, so it is timed over ``--table-passes`` positions and
    scaled to all ``h·w`` (the whole loop would take up to hours for 100 maps of 16×16).
    """
    import tempfile

    import keras
    import numpy as np

    from benchmarks import _harness
    from keras_vq.backend import to_numpy
    from keras_vq.models import VQVAE, PixelCNNPrior, TransformerPrior, generate

    backend, k = keras.backend.backend(), 512
    builders = {
        "pixelcnn": lambda shape: PixelCNNPrior(k, shape),  # 6 gated layers × 64, kernel 5
        # The former defaults, which the figures in RESULTS.md were measured with.
        "transformer": lambda shape: TransformerPrior(
            k, shape, num_layers=4, num_heads=4, hidden_dim=128
        ),
    }
    configs = {
        "pixelcnn": "6 gated layers × 64 filters, kernel 5",
        "transformer": "4 layers × 4 heads × 128 wide",
    }
    export = backend == "tensorflow" and not args.skip_export
    for name, build in builders.items():
        for size in args.table_sizes:
            keras.utils.set_random_seed(0)
            prior = build((size, size))
            vqvae = VQVAE(input_shape=(4 * size, 4 * size, 1), num_embeddings=k, seed=0)
            served = {}
            if export:
                import tensorflow as tf

                from keras_vq.export import export_generator

                for jit_compile in (False, True):
                    path = export_generator(
                        vqvae, prior, tempfile.mkdtemp(), 1, jit_compile=jit_compile
                    )
                    signatures = tf.saved_model.load(path).signatures
                    served["xla" if jit_compile else "plain"] = signatures["sample_seeded"]
            for n in args.table_samples:
                record = {
                    "benchmark": "prior_sampling_table",
                    "prior": name,
                    "latent_shape": [size, size],
                    "num_embeddings": k,
                    "num_samples": n,
                }
                start = time.perf_counter()
                _harness.block(prior.sample(n, seed=0))
                record["first_call_s"] = round(time.perf_counter() - start, 3)
                fast = _harness.time_call(
                    lambda p=prior, n=n: _harness.block(p.sample(n, seed=1)),
                    repeats=args.repeats,
                    warmup=0,
                )["median_s"]
                per_pass = full_pass_seconds(prior, n, args.table_passes, np)
                full_loop = per_pass * size * size
                record.update(
                    sample_seconds=round(fast, 4),
                    full_pass_loop_seconds=round(full_loop, 3),
                    speedup=round(full_loop / fast, 1),
                )
                if served:
                    import tensorflow as tf

                    count, seed = tf.constant(n, tf.int32), tf.constant(3, tf.int32)
                    generate(vqvae, prior, n, seed=3)
                    in_process = _harness.time_call(
                        lambda v=vqvae, p=prior, n=n: _harness.block(generate(v, p, n, seed=3)),
                        repeats=args.repeats,
                        warmup=0,
                    )["median_s"]
                    record["generate_seconds"] = round(in_process, 4)
                    expected = to_numpy(prior.sample(n, seed=3))
                    for label, fn in served.items():
                        prefix = "exported" if label == "plain" else "exported_xla"

                        def exported(fn=fn, count=count, seed=seed):
                            return _harness.block(fn(num_samples=count, seed=seed)["codes"])

                        exported()  # the first call builds (and, with XLA, compiles) the loop
                        seconds = _harness.time_call(exported, repeats=args.repeats, warmup=0)
                        seconds = seconds["median_s"]
                        record.update(
                            {
                                f"{prefix}_seconds": round(seconds, 4),
                                f"{prefix}_vs_generate": round(seconds / in_process, 2),
                                f"{prefix}_speedup": round(full_loop / seconds, 1),
                                f"{prefix}_same_codes": bool(
                                    np.array_equal(to_numpy(exported()), expected)
                                ),
                            }
                        )
                config = {key: value for key, value in common.items() if key not in PIXELCNN_KEYS}
                _harness.emit({**record, **config, "prior_config": configs[name], "goal": 20})


def stored_defaults(text: str, prior) -> dict:
    """``"s:p"`` → ``{"guidance_scale": s, "top_p": p}`` (``none``: unset); ``own``: the
    prior's saved ones."""
    if text == "own":
        return {"guidance_scale": prior.guidance_scale, "top_p": prior.top_p}
    values = [None if v == "none" else float(v) for v in text.split(":")]
    return dict(zip(("guidance_scale", "top_p"), values, strict=True))


def preset_sampling(args, common: dict) -> None:
    """``prior_preset_sampling``: a prior preset's cached sampler (``prior.sample(n)``, the
    labels cycling through the classes, no sampling options: the stored defaults apply) with
    each of ``--stored-defaults`` stored in a copy of the prior (its config with them, its
    weights). Process CPU time of a warm call, median of ``--repeats`` (at least 3) turns
    that alternate between the settings, so background load falls on all alike."""
    import statistics

    import numpy as np

    from benchmarks import _harness
    from keras_vq import presets

    _harness.set_intra_op_threads(args.threads if common["backend"] != "jax" else None)
    own = presets.load(args.preset)
    priors = {}
    for text in args.stored_defaults:
        defaults = stored_defaults(text, own)
        prior = type(own).from_config({**own.get_config(), **defaults})
        prior.set_weights(own.get_weights())
        priors[text] = (prior, defaults)

    def measure(prior, count: int, seed: int) -> tuple[float, float]:
        """(process CPU seconds, wall seconds) of one ``prior.sample(count)``."""
        labels = None if own.num_classes is None else np.arange(count) % own.num_classes
        cpu, wall = time.process_time(), time.perf_counter()
        _harness.block(prior.sample(count, seed=seed, labels=labels))
        return time.process_time() - cpu, time.perf_counter() - wall

    for count in args.num_samples:
        first = {text: measure(prior, count, 0)[0] for text, (prior, _) in priors.items()}
        measures = {
            text: (lambda prior=prior, count=count: measure(prior, count, 1))
            for text, (prior, _) in priors.items()
        }
        values, errors = _harness.alternate(measures, max(args.repeats, 3))
        for text, (_, defaults) in priors.items():
            if text in errors:
                _harness.emit({"figure": "prior_preset_sampling", "error": errors[text]})
                continue
            cpu = statistics.median(v[0] for v in values[text])
            _harness.emit(
                {
                    "figure": "prior_preset_sampling",
                    **common,
                    "preset": args.preset,
                    "num_samples": count,
                    "stored": text,
                    **defaults,
                    "cpu_s": round(cpu, 4),
                    "cpu_s_min": round(min(v[0] for v in values[text]), 4),
                    "wall_s": round(statistics.median(v[1] for v in values[text]), 4),
                    "first_call_cpu_s": round(first[text], 3),
                    "turns": len(values[text]),
                    "threads": args.threads,
                }
            )


def full_pass_seconds(prior, num_samples: int, passes: int, np) -> float:
    """Median seconds of one position of the keras.io loop: ``predict`` on the full maps,
    then a Gumbel-max draw at that position (warm)."""
    height, width = prior.latent_shape
    codes = np.zeros((num_samples, height, width), "int32")
    prior.predict(codes, verbose=0, batch_size=num_samples)  # build the predict function
    rng, times = np.random.default_rng(0), []
    for position in range(passes):
        row, col = divmod(position, width)
        start = time.perf_counter()
        logits = prior.predict(codes, verbose=0, batch_size=num_samples)[:, row, col]
        gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, logits.shape)))
        codes[:, row, col] = np.argmax(logits + gumbel, axis=-1)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


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
