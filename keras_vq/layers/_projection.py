"""What the codebook-free quantizers share: optional Dense projections and the output spec.

``FiniteScalarQuantizer`` and ``LookupFreeQuantizer`` quantize a fixed number of channels
(``len(levels)``, ``num_bits``). An input whose last axis differs is projected in by a Dense
layer and the codes projected back out by another, as vector-quantize-pytorch's ``FSQ`` and
``LFQ`` do when their ``dim`` differs from the code dimension.
"""

from __future__ import annotations

import keras
from keras import ops


class ProjectionMixin:
    """Dense in/out projections around a quantizer of ``code_dim`` channels.

    The subclass sets ``self.code_dim`` before ``build`` and calls ``_build_projections`` from
    its ``build``. ``project_in`` is float32 under every dtype policy: the codes are decided
    from its output, and a bfloat16 projection would flip codes near a decision boundary.
    ``project_out`` follows the layer's dtype policy (it changes values, never codes).
    """

    code_dim: int
    input_dim: int | None
    project_in: keras.layers.Dense | None
    project_out: keras.layers.Dense | None

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
        if len(shape) < 1 or (shape[-1] is not None and shape[-1] != self.input_dim):
            raise ValueError(
                f"`{name}` must have last axis {self.input_dim} (the axis this "
                f"{type(self).__name__} was built for), got shape {tuple(shape)}."
            )

    def _project_in(self, inputs):
        """``inputs`` → float32 ``(..., code_dim)``."""
        self._check_last_axis(inputs.shape)
        z = ops.cast(inputs, "float32")
        return z if self.project_in is None else self.project_in(z)

    def _project_out(self, codes, dtype):
        """float32 codes ``(..., code_dim)`` → ``(..., input_dim)`` of ``dtype``."""
        out = codes if self.project_out is None else self.project_out(codes)
        return ops.cast(out, dtype)


def quantizer_output_spec(inputs, return_indices: bool, return_loss: bool):
    """The ``compute_output_spec`` of a quantizer: outputs, int32 indices, float32 loss."""
    outputs = [keras.KerasTensor(inputs.shape, dtype=inputs.dtype)]
    if return_indices:
        outputs.append(keras.KerasTensor(inputs.shape[:-1], dtype="int32"))
    if return_loss:
        outputs.append(keras.KerasTensor((), dtype="float32"))
    return tuple(outputs) if len(outputs) > 1 else outputs[0]
