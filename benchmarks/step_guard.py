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

One JSON line per (backend, ``jit_compile``) with both median images/s and ``guard_cost``,
the median over the rounds of ``unguarded images/s / guarded images/s - 1`` (goal ≤ 0.03,
issue #17), with its spread.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks import _harness

GOAL = 0.03
IMAGE_SHAPE = (28, 28, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _harness.add_training_timing_args(parser, steps=20, repeats=9)
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
    _harness.set_intra_op_threads(args.threads)
    images = np.random.default_rng(0).random(
        (args.batch_size * args.steps, *IMAGE_SHAPE), dtype=np.float32
    )
    models = {name: build(name == "guarded", jit) for name in ("guarded", "unguarded")}
    for model in models.values():
        model.fit(images[: args.batch_size * args.warmup], batch_size=args.batch_size, verbose=0)
    measures = {
        name: lambda m=model: _harness.fit_images_per_s(keras, m, images, None, args.batch_size)[0]
        for name, model in models.items()
    }
    rates, errors = _harness.alternate(measures, args.repeats)
    record = {
        "benchmark": "step_guard",
        "backend": keras.backend.backend(),
        "jit_compile": jit,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads or "default",
        "goal": GOAL,
        **_harness.machine(),
    }
    for name, error in errors.items():
        record[f"{name}_error"] = error
    for name, values in rates.items():
        record[f"{name}_images_per_s"] = round(statistics.median(values), 1)
    if not errors:
        # Paired per round: load from other processes changes between rounds, not within one.
        costs = [u / g - 1 for g, u in zip(rates["guarded"], rates["unguarded"])]
        record["guard_cost"] = round(statistics.median(costs), 4)
        record["guard_cost_spread"] = [round(min(costs), 4), round(max(costs), 4)]
        record["goal_met"] = record["guard_cost"] <= GOAL
    _harness.emit(record)


def run_all(args) -> list[dict]:
    forwarded = _harness.flags(args, "batch_size", "steps", "repeats", "warmup", "threads")
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
