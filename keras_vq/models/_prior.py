"""What the autoregressive priors share: input checks, the training loss, seeded sampling."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vq import _validation
from keras_vq.backend import compile_function
from keras_vq.backend.checks import checked_indices
from keras_vq.losses import categorical_cross_entropy
from keras_vq.metrics import bits_per_dim

# Gumbel noise is -log(-log(u)); u in [tiny, 1) keeps it finite, so 0 · noise is exactly 0.
_TINY = float(np.finfo("float32").tiny)


class _SamplerCache:
    """Compiled samplers, one per set of static options (``top_k``), and the variables that
    are their arguments. A plain holder: Keras would track (and, once built, refuse) a list
    of variables."""

    def __init__(self):
        self.fns: dict[tuple, Callable] = {}
        self.variables: list = []


def check_prior_shape(latent_shape: Any) -> tuple[int, int]:
    """``latent_shape`` as a checked pair of positive ints."""
    if not isinstance(latent_shape, Sequence) or len(latent_shape) != 2:
        raise ValueError(f"`latent_shape` must be a pair (h, w), got {latent_shape!r}.")
    return tuple(
        _validation.check_int(f"latent_shape[{i}]", d, minimum=1)
        for i, d in enumerate(latent_shape)
    )


class PriorMixin:
    """Data handling, loss and sampling driver of a prior over ``(h, w)`` maps of K codes.

    The model defines ``num_embeddings``, ``latent_shape``, ``num_classes``, the trackers
    ``accuracy_tracker``/``bits_tracker``, ``_sampler = _SamplerCache()`` and
    ``_sample_loop(uniform, temperature, labels, **options)``: the sampler on given uniform
    noise ``(B, h, w, K)``, built from ``keras.ops`` so that it compiles and exports.
    """

    # The model's own constructor arguments, which get_config returns besides the shared ones.
    _CONFIG_KEYS: tuple[str, ...] = ()

    def _init_prior(self, num_embeddings, latent_shape, num_classes) -> None:
        """Checks and stores what every prior has; creates its trackers and sampler cache."""
        self.num_embeddings = _validation.check_int("num_embeddings", num_embeddings, minimum=1)
        self.latent_shape = check_prior_shape(latent_shape)
        self.num_classes = _validation.check_optional_int("num_classes", num_classes, minimum=1)
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.bits_tracker = keras.metrics.Mean(name="bits_per_code")
        self._sampler = _SamplerCache()

    def get_config(self):
        config = super().get_config()
        for key in ("num_embeddings", "latent_shape", "num_classes", *self._CONFIG_KEYS):
            value = getattr(self, key)
            config[key] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # --- inputs ---------------------------------------------------------------------------
    def _check_codes(self, codes, name: str = "codes"):
        shape = tuple(codes.shape)
        if len(shape) != 3 or any(
            got is not None and got != want for got, want in zip(shape[1:], self.latent_shape)
        ):
            raise ValueError(
                f"`{name}` must have shape (batch, {self.latent_shape[0]}, "
                f"{self.latent_shape[1]}) (latent_shape={self.latent_shape}), got shape {shape}."
            )
        return checked_indices(name, codes, self.num_embeddings)

    def _check_labels(self, labels, name: str = "labels"):
        shape = tuple(labels.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ValueError(f"`{name}` must have shape (batch,) or (batch, 1), got {shape}.")
        return checked_indices(name, labels, self.num_classes, "num_classes")

    def _split_inputs(self, inputs):
        """``codes`` or ``[codes, labels]`` → ``(codes, labels or None)``, validated."""
        kind = type(self).__name__
        if self.num_classes is None:
            if isinstance(inputs, list | tuple):
                raise ValueError(
                    f"An unconditional {kind} (num_classes=None) takes `codes` alone, "
                    f"got a {type(inputs).__name__} of {len(inputs)} inputs."
                )
            codes, labels = inputs, None
        else:
            if not isinstance(inputs, list | tuple) or len(inputs) != 2:
                raise ValueError(
                    f"A class-conditional {kind} (num_classes={self.num_classes}) takes "
                    "`[codes, labels]`; `labels` are missing."
                )
            codes, labels = inputs
            labels = self._check_labels(labels)
        return self._check_codes(codes), labels

    def _data_inputs(self, x, y=None):
        """The model's inputs from ``fit`` data: codes, or ``[codes, labels]``."""
        if self.num_classes is None:
            return x
        if isinstance(x, list | tuple):
            return list(x)
        if y is None:
            raise ValueError(
                f"A class-conditional {type(self).__name__} (num_classes={self.num_classes}) "
                "trains on `(codes, labels)`; got codes without labels."
            )
        return [x, y]

    def validate_batch(self, data) -> None:
        x, y, _ = self._unpack(data)
        self._split_inputs(self._data_inputs(x, y))

    # --- loss -------------------------------------------------------------------------------
    def step_loss(self, x, y=None, sample_weight=None, training=False):
        inputs = self._data_inputs(x, y)
        codes = inputs[0] if isinstance(inputs, list) else inputs
        logits = self(inputs, training=training)
        nll = ops.mean(categorical_cross_entropy(codes, logits), axis=(1, 2))  # (B,) nats/code
        hits = ops.cast(ops.argmax(logits, axis=-1) == ops.cast(codes, "int32"), "float32")
        accuracy = ops.mean(hits, axis=(1, 2))
        if sample_weight is None:
            loss = ops.mean(nll)
        else:
            sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            loss = ops.sum(nll * sample_weight) / ops.maximum(ops.sum(sample_weight), 1e-12)
        self.accuracy_tracker.update_state(accuracy, sample_weight=sample_weight)
        self.bits_tracker.update_state(bits_per_dim(nll, 1), sample_weight=sample_weight)
        return loss, logits

    # --- sampling ---------------------------------------------------------------------------
    def _sampling_labels(self, labels, num_samples: int):
        kind = type(self).__name__
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    f"`labels` must be None for an unconditional {kind} "
                    f"(num_classes=None), got {labels!r}."
                )
            return ops.zeros((num_samples,), "int32")
        if labels is None:
            raise ValueError(
                f"`labels` are required to sample a class-conditional {kind} "
                f"(num_classes={self.num_classes})."
            )
        if isinstance(labels, int | np.integer):
            labels = np.full((num_samples,), labels)
        elif isinstance(labels, list | tuple):
            labels = np.asarray(labels)
        self._check_labels(labels)
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        if labels.shape[0] != num_samples:
            raise ValueError(
                f"`labels` must have one entry per sample (num_samples={num_samples}), "
                f"got {labels.shape[0]}."
            )
        return labels

    def _draw(
        self,
        num_samples: int,
        temperature: float,
        seed: Any,
        labels: Any,
        batch_size: int | None = None,
        **options,
    ):
        """``sample``: its arguments checked, the maps drawn in calls of ``batch_size``."""
        chunks = self._sample_chunks(num_samples, temperature, seed, labels, batch_size, **options)
        return join_chunks(list(chunks), num_samples)

    def _sample_chunks(self, num_samples, temperature, seed, labels, batch_size=None, **options):
        """Check ``sample``'s arguments, then return an iterator over its calls' codes.

        With ``c = min(batch_size, num_samples)``, call ``i`` draws ``c`` maps on noise from
        ``seed + i`` (fresh noise with ``seed=None``), labels cycled past the end.
        """
        num_samples = _validation.check_int("num_samples", num_samples, minimum=1)
        temperature = _validation.check_float("temperature", temperature, minimum=0.0)
        seed = _validation.check_seed("seed", seed)
        labels = self._sampling_labels(labels, num_samples)
        chunk = num_samples
        if batch_size is not None:
            chunk = min(_validation.check_int("batch_size", batch_size, minimum=1), num_samples)

        def chunks():
            for i in range(math.ceil(num_samples / chunk)):
                positions = (i * chunk + np.arange(chunk)) % num_samples
                uniform = keras.random.uniform(
                    (chunk, *self.latent_shape, self.num_embeddings),
                    minval=_TINY,
                    maxval=1.0,
                    dtype="float32",
                    seed=_validation.offset_seed(seed, i),
                )
                chunk_labels = ops.take(labels, positions, axis=0)
                yield self._sample_from_uniform(uniform, temperature, chunk_labels, **options)

        return chunks()

    def _sample_from_uniform(self, uniform, temperature, labels, **options):
        """Sampler on given uniform noise ``(B, h, w, K)`` in (0, 1) and int32 labels ``(B,)``.

        ``options`` are static (Python values): each set gets its own compiled function.
        """
        cache = self._sampler
        key = tuple(sorted(options.items()))
        if key not in cache.fns:
            # Weights are arguments, not constants baked into the trace: the compiled loop
            # stays valid when training continues.
            if not cache.variables:
                cache.variables = list(self.variables)

            def run(state, uniform, temperature, labels):
                with keras.StatelessScope(state_mapping=list(zip(cache.variables, state))):
                    return self._sample_loop(uniform, temperature, labels, **options)

            cache.fns[key] = compile_function(run)
        return cache.fns[key](
            [v.value for v in cache.variables],
            ops.convert_to_tensor(uniform, "float32"),
            ops.convert_to_tensor(temperature, "float32"),
            ops.convert_to_tensor(labels, "int32"),
        )


def join_chunks(chunks: list, num_samples: int):
    """The first ``num_samples`` rows of the concatenated ``chunks``."""
    if len(chunks) == 1 and chunks[0].shape[0] == num_samples:
        return chunks[0]
    return ops.concatenate(chunks, axis=0)[:num_samples]
