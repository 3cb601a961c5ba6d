"""Held-out quality of a VQ-VAE per quantizer (issue 15): MSE and fraction of codes used.

    python -m benchmarks.quantizer_quality              # digits 28×28, 8 epochs each, ~10 min
    python -m benchmarks.quantizer_quality --quick      # 1 epoch each (smoke run)
    python -m benchmarks.quantizer_quality --models fsq_8555 rvq_4x128 --epochs 20

Data: the offline ``digits`` resized to 28×28 (7×7 codes), the fixed ``split="train"`` for
training and ``split="test"`` (359 images) for every figure but ``fsq_8555_generated``'s.
Every model is ``VQVAE(input_shape=(28, 28, 1), filters=(32, 64), quantizer=...)``,
Adam(1e-3), batch 64, the same epochs and seed, trained one after another in this process
(current backend):

- at ~10 bits per code: ``vq_k1024`` (``VectorQuantizer(1024, 16, **VQ_OPTIONS)``),
  ``fsq_8555`` (``FiniteScalarQuantizer([8, 5, 5, 5])``, 1000 codes, encoder outputs the 4
  channels, no auxiliary loss), ``fsq_8555_scaled`` (the same with the encoder's output
  multiplied by 10), ``fsq_8555_bn`` (the same with the encoder's output normalised per
  channel, ``BatchNormalization(momentum=0.9, center=False, scale=False)``, before FSQ),
  ``lfq_10bit`` (``LookupFreeQuantizer(num_bits=10)``), ``rvq_2x32``
  (``ResidualVectorQuantizer(2, 32, 16, **VQ_OPTIONS)``);
- for the FSQ usage target: ``fsq_8555_generated``, ``fsq_8555`` (default networks, no
  head) trained for ``--fsq-target-epochs`` (24) epochs on ``benchmarks.defaults.make_data``'s
  9,000 generated 28×28 digits (random affine and stroke changes of the training split), MSE and
  usage on 2,872 held-out renders (8 per test-split digit, same generator; 140,728 code
  positions), usage also on the first 718 of them (``make_data``'s held-out set ``a``) and
  on the 9,000 training digits;
- for the residual target: ``rvq_1x128`` and ``rvq_4x128`` (K=128 per stage);
- for the usage target: ``vq_k512_kmeans_restart`` (``VectorQuantizer(512, 16,
  kmeans_init=True, **VQ_OPTIONS)``); ``VQ_OPTIONS`` = VQVAE's defaults (EMA 0.9, restarts).

Usage: ``used_fraction`` is the fraction of the codebook's codes assigned at least once
over every position of the code maps of the held-out images (``keras_vq.metrics.code_usage``;
for a residual quantizer the mean over stages, each stage's in ``used_fraction_per_stage``).
It grows with the number of positions counted (see ``benchmarks/RESULTS.md``).

Prints one JSON line: per model the held-out ``mse`` (pixels in [0, 1]) and
``used_fraction``, and the issue's targets: FSQ (``fsq_8555_generated``)
``used_fraction`` ≥ 0.9; ``rvq_4x128`` MSE ≤ 0.5 × ``rvq_1x128``'s;
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
    "fsq_8555_bn",
    "fsq_8555_generated",
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
# fsq_8555_generated: its own data, epochs and held-out set (see the module docstring).
FSQ_TARGET_MODEL = "fsq_8555_generated"
FSQ_TARGET_EPOCHS = 24
FSQ_TARGET_HELDOUT_COPIES = 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fsq-target-epochs",
        type=int,
        default=FSQ_TARGET_EPOCHS,
        help=f"epochs of {FSQ_TARGET_MODEL} (on 9,000 generated digits)",
    )
    parser.add_argument("--quick", action="store_true", help="1 epoch per model")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = args.fsq_target_epochs = 1
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


def fsq_networks(name: str, image_shape, channels: int) -> dict:
    """The default networks with a head before FSQ: ``encoder``/``decoder`` for ``VQVAE``.

    ``fsq_8555_scaled``: the encoder's output ×10 (out of FSQ's zero level);
    ``fsq_8555_bn``: ``BatchNormalization(momentum=0.9, center=False, scale=False)``, each
    channel normalised to zero mean and unit variance (over the batch in training, the moving
    statistics at inference), so every channel's ``tanh`` bound spans all its levels.
    """
    import keras

    from keras_vq.models import networks

    inner = networks.build_conv_encoder(image_shape, channels, FILTERS)
    images = keras.Input(image_shape)
    if name == "fsq_8555_scaled":
        head = keras.layers.Rescaling(FSQ_ENCODER_SCALE)
    else:
        head = keras.layers.BatchNormalization(momentum=0.9, center=False, scale=False)
    grid = networks.latent_grid(image_shape, FILTERS)
    return {
        "encoder": keras.Model(images, head(inner(images))),
        "decoder": networks.build_conv_decoder((*grid, channels), 1, FILTERS[::-1]),
    }


def train_and_evaluate(name: str, train, test_x, args, epochs=None, usage_sets=None) -> dict:
    """Train model ``name`` on ``train`` (a dataset, or an array batched here), then measure.

    ``mse`` and ``used_fraction`` are on ``test_x``; ``usage_sets`` maps more record keys to
    image arrays whose ``used_fraction`` is recorded too.
    """
    import keras
    import numpy as np
    from keras import ops

    from keras_vq.metrics import code_usage
    from keras_vq.models import VQVAE

    keras.utils.set_random_seed(args.seed)
    image_shape = tuple(test_x.shape[1:])
    quantizer = make_quantizer(name, args.seed)
    networks_kwargs = {}
    if name in ("fsq_8555_scaled", "fsq_8555_bn"):
        networks_kwargs = fsq_networks(name, image_shape, len(quantizer.levels))
    model = VQVAE(input_shape=image_shape, filters=FILTERS, quantizer=quantizer, **networks_kwargs)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    epochs = args.epochs if epochs is None else epochs
    fit_kwargs = {}
    if isinstance(train, np.ndarray):
        fit_kwargs = {"batch_size": args.batch_size, "shuffle": True}
    start = time.perf_counter()
    history = model.fit(train, epochs=epochs, verbose=0, **fit_kwargs).history
    record = {
        "codebook_size": model.num_embeddings,
        "embedding_dim": model.embedding_dim,
        "epochs": epochs,
        "train_s": round(time.perf_counter() - start, 1),
        "final_train_loss": round(float(history["loss"][-1]), 5),
    }

    def batches(x):
        return [x[i : i + 128] for i in range(0, len(x), 128)]

    def used_fractions(x):
        codes = np.concatenate([ops.convert_to_numpy(model.encode(b)) for b in batches(x)])
        stages = codes.reshape(*codes.shape[:3], -1)  # (N, h, w, stages): 1 stage unless RVQ
        return [
            float(code_usage(stages[..., s], model.num_embeddings)["used_fraction"])
            for s in range(stages.shape[-1])
        ]

    recon = np.concatenate(
        [ops.convert_to_numpy(model(x, training=False)) for x in batches(test_x)]
    )
    record["mse"] = round(float(np.mean((recon - test_x) ** 2)), 6)
    fractions = used_fractions(test_x)
    record["used_fraction"] = round(float(np.mean(fractions)), 4)
    if len(fractions) > 1:
        record["used_fraction_per_stage"] = [round(f, 4) for f in fractions]
    for key, images in (usage_sets or {}).items():
        record[key] = round(float(np.mean(used_fractions(images))), 4)
    return record


def generated_digits(seed: int, copies: int = FSQ_TARGET_HELDOUT_COPIES, train_images=None):
    """``(train, heldout)``: ``benchmarks.defaults.make_data``'s 9,000 training digits and
    ``copies`` renders of each test-split digit by the generator of its held-out set ``a``
    (the first 718 are that set)."""
    import numpy as np

    from benchmarks import defaults

    train, _, _ = defaults.make_data(seed, train_images or defaults.TRAIN_IMAGES)
    rng = np.random.default_rng(1000 + seed)  # make_data's held-out ``a`` generator
    digits = np.concatenate([defaults._source_digits("test")] * copies)
    heldout = np.stack([defaults._render(d, rng, "jitter") for d in digits])[..., None]
    return train, heldout


def train_fsq_target(args) -> dict:
    """``fsq_8555_generated``: default networks trained on 9,000 generated digits, usage on
    2,872 held-out ones."""
    train_x, heldout_x = generated_digits(args.seed)
    record = train_and_evaluate(
        FSQ_TARGET_MODEL,
        train_x,
        heldout_x,
        args,
        epochs=args.fsq_target_epochs,
        usage_sets={
            "used_fraction_heldout_718": heldout_x[:718],
            "used_fraction_train": train_x,
        },
    )
    return {
        "dataset": "generated digits (benchmarks.defaults.make_data)",
        "train_images": len(train_x),
        "test_images": len(heldout_x),
        **record,
    }


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
            if name == FSQ_TARGET_MODEL:
                results[name] = train_fsq_target(args)
            else:
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

    fsq = value(FSQ_TARGET_MODEL, "used_fraction")
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
