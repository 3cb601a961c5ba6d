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


def gate(x):
    """Gated activation ``tanh(a) ⊙ σ(b)`` with ``[a, b]`` the two halves of the last axis."""
    a, b = ops.split(x, 2, axis=-1)
    return ops.tanh(a) * ops.sigmoid(b)


def shift_down(x):
    """Move ``(B, H, W, C)`` features one row down; row 0 becomes zeros."""
    return ops.pad(x, [[0, 0], [1, 0], [0, 0], [0, 0]])[:, :-1]


def _weights(conv, dtype):
    return ops.cast(conv.kernel, dtype), ops.cast(conv.bias, dtype)


def _dense(conv, x):
    """``conv`` applied to inputs flattened to its whole receptive field, ``(..., kh·kw·C)``."""
    kernel, bias = _weights(conv, x.dtype)
    return ops.matmul(x, ops.reshape(kernel, (-1, kernel.shape[-1]))) + bias


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
        self.kernel_size = _validation.check_int("kernel_size", kernel_size, minimum=3)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd, got {kernel_size}.")
        self.num_classes = (
            None
            if num_classes is None
            else _validation.check_int("num_classes", num_classes, minimum=1)
        )
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
    def _gate(pre, bias):
        if bias is not None:
            # (B, 2F) bias against (B, ..., 2F) features.
            extra = (1,) * (len(pre.shape) - 2)
            pre = pre + ops.reshape(ops.cast(bias, pre.dtype), (-1, *extra, pre.shape[-1]))
        return gate(pre)

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

    # --- incremental sampling: the same weights, one row / one pixel at a time --------------
    # A sampler calls these once per row / per pixel; they use the kernels directly (a "valid"
    # convolution over a window of the kernel's size is one matmul), which skips the per-call
    # overhead of four Layer calls per pixel. Tests check them against ``call``.
    def vertical_row(self, window, bias=None):
        """Vertical stack for one row ``r``.

        Args:
            window: rows ``r-n..r`` of the block's vertical input, zero-padded with ``n``
                columns on each side: ``(B, n+1, W+2n, C)``.
            bias: ``label_bias(labels)`` or ``None``.

        Returns:
            ``(v_row, link_row)``: row ``r`` of ``v_out``, ``(B, 1, W, F)``, and the link term
            the horizontal stack receives at row ``r+1``, ``(B, 1, W, 2F)``.
        """
        kernel, b = _weights(self.vertical_conv, window.dtype)
        v_pre = ops.conv(window, kernel, padding="valid") + b
        return self._gate(v_pre, bias), _dense(self.link_conv, v_pre)

    def horizontal_pixel(self, window, link, bias=None, h=None):
        """Horizontal stack at one pixel ``(i, j)``.

        Args:
            window: columns ``j-n..j-1`` (mask A) or ``j-n..j`` (mask B) of row ``i`` of the
                horizontal input, zero-padded on the left: ``(B, n or n+1, C)``.
            link: link term at ``(i, j)``, ``(B, 2F)``.
            bias: ``label_bias(labels)`` or ``None``.
            h: horizontal input at ``(i, j)`` for the residual (mask B), ``(B, C)``.

        Returns:
            ``h_out`` at ``(i, j)``, ``(B, F)``.
        """
        flat = ops.reshape(window, (-1, window.shape[1] * window.shape[2]))
        h_out = _dense(self.residual_conv, self._gate(_dense(self.horizontal_conv, flat) + link, bias))
        return h_out if self.first else h_out + h

    def compute_output_shape(self, input_shape):
        input_shape = self._check_inputs(input_shape)
        shape = tuple(input_shape[0][:-1]) + (self.filters,)
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
