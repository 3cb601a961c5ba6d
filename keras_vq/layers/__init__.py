"""keras_vq layers."""

from keras_vq.layers.finite_scalar_quantizer import FiniteScalarQuantizer
from keras_vq.layers.lookup_free_quantizer import LookupFreeQuantizer
from keras_vq.layers.pixelcnn import GatedPixelCNNBlock, MaskedConv2D
from keras_vq.layers.residual_vector_quantizer import ResidualVectorQuantizer
from keras_vq.layers.sampling import Sampling
from keras_vq.layers.vector_quantizer import VectorQuantizer

__all__ = [
    "FiniteScalarQuantizer",
    "GatedPixelCNNBlock",
    "LookupFreeQuantizer",
    "MaskedConv2D",
    "ResidualVectorQuantizer",
    "Sampling",
    "VectorQuantizer",
]
