"""VQ-VAE training images/s: keras_vq's ``VQVAE`` against a naive VQ-VAE, on every backend.

    python -m benchmarks.train_throughput              # all backends, jit on and off
    python -m benchmarks.train_throughput --quick      # TF only, a few steps
    python -m benchmarks.train_throughput --backends tensorflow --steps 40 --repeats 5

Same networks, same data shapes, same optimizer, batch 128, MNIST-sized synthetic images
(28×28×1), K=128, D=16; the encoder (Conv2D 32/64 stride 2 + 1×1 to D) and decoder (mirrored
Conv2DTranspose, 3×3 output convolution) are ``keras_vq.models.networks``' defaults. Three
models per (backend, ``jit_compile``):

- ``naive_vqvae``: the baseline, ``benchmarks.naive_vqvae.NaiveVQVAE`` — the paper's equations
  written directly in ``keras.ops`` (full N×K distance matrix, one-hot matmul, gradient
  codebook, ``add_loss``) under Keras' stock train step;
- ``keras_vq``: ``keras_vq.models.VQVAE`` with those networks passed as ``encoder=``/``decoder=``;
- ``plain_ae``: the same networks with no quantizer under the stock step, the floor that the
  backend's convolutions set.

One subprocess per (backend, ``jit_compile``) holds all three: each is built and warmed up
(``--warmup`` steps: tracing, compilation), then they take turns in ``--repeats`` rounds of one
timed ``fit`` of ``--steps`` steps each (timed from the end of the first step to the end of the
last), so load from other processes hits all of them alike. One JSON line per model with the
median and best images/s; ``keras_vq`` lines carry ``ratio`` = ours / naive and
``ratio_vs_plain_ae``, both from the same process. The last line summarises the target:
≥ 1.2× the naive baseline on TensorFlow.
"""

from __future__ import annotations

import argparse

from benchmarks import _harness

TARGET = 1.2
IMAGE_SHAPE = (28, 28, 1)
MODELS = ("naive_vqvae", "keras_vq", "plain_ae")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _harness.add_training_timing_args(parser, steps=25, repeats=3)
    parser.add_argument("--max-seconds", type=float, default=40, help="cap per timed fit")
    parser.add_argument("--num-embeddings", type=int, default=128)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--ema-decay", type=float, default=None, help="ours only")
    parser.add_argument("--quick", action="store_true", help="TF only, 6 steps, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.backends, args.steps, args.repeats, args.warmup = ["tensorflow"], 6, 1, 2
    return args


def build(name: str, args):
    """A compiled model and its ``fit`` target (``None``: the model's own step needs none)."""
    import keras

    from benchmarks.naive_vqvae import NaiveVQVAE
    from keras_vq.models import VQVAE, networks

    encoder = networks.build_conv_encoder(IMAGE_SHAPE, args.embedding_dim)
    grid = networks.latent_grid(IMAGE_SHAPE, (32, 64))
    decoder = networks.build_conv_decoder((*grid, args.embedding_dim), IMAGE_SHAPE[-1])
    jit = args._child == "on"
    if name == "keras_vq":
        model = VQVAE(
            input_shape=IMAGE_SHAPE,
            num_embeddings=args.num_embeddings,
            embedding_dim=args.embedding_dim,
            ema_decay=args.ema_decay,
            encoder=encoder,
            decoder=decoder,
        )
        model.compile(optimizer=keras.optimizers.Adam(), jit_compile=jit)
        return model, False
    if name == "naive_vqvae":
        model = NaiveVQVAE(encoder, decoder, args.num_embeddings)
    else:
        inputs = keras.Input(IMAGE_SHAPE)
        model = keras.Model(inputs, decoder(encoder(inputs)), name="plain_ae")
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse", jit_compile=jit)
    return model, True


def run_child(args) -> None:
    """Build the three models in this process and time them in alternating rounds."""
    import keras
    import numpy as np

    _harness.set_intra_op_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.random((args.batch_size * args.steps, *IMAGE_SHAPE), dtype=np.float32)
    base = {
        "benchmark": "train_throughput",
        "backend": keras.backend.backend(),
        "jit_compile": args._child == "on",
        "batch_size": args.batch_size,
        "num_embeddings": args.num_embeddings,
        "embedding_dim": args.embedding_dim,
        "threads": args.threads or "default",
    }
    models = {}
    for name in MODELS:
        try:
            model, needs_target = build(name, args)
        except Exception as error:
            _harness.emit({**base, "model": name, "error": _harness.error_text(error)})
            continue
        models[name] = (model, images, images if needs_target else None)
    results = _harness.compare_training(
        keras, models, args.batch_size, args.warmup, args.repeats, args.max_seconds
    )
    extra = {**_harness.versions(), **_harness.machine()}
    for name, figures in results.items():
        ema = {"ema_decay": args.ema_decay} if name == "keras_vq" else {}
        _harness.emit({**base, "model": name, **ema, **figures, **extra})


def add_ratios(records: list[dict]) -> list[dict]:
    """Ours / reference (same backend and ``jit_compile``) on every keras_vq record, + summary.

    ``ratio``: vs the naive VQ-VAE; ``ratio_vs_plain_ae``: vs the same networks without a
    quantizer (what keras_vq's quantizer and step cost on top of the convolutions). Both are
    medians of per-round ratios (``_harness.paired_ratio``): rounds run back to back, so a
    round's ratio cancels the machine's slow and fast spells that the medians of each
    model's rates do not.
    """
    by_key = {
        (r["model"], r["backend"], r["jit_compile"]): r for r in records if "images_per_s" in r
    }
    for r in records:
        if r.get("model") != "keras_vq" or "images_per_s" not in r:
            continue
        for reference, key in (("naive_vqvae", "ratio"), ("plain_ae", "ratio_vs_plain_ae")):
            other = by_key.get((reference, r["backend"], r["jit_compile"]))
            ratio = None if other is None else _harness.paired_ratio(r, other)
            if ratio is not None:
                r[key] = ratio
    summary = {"benchmark": "train_throughput_summary", "target_ratio_tf": TARGET}
    tf_ratios = {
        f"ratio_tf_{'jit' if r['jit_compile'] else 'nojit'}": r["ratio"]
        for r in records
        if r.get("model") == "keras_vq" and r.get("backend") == "tensorflow" and "ratio" in r
    }
    summary.update(tf_ratios)
    if tf_ratios:
        summary["target_met"] = all(v >= TARGET for v in tf_ratios.values())
    return [*records, summary]


def run_all(args) -> list[dict]:
    """One child process per (jit_compile, backend); then the ratios and the summary."""
    forwarded = _harness.flags(
        args,
        "batch_size",
        "steps",
        "repeats",
        "warmup",
        "max_seconds",
        "num_embeddings",
        "embedding_dim",
        "ema_decay",
        "threads",
    )
    configurations = [
        (
            backend,
            [*forwarded, "--_child", jit],
            {"benchmark": "train_throughput", "backend": backend, "jit_compile": jit == "on"},
        )
        for jit in args.jit
        for backend in args.backends
    ]
    records = _harness.run_configurations(
        "train_throughput", configurations, timeout=args.timeout, min_records=len(MODELS)
    )
    return add_ratios(records)


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
