"""keras_vq models."""

from keras_vq.models.classifier import DigitClassifier
from keras_vq.models.image_generator import ImageGenerator
from keras_vq.models.pixelcnn import PixelCNNPrior, generate
from keras_vq.models.transformer import TransformerPrior
from keras_vq.models.vae import VAE
from keras_vq.models.vqvae import VQVAE

__all__ = [
    "VAE",
    "VQVAE",
    "DigitClassifier",
    "ImageGenerator",
    "PixelCNNPrior",
    "TransformerPrior",
    "generate",
]
