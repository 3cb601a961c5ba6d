"""FiniteScalarQuantizer and LookupFreeQuantizer forward+backward vs vector-quantize-pytorch.

    python -m benchmarks.quantizers                  # torch and TensorFlow backends
    python -m benchmarks.quantizers --quick          # small sizes, 3 rounds
    python -m benchmarks.quantizers --backends jax   # our layer on JAX (the peer is torch)
    pip install -r benchmarks/requirements-peers.txt # the peer (benchmark-only)

One subprocess per Keras backend. In each, our layer and lucidrains' ``FSQ`` / ``LFQ`` (always
PyTorch, eager, in the same process) run one step each: a training-mode forward pass, the sum
of the outputs plus the auxiliary loss (LFQ: entropy penalty and commitment; FSQ has none),
and the gradient with respect to the inputs. Ours is compiled where the backend compiles
(``tf.function``, ``jax.jit``; eager on torch). Both sides see the same float32 vectors and
the same settings (``LFQ``: ``entropy_loss_weight=0.1``, ``commitment_loss_weight=0.25``,
``diversity_gamma=1``, ``inv_temperature=100``).

After a warm-up call each, the two are timed in alternating rounds (background load hits
both alike). One JSON line per (backend, layer, configuration): medians, minima and
``ratio = ours / peer`` (below 1: ours is faster). A peer that cannot be imported gives a
line with ``"error"``.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

from benchmarks import _harness

# name -> (layer, code configuration, number of vectors)
CASES = {
    "fsq_8555": ("fsq", [8, 5, 5, 5], 65536),
    "lfq_10bit": ("lfq", 10, 4096),
    "lfq_16bit": ("lfq", 16, 1024),
}
QUICK_VECTORS = {"fsq_8555": 16384, "lfq_10bit": 1024, "lfq_16bit": 256}
LFQ_SETTINGS = {"entropy_loss_weight": 0.1, "commitment_weight": 0.25, "diversity_gamma": 1.0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "tensorflow"],
        choices=list(_harness.BACKENDS),
    )
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed rounds")
    parser.add_argument(
        "--threads",
        default="1",
        help="intra-op threads of both sides (TF or JAX side too where it applies): a number "
        "or 'default'; 1 is far less noisy on a shared machine",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per backend")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    return args


def _peer(kind: str, config, x):
    """The same step for vector-quantize-pytorch's ``FSQ`` / ``LFQ`` (train mode, eager)."""
    import torch
    from vector_quantize_pytorch import FSQ, LFQ

    if kind == "fsq":
        peer = FSQ(levels=list(config)).train()
    else:
        peer = LFQ(
            dim=config,
            codebook_size=2**config,
            entropy_loss_weight=LFQ_SETTINGS["entropy_loss_weight"],
            commitment_loss_weight=LFQ_SETTINGS["commitment_weight"],
            diversity_gamma=LFQ_SETTINGS["diversity_gamma"],
        ).train()
    xp = torch.tensor(x[None], requires_grad=True)  # (batch=1, tokens, d)

    def step():
        xp.grad = None
        outputs = peer(xp)
        total = outputs[0].sum() + (outputs[2] if kind == "lfq" else 0.0)
        total.backward()
        return xp.grad

    return step


def _set_threads(backend: str, threads: str) -> None:
    if threads == "default":
        return
    import torch

    torch.set_num_threads(int(threads))
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(threads))


def run_child(args) -> None:
    import keras
    import numpy as np

    from keras_vq.layers import FiniteScalarQuantizer, LookupFreeQuantizer

    backend = keras.backend.backend()
    _set_threads(backend, args.threads)
    base = {
        "benchmark": "quantizers",
        "backend": backend,
        "peer": "vector_quantize_pytorch",
        "peer_version": _harness.versions(["vector-quantize-pytorch"]).get(
            "vector-quantize-pytorch"
        ),
        "threads": args.threads,
    }
    try:
        import vector_quantize_pytorch  # noqa: F401
    except Exception as error:  # not installed, or broken against these versions
        _harness.emit({**base, "error": f"import: {_harness.error_text(error)}"})
        return
    for case in args.cases:
        kind, config, num_vectors = CASES[case]
        if args.quick:
            num_vectors = QUICK_VECTORS[case]
        dim = len(config) if kind == "fsq" else config
        record = {**base, "case": case, "layer": kind, "num_vectors": num_vectors, "dim": dim}
        try:
            x = np.random.default_rng(0).normal(scale=0.5, size=(num_vectors, dim))
            x = x.astype("float32")
            if kind == "fsq":
                layer = FiniteScalarQuantizer(config)
            else:
                layer = LookupFreeQuantizer(num_bits=config, **LFQ_SETTINGS)
                record["rows_per_chunk"] = layer.rows_per_chunk
            layer.build((None, dim))
            ours, peer = _harness.forward_backward(layer, x, training=True), _peer(kind, config, x)
            ours(), peer()  # warm-up: tracing, compilation and first-call allocations
            times, errors = _harness.alternate(
                {"ours": partial(_harness.seconds, ours), "peer": partial(_harness.seconds, peer)},
                args.rounds,
            )
            if errors:
                raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))
        except Exception as error:
            _harness.emit({**record, "error": _harness.error_text(error)})
            continue
        ours_s, peer_s = statistics.median(times["ours"]), statistics.median(times["peer"])
        _harness.emit(
            {
                **record,
                "ours_median_s": round(ours_s, 5),
                "peer_median_s": round(peer_s, 5),
                "ours_min_s": round(min(times["ours"]), 5),
                "peer_min_s": round(min(times["peer"]), 5),
                "ratio": round(ours_s / peer_s, 3),
                "ratio_min": round(min(times["ours"]) / min(times["peer"]), 3),
                "rounds": args.rounds,
                **_harness.machine(),
            }
        )


def run_all(args) -> None:
    """One child process per backend; its lines are echoed as they come."""
    forwarded = _harness.flags(args, "cases", "rounds", "threads", "quick")
    configurations = [
        (
            backend,
            [*forwarded, "--_child", backend],
            {"benchmark": "quantizers", "backend": backend, "threads": args.threads},
        )
        for backend in args.backends
    ]
    _harness.run_configurations("quantizers", configurations, timeout=args.timeout, echo=True)


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
