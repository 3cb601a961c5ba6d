"""VectorQuantizer forward+backward vs Sonnet and lucidrains' vector-quantize-pytorch.

    python -m benchmarks.peers_vq                      # 4096 and 32768 vectors, D=64, K=512
    python -m benchmarks.peers_vq --quick              # 4096 vectors, 3 rounds
    pip install -r benchmarks/requirements-peers.txt   # the peers (benchmark-only)

Like is compared with like, in the same run on the same machine, one subprocess per Keras
backend (a process has one backend):

- TensorFlow backend vs Sonnet 2 (``snt.nets.VectorQuantizer`` / ``VectorQuantizerEMA``),
  both inside ``tf.function`` (no XLA);
- torch backend vs ``vector_quantize_pytorch.VectorQuantize``, both eager.

Two modes per pair:

- ``grad``: codebook learnt by gradients; inference-mode forward (no state update), the VQ
  loss plus the sum of the outputs, gradients w.r.t. the inputs *and* the codebook (our side is
  ``benchmarks._harness.forward_backward``). Peers:
  ``snt.nets.VectorQuantizer(is_training=False)``,
  ``VectorQuantize(ema_update=False, learnable_codebook=True)`` in ``eval()`` mode.
- ``ema``: EMA codebook (decay 0.99); training-mode forward that updates the EMA statistics,
  commitment loss plus the sum of the outputs, gradient w.r.t. the inputs. Peers:
  ``snt.nets.VectorQuantizerEMA(is_training=True)``, ``VectorQuantize(decay=0.99)`` in
  ``train()`` mode.

Ours and the peer are timed in alternating rounds (after a warm-up call each), so background
load hits both alike; one JSON line per (backend, peer, mode, size) with the medians and
``ratio = ours / peer`` (below 1: ours is faster). A peer that cannot be imported gives a line
with ``"error"`` and the run goes on.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

from benchmarks import _harness

DEFAULT_SIZES = (4096, 32768)
PAIRS = {"tensorflow": "sonnet", "torch": "vector_quantize_pytorch"}
PEER_DISTRIBUTIONS = {"sonnet": "dm-sonnet", "vector_quantize_pytorch": "vector-quantize-pytorch"}
MODES = ("grad", "ema")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--num-embeddings", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=None, help="our layer's chunk_size")
    parser.add_argument(
        "--threads",
        nargs="+",
        default=["default", "1"],
        help="intra-op thread settings to run, each for both sides (TF / torch): 'default' "
        "(the libraries' own) or a number; 1 thread is far less noisy on a shared machine",
    )
    parser.add_argument("--rounds", type=int, default=9, help="alternating timed rounds")
    parser.add_argument("--backends", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--timeout", type=float, default=900, help="seconds per backend")
    parser.add_argument("--quick", action="store_true", help="4096 vectors, 3 rounds")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.threads = [4096], 3, ["default"]
    return args


# ---------------------------------------------------------------- TensorFlow vs Sonnet
def _tf_steps(mode: str, x, num_embeddings: int, kw: dict):
    """(ours, peer) zero-argument step functions on the TensorFlow backend."""
    import sonnet as snt
    import tensorflow as tf
    from keras import ops

    from keras_vq.layers import VectorQuantizer

    dim = x.shape[-1]
    xt = tf.constant(x)
    if mode == "grad":
        ours_layer = VectorQuantizer(num_embeddings, dim, **kw)
        ours_layer.build((None, dim))
        peer_layer = snt.nets.VectorQuantizer(dim, num_embeddings, commitment_cost=0.25)
        # Sonnet creates its codebook in the first call, inside the traced step.
        ours = _harness.forward_backward(ours_layer, x, training=False, codebook=True)
        return ours, _sonnet_step(tf, peer_layer, xt, False, lambda: [xt, peer_layer.embeddings])

    ours_layer = VectorQuantizer(num_embeddings, dim, ema_decay=0.99, **kw)
    ours_layer.build((None, dim))

    @tf.function
    def ours_step():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out, loss = ours_layer(xt, training=True, return_loss=True)
            total = ops.sum(out) + loss
        return tape.gradient(total, xt)

    peer_layer = snt.nets.VectorQuantizerEMA(dim, num_embeddings, commitment_cost=0.25, decay=0.99)
    return lambda: ours_step().numpy(), _sonnet_step(tf, peer_layer, xt, True, lambda: xt)


def _sonnet_step(tf, layer, xt, is_training: bool, sources):
    """Compiled Sonnet forward+backward: the gradient of ``sum(quantize) + loss``.

    ``sources()`` names what to differentiate with respect to; it is called inside the step,
    after Sonnet has created its variables.
    """

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = layer(xt, is_training=is_training)
            loss = tf.reduce_sum(out["quantize"]) + out["loss"]
        return tape.gradient(loss, sources())

    return lambda: tf.nest.map_structure(lambda g: g.numpy(), step())


# ---------------------------------------------------------------- torch vs lucidrains
def _torch_steps(mode: str, x, num_embeddings: int, kw: dict):
    import torch
    from vector_quantize_pytorch import VectorQuantize

    from keras_vq.layers import VectorQuantizer

    dim = x.shape[-1]
    if mode == "grad":
        ours_layer = VectorQuantizer(num_embeddings, dim, **kw)
        ours_layer.build((None, dim))
        ours = _harness.forward_backward(ours_layer, x, training=False, codebook=True)
        peer_layer = VectorQuantize(
            dim=dim,
            codebook_size=num_embeddings,
            commitment_weight=0.25,
            ema_update=False,
            learnable_codebook=True,
        ).eval()
    else:
        ours_layer = VectorQuantizer(num_embeddings, dim, ema_decay=0.99, **kw)
        ours_layer.build((None, dim))
        xo = torch.tensor(x, requires_grad=True)

        def ours():
            xo.grad = None
            out, loss = ours_layer(xo, training=True, return_loss=True)
            (out.sum() + loss).backward()
            return xo.grad

        peer_layer = VectorQuantize(
            dim=dim, codebook_size=num_embeddings, commitment_weight=0.25, decay=0.99
        ).train()

    xp = torch.tensor(x[None], requires_grad=True)  # (batch=1, tokens, D)

    def peer():
        xp.grad = None
        peer_layer.zero_grad(set_to_none=True)
        quantize, _, loss = peer_layer(xp)
        (quantize.sum() + loss.sum()).backward()
        return xp.grad

    return ours, peer


def run_child(args) -> None:
    import keras
    import numpy as np

    backend = keras.backend.backend()
    threads = args.threads[0]
    if threads != "default":
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        else:
            import torch

            torch.set_num_threads(int(threads))
    peer_module = PAIRS[backend]
    base = {
        "benchmark": "peers_vq",
        "backend": backend,
        "peer": peer_module,
        "peer_version": _harness.versions([PEER_DISTRIBUTIONS[peer_module]]).get(
            PEER_DISTRIBUTIONS[peer_module]
        ),
        "embedding_dim": args.embedding_dim,
        "num_embeddings": args.num_embeddings,
        "threads": threads,
    }
    try:
        __import__(peer_module)
    except Exception as error:  # not installed, or broken against these versions
        _harness.emit({**base, "error": f"import {peer_module}: {_harness.error_text(error)}"})
        return
    # Our layer as users get it, unless --chunk-size overrides its default.
    kw = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    base["chunk_size"] = args.chunk_size or "default"
    make_steps = _tf_steps if backend == "tensorflow" else _torch_steps
    for mode in args.modes:
        for n in args.sizes:
            record = {**base, "mode": mode, "num_vectors": n}
            try:
                x = np.random.default_rng(0).normal(size=(n, args.embedding_dim))
                ours, peer = make_steps(mode, x.astype("float32"), args.num_embeddings, kw)
                ours(), peer()  # warm-up: tracing and first-call allocations
                times, errors = _harness.alternate(
                    {
                        "ours": partial(_harness.seconds, ours),
                        "peer": partial(_harness.seconds, peer),
                    },
                    args.rounds,
                )
                if errors:
                    raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))
                t_ours, t_peer = times["ours"], times["peer"]
            except Exception as error:
                _harness.emit({**record, "error": _harness.error_text(error)})
                continue
            ours_s, peer_s = statistics.median(t_ours), statistics.median(t_peer)
            _harness.emit(
                {
                    **record,
                    "ours_median_s": round(ours_s, 4),
                    "peer_median_s": round(peer_s, 4),
                    "ours_min_s": round(min(t_ours), 4),
                    "peer_min_s": round(min(t_peer), 4),
                    "ratio": round(ours_s / peer_s, 3),
                    "ratio_min": round(min(t_ours) / min(t_peer), 3),
                    "rounds": args.rounds,
                    **_harness.machine(),
                }
            )


def run_all(args) -> None:
    """One child process per (thread setting, backend); its lines are echoed as they come."""
    forwarded = _harness.flags(
        args, "sizes", "modes", "rounds", "embedding_dim", "num_embeddings", "chunk_size"
    )
    configurations = [
        (
            backend,
            [*forwarded, "--threads", threads, "--_child", backend],
            {
                "benchmark": "peers_vq",
                "backend": backend,
                "peer": PAIRS[backend],
                "threads": threads,
            },
        )
        for threads in args.threads
        for backend in args.backends
    ]
    _harness.run_configurations("peers_vq", configurations, timeout=args.timeout, echo=True)


def main(argv=None) -> None:
    _harness.script_main(parse_args, run_child, run_all, argv)


if __name__ == "__main__":
    main()
