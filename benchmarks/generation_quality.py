"""Sample quality of the two-stage model (VQ-VAE, then a PixelCNN prior over its codes), the
way a user judges it: do the generated images read as the digits asked for?

    KERAS_BACKEND=tensorflow python -m benchmarks.generation_quality          # ~3 min
    python -m benchmarks.generation_quality --downsample 4 --num-embeddings 128 \
        --no-conditional --guidance-scales none                                # the old main job
    python -m benchmarks.generation_quality --quick                            # smoke run

A ``VQVAE`` (``--downsample``, ``--num-embeddings``; the other arguments the model's
defaults) trains on the offline digits' train split at 32×32, its codes train a
``PixelCNNPrior`` (class-conditional with ``--label-dropout`` by default; ``--shifted-copies``
adds the codes of randomly shifted training images), and ``--samples`` images are drawn for
every (temperature, guidance scale) pair, the classes cycled. Two judges score them against the
held-out split:

- keras_vq's own (``keras_vq.evaluation.sample_quality`` with the bundled ``digits_classifier``):
  ``fd``, ``precision``, ``recall``, ``confident_share``, ``accuracy``, and ``fd_real``, the FD
  of as many real training digits, for scale;
- an independent one that shares no code or training with ours: scikit-learn's ``SVC`` on the
  original 8×8 digits (train split), the images block-averaged back to 8×8 (``svc_accuracy``,
  ``svc_confident_share``: max probability > 0.9), and the Fréchet distance on those 64
  pixels, as a ratio to real training digits' (``svc_fd_ratio``).

One JSON line per (temperature, guidance scale), with the reconstruction MSE and the prior's
held-out bits per code.
"""

from __future__ import annotations

import argparse
import math
import time


def _scale(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--downsample", type=int, default=8)
    parser.add_argument("--num-embeddings", type=int, default=64)
    parser.add_argument("--vqvae-epochs", type=int, default=15)
    parser.add_argument("--prior-epochs", type=int, default=15)
    parser.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--shifted-copies", type=int, default=0, help="augmented code sets")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument(
        "--guidance-scales", type=_scale, nargs="+", default=[None, 1.5, 2.0], help="'none': off"
    )
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 epoch each, 40 samples")
    args = parser.parse_args(argv)
    if args.quick:
        args.vqvae_epochs, args.prior_epochs, args.samples = 1, 1, 40
    if not args.conditional:
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


class SVCJudge:
    """scikit-learn's SVC on the 8×8 digits: the judge that is not ours."""

    def __init__(self, real_train, real_test, seed: int):
        import numpy as np
        from sklearn.svm import SVC

        from keras_vq.data import _digits_arrays  # the original 8×8 digits and our split

        images, labels, train = _digits_arrays()
        flat = images.reshape(len(images), -1).astype("float64")
        self.svc = SVC(gamma=0.001, C=10.0, probability=True, random_state=seed)
        self.svc.fit(flat[train], labels[train])
        self.test = self.to8(real_test)
        rng = np.random.default_rng(seed)
        real = real_train[rng.choice(len(real_train), len(real_test), replace=False)]
        self.fd_real = self.fd(self.to8(real), self.test)

    @staticmethod
    def to8(images):
        images = images[..., 0].astype("float64")
        b, h, w = images.shape
        return images.reshape(b, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(b, 64) * 16.0

    @staticmethod
    def fd(a, b) -> float:
        from keras_vq.evaluation import frechet_distance

        return frechet_distance(a, b)

    def __call__(self, images, labels) -> dict:
        flat = self.to8(images)
        probs = self.svc.predict_proba(flat)
        predicted = self.svc.classes_[probs.argmax(axis=1)]
        record = {
            "svc_confident_share": round(float((probs.max(axis=1) > 0.9).mean()), 4),
            "svc_fd_ratio": round(self.fd(flat[: len(self.test)], self.test) / self.fd_real, 3),
        }
        if labels is not None:
            record["svc_accuracy"] = round(float((predicted == labels).mean()), 4)
        return record


def main(argv=None) -> None:
    args = parse_args(argv)  # before importing Keras: --help answers at once

    import keras
    import numpy as np

    from benchmarks import _harness
    from keras_vq.backend import to_numpy
    from keras_vq.evaluation import sample_quality
    from keras_vq.models import VQVAE, PixelCNNPrior, generate

    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = digits("train"), digits("test")
    vqvae = VQVAE(
        input_shape=(32, 32, 1),
        num_embeddings=args.num_embeddings,
        downsample=args.downsample,
        seed=args.seed,
    )
    vqvae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vqvae.fit(x_train, epochs=args.vqvae_epochs, batch_size=64, verbose=0)
    reconstructions = to_numpy(vqvae.decode(vqvae.encode(x_test)))
    mse = float(np.mean((reconstructions - x_test) ** 2))

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
    train_seconds = time.perf_counter() - start

    svc = SVCJudge(x_train, x_test, args.seed)
    real = sample_quality(x_train[: args.samples], x_test, labels=y_train[: args.samples])
    sample_labels = np.arange(args.samples) % 10 if args.conditional else None
    for temperature in args.temperatures:
        for scale in args.guidance_scales:
            generated = to_numpy(
                generate(
                    vqvae,
                    prior,
                    args.samples,
                    temperature=temperature,
                    seed=args.seed,
                    labels=sample_labels,
                    batch_size=250,
                    top_p=args.top_p,
                    guidance_scale=scale,
                )
            )
            quality = sample_quality(generated, x_test, labels=sample_labels)
            record = {
                "benchmark": "generation_quality",
                "backend": keras.backend.backend(),
                "downsample": args.downsample,
                "num_embeddings": args.num_embeddings,
                "conditional": args.conditional,
                "label_dropout": args.label_dropout,
                "shifted_copies": args.shifted_copies,
                "temperature": temperature,
                "guidance_scale": scale,
                "top_p": args.top_p,
                "test_reconstruction_mse": round(mse, 6),
                "prior_test_bits_per_code": round(bits, 4),
                "train_seconds": round(train_seconds, 1),
                **{k: round(float(quality[k]), 4) for k in ("fd", "precision", "recall")},
                "fd_real": round(float(real["fd"]), 4),
                "confident_share": round(float(quality["confident_share"]), 4),
                **svc(generated, sample_labels),
            }
            if sample_labels is not None:
                record["accuracy"] = round(float(quality["accuracy"]), 4)
            _harness.emit(record)


if __name__ == "__main__":
    main()
