"""Everything that depends on the Keras backend, in one package.

Layers, models, losses and metrics are pure ``keras.ops``; whatever must differ between
TensorFlow, JAX and PyTorch lives here:

- ``TrainStepMixin`` (``trainers``): the per-backend ``train_step``/``test_step``;
- ``distribute``: cross-replica sums for ``tf.distribute`` (no-ops elsewhere);
- ``compile_function``, ``no_grad``, ``inference``, ``to_numpy`` (``ops``): running a loop
  compiled, running inference without autograd state, copying results to the host.
"""

from keras_vq.backend import distribute
from keras_vq.backend.ops import compile_function, inference, no_grad, to_numpy
from keras_vq.backend.trainers import TrainStepMixin

__all__ = [
    "TrainStepMixin",
    "compile_function",
    "distribute",
    "inference",
    "no_grad",
    "to_numpy",
]
