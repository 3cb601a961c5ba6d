"""Backend-specific execution helpers: compiled loops, inference without autograd, host copies."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Any

import keras
import numpy as np


def compile_function(fn: Callable) -> Callable:
    """``fn`` compiled for repeated calls: XLA on TF and JAX, eager without autograd on torch.

    Args:
        fn: a function of tensors (and lists of tensors) built from ``keras.ops``.

    Returns:
        A callable with the same signature.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return inference(fn)


def no_grad() -> contextlib.AbstractContextManager:
    """A context without gradient tracking: ``torch.no_grad()`` on torch, a no-op elsewhere.

    TensorFlow and JAX record nothing outside a tape or ``grad``; torch's autograd keeps every
    intermediate of an eager call alive unless told not to.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def inference(method: Callable) -> Callable:
    """Decorate an inference method (``encode``, ``sample``, ...) to run under :func:`no_grad`.

    Example:
        >>> class Model(keras.Model):
        ...     @inference
        ...     def encode(self, x): ...
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with no_grad():
            return method(*args, **kwargs)

    return wrapper


def to_numpy(x: Any) -> np.ndarray:
    """Any backend tensor (or array-like) as a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(keras.ops.convert_to_numpy(x))


def gather_rows(table: Any, indices: Any):
    """``table[indices]`` along axis 0, with a dense gradient for ``table`` on every backend.

    TensorFlow differentiates a gather into ``IndexedSlices`` holding one slice per use, repeated
    rows included, and Keras' Adam and RMSprop square those slices before summing them: a row
    used n times gets a second moment built from n separate squares and steps about √n too far
    (KERAS3_NOTES §12). Here the gradient is summed per row first (a segment sum), as JAX and
    torch do.

    Args:
        table: ``(K, D)`` tensor or variable.
        indices: int32 tensor of any shape with values in ``[0, K)``.

    Returns:
        ``indices.shape + (D,)``.
    """
    if keras.backend.backend() != "tensorflow":
        return keras.ops.take(table, indices, axis=0)
    import tensorflow as tf

    indices = tf.convert_to_tensor(indices)

    @tf.custom_gradient
    def gather(rows):
        def grad(upstream):
            upstream = tf.reshape(upstream, tf.concat([[-1], tf.shape(rows)[1:]], 0))
            flat = tf.reshape(indices, [-1])
            return tf.math.unsorted_segment_sum(upstream, flat, tf.shape(rows)[0])

        return tf.gather(rows, indices), grad

    return gather(tf.convert_to_tensor(table))


def argmin_last_axis(scores: Any):
    """Index of the smallest entry along the last axis, int32; ties go to the first index.

    ``keras.ops.argmin`` first maps -0.0 below +0.0 on TensorFlow and on JAX's CPU (a
    flush-to-zero workaround), several extra elementwise passes over the whole array. A
    nearest-code search, where the array is ``N × K`` distances and a -0.0/+0.0 tie is a tie,
    calls the backend's argmin directly.

    Args:
        scores: float tensor ``(..., K)``.

    Returns:
        int32 tensor ``scores.shape[:-1]``.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.argmin(scores, axis=-1, output_type=tf.int32)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.argmin(scores, axis=-1).astype("int32")
    import torch

    # ``min`` with its indices (the first minimum, as argmin) is ~10 % faster on CPU.
    return torch.min(keras.ops.convert_to_tensor(scores), dim=-1).indices.to(torch.int32)


def matmul_add(x: Any, y: Any, bias: Any):
    """``x @ y + bias`` for 2-D ``x``, ``y`` and a ``bias`` broadcast over the rows.

    On torch one ``addmm``: the bias is added as the product is written, where ``matmul`` then
    ``+`` make a second pass over the ``(N, M)`` result (a nearest-code search's distance
    block). TensorFlow's graph optimiser and XLA fuse the add themselves.

    Args:
        x: ``(N, D)``.
        y: ``(D, M)``.
        bias: ``(M,)`` or ``(1, M)``.

    Returns:
        ``(N, M)`` in the dtype of the inputs.
    """
    if keras.backend.backend() != "torch":
        return keras.ops.matmul(x, y) + bias
    import torch

    x, y, bias = (keras.ops.convert_to_tensor(t) for t in (x, y, bias))
    return torch.addmm(bias, x, y)


def segment_sum(data: Any, segment_ids: Any, num_segments: int):
    """``keras.ops.segment_sum`` of rows whose ids all lie in ``[0, num_segments)``.

    Keras' torch version expands the ids to the shape of ``data`` (an int64 copy of N × D
    entries, two masking passes over it) for ``scatter_reduce``; torch's ``index_add_`` sums
    rows by their 1-D ids directly. Unlike Keras on torch, an id out of range is an error
    there, not dropped: callers pass ids they computed (nearest codes).

    Args:
        data: ``(N, ...)`` float tensor.
        segment_ids: int ``(N,)`` tensor.
        num_segments: number of output rows.

    Returns:
        ``(num_segments, ...)`` in the dtype of ``data``.
    """
    if keras.backend.backend() != "torch":
        return keras.ops.segment_sum(data, segment_ids, num_segments=num_segments)
    data = keras.ops.convert_to_tensor(data)
    ids = keras.ops.convert_to_tensor(segment_ids).long()
    return data.new_zeros((num_segments, *data.shape[1:])).index_add_(0, ids, data)


def compiled_state_update(update: Callable, *args) -> None:
    """Run ``update(*args)``, a layer's state update (variable assignments, no result).

    Inside a TensorFlow graph that XLA does not compile already (``jit_compile=False``, the
    default on CPU), it runs as one XLA kernel: the update is some sixty small ops (EMA
    statistics, restarts, perplexity) whose per-op cost in TensorFlow's executor exceeds
    their arithmetic. Elsewhere, eager TensorFlow included (one compilation per call shape
    is not worth it there) and under ``tf.distribute`` (cross-replica sums cannot run inside
    XLA), a plain call.

    Args:
        update: a function of tensors (and ``None``) that only assigns variables.
        *args: its arguments.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.inside_function() and not tf.distribute.has_strategy():
            args = tuple(None if a is None else tf.convert_to_tensor(a) for a in args)
            tf.function(update, jit_compile=True, autograph=False)(*args)
            return
    update(*args)


_STEP_STATE = threading.local()


@contextlib.contextmanager
def trainable_assignments_kept():
    """Within: a JAX training step that keeps the forward pass's trainable assignments.

    keras_vq's JAX step reads every variable the forward pass assigned back from its
    ``StatelessScope``, trainable ones included; it enters this so that layers assign a
    restarted code to the codebook itself (see :func:`forward_assignments_persist`).
    """
    previous = getattr(_STEP_STATE, "kept", False)
    _STEP_STATE.kept = True
    try:
        yield
    finally:
        _STEP_STATE.kept = previous


def _in_stateless_scope() -> bool:
    try:
        from keras.src.backend.common.stateless_scope import in_stateless_scope
    except ImportError:  # another Keras layout: assume a scope, the safe answer
        return True
    return in_stateless_scope()


def forward_assignments_persist() -> bool:
    """Whether a trainable variable assigned inside a training forward pass keeps the value.

    Keras' JAX training step (``stateless_call``) returns only the non-trainable variables, so
    there a layer that rewrites trainable weights in ``call`` (a restarted code) must keep the
    change in non-trainable state. Eager JAX calls and keras_vq's own JAX step
    (:func:`trainable_assignments_kept`) keep it, as TensorFlow and torch always do; there the
    row is assigned exactly (an offset ``new - old`` added back to an old code of size ~1e3
    would land ~1e-5 away from the chosen vector).
    """
    if keras.backend.backend() != "jax":
        return True
    return getattr(_STEP_STATE, "kept", False) or not _in_stateless_scope()


def hide_gpus_from_tensorflow() -> bool:
    """Keep TensorFlow, when it only feeds ``tf.data`` to JAX or torch, off the GPUs.

    TensorFlow reserves most of a GPU's memory once it touches it; next to JAX or torch that
    memory is lost to the model. Call this before the first TensorFlow op (the recipes do); it
    changes process-wide device visibility, so the library never calls it on its own.

    Returns:
        Whether the GPUs are hidden (False on the TensorFlow backend, or when TensorFlow has
        initialised its devices already).
    """
    if keras.backend.backend() == "tensorflow":
        return False
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised
        return False
    return True


def loop_ops() -> Any:
    """The ``keras.ops`` for the body of a per-position sampling loop.

    TensorFlow and JAX compile the loop (:func:`compile_function`), so this is ``keras.ops``
    itself. Torch runs it eagerly, one Python call per op, and on one position's small
    tensors ``keras.ops``' dispatch costs more than the op: there it is a namespace of the
    same torch kernels called directly (the same numbers), for the ops the samplers use:
    ``argmax cast concatenate conv cumsum exp gelu layer_normalization matmul min pad relu
    reshape sigmoid slice slice_update softmax sort swapaxes take tanh top_k transpose
    unstack where zeros_like`` (``conv``: 2-D,
    "valid"; ``take``: rows of a 2-D table). Its ``slice_update`` writes in place:
    the caller must not read ``inputs`` again (true of a loop carry).

    Example:
        >>> xops = loop_ops()
        >>> cache = xops.slice_update(cache, [0, t, 0], token)
    """
    if keras.backend.backend() == "torch":
        from keras_vq.backend import _torch_loop_ops

        return _torch_loop_ops
    return keras.ops


def _conv_transpose_crops(kernel_size: int, stride: int, padding: str) -> tuple[int, int] | None:
    """Rows (or columns) Keras drops from the start and end of the full transposed output.

    The full output of ``n`` inputs has ``(n - 1)·s + k`` positions; Keras keeps ``n·s``
    ("same", cropping ``k - s`` split with the smaller part first) or all of them ("valid").
    ``None`` where Keras pads instead (``k < s``).
    """
    if kernel_size < stride:
        return None
    if padding == "valid":
        return 0, 0
    start = (kernel_size - stride) // 2
    return start, kernel_size - stride - start


def _torch_channels_last(inputs: Any, kernel: Any, bias: Any):
    """Torch's ``(x, w, b)`` of a channels-last convolution: the NHWC ``inputs`` read as NCHW
    in channels-last memory (no copy when they already are), Keras' ``(kh, kw, a, b)`` kernel
    as torch's ``(b, a, kh, kw)`` (right for both ``conv2d`` and ``conv_transpose2d``)."""
    import torch

    inputs = keras.ops.convert_to_tensor(inputs)
    x = inputs.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    w = keras.ops.convert_to_tensor(kernel).permute(3, 2, 0, 1).contiguous()
    b = None if bias is None else keras.ops.convert_to_tensor(bias)
    return x, w, b


def conv_transpose_2d(inputs: Any, kernel: Any, bias: Any, strides, padding: str):
    """``keras.ops.conv_transpose(inputs, kernel, strides, padding) + bias``, channels last.

    Keras' torch backend copies ``inputs`` to NCHW memory and crops torch's full output; on
    CPU torch's NCHW transposed convolution then holds ~3.5× its output in reorder buffers
    (2^12 images of 28×28×32: 1.46 GiB for a 0.4 GiB output). Here torch reads the NHWC
    input as it lies (its channels-last memory format, no copy), adds the bias in the same
    kernel and crops with a view, so the peak is the full output. Elsewhere, and for the
    cases this does not cover (``kernel < stride``, dilation, ``output_padding``; the caller
    keeps those on Keras' path), it is Keras' op.

    Args:
        inputs: ``(B, H, W, C_in)``.
        kernel: Keras' layout ``(kh, kw, C_out, C_in)``.
        bias: ``(C_out,)`` or ``None``.
        strides: ``(sh, sw)``.
        padding: ``"same"`` or ``"valid"``.

    Returns:
        ``(B, H', W', C_out)`` as Keras computes it (equal up to float round-off).
    """
    crops = [_conv_transpose_crops(k, s, padding) for k, s in zip(kernel.shape[:2], strides)]
    if keras.backend.backend() != "torch" or None in crops:
        outputs = keras.ops.conv_transpose(inputs, kernel, strides=strides, padding=padding)
        return outputs if bias is None else keras.ops.add(outputs, bias)
    import torch

    x, w, b = _torch_channels_last(inputs, kernel, bias)
    full = torch.nn.functional.conv_transpose2d(x, w, b, stride=tuple(strides))
    (top, bottom), (left, right) = crops
    cropped = full[:, :, top : full.shape[2] - bottom, left : full.shape[3] - right]
    return cropped.permute(0, 2, 3, 1)


def _same_padding_1d(kernel_size: int, padding: str) -> int | None:
    """Torch's symmetric padding equal to Keras' stride-1 ``padding``, else ``None``."""
    if padding == "valid":
        return 0
    return (kernel_size - 1) // 2 if kernel_size % 2 == 1 else None


def conv_2d(inputs: Any, kernel: Any, bias: Any, strides, padding: str):
    """``keras.ops.conv(inputs, kernel, strides, padding) + bias``, channels last.

    As :func:`conv_transpose_2d`: Keras' torch backend copies ``inputs`` to NCHW memory
    first, and on CPU torch's NCHW convolution adds reorder buffers several times the input
    (a 28×28×32 → 28×28×1 output layer on 2^12 images: ~0.8 GiB for a 13 MiB output). Torch
    here reads the NHWC input as channels-last memory. Stride-1 ``"valid"`` and ``"same"``
    with odd kernels; the rest (and every other backend) is Keras' op.

    Args:
        inputs: ``(B, H, W, C_in)``.
        kernel: Keras' layout ``(kh, kw, C_in, C_out)``.
        bias: ``(C_out,)`` or ``None``.
        strides: ``(sh, sw)``.
        padding: ``"same"`` or ``"valid"``.

    Returns:
        ``(B, H', W', C_out)`` as Keras computes it (equal up to float round-off).
    """
    pads = [_same_padding_1d(k, padding) for k in kernel.shape[:2]]
    if keras.backend.backend() != "torch" or None in pads or any(s != 1 for s in strides):
        outputs = keras.ops.conv(inputs, kernel, strides=strides, padding=padding)
        return outputs if bias is None else keras.ops.add(outputs, bias)
    import torch

    x, w, b = _torch_channels_last(inputs, kernel, bias)
    outputs = torch.nn.functional.conv2d(x, w, b, padding=tuple(pads))
    return outputs.permute(0, 2, 3, 1)
