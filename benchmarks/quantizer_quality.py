"""Held-out quality of a VQ-VAE per quantizer (issue 15): MSE and fraction of codes used.

    python -m benchmarks.quantizer_quality              # digits 28×28, 8 epochs each, TF
    python -m benchmarks.quantizer_quality --quick      # 1 epoch each (smoke run)
    python -m benchmarks.quantizer_quality --models fsq_8555 rvq_4x128 --epochs 20

Data: the offline ``digits`` resized to 28×28 (7×7 codes), the fixed ``split="train"`` for
training and ``split="test"`` (360 images) for every figure. Every model is
``VQVAE(input_shape=(28, 28, 1), filters=(32, 64), quantizer=...)``, Adam(1e-3), batch 64,
the same epochs and seed, trained one after another in this process (current backend):

- at ~10 bits per code: ``vq_k1024`` (``VectorQuantizer(1024, 16, **VQ_OPTIONS)``),
  ``fsq_8555`` (``FiniteScalarQuantizer([8, 5, 5, 5])``, 1000 codes, encoder outputs the 4
  channels, no auxiliary loss), ``fsq_8555_scaled`` (the same with the encoder's output
  multiplied by 10: the default encoder's outputs, std ≈ 0.04 at initialisation, all round to
  the zero level, so ``z_q ≡ 0``, the decoder's ReLUs see exactly 0 and no kernel gets a
  gradient; ``fsq_8555`` shows that failure), ``lfq_10bit`` (``LookupFreeQuantizer(num_bits=10)``),
  ``rvq_2x32`` (``ResidualVectorQuantizer(2, 32, 16, **VQ_OPTIONS)``);
- for the residual target: ``rvq_1x128`` and ``rvq_4x128`` (K=128 per stage);
- for the usage target: ``vq_k512_kmeans_restart`` (``VectorQuantizer(512, 16,
  kmeans_init=True, **VQ_OPTIONS)``); ``VQ_OPTIONS`` = VQVAE's defaults (EMA 0.9, restarts).

Prints one JSON line: per model the held-out ``mse`` (pixels in [0, 1]) and the test-set
``used_fraction`` of the codebook (``keras_vq.metrics.code_usage``; for a residual quantizer
the mean over stages, each stage's in ``used_fraction_per_stage``), and the issue's targets:
FSQ (``fsq_8555_scaled``) ``used_fraction`` ≥ 0.9; ``rvq_4x128`` MSE ≤ 0.5 × ``rvq_1x128``'s;
``vq_k512_kmeans_restart`` ``used_fraction`` ≥ 0.95.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import _harness

MODELS = (
    "vq_k1024",
    "fsq_8555",
    "fsq_8555_scaled",
    "lfq_10bit",
    "rvq_2x32",
    "rvq_1x128",
    "rvq_4x128",
    "vq_k512_kmeans_restart",
)
EMBEDDING_DIM = 16
FILTERS = (32, 64)
FSQ_USAGE_TARGET = 0.9
RVQ_MSE_RATIO_TARGET = 0.5
KMEANS_USAGE_TARGET = 0.95
FSQ_ENCODER_SCALE = 10.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 epoch per model")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    return args


# VQVAE's own defaults for the quantizer it builds: EMA codebook, dead-code restart.
VQ_OPTIONS = {"ema_decay": 0.9, "dead_code_threshold": 1.0}


def make_quantizer(name: str, seed: int):
    """The quantizer layer of model ``name``."""
    from keras_vq.layers import (
        FiniteScalarQuantizer,
        LookupFreeQuantizer,
        ResidualVectorQuantizer,
        VectorQuantizer,
    )

    if name == "vq_k1024":
        return VectorQuantizer(1024, EMBEDDING_DIM, **VQ_OPTIONS, seed=seed)
    if name.startswith("fsq_8555"):
        return FiniteScalarQuantizer([8, 5, 5, 5])
    if name == "lfq_10bit":
        return LookupFreeQuantizer(num_bits=10)
    if name == "vq_k512_kmeans_restart":
        return VectorQuantizer(
            512,
            EMBEDDING_DIM,
            kmeans_init=True,
            **VQ_OPTIONS,
            seed=seed,
        )
    stages, size = {"rvq_2x32": (2, 32), "rvq_1x128": (1, 128), "rvq_4x128": (4, 128)}[name]
    return ResidualVectorQuantizer(stages, size, EMBEDDING_DIM, **VQ_OPTIONS, seed=seed)


def train_and_evaluate(name: str, train, test_x, args) -> dict:
    import keras
    import numpy as np
    from keras import ops

    from keras_vq.metrics import code_usage
    from keras_vq.models import VQVAE, networks

    keras.utils.set_random_seed(args.seed)
    image_shape = tuple(test_x.shape[1:])
    quantizer = make_quantizer(name, args.seed)
    networks_kwargs = {}
    if name == "fsq_8555_scaled":
        # The default networks, with the encoder's output scaled out of FSQ's zero level.
        channels = len(quantizer.levels)
        inner = networks.build_conv_encoder(image_shape, channels, FILTERS)
        images = keras.Input(image_shape)
        outputs = keras.layers.Rescaling(FSQ_ENCODER_SCALE)(inner(images))
        grid = networks.latent_grid(image_shape, FILTERS)
        networks_kwargs = {
            "encoder": keras.Model(images, outputs),
            "decoder": networks.build_conv_decoder((*grid, channels), 1, FILTERS[::-1]),
        }
    model = VQVAE(input_shape=image_shape, filters=FILTERS, quantizer=quantizer, **networks_kwargs)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    start = time.perf_counter()
    history = model.fit(train, epochs=args.epochs, verbose=0).history
    record = {
        "codebook_size": model.num_embeddings,
        "embedding_dim": model.embedding_dim,
        "train_s": round(time.perf_counter() - start, 1),
        "final_train_loss": round(float(history["loss"][-1]), 5),
    }
    batches = [test_x[i : i + 128] for i in range(0, len(test_x), 128)]
    recon = np.concatenate([ops.convert_to_numpy(model(x, training=False)) for x in batches])
    record["mse"] = round(float(np.mean((recon - test_x) ** 2)), 6)
    codes = np.concatenate([ops.convert_to_numpy(model.encode(x)) for x in batches])
    stages = codes.reshape(*codes.shape[:3], -1)  # (N, h, w, stages): one stage unless RVQ
    fractions = [
        float(code_usage(stages[..., s], model.num_embeddings)["used_fraction"])
        for s in range(stages.shape[-1])
    ]
    record["used_fraction"] = round(float(np.mean(fractions)), 4)
    if stages.shape[-1] > 1:
        record["used_fraction_per_stage"] = [round(f, 4) for f in fractions]
    return record


def main(argv=None) -> None:
    import keras
    import numpy as np

    from keras_vq import data

    args = parse_args(argv)
    common = {"image_size": 28}
    train = data.load(
        "digits",
        split="train",
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
        drop_remainder=True,
        **common,
    )
    test = data.load("digits", split="test", batch_size=512, shuffle=False, **common)
    test_x = np.concatenate(list(test.as_numpy_iterator()))
    results = {}
    for name in args.models:
        try:
            results[name] = train_and_evaluate(name, train, test_x, args)
        except Exception as error:  # one failing model must not hide the others' figures
            results[name] = {"error": _harness.error_text(error)}
    record = {
        "benchmark": "quantizer_quality",
        "backend": keras.backend.backend(),
        "dataset": "digits",
        "image_shape": list(test_x.shape[1:]),
        "test_images": len(test_x),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "results": results,
        "targets": targets(results),
    }
    _harness.emit({**record, **_harness.versions(), **_harness.machine()})


def targets(results: dict) -> dict:
    """The issue's three targets: measured value, target and whether it is met."""
    out = {}

    def value(name, key):
        return results.get(name, {}).get(key)

    fsq = value("fsq_8555_scaled", "used_fraction")
    if fsq is not None:
        out["fsq_used_fraction"] = {
            "value": fsq,
            "target": f">= {FSQ_USAGE_TARGET}",
            "met": fsq >= FSQ_USAGE_TARGET,
        }
    one, four = value("rvq_1x128", "mse"), value("rvq_4x128", "mse")
    if one and four is not None:
        ratio = round(four / one, 3)
        out["rvq_4x128_mse_vs_1x128"] = {
            "value": ratio,
            "target": f"<= {RVQ_MSE_RATIO_TARGET}",
            "met": ratio <= RVQ_MSE_RATIO_TARGET,
        }
    kmeans = value("vq_k512_kmeans_restart", "used_fraction")
    if kmeans is not None:
        out["vq_k512_kmeans_restart_used_fraction"] = {
            "value": kmeans,
            "target": f">= {KMEANS_USAGE_TARGET}",
            "met": kmeans >= KMEANS_USAGE_TARGET,
        }
    return out


if __name__ == "__main__":
    main()
