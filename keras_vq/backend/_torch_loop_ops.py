"""Native torch versions of the ``keras.ops`` a per-position sampler calls (see ``loop_ops``).

Each function computes what the ``keras.ops`` function of the same name computes on the torch
backend (the same torch kernel, so the same numbers), without its dispatch: the symbolic-input
check, the nested-structure flattening and the dtype standardisation cost more than the op
itself on the small tensors of one position, and an eager sampler calls thousands of them.
Only the argument forms the samplers use are supported.
"""

from __future__ import annotations

import builtins

import torch
import torch.nn.functional as F

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def _torch_dtype(dtype):
    return _DTYPES[dtype] if isinstance(dtype, str) else dtype


def cast(x, dtype):
    dtype = _torch_dtype(dtype)
    return x if x.dtype == dtype else x.to(dtype)


def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


def slice(x, start_indices, shape):
    return x[tuple(_range(s, n) for s, n in zip(start_indices, shape))]


def slice_update(inputs, start_indices, updates):
    """In place: the caller's ``inputs`` is a loop carry it does not read again."""
    index = tuple(_range(s, n) for s, n in zip(start_indices, updates.shape))
    inputs[index] = updates
    return inputs


def softmax(x, axis=-1):
    return F.softmax(x, dim=axis)


def where(condition, x1, x2):
    return torch.where(condition, x1, x2)


def swapaxes(x, axis1, axis2):
    return torch.swapaxes(x, axis1, axis2)


def transpose(x, axes):
    return torch.permute(x, tuple(axes))


def gelu(x, approximate=True):
    return F.gelu(x, approximate="tanh" if approximate else "none")


def tanh(x):
    return torch.tanh(x)


def sigmoid(x):
    return torch.sigmoid(x)


def relu(x):
    return torch.relu(x)


def layer_normalization(x, gamma, beta, axis=-1, epsilon=1e-3):
    """As ``keras.ops.layer_normalization`` over the last axis: in float32 (at least), the
    result in the dtype of ``x``."""
    if axis not in (-1, x.ndim - 1):
        raise ValueError(f"`axis` must be the last axis, got {axis}.")
    dtype = x.dtype
    compute = torch.promote_types(dtype, torch.float32)
    out = F.layer_norm(x.to(compute), (x.shape[-1],), gamma.to(compute), beta.to(compute), epsilon)
    return out.to(dtype)


def argmax(x, axis=None):
    return torch.argmax(x, dim=axis).to(torch.int32)


def take(x, indices, axis=None):
    if axis != 0 or x.ndim != 2:
        raise ValueError(f"`take` supports a 2-D table along axis 0, got axis={axis}.")
    return F.embedding(indices.long(), x)


def top_k(x, k, sorted=True):
    return torch.topk(x, k, sorted=sorted)


def matmul(x1, x2):
    return torch.matmul(x1, x2)


def pad(x, pad_width):
    """``keras.ops.pad`` with zeros; ``pad_width``: one ``(before, after)`` pair per axis."""
    flat = []
    for before, after in reversed(pad_width):
        flat.extend((int(before), int(after)))
    return F.pad(x, flat)


def conv(inputs, kernel, padding="valid"):
    """``keras.ops.conv`` of a channels-last 2-D input with a ``(kh, kw, in, out)`` kernel,
    strides 1, ``padding="valid"``: the ``conv2d`` Keras calls, on the same layouts."""
    if padding != "valid" or inputs.ndim != 4:
        raise ValueError(f"`conv` supports 2-D 'valid' convolutions, got padding={padding!r}.")
    kernel = kernel.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(inputs.permute(0, 3, 1, 2), kernel)
    return out.permute(0, 2, 3, 1)


def _range(start, length):
    start = int(start)
    return builtins.slice(start, start + int(length))


# --- the code choice (keras_vq.models._prior.CodePicker): top-p, guidance ------------------
def concatenate(xs, axis=0):
    return torch.cat(list(xs), dim=axis)


def unstack(x, axis=0):
    return list(torch.unbind(x, dim=axis))


def sort(x, axis=-1):
    return torch.sort(x, dim=axis).values


def exp(x):
    return torch.exp(x)


def cumsum(x, axis=None):
    return torch.cumsum(x, dim=axis)


def zeros_like(x):
    return torch.zeros_like(x)


def min(x, axis=None, keepdims=False):
    return torch.amin(x, dim=axis, keepdim=keepdims)
