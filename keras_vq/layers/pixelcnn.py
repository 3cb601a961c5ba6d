"""PixelCNN building blocks: masked convolutions and gated vertical/horizontal stacks.

References:
    van den Oord, Kalchbrenner, Kavukcuoglu. "Pixel Recurrent Neural Networks", 2016 (masks A/B).
    van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu. "Conditional Image
    Generation with PixelCNN Decoders", 2016 (gated blocks, vertical + horizontal stacks).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_vq import _validation
from keras_vq.backend.ops import loop_ops

_MASK_TYPES = ("A", "B")


def causal_mask(kernel_size: tuple[int, int], mask_type: str) -> np.ndarray:
    """Raster-order mask of a ``(kh, kw)`` kernel, float32 NumPy.

    Ones on every row above the centre and on the centre row left of the centre; the centre
    itself is 1 for mask ``"B"`` and 0 for mask ``"A"`` (the first layer must not see the pixel
    it predicts).
    """
    kh, kw = kernel_size
    ch, cw = kh // 2, kw // 2
    mask = np.zeros((kh, kw), dtype="float32")
    mask[:ch, :] = 1.0
    mask[ch, :cw] = 1.0
    if mask_type == "B":
        mask[ch, cw] = 1.0
    return mask


@keras.saving.register_keras_serializable(package="keras_vq")
class MaskedConv2D(keras.layers.Conv2D):
    """2-D convolution whose kernel only sees pixels before the centre in raster order.

    ``y = conv(x, W ⊙ M)`` with ``M[r, c] = 1`` for rows above the centre and for the centre row
    left of the centre; ``M[centre] = 0`` for mask ``"A"`` (first layer) and 1 for mask ``"B"``.
    The mask is a constant tensor built once in ``build``; the stored kernel is never modified,
    the product ``W ⊙ M`` is formed in ``call``. A stack of masked convolutions has the classic
    PixelCNN blind spot; :class:`GatedPixelCNNBlock` avoids it.

    Args:
        filters: output channels.
        kernel_size: int or ``(kh, kw)``.
        mask_type: ``"A"`` (exclude the centre) or ``"B"`` (include it).
        **kwargs: any ``keras.layers.Conv2D`` argument; ``padding`` defaults to ``"same"``.

    Call arguments:
        inputs: ``(B, H, W, C)`` (channels last) tensor.

    Returns:
        ``(B, H, W, filters)`` with ``padding="same"``.

    Example:
        >>> y = MaskedConv2D(16, 5, mask_type="A")(keras.random.normal((2, 8, 8, 3)))
    """

    def __init__(self, filters: int, kernel_size, mask_type: str = "B", **kwargs):
        kwargs.setdefault("padding", "same")
        super().__init__(filters, kernel_size, **kwargs)
        self.mask_type = _validation.check_choice("mask_type", mask_type, _MASK_TYPES)
        self.kernel_mask = None

    def build(self, input_shape):
        super().build(input_shape)
        mask = causal_mask(self.kernel_size, self.mask_type)[:, :, None, None]
        # Kernel layout is (kh, kw, in, out) for both data formats.
        self.kernel_mask = ops.convert_to_tensor(mask, dtype="float32")

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * ops.cast(self.kernel_mask, kernel.dtype))

    def get_config(self):
        config = super().get_config()
        config["mask_type"] = self.mask_type
        return config


def gate(x, xops=ops):
    """Gated activation ``tanh(a) ⊙ σ(b)`` with ``[a, b]`` the two halves of the last axis;
    ``xops``: the ops namespace (a sampler's ``loop_ops()``)."""
    half = x.shape[-1] // 2
    return xops.tanh(x[..., :half]) * xops.sigmoid(x[..., half:])


def shift_down(x):
    """Move ``(B, H, W, C)`` features one row down; row 0 becomes zeros."""
    return ops.pad(x, [[0, 0], [1, 0], [0, 0], [0, 0]])[:, :-1]


def dense_weights(conv, dtype) -> tuple:
    """``conv``'s kernel as a ``(kh·kw·C, filters)`` matrix and its bias, cast to ``dtype``.

    A "valid" convolution over an input exactly the size of its kernel is one matmul with
    this matrix: what an incremental sampler computes at one position.
    """
    kernel = ops.cast(conv.kernel, dtype)
    return ops.reshape(kernel, (-1, kernel.shape[-1])), ops.cast(conv.bias, dtype)


@keras.saving.register_keras_serializable(package="keras_vq")
class GatedPixelCNNBlock(keras.layers.Layer):
    """One gated PixelCNN layer: a vertical and a horizontal stack without blind spot.

    With ``n = kernel_size // 2`` and ``F = filters``:

        v_pre = conv_{(n+1)×k}(v)          rows i-n..i, cols j-n..j+n (shifted convolution)
        v_out = tanh(v_a + c) ⊙ σ(v_b + c)
        h_pre = conv_{1×(n+1)}(h) + shift_down(link_{1×1}(v_pre))
        h_out = h + res_{1×1}(tanh(h_a + c) ⊙ σ(h_b + c))

    where ``c`` is a learnt per-class bias (``Embedding(num_classes, 2F)``, only with
    ``num_classes``) and ``shift_down`` moves the link one row down, so the horizontal stack at
    ``(i, j)`` sees every row above ``i`` through the vertical stack and columns ``≤ j`` of row
    ``i``. With ``mask_type="A"`` (the first block) the horizontal convolution is ``1×n`` over
    columns ``j-n..j-1`` (the current pixel is excluded) and there is no residual. Stacking an
    ``"A"`` block and ``"B"`` blocks gives a model whose output at ``(i, j)`` depends on exactly
    the pixels before ``(i, j)`` in raster order that lie within its receptive field.
    Row 0 has no row above it: ``shift_down`` gives it zeros, so it gets no link term at all,
    not even ``link``'s bias (the incremental sampling methods follow this exactly).

    Args:
        filters: F, channels of both stacks.
        kernel_size: odd k ≥ 3.
        num_classes: number of classes for conditioning, or ``None``.
        mask_type: ``"A"`` for the first block (inputs are the raw pixels), ``"B"`` after.

    Call arguments:
        inputs: ``[v, h]`` or ``[v, h, labels]`` (with ``num_classes``); ``v`` and ``h`` are
            ``(B, H, W, C)``, ``labels`` int ``(B,)`` or ``(B, 1)``.

    Returns:
        ``[v_out, h_out]``, each ``(B, H, W, F)``.

    Example:
        >>> x = keras.random.normal((2, 7, 7, 16))
        >>> v, h = GatedPixelCNNBlock(16, 3, mask_type="A")([x, x])
        >>> v, h = GatedPixelCNNBlock(16, 3)([v, h])
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 3,
        num_classes: int | None = None,
        mask_type: str = "B",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _validation.check_int("filters", filters, minimum=1)
        self.kernel_size = _validation.check_odd_int("kernel_size", kernel_size, minimum=3)
        self.num_classes = _validation.check_optional_int("num_classes", num_classes, minimum=1)
        self.mask_type = _validation.check_choice("mask_type", mask_type, _MASK_TYPES)
        n, k, f2 = self.kernel_size // 2, self.kernel_size, 2 * self.filters
        sub = {"dtype": self.dtype_policy}
        self.vertical_conv = keras.layers.Conv2D(f2, (n + 1, k), name="vertical_conv", **sub)
        width = n if self.first else n + 1
        self.horizontal_conv = keras.layers.Conv2D(f2, (1, width), name="horizontal_conv", **sub)
        self.link_conv = keras.layers.Conv2D(f2, 1, name="link_conv", **sub)
        self.residual_conv = keras.layers.Conv2D(self.filters, 1, name="residual_conv", **sub)
        self.class_bias = (
            None
            if self.num_classes is None
            else keras.layers.Embedding(self.num_classes, f2, name="class_bias", **sub)
        )

    @property
    def first(self) -> bool:
        return self.mask_type == "A"

    @property
    def half_width(self) -> int:
        return self.kernel_size // 2

    def _check_inputs(self, inputs):
        expected = 2 if self.num_classes is None else 3
        if not isinstance(inputs, list | tuple) or len(inputs) != expected:
            what = "[v, h]" if self.num_classes is None else "[v, h, labels]"
            raise ValueError(
                f"`inputs` of {type(self).__name__}(num_classes={self.num_classes}) must be "
                f"{what}, got {type(inputs).__name__} of length "
                f"{len(inputs) if isinstance(inputs, list | tuple) else 'n/a'}."
            )
        return list(inputs)

    def build(self, input_shape):
        input_shape = self._check_inputs(input_shape)
        v_shape, h_shape = tuple(input_shape[0]), tuple(input_shape[1])
        n, f2 = self.half_width, 2 * self.filters
        batch, height, width = v_shape[0], v_shape[1], v_shape[2]
        pad = lambda d, p: None if d is None else d + p
        self.vertical_conv.build((batch, pad(height, n), pad(width, 2 * n), v_shape[-1]))
        self.horizontal_conv.build((batch, h_shape[1], pad(h_shape[2], n), h_shape[-1]))
        self.link_conv.build((batch, height, width, f2))
        self.residual_conv.build((batch, height, width, self.filters))
        if self.class_bias is not None:
            self.class_bias.build((batch,))

    # --- the same computation, whole map or one row / one pixel at a time ------------------
    def label_bias(self, labels):
        """Per-class bias ``c``, shape ``(B, 2F)``; ``None`` without conditioning."""
        if self.class_bias is None:
            return None
        return self.class_bias(ops.reshape(ops.cast(labels, "int32"), (-1,)))

    @staticmethod
    def _gate(pre, bias, xops=ops):
        if bias is not None:
            # (B, 2F) bias against (B, ..., 2F) features.
            extra = (1,) * (len(pre.shape) - 2)
            pre = pre + xops.reshape(xops.cast(bias, pre.dtype), (-1, *extra, pre.shape[-1]))
        return gate(pre, xops)

    def call(self, inputs):
        inputs = self._check_inputs(inputs)
        v, h = inputs[0], inputs[1]
        bias = self.label_bias(inputs[2]) if self.num_classes is not None else None
        n = self.half_width
        v_pre = self.vertical_conv(ops.pad(v, [[0, 0], [n, 0], [n, n], [0, 0]]))
        link = shift_down(self.link_conv(v_pre))
        h_pre = self.horizontal_conv(ops.pad(h, [[0, 0], [0, 0], [n, 0], [0, 0]]))
        if self.first:  # a 1×n kernel over columns j-n..j-1: drop the extra last column
            h_pre = h_pre[:, :, :-1]
        h_out = self.residual_conv(self._gate(h_pre + link, bias))
        return [self._gate(v_pre, bias), h_out if self.first else h_out + h]

    # --- incremental sampling: the same computation, one row / one pixel at a time --------
    # A sampler calls these once per row / per pixel. They take the weights prepared once per
    # sampling call (``sampling_weights``) and keep the per-pixel work to a few ops: a "valid"
    # convolution over a window of the kernel's size is one matmul, and every per-row term of
    # the horizontal pre-activation (link, biases, class bias) is summed once per row into an
    # ``offset``. ``call`` defines the model; tests check these against it.
    def sampling_weights(self, dtype) -> dict:
        """The kernels as the incremental methods use them, cast to ``dtype``."""
        vertical = ops.cast(self.vertical_conv.kernel, dtype)
        link, link_bias = dense_weights(self.link_conv, dtype)
        horizontal, horizontal_bias = dense_weights(self.horizontal_conv, dtype)
        residual, residual_bias = dense_weights(self.residual_conv, dtype)
        return {
            "vertical": vertical,
            "vertical_bias": ops.cast(self.vertical_conv.bias, dtype),
            "link": link,
            # Rows r >= 1 get the whole link_conv output of row r-1, its bias included.
            "offset_bias": link_bias + horizontal_bias,
            # Row 0: ``shift_down`` feeds zeros in place of link_conv's output, bias and all.
            "first_row_bias": horizontal_bias,
            "horizontal": horizontal,
            "residual": residual,
            "residual_bias": residual_bias,
        }

    def first_row_offset(self, batch, width: int, bias=None, weights=None, dtype=None):
        """The ``offset`` of row 0, which has no row above it.

        ``call`` shifts the whole ``link_conv`` output down, so row 0 gets zeros: no link
        term and no link bias, only the horizontal bias and the class bias.

        Args:
            batch: B, an int or a scalar tensor (a dynamic batch).
            width: W.
            bias: ``label_bias(labels)`` or ``None``.
            weights: ``sampling_weights(dtype)``; computed here when ``None``.
            dtype: dtype of the offset; the block's compute dtype when ``None``.

        Returns:
            ``(B, W, 2F)``, the counterpart of ``vertical_row``'s offset for row 0.
        """
        dtype = self.compute_dtype if dtype is None else dtype
        w = self.sampling_weights(dtype) if weights is None else weights
        offset = ops.zeros((batch, width, 2 * self.filters), dtype) + w["first_row_bias"]
        if bias is not None:
            offset = offset + ops.cast(bias, dtype)[:, None, :]
        return offset

    def vertical_row(self, window, bias=None, weights=None):
        """Vertical stack for one row ``r``.

        Args:
            window: rows ``r-n..r`` of the block's vertical input, zero-padded with ``n``
                columns on each side: ``(B, n+1, W+2n, C)``.
            bias: ``label_bias(labels)`` or ``None``.
            weights: ``sampling_weights(dtype)``; computed here when ``None``.

        Returns:
            ``(v_row, offset)``: row ``r`` of ``v_out``, ``(B, 1, W, F)``, and the part of the
            horizontal pre-activation at row ``r+1`` that does not depend on row ``r+1``
            (link + biases + class bias), ``(B, W, 2F)``.
        """
        w = self.sampling_weights(window.dtype) if weights is None else weights
        xops = loop_ops()  # once per row and block of a sampler: native on torch
        v_pre = xops.conv(window, w["vertical"], padding="valid") + w["vertical_bias"]
        width, channels = v_pre.shape[2], v_pre.shape[3]
        # -1, not the batch size: that is unknown (None) in an exported graph.
        flat = xops.reshape(v_pre, (-1, channels))
        offset = xops.reshape(xops.matmul(flat, w["link"]), (-1, width, channels))
        offset = offset + w["offset_bias"]
        if bias is not None:
            offset = offset + xops.cast(bias, offset.dtype)[:, None, :]
        return self._gate(v_pre, bias, xops), offset

    def horizontal_pixel(self, window, offset, h=None, weights=None):
        """Horizontal stack at one pixel ``(i, j)``.

        Args:
            window: columns ``j-n..j-1`` (mask A) or ``j-n..j`` (mask B) of row ``i`` of the
                horizontal input, zero-padded on the left, flattened: ``(B, (n or n+1)·C)``.
            offset: column ``j`` of ``vertical_row``'s offset for row ``i``, ``(B, 2F)``.
            h: horizontal input at ``(i, j)`` for the residual (mask B), ``(B, C)``.
            weights: ``sampling_weights(dtype)``; computed here when ``None``.

        Returns:
            ``h_out`` at ``(i, j)``, ``(B, F)``.
        """
        w = self.sampling_weights(window.dtype) if weights is None else weights
        # Python operators, not keras.ops, where they exist: the same native op on every
        # backend without the dispatch cost of an eager keras.ops call (torch runs this eagerly).
        # The gate's ops too: native on torch (``loop_ops``), one call per pixel and block.
        pre = window @ w["horizontal"] + offset
        out = gate(pre, loop_ops()) @ w["residual"] + w["residual_bias"]
        return out if self.first else out + h

    def compute_output_shape(self, input_shape):
        input_shape = self._check_inputs(input_shape)
        shape = (*tuple(input_shape[0][:-1]), self.filters)
        return [shape, shape]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "num_classes": self.num_classes,
                "mask_type": self.mask_type,
            }
        )
        return config
