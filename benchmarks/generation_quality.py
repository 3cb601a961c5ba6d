"""Sample quality of the two-stage model (VQ-VAE, then a PixelCNN prior over its codes), the
way a user judges it: do the generated images read as the digits asked for?

    KERAS_BACKEND=tensorflow python -m benchmarks.generation_quality          # ~3 min
    python -m benchmarks.generation_quality --downsample 4 --num-embeddings 128 \
        --no-conditional --guidance-scales none                                # the old main job
    python -m benchmarks.generation_quality --preset pixelcnn_digits \
        --guidance-scales 1 1.25 1.5 --temperatures 0.9 1 --top-p none 0.95 \
        --sample-seeds 0 1                                                     # a sampling sweep
    python -m benchmarks.generation_quality --quick                            # smoke run

A ``VQVAE`` (``--downsample``, ``--num-embeddings``; the other arguments the model's
defaults) trains on the offline digits' train split at 32×32, its codes train a
``PixelCNNPrior`` (class-conditional with ``--label-dropout`` by default; ``--shifted-copies``
adds the codes of randomly shifted training images); or ``--preset`` loads a bundled pair
instead, or ``--models`` two saved ones (the main job's ``vqvae/vqvae.keras`` and
``prior/prior.keras``). ``--samples`` images are drawn for every (temperature, guidance scale,
top-p, sampling seed), the classes cycled, and judged against the held-out split:

- keras_vq's own (``keras_vq.evaluation.sample_quality`` with the bundled ``digits_classifier``):
  ``accuracy``, ``confident_share``, ``precision``, ``recall`` and ``fd`` on its penultimate
  features;
- two judges that share no code or training with ours, both fitted by scikit-learn on the
  original 8×8 digits' train split, the 32×32 images block-averaged back to 8×8: an ``SVC``
  (``svc_accuracy``, ``svc_confident_share``: max probability > 0.9), and an
  ``MLPClassifier`` (hidden layers 128 and 64) whose last hidden layer's 64 ReLU activations
  give ``mlp_fd``, the FID recipe with a network that is not ours;
- ``pixel_fd``: the Fréchet distance on the 64 block-averaged pixels.

Every Fréchet distance is also given as a ratio to real digits' (``*_fd_ratio``; the issue's
target is ≤ 1.5): its denominator ``*_fd_real`` is the mean FD of ``--real-draws`` random sets
of ``--samples`` real training digits (single sets scored 0.85–2× of it). Two sanity rows come
first: ``kind: real`` (another such set: ≈ 1 by construction) and ``kind: reconstructions``
(the VQ-VAE's reconstructions of that set: the decoder's share of the FD, what the prior
cannot beat). One JSON line each, with the reconstruction MSE and the prior's held-out bits
per code.
"""

from __future__ import annotations

import argparse
import math
import time

# The independent MLP judge: two hidden layers, the last one's activations are the features.
_MLP_HIDDEN = (128, 64)


def _optional(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="judge a bundled prior preset's pair")
    source.add_argument(
        "--models", nargs=2, metavar=("VQVAE", "PRIOR"), help="judge two saved .keras files"
    )
    parser.add_argument("--downsample", type=int, default=8)
    parser.add_argument("--num-embeddings", type=int, default=64)
    parser.add_argument("--vqvae-epochs", type=int, default=15)
    parser.add_argument("--prior-epochs", type=int, default=15)
    parser.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--shifted-copies", type=int, default=0, help="augmented code sets")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument(
        "--guidance-scales",
        type=_optional,
        nargs="+",
        default=[None, 1.5, 2.0],
        help="'none': the prior's own (off unless set)",
    )
    parser.add_argument(
        "--top-p",
        type=_optional,
        nargs="+",
        default=[None],
        help="'none': the prior's own (off unless set); 1: off",
    )
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--real-draws", type=int, default=20, help="real sets behind *_fd_real")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-seeds", type=int, nargs="+", default=None, help="(--seed)")
    parser.add_argument("--quick", action="store_true", help="1 epoch each, 40 samples")
    args = parser.parse_args(argv)
    if args.quick:
        args.vqvae_epochs, args.prior_epochs, args.samples, args.real_draws = 1, 1, 40, 2
    if args.sample_seeds is None:
        args.sample_seeds = [args.seed]
    args.trained = args.preset is None and args.models is None
    if not args.conditional and args.trained:
        args.label_dropout, args.guidance_scales = 0.0, [None]
    return args


def digits(split: str):
    """The offline digits at 32×32 and their labels, as NumPy."""
    import numpy as np

    from keras_vq.data import load

    batches = list(
        load(
            "digits", split, batch_size=512, shuffle=False, image_size=32, with_labels=True
        ).as_numpy_iterator()
    )
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def to8(images):
    """32×32 images in [0, 1] block-averaged to the original digits' 8×8 grid of 0…16."""
    images = images[..., 0].astype("float64")
    b, h, w = images.shape
    return images.reshape(b, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(b, 64) * 16.0


class IndependentJudges:
    """scikit-learn's SVC and MLP on the original 8×8 digits (train split): judges that are
    not ours. ``features`` are the MLP's last hidden layer's ReLU activations."""

    def __init__(self, seed: int, max_iter: int = 500):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from sklearn.svm import SVC

        from keras_vq.data import _digits_arrays  # the original 8×8 digits and our split

        images, labels, train = _digits_arrays()
        flat = images[train].reshape(len(train), -1).astype("float64")
        self.svc = SVC(gamma=0.001, C=10.0, probability=True, random_state=seed)
        self.svc.fit(flat, labels[train])
        self.mlp = MLPClassifier(_MLP_HIDDEN, alpha=1e-3, max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings():  # a few hundred epochs are plenty for 1,438 digits
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mlp.fit(flat / 16.0, labels[train])

    def features(self, pixels):
        """The MLP's last hidden layer on 8×8 pixels of 0…16."""
        import numpy as np

        hidden = pixels / 16.0
        for weights, bias in zip(self.mlp.coefs_[:-1], self.mlp.intercepts_[:-1]):
            hidden = np.maximum(hidden @ weights + bias, 0.0)  # MLPClassifier's default ReLU
        return hidden

    def classify(self, pixels, labels) -> dict:
        probabilities = self.svc.predict_proba(pixels)
        predicted = self.svc.classes_[probabilities.argmax(axis=1)]
        record = {"svc_confident_share": round(float((probabilities.max(1) > 0.9).mean()), 4)}
        if labels is not None:
            record["svc_accuracy"] = round(float((predicted == labels).mean()), 4)
        return record


class Judges:
    """Every judge's scores of a set of 32×32 images against the held-out digits, each FD also
    as a ratio to the mean FD of ``draws`` sets of ``samples`` real training digits."""

    SPACES = ("fd", "mlp_fd", "pixel_fd")

    def __init__(self, x_train, y_train, x_test, *, samples: int, draws: int, seed: int):
        import numpy as np

        self.x_test, self.test8 = x_test, to8(x_test)
        self.independent = IndependentJudges(seed)
        rng = np.random.default_rng(seed)
        picks = [rng.choice(len(x_train), samples, replace=False) for _ in range(draws + 1)]
        # The last draw is kept out of the denominators for the ``kind: real`` sanity row.
        self.sanity = x_train[picks[-1]], y_train[picks[-1]]
        real = [self.distances(x_train[p], y_train[p])[0] for p in picks[:-1]]
        self.fd_real = {name: float(np.mean([r[name] for r in real])) for name in self.SPACES}

    def distances(self, images, labels) -> tuple[dict, dict]:
        """The three Fréchet distances, and ours' other scores."""
        from keras_vq.evaluation import frechet_distance, sample_quality

        quality = sample_quality(images, self.x_test, labels=labels)
        pixels = to8(images)
        fds = {
            "fd": float(quality["fd"]),
            "mlp_fd": frechet_distance(
                self.independent.features(pixels), self.independent.features(self.test8)
            ),
            "pixel_fd": frechet_distance(pixels, self.test8),
        }
        return fds, quality

    def __call__(self, images, labels) -> dict:
        import numpy as np

        images = np.clip(images, 0.0, 1.0)  # as sample_quality and the PNG grids see them
        fds, quality = self.distances(images, labels)
        record = {k: round(float(quality[k]), 4) for k in ("confident_share", "precision")}
        record["recall"] = round(float(quality["recall"]), 4)
        if labels is not None:
            record["accuracy"] = round(float(quality["accuracy"]), 4)
        for name in self.SPACES:
            record[name] = round(fds[name], 4)
            record[f"{name}_real"] = round(self.fd_real[name], 4)
            record[f"{name}_ratio"] = round(fds[name] / self.fd_real[name], 3)
        return {**record, **self.independent.classify(to8(images), labels)}


def train_pair(args, x_train, y_train, x_test, y_test):
    """A fresh VQ-VAE and prior as the arguments say, and the prior's held-out bits/code."""
    import keras
    import numpy as np

    from keras_vq.backend import to_numpy
    from keras_vq.models import VQVAE, PixelCNNPrior

    vqvae = VQVAE(
        input_shape=(32, 32, 1),
        num_embeddings=args.num_embeddings,
        downsample=args.downsample,
        seed=args.seed,
    )
    vqvae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vqvae.fit(x_train, epochs=args.vqvae_epochs, batch_size=64, verbose=0)
    rng = np.random.default_rng(args.seed)
    images, labels = [x_train], [y_train]
    for _ in range(args.shifted_copies):  # whole-pixel shifts of up to 2 (of 32) each way
        shifts = rng.integers(-2, 3, size=(len(x_train), 2))
        images.append(np.stack([np.roll(x, tuple(s), (0, 1)) for x, s in zip(x_train, shifts)]))
        labels.append(y_train)
    codes = to_numpy(vqvae.encode(np.concatenate(images)))
    labels = np.concatenate(labels)
    test_codes = to_numpy(vqvae.encode(x_test))
    prior = PixelCNNPrior(
        args.num_embeddings,
        tuple(vqvae.latent_shape),
        num_classes=10 if args.conditional else None,
        label_dropout=args.label_dropout,
    )
    prior.compile(optimizer=keras.optimizers.Adam(1e-3))
    inputs, test_inputs = (
        ([codes, labels], [test_codes, y_test]) if args.conditional else (codes, test_codes)
    )
    prior.fit(inputs, epochs=args.prior_epochs, batch_size=64, verbose=0, shuffle=True)
    bits = prior.evaluate(test_inputs, verbose=0, return_dict=True)["loss"] / math.log(2.0)
    return vqvae, prior, round(bits, 4)


def main(argv=None) -> None:
    args = parse_args(argv)  # before importing Keras: --help answers at once

    import keras
    import numpy as np

    from benchmarks import _harness
    from keras_vq import presets
    from keras_vq.backend import to_numpy
    from keras_vq.models import generate

    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = digits("train"), digits("test")
    if args.trained:
        vqvae, prior, bits = train_pair(args, x_train, y_train, x_test, y_test)
    elif args.preset is not None:
        (vqvae, prior), bits = presets.load_pair(args.preset), None
    else:
        vqvae, prior = (keras.saving.load_model(path) for path in args.models)
        bits = None
    conditional = getattr(prior, "num_classes", None) is not None
    reconstructions = to_numpy(vqvae.decode(vqvae.encode(x_test)))
    base = {
        "benchmark": "generation_quality",
        "backend": keras.backend.backend(),
        **({"preset": args.preset} if args.preset else {}),
        **({"models": args.models} if args.models else {}),
        "downsample": args.downsample if args.trained else None,
        "num_embeddings": prior.num_embeddings,
        "conditional": conditional,
        "label_dropout": prior.label_dropout,
        "shifted_copies": args.shifted_copies if args.trained else None,
        "test_reconstruction_mse": round(float(np.mean((reconstructions - x_test) ** 2)), 6),
        "prior_test_bits_per_code": bits,
        "train_seconds": round(time.perf_counter() - start, 1),
        "num_samples": args.samples,
    }

    judges = Judges(
        x_train, y_train, x_test, samples=args.samples, draws=args.real_draws, seed=args.seed
    )
    real, real_labels = judges.sanity
    _harness.emit({**base, "kind": "real", **judges(real, real_labels)})
    rebuilt = to_numpy(vqvae.decode(vqvae.encode(real)))
    _harness.emit({**base, "kind": "reconstructions", **judges(rebuilt, real_labels)})
    sample_labels = np.arange(args.samples) % 10 if conditional else None
    for temperature in args.temperatures:
        for scale in args.guidance_scales:
            for top_p in args.top_p:
                for seed in args.sample_seeds:
                    options = dict(temperature=temperature, top_p=top_p, guidance_scale=scale)
                    generated = generate(
                        vqvae,
                        prior,
                        args.samples,
                        seed=seed,
                        labels=sample_labels,
                        batch_size=250,
                        **options,
                    )
                    # None: the prior's own scale and nucleus (a preset's defaults),
                    # recorded as used.
                    used = prior.sampling_options(top_p=top_p, guidance_scale=scale)
                    options.update(top_p=used["top_p"], guidance_scale=used["guidance_scale"])
                    record = {**base, "kind": "samples", **options, "sample_seed": seed}
                    _harness.emit({**record, **judges(to_numpy(generated), sample_labels)})


if __name__ == "__main__":
    main()
