"""What the non-finite guard of keras_vq's train step costs, on every backend.

    python -m benchmarks.step_guard                        # all backends, jit on and off
    python -m benchmarks.step_guard --backends tensorflow --jit on --repeats 9

keras_vq's ``train_step`` skips the optimizer update of a batch whose loss or gradients are
not finite (``StepMixinBase._update_is_safe``, read inside the compiled step). Two
``VQVAE`` models with the default networks (28×28×1, K=128, D=16, batch 128, Adam) are timed
in the same process, in alternating rounds of one ``fit`` pass each:

- ``guarded``: keras_vq's step as shipped;
- ``unguarded``: the same class whose update is the optimizer's ``apply`` alone, as in
  Keras' stock step (no predicate, no conditional).

One JSON line per (backend, ``jit_compile``) with both images/s and
``guard_cost = unguarded images/s / guarded images/s - 1`` (goal ≤ 0.03, issue #17).
"""

from __future__ import annotations

import argparse

from benchmarks import _harness

GOAL = 0.03
IMAGE_SHAPE = (28, 28, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends", nargs="+", default=list(_harness.BACKENDS), choices=_harness.BACKENDS
    )
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed fit")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--_child", choices=["off", "on"], default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(guarded: bool, jit: bool):
    import keras

    from keras_vq.models import VQVAE

    cls = VQVAE
    if not guarded:
        backend = keras.backend.backend()

        # The update without its guard: the optimizer's apply alone, as a stock step does.
        class UnguardedVQVAE(VQVAE):
            if backend == "jax":

                def _stateless_update(self, loss, grads, trainable, optimizer_vars):
                    return self.optimizer.stateless_apply(optimizer_vars, grads, trainable)

            else:

                def _apply_update(self, loss, grads, variables):
                    if backend == "torch":
                        import torch

                        with torch.no_grad():
                            self.optimizer.apply(grads, variables)
                    else:
                        self.optimizer.apply(grads, variables)

        cls = UnguardedVQVAE
    model = cls(input_shape=IMAGE_SHAPE, num_embeddings=128, embedding_dim=16, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(), jit_compile=jit)
    return model


def run_child(args) -> None:
    import keras
    import numpy as np

    jit = args._child == "on"
    images = np.random.default_rng(0).random(
        (args.batch_size * args.steps, *IMAGE_SHAPE), dtype=np.float32
    )
    models = {
        name: (build(name == "guarded", jit), images, None) for name in ("guarded", "unguarded")
    }
    results = _harness.compare_training(keras, models, args.batch_size, args.warmup, args.repeats)
    record = {
        "benchmark": "step_guard",
        "backend": keras.backend.backend(),
        "jit_compile": jit,
        "batch_size": args.batch_size,
        "goal": GOAL,
        **_harness.machine(),
    }
    for name, figures in results.items():
        for key, value in figures.items():
            record[f"{name}_{key}"] = value
    if "images_per_s" in results["guarded"] and "images_per_s" in results["unguarded"]:
        cost = results["unguarded"]["images_per_s"] / results["guarded"]["images_per_s"] - 1
        record["guard_cost"] = round(cost, 4)
        record["goal_met"] = cost <= GOAL
    _harness.emit(record)


def run_all(args) -> list[dict]:
    forwarded = _harness.flags(args, "batch_size", "steps", "repeats", "warmup")
    configurations = [
        (
            backend,
            [*forwarded, "--_child", jit],
            {"benchmark": "step_guard", "backend": backend, "jit_compile": jit == "on"},
        )
        for jit in args.jit
        for backend in args.backends
    ]
    return _harness.run_configurations("step_guard", configurations, timeout=args.timeout)


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
