"""What the codebook-free quantizers share: optional Dense projections and the output spec.

``FiniteScalarQuantizer`` and ``LookupFreeQuantizer`` quantize a fixed number of channels
(``len(levels)``, ``num_bits``). An input whose last axis differs is projected in by a Dense
layer and the codes projected back out by another, as vector-quantize-pytorch's ``FSQ`` and
``LFQ`` do when their ``dim`` differs from the code dimension.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_vq.layers._quantizer import (
    built_input,
    check_decode_input,
    check_float_inputs,
    check_last_axis,
    quantizer_output_spec,
)

__all__ = ["ProjectionMixin", "quantizer_output_spec"]


class ProjectionMixin:
    """Dense in/out projections around a quantizer of ``code_dim`` channels.

    The subclass calls ``_init_projections(code_dim)`` from ``__init__`` and defines
    ``codebook_size``, ``_encode_projected`` and ``_decode_codes``; the mixin supplies
    ``build``, ``encode``, ``decode`` and the output shape and spec.

    ``project_in`` is float32 under every dtype policy: the codes are decided from its output,
    and a bfloat16 projection would flip codes near a decision boundary.
    ``project_out`` follows the layer's dtype policy (it changes values, never codes).
    """

    code_dim: int
    input_dim: int | None
    project_in: keras.layers.Dense | None
    project_out: keras.layers.Dense | None

    def _init_projections(self, code_dim: int) -> None:
        """Called from ``__init__``: ``code_dim`` channels, projections decided at build."""
        self.code_dim = code_dim
        self.input_dim = None
        self.project_in = self.project_out = None

    def build(self, input_shape):
        self._build_projections(input_shape)

    def _build_projections(self, input_shape) -> None:
        dim = input_shape[-1] if len(input_shape) else None
        if dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last axis at build, got shape "
                f"{tuple(input_shape)}."
            )
        self.input_dim = int(dim)
        self.project_in = self.project_out = None
        if self.input_dim != self.code_dim:
            self.project_in = keras.layers.Dense(self.code_dim, dtype="float32", name="project_in")
            self.project_in.build((None, self.input_dim))
            self.project_out = keras.layers.Dense(
                self.input_dim, dtype=self.dtype_policy, name="project_out"
            )
            self.project_out.build((None, self.code_dim))

    def _check_last_axis(self, shape, name: str = "inputs") -> None:
        check_last_axis(
            shape,
            self.input_dim,
            name,
            f"{self.input_dim} (the axis this {type(self).__name__} was built for)",
        )

    def _project_in(self, inputs):
        """``inputs`` → float32 ``(..., code_dim)``, after checking their dtype and last axis."""
        check_float_inputs(inputs)
        self._check_last_axis(inputs.shape)
        z = ops.cast(inputs, "float32")
        return z if self.project_in is None else self.project_in(z)

    def _project_out(self, codes, dtype):
        """float32 codes ``(..., code_dim)`` → ``(..., input_dim)`` of ``dtype``."""
        out = codes if self.project_out is None else self.project_out(codes)
        return ops.cast(out, dtype)

    def _encode_projected(self, z):
        """int32 indices ``(...)`` of float32 ``z`` ``(..., code_dim)``; set by the subclass."""
        raise NotImplementedError

    def _decode_codes(self, indices):
        """float32 codes ``(..., code_dim)`` of checked ``indices``; set by the subclass."""
        raise NotImplementedError

    def encode(self, inputs):
        """Code indices, int32 of shape ``inputs.shape[:-1]``.

        Args:
            inputs: float tensor ``(..., D)``.

        Raises:
            TypeError: a non-float dtype. ValueError: NaN or ±inf values (when known: a
                traced graph codes such a vector as 0).
        """
        inputs = built_input(self, inputs)
        return self._encode_projected(self._project_in(inputs))

    def decode(self, indices):
        """Code vectors for ``indices``: float32 of shape ``indices.shape + (D,)``.

        Args:
            indices: integer tensor with values in ``[0, codebook_size)``.

        Raises:
            TypeError: for a non-integer dtype. ValueError: for out-of-range values, or when
                the layer is not built (``D`` unknown).
        """
        check_decode_input(
            self, f"{type(self).__name__}.decode", indices, self.codebook_size, "codebook_size"
        )
        return self._project_out(self._decode_codes(indices), "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=None, return_indices=False, return_loss=False):
        return quantizer_output_spec(inputs, return_indices, return_loss)
