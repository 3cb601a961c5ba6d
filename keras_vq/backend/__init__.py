"""Everything that depends on the Keras backend, in one package.

Layers, models, losses and metrics are pure ``keras.ops``; whatever must differ between
TensorFlow, JAX and PyTorch lives here:

- ``TrainStepMixin`` (``trainers``): the per-backend ``train_step``/``test_step``;
- ``distribute``: cross-replica sums for ``tf.distribute`` (no-ops elsewhere);
- ``ops``: running a loop compiled (``compile_function``) or a layer's state update
  (``compiled_state_update``), convolutions without torch's NCHW copies
  (``conv_2d``, ``conv_transpose_2d``), inference without autograd state
  (``no_grad``, ``inference``), host copies (``to_numpy``), a gather with a dense gradient
  (``gather_rows``), an argmin without Keras' -0.0 passes (``argmin_last_axis``), a fused
  ``x @ y + b`` (``matmul_add``), a segment sum by row ids (``segment_sum``), whether
  forward-pass assignments to trainable weights persist, and keeping TensorFlow off the GPUs
  when it only feeds data (``hide_gpus_from_tensorflow``);
- ``vq_ops``: the vector quantizer's memory-lean kernels, a sequential row-chunk map
  (``row_chunk_map``) and a fused straight-through quantization with its own gradient
  (``straight_through_vq``);
- ``checks``: input checks that also hold inside compiled steps.
"""

from keras_vq.backend import distribute
from keras_vq.backend.ops import (
    argmin_last_axis,
    compile_function,
    compiled_state_update,
    conv_2d,
    conv_transpose_2d,
    forward_assignments_persist,
    gather_rows,
    hide_gpus_from_tensorflow,
    inference,
    matmul_add,
    no_grad,
    segment_sum,
    to_numpy,
)
from keras_vq.backend.trainers import TrainStepMixin
from keras_vq.backend.vq_ops import row_chunk_map, straight_through_vq

__all__ = [
    "TrainStepMixin",
    "argmin_last_axis",
    "compile_function",
    "compiled_state_update",
    "conv_2d",
    "conv_transpose_2d",
    "distribute",
    "forward_assignments_persist",
    "gather_rows",
    "hide_gpus_from_tensorflow",
    "inference",
    "matmul_add",
    "no_grad",
    "row_chunk_map",
    "segment_sum",
    "straight_through_vq",
    "to_numpy",
]
