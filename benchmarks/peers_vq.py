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
  ``benchmarks.vq_layer.fwd_bwd_fn``). Peers: ``snt.nets.VectorQuantizer(is_training=False)``,
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
import json
import os
import statistics
import subprocess
import sys
import time

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


def version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


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

        @tf.function
        def ours_step():
            # As benchmarks.vq_layer.fwd_bwd_fn, but the codebook gradient of a gather is
            # IndexedSlices: densify it in the graph, as Sonnet's one-hot matmul gives dense.
            with tf.GradientTape() as tape:
                tape.watch(xt)
                out = ours_layer(xt, training=False)
                loss = ops.sum(out) + ours_layer.losses[0]
            grads = tape.gradient(loss, [xt, ours_layer.codebook.value])
            return [tf.convert_to_tensor(g) for g in grads]

        peer_layer = snt.nets.VectorQuantizer(dim, num_embeddings, commitment_cost=0.25)

        @tf.function
        def peer_step():
            with tf.GradientTape() as tape:
                tape.watch(xt)
                out = peer_layer(xt, is_training=False)
                loss = tf.reduce_sum(out["quantize"]) + out["loss"]
            return tape.gradient(loss, [xt, peer_layer.embeddings])

        peer_step()  # creates Sonnet's variables outside the timed calls
        return lambda: [g.numpy() for g in ours_step()], lambda: [g.numpy() for g in peer_step()]

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

    @tf.function
    def peer_step():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = peer_layer(xt, is_training=True)
            loss = tf.reduce_sum(out["quantize"]) + out["loss"]
        return tape.gradient(loss, xt)

    peer_step()
    return lambda: ours_step().numpy(), lambda: peer_step().numpy()


# ---------------------------------------------------------------- torch vs lucidrains
def _torch_steps(mode: str, x, num_embeddings: int, kw: dict):
    import torch
    from vector_quantize_pytorch import VectorQuantize

    from benchmarks.vq_layer import fwd_bwd_fn
    from keras_vq.layers import VectorQuantizer

    dim = x.shape[-1]
    if mode == "grad":
        ours_layer = VectorQuantizer(num_embeddings, dim, **kw)
        ours_layer.build((None, dim))
        ours = fwd_bwd_fn(ours_layer, x)
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


def _alternate(ours, peer, rounds: int) -> tuple[list[float], list[float]]:
    ours()
    peer()
    t_ours, t_peer = [], []
    for _ in range(rounds):
        for fn, times in ((ours, t_ours), (peer, t_peer)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return t_ours, t_peer


def run_child(args) -> None:
    import keras
    import numpy as np

    from benchmarks import _harness

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
        "peer_version": version(PEER_DISTRIBUTIONS[peer_module]),
        "embedding_dim": args.embedding_dim,
        "num_embeddings": args.num_embeddings,
        "threads": threads,
    }
    try:
        __import__(peer_module)
    except Exception as error:  # not installed, or broken against these versions
        _harness.emit({**base, "error": f"import {peer_module}: {type(error).__name__}: {error}"})
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
                t_ours, t_peer = _alternate(ours, peer, args.rounds)
            except Exception as error:
                _harness.emit({**record, "error": f"{type(error).__name__}: {error}"})
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


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._child:
        run_child(args)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for backend, threads in [(b, t) for t in args.threads for b in args.backends]:
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        cmd = [sys.executable, "-m", "benchmarks.peers_vq", "--_child", backend]
        cmd += ["--sizes", *map(str, args.sizes), "--modes", *args.modes]
        cmd += ["--rounds", str(args.rounds), "--embedding-dim", str(args.embedding_dim)]
        cmd += ["--num-embeddings", str(args.num_embeddings)]
        if args.chunk_size:
            cmd += ["--chunk-size", str(args.chunk_size)]
        cmd += ["--threads", threads]
        base = {
            "benchmark": "peers_vq",
            "backend": backend,
            "peer": PAIRS[backend],
            "threads": threads,
        }
        try:
            result = subprocess.run(
                cmd, env=env, cwd=root, capture_output=True, text=True, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            print(json.dumps({**base, "error": f"timeout after {args.timeout:.0f} s"}), flush=True)
            continue
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            print(line, flush=True)
        if result.returncode or not lines:
            print(result.stderr[-3000:], file=sys.stderr)
            error = f"child exited with {result.returncode}: {result.stderr.strip()[-300:]}"
            print(json.dumps({**base, "error": error}), flush=True)


if __name__ == "__main__":
    main()
