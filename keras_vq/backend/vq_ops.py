"""Memory-lean kernels of the vector quantizer: a sequential row-chunk map and a fused
straight-through quantization with its own gradient.

At 2^20 vectors × 64 dims one ``(N, D)`` float32 tensor is 256 MiB, so every temporary and
every tensor autograd keeps for the backward pass counts. The generic formulation
(``keras.ops.map`` over padded chunks, ``vq_loss`` and ``z + sg[e - z]``) pads a copy of the
inputs, lets ``tf.map_fn`` run ten chunks at once, and keeps several ``(N, D)`` differences
alive between the forward and the backward pass. These helpers do the same arithmetic with
one ``(N, D)`` tensor beyond the output in each direction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras


def row_chunk_map(
    fn: Callable, rows: Any, chunk_size: int, dtype: str = "int32", parallel_iterations: int = 1
):
    """``concatenate([fn(rows[i:i + chunk_size]) for i in range(0, N, chunk_size)])``.

    The chunks run one after the other (``tf.while_loop``, by default with
    ``parallel_iterations=1``, ``lax.fori_loop``, a Python loop on torch), each a slice of
    ``rows`` (no padded copy);
    the last, shorter chunk is one more call of ``fn``. Peak memory is that of one ``fn`` call
    plus the result.

    Args:
        fn: maps ``(M, ...)`` rows to ``(M,)`` values of ``dtype``; called with ``M`` =
            ``chunk_size`` and once with the remaining rows.
        rows: a tensor ``(N, ...)`` with a static or dynamic ``N``, or a tuple of such tensors
            with the same ``N`` (``fn`` then gets a tuple of their chunks).
        chunk_size: rows per call.
        dtype: dtype of ``fn``'s output.
        parallel_iterations: chunks TensorFlow may run at once (more speed for small blocks,
            one more block of memory each); JAX and torch run one at a time.

    Returns:
        ``(N,)`` tensor of ``dtype``.
    """
    several = isinstance(rows, (tuple, list))
    tensors = tuple(rows) if several else (rows,)

    def call(chunks):
        return fn(tuple(chunks)) if several else fn(chunks[0])

    num_rows = tensors[0].shape[0]
    if isinstance(num_rows, int) and num_rows <= chunk_size:
        # One block: no loop to build.
        return call(tensors)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_row_chunk_map(call, tensors, chunk_size, dtype, parallel_iterations)
    if backend == "jax":
        return _jax_row_chunk_map(call, tensors, chunk_size, dtype)
    import torch

    results = [
        call([t[start : start + chunk_size] for t in tensors])
        for start in range(0, num_rows, chunk_size)
    ]
    if not results:
        return torch.zeros((0,), dtype=getattr(torch, dtype), device=tensors[0].device)
    return torch.cat(results, dim=0)


def _tf_row_chunk_map(call, tensors, chunk_size, dtype, parallel_iterations):
    import tensorflow as tf

    tensors = [tf.convert_to_tensor(t) for t in tensors]
    num_rows = tf.shape(tensors[0])[0]
    num_full = num_rows // chunk_size
    # Known element shape: stack() also works for zero chunks.
    results = tf.TensorArray(dtype, size=num_full, element_shape=[chunk_size])

    def body(i, results):
        # A leading-axis slice of a contiguous tensor shares its buffer (no copy).
        chunks = [
            tf.slice(
                t,
                [i * chunk_size] + [0] * (t.shape.rank - 1),
                [chunk_size] + [-1] * (t.shape.rank - 1),
            )
            for t in tensors
        ]
        return i + 1, results.write(i, call(chunks))

    # map_fn's default of ten parallel iterations would hold ten (chunk, K) blocks at once.
    _, results = tf.while_loop(
        lambda i, _: i < num_full,
        body,
        (tf.constant(0), results),
        parallel_iterations=parallel_iterations,
    )
    head = tf.reshape(results.stack(), [-1])
    tail = call([t[num_full * chunk_size :] for t in tensors])
    return tf.concat([head, tail], axis=0)


def _jax_row_chunk_map(call, tensors, chunk_size, dtype):
    import jax
    import jax.numpy as jnp

    num_rows = tensors[0].shape[0]
    if not isinstance(num_rows, int):
        # A symbolic batch (jax2tf export): pad to whole chunks and scan over them.
        num_chunks = (num_rows + chunk_size - 1) // chunk_size
        chunked = []
        for t in tensors:
            pad = [(0, num_chunks * chunk_size - num_rows)] + [(0, 0)] * (t.ndim - 1)
            chunked.append(jnp.reshape(jnp.pad(t, pad), (num_chunks, chunk_size, *t.shape[1:])))
        return jnp.reshape(jax.lax.map(call, chunked), (-1,))[:num_rows]
    num_full = num_rows // chunk_size

    def body(i, out):
        chunks = [jax.lax.dynamic_slice_in_dim(t, i * chunk_size, chunk_size, 0) for t in tensors]
        return jax.lax.dynamic_update_slice_in_dim(out, call(chunks), i * chunk_size, 0)

    head = jnp.zeros((num_full * chunk_size,), dtype)
    if num_full:
        # Slices of the inputs inside the loop: no reshaped or padded copy of them.
        head = jax.lax.fori_loop(0, num_full, body, head)
    tail = call([t[num_full * chunk_size :] for t in tensors])
    return jnp.concatenate([head, tail], axis=0)


def straight_through_vq(
    inputs: Any,
    codebook: Any,
    indices: Any,
    beta: float,
    codebook_term: bool,
    chunk_size: int = 4096,
):
    """Quantized vectors with a straight-through gradient and their VQ loss, fused.

    Forward: ``e = codebook[indices]``; the output is ``e`` in the dtype of ``inputs`` and the
    loss, float32, ``(β + c) · mean((z - e)²)`` with ``c = 1`` when ``codebook_term`` (the
    codebook loss ``mean((sg[z] - e)²)`` plus the commitment loss ``β · mean((z - sg[e])²)``)
    and 0 otherwise (EMA codebook); 0 for an empty batch. Backward, for upstream gradients
    ``g`` (output) and ``l`` (loss) and ``n`` elements: ``∂z = g + l · 2β (z - e) / n``
    (straight through plus commitment), ``∂codebook_k = l · 2 Σ_{i: k_i = k} (e_k - z_i) / n``
    when ``codebook_term`` (else no gradient). The same values and gradients as
    ``z + sg[e - z]`` and ``vq_loss(z, e, β)``, with nothing but ``inputs``, ``codebook`` and
    ``indices`` kept for the backward pass.

    Args:
        inputs: ``(N, D)`` float tensor ``z`` (any float dtype; the loss is float32).
        codebook: float32 ``(K, D)``.
        indices: int32 ``(N,)`` code of each row (not differentiated).
        beta: commitment weight β.
        codebook_term: include the codebook loss (a codebook learnt by gradient).
        chunk_size: rows per block of the loss's sum of squares (TensorFlow and torch; XLA
            fuses it on JAX) and of the codebook gradient's sums (JAX).

    Returns:
        ``(quantized, loss)``: ``(N, D)`` in the dtype of ``inputs``, float32 scalar.
    """
    backend = keras.backend.backend()
    beta = float(beta)
    codebook_term = bool(codebook_term)
    if backend == "tensorflow":
        return _tf_straight_through(inputs, codebook, indices, beta, codebook_term, chunk_size)
    if backend == "jax":
        return _jax_straight_through(inputs, codebook, indices, beta, codebook_term, chunk_size)
    return _torch_straight_through(inputs, codebook, indices, beta, codebook_term, chunk_size)


def _loss_scale(beta: float, codebook_term: bool) -> float:
    return beta + (1.0 if codebook_term else 0.0)


# ---- TensorFlow ---------------------------------------------------------------------------
#: Size of the ``(N, D)`` float32 residual above which TensorFlow's backward pass orders the
#: codebook's segment sum before the input gradient, so that the latter may reuse the
#: residual's buffer (one ``(N, D)`` temporary, not two); below it the two run in parallel.
ORDERED_BACKWARD_BYTES = 16 * 2**20


def _fits(tensor, limit_bytes: int) -> bool:
    """Whether ``tensor``'s static shape is known and its float32 size is ``limit_bytes`` or
    less."""
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape):
        return False
    return 4 * shape.num_elements() <= limit_bytes


def _tf_straight_through(inputs, codebook, indices, beta, codebook_term, chunk_size):
    import tensorflow as tf

    indices = tf.convert_to_tensor(indices)

    @tf.custom_gradient
    def fused(z, table):
        quantized = tf.gather(table, indices)
        count = tf.maximum(tf.cast(tf.size(z), tf.float32), 1.0)

        def squared_errors(chunks):
            rows, codes = chunks
            error = tf.cast(rows, tf.float32) - tf.gather(table, codes)
            return tf.reduce_sum(tf.square(error), axis=1)

        # By blocks: no (N, D) difference next to the output.
        total = tf.reduce_sum(row_chunk_map(squared_errors, (z, indices), chunk_size, "float32"))
        loss = _loss_scale(beta, codebook_term) * total / count

        def grad(g_out, g_loss):
            if g_loss is None:
                g_loss = tf.zeros((), tf.float32)
            scale = 2.0 * g_loss / count
            # z - e, recomputed: nothing (N, D) survives the forward pass.
            diff = tf.cast(z, tf.float32) - tf.gather(table, indices)
            g_table = None
            if codebook_term:
                g_table = -scale * tf.math.unsorted_segment_sum(diff, indices, tf.shape(table)[0])
            # After the segment sum, the scaling may reuse the buffer of `diff` in place; a
            # small batch lets the two run side by side instead (TF's segment sum is one
            # thread).
            ordered = g_table is not None and not _fits(diff, ORDERED_BACKWARD_BYTES)
            with tf.control_dependencies([g_table] if ordered else []):
                g_z = tf.cast((beta * scale) * diff, z.dtype)
            if g_out is not None:
                g_z = g_z + g_out
            return g_z, g_table

        return (tf.cast(quantized, z.dtype), loss), grad

    return fused(tf.convert_to_tensor(inputs), tf.convert_to_tensor(codebook))


# ---- JAX ----------------------------------------------------------------------------------
@functools.cache
def _jax_fused():
    import jax
    import jax.numpy as jnp

    def forward(z, table, indices, beta, codebook_term, chunk_size):
        quantized = jnp.take(table, indices, axis=0)
        count = max(z.size, 1)
        total = jnp.sum(jnp.square(z.astype(jnp.float32) - quantized))
        loss = _loss_scale(beta, codebook_term) * total / count
        return quantized.astype(z.dtype), loss.astype(jnp.float32)

    fused = jax.custom_vjp(forward, nondiff_argnums=(3, 4, 5))

    def fwd(z, table, indices, beta, codebook_term, chunk_size):
        return forward(z, table, indices, beta, codebook_term, chunk_size), (z, table, indices)

    def residual_sums(z, table, indices, chunk_size):
        """``Σ_{i: k_i = k} (z_i - e_k)`` accumulated by blocks of rows."""

        def add_block(sums, rows, codes):
            return sums.at[codes].add(rows.astype(jnp.float32) - jnp.take(table, codes, axis=0))

        num_full = z.shape[0] // chunk_size

        def body(i, sums):
            rows = jax.lax.dynamic_slice_in_dim(z, i * chunk_size, chunk_size, 0)
            codes = jax.lax.dynamic_slice_in_dim(indices, i * chunk_size, chunk_size, 0)
            return add_block(sums, rows, codes)

        sums = jax.lax.fori_loop(0, num_full, body, jnp.zeros_like(table)) if num_full else 0.0
        start = num_full * chunk_size
        return add_block(jnp.zeros_like(table) + sums, z[start:], indices[start:])

    def bwd(beta, codebook_term, chunk_size, residuals, cotangents):
        z, table, indices = residuals
        g_out, g_loss = cotangents
        scale = 2.0 * g_loss / max(z.size, 1)
        if codebook_term:
            # By blocks: one use of the gathered codes below, which XLA fuses; a second,
            # whole-batch use would make it keep two (N, D) temporaries.
            g_table = -scale * residual_sums(z, table, indices, chunk_size)
        else:
            g_table = jnp.zeros_like(table)
        diff = z.astype(jnp.float32) - jnp.take(table, indices, axis=0)
        g_z = g_out + ((beta * scale) * diff).astype(z.dtype)
        return g_z, g_table, None

    fused.defvjp(fwd, bwd)
    return fused


def _jax_straight_through(inputs, codebook, indices, beta, codebook_term, chunk_size):
    import jax
    import jax.numpy as jnp

    if not isinstance(inputs.shape[0], int):
        # A symbolic batch (jax2tf export, no gradients): the unfused formulas.
        z = inputs.astype(jnp.float32)
        quantized = jnp.take(codebook, indices, axis=0)
        loss = _loss_scale(beta, codebook_term) * jnp.mean(jnp.square(z - quantized))
        loss = jnp.where(inputs.shape[0] > 0, loss, 0.0)
        out = inputs + jax.lax.stop_gradient(quantized.astype(inputs.dtype) - inputs)
        return out, loss
    return _jax_fused()(
        jnp.asarray(inputs),
        jnp.asarray(codebook),
        jnp.asarray(indices),
        beta,
        codebook_term,
        chunk_size,
    )


# ---- torch --------------------------------------------------------------------------------
@functools.cache
def _torch_function():
    import torch

    class StraightThroughVQ(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, table, indices, beta, codebook_term, chunk_size):
            quantized = table[indices]

            def squared_errors(chunks):
                rows, codes = chunks
                return (rows.to(torch.float32) - table[codes]).square_().sum(dim=1)

            # By blocks: no (N, D) difference next to the output.
            total = row_chunk_map(squared_errors, (z, indices), chunk_size, "float32").sum()
            count = max(z.numel(), 1)
            loss = _loss_scale(beta, codebook_term) * total / count
            # The layer may assign the codebook in place later in the call (EMA, restarts):
            # keep a (K, D) copy of the codes this forward pass used.
            ctx.save_for_backward(z, table.detach().clone(), indices)
            ctx.beta, ctx.codebook_term, ctx.count = beta, codebook_term, count
            return quantized.to(z.dtype), loss

        @staticmethod
        def backward(ctx, g_out, g_loss):
            z, table, indices = ctx.saved_tensors
            scale = 2.0 * g_loss / ctx.count
            # e - z in place in the gathered rows: one (N, D) temporary.
            diff = table[indices]
            diff.sub_(z.to(torch.float32))
            g_table = None
            if ctx.codebook_term and ctx.needs_input_grad[1]:
                g_table = torch.zeros_like(table).index_add_(0, indices, diff)
                g_table.mul_(scale)
            g_z = None
            if ctx.needs_input_grad[0]:
                g_z = diff.mul_(-ctx.beta * scale).to(z.dtype)
                g_z = g_z.add_(g_out) if g_z.dtype == g_out.dtype else g_z + g_out
            return g_z, g_table, None, None, None, None

    return StraightThroughVQ


def _torch_straight_through(inputs, codebook, indices, beta, codebook_term, chunk_size):
    import torch

    z = torch.as_tensor(inputs)
    table = torch.as_tensor(codebook)
    indices = torch.as_tensor(indices).long()
    return _torch_function().apply(z, table, indices, beta, codebook_term, chunk_size)
