"""What the autoregressive priors share: input checks, label dropout, the training loss, seeded
sampling with top-k, nucleus (top-p) and classifier-free guidance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_vq import _validation, serving
from keras_vq.backend import compile_function
from keras_vq.backend.checks import checked_indices
from keras_vq.layers._seed_state import SeedStateMixin
from keras_vq.losses import categorical_cross_entropy
from keras_vq.metrics import bits_per_dim

# Gumbel noise is -log(-log(u)); u in [tiny, 1) keeps it finite, so 0 · noise is exactly 0.
_TINY = serving._TINY  # the noise floor, shared with the exported sampler


class _SamplerCache:
    """Compiled samplers, one per set of static options (``top_k``; whether ``top_p`` and
    ``guidance_scale`` are used), and the variables that are their arguments. A plain holder:
    Keras would track (and, once built, refuse) a list of variables."""

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


class PriorMixin(SeedStateMixin):
    """Data handling, loss and sampling driver of a prior over ``(h, w)`` maps of K codes.

    The model calls ``_init_prior`` (``num_embeddings``, ``latent_shape``, ``num_classes``,
    ``label_dropout``, the sampling defaults ``guidance_scale`` and ``top_p``, the trackers,
    the sampler cache), passes its labels through
    ``_drop_labels`` in ``call``, sizes its class embeddings ``num_label_rows`` and defines
    ``_sample_loop(uniform, temperature, labels, top_k=None, top_p=None,
    guidance_scale=None)``: the sampler on given uniform noise ``(B, h, w, K)``, built from
    ``keras.ops`` so that it compiles and exports, which runs its network on
    ``guided_labels(labels, guidance_scale)`` (2B rows when guided) and picks each position's
    codes with a :class:`CodePicker`.
    """

    # The model's own constructor arguments, which get_config returns besides the shared ones.
    _CONFIG_KEYS: tuple[str, ...] = ()

    def _init_prior(
        self,
        num_embeddings,
        latent_shape,
        num_classes,
        label_dropout=0.0,
        guidance_scale=None,
        top_p=None,
    ) -> None:
        """Checks and stores what every prior has; creates its trackers and sampler cache."""
        self.num_embeddings = _validation.check_int("num_embeddings", num_embeddings, minimum=1)
        self.latent_shape = check_prior_shape(latent_shape)
        self.num_classes = _validation.check_optional_int("num_classes", num_classes, minimum=1)
        self.label_dropout = _validation.check_float("label_dropout", label_dropout, minimum=0.0)
        if self.label_dropout >= 1.0:
            raise ValueError(f"`label_dropout` must lie in [0, 1), got {label_dropout}.")
        if self.label_dropout > 0.0 and self.num_classes is None:
            raise ValueError(
                f"`label_dropout` needs a class-conditional prior (num_classes set), got "
                f"label_dropout={label_dropout} with num_classes=None."
            )
        # Only a prior that drops labels draws noise in its forward pass: one without keeps
        # the variables (and the saved files) of priors made before label dropout existed.
        # The generator's state is saved with the weights (SeedStateMixin): a resumed run
        # drops the labels an uninterrupted one would.
        self.seed_generator = keras.random.SeedGenerator() if self.label_dropout > 0.0 else None
        # The sampling defaults, checked like sample's arguments (guidance against the null
        # label just set up) and normalised as they are (top_p = 1: None).
        self.guidance_scale = self.top_p = None
        defaults = self.sampling_options(top_p=top_p, guidance_scale=guidance_scale)
        self.guidance_scale, self.top_p = defaults["guidance_scale"], defaults["top_p"]
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.bits_tracker = keras.metrics.Mean(name="bits_per_code")
        self._sampler = _SamplerCache()

    @property
    def null_label(self) -> int | None:
        """The label of "no class" (``num_classes``), which training with ``label_dropout``
        puts in place of dropped labels and classifier-free guidance samples against;
        ``None`` for a prior without label dropout."""
        return self.num_classes if self.label_dropout > 0.0 else None

    @property
    def num_label_rows(self) -> int | None:
        """Rows of the class embeddings: the classes, and the null label when there is one."""
        if self.num_classes is None:
            return None
        return self.num_classes + (self.null_label is not None)

    def get_config(self):
        config = super().get_config()
        keys = ("num_embeddings", "latent_shape", "num_classes", "label_dropout")
        for key in (*keys, "guidance_scale", "top_p", *self._CONFIG_KEYS):
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
        """Labels of shape ``(B,)`` or ``(B, 1)`` in ``[0, num_classes)``, or up to the null
        label ``num_classes`` inclusive when the prior has one."""
        shape = tuple(labels.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ValueError(f"`{name}` must have shape (batch,) or (batch, 1), got {shape}.")
        if self.null_label is None:
            return checked_indices(name, labels, self.num_classes, "num_classes")
        return checked_indices(
            name, labels, self.num_label_rows, "num_classes + 1 with the null label"
        )

    def _drop_labels(self, labels, training=None):
        """``labels`` with each one replaced by the null label with probability
        ``label_dropout`` while training (classifier-free guidance's training); as they are
        otherwise. The draws come from the prior's ``SeedGenerator``: reproducible under
        ``keras.utils.set_random_seed``, and they advance inside compiled train steps."""
        if labels is None or not training or self.seed_generator is None:
            return labels
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        uniform = keras.random.uniform(ops.shape(labels), seed=self.seed_generator)
        null = ops.full_like(labels, self.null_label)
        return ops.where(uniform < self.label_dropout, null, labels)

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

    # --- serving ---------------------------------------------------------------------------
    def _serving_endpoints(self, format: str) -> list:
        """``serving_default``: ``codes`` [, ``labels``] → ``logits`` (ExportMixin)."""
        return serving.prior_endpoints(self)

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
        elif isinstance(labels, list | tuple | range):
            labels = np.asarray(labels)
        self._check_labels(labels)
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        if labels.shape[0] != num_samples:
            raise ValueError(
                f"`labels` must have one entry per sample (num_samples={num_samples}), "
                f"got {labels.shape[0]}."
            )
        return labels

    def sampling_options(self, top_k=None, top_p=None, guidance_scale=None) -> dict:
        """``sample``'s options ``top_k``, ``top_p`` and ``guidance_scale`` checked; those
        that change nothing dropped (``top_k = K``, ``top_p = 1``: one compiled sampler
        less). ``top_p=None`` and ``guidance_scale=None`` take the prior's own ``top_p`` and
        ``guidance_scale`` (its constructor arguments, ``None`` unless set: every code, no
        guidance); ``top_p=1`` turns a stored nucleus off, ``guidance_scale=1`` (plain
        conditional sampling) a stored guidance.

        Raises:
            ValueError: ``top_k`` outside ``[1, K]``, ``top_p`` outside ``(0, 1]``, a
                negative ``guidance_scale``, or guidance for a prior without a null label.
            TypeError: an argument of the wrong type.
        """
        if top_k is not None:
            top_k = _validation.check_int("top_k", top_k, minimum=1)
            if top_k > self.num_embeddings:
                raise ValueError(
                    f"`top_k` must be at most num_embeddings={self.num_embeddings}, got {top_k}."
                )
            if top_k == self.num_embeddings:
                top_k = None
        if top_p is None:
            top_p = self.top_p
        if top_p is not None:
            top_p = _validation.check_float("top_p", top_p, minimum=0.0, maximum=1.0)
            if top_p == 0.0:
                raise ValueError(f"`top_p` must be in (0, 1], got {top_p}.")
            if top_p == 1.0:
                top_p = None
        if guidance_scale is None:
            guidance_scale = self.guidance_scale
        if guidance_scale is not None:
            guidance_scale = _validation.check_float("guidance_scale", guidance_scale, minimum=0.0)
            if self.null_label is None:
                raise ValueError(
                    "`guidance_scale` needs a class-conditional prior trained with label "
                    f"dropout (num_classes set, label_dropout > 0), got guidance_scale="
                    f"{guidance_scale} for a {type(self).__name__} with num_classes="
                    f"{self.num_classes}, label_dropout={self.label_dropout}."
                )
        return {"top_k": top_k, "top_p": top_p, "guidance_scale": guidance_scale}

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
        ``seed + i`` (fresh noise with ``seed=None``), labels cycled past the end. ``options``:
        ``top_k``, ``top_p``, ``guidance_scale`` (see :meth:`sampling_options`).
        """
        num_samples = _validation.check_int("num_samples", num_samples, minimum=1)
        temperature = _validation.check_float("temperature", temperature, minimum=0.0)
        seed = _validation.check_seed("seed", seed)
        labels = self._sampling_labels(labels, num_samples)
        options = self.sampling_options(**options)
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

    def _sample_from_uniform(
        self, uniform, temperature, labels, top_k=None, top_p=None, guidance_scale=None
    ):
        """Sampler on given uniform noise ``(B, h, w, K)`` in (0, 1) and int32 labels ``(B,)``.

        ``top_k`` and whether ``top_p``/``guidance_scale`` are used are static: each set gets
        its own compiled function; the values of ``temperature``, ``top_p`` and
        ``guidance_scale`` are its arguments.
        """
        cache = self._sampler
        key = (top_k, top_p is not None, guidance_scale is not None)
        if key not in cache.fns:
            # Weights are arguments, not constants baked into the trace: the compiled loop
            # stays valid when training continues.
            if not cache.variables:
                cache.variables = list(self.variables)

            def run(state, uniform, temperature, labels, top_p, guidance_scale):
                with keras.StatelessScope(state_mapping=list(zip(cache.variables, state))):
                    return self._sample_loop(
                        uniform, temperature, labels, top_k, top_p, guidance_scale
                    )

            cache.fns[key] = compile_function(run)

        def scalar(value):
            return None if value is None else ops.convert_to_tensor(value, "float32")

        return cache.fns[key](
            [v.value for v in cache.variables],
            ops.convert_to_tensor(uniform, "float32"),
            scalar(temperature),
            ops.convert_to_tensor(labels, "int32"),
            scalar(top_p),
            scalar(guidance_scale),
        )

    def guided_labels(self, labels, guidance_scale=None):
        """The labels a sampling loop runs its network on: ``labels`` ``(B,)``, or with
        guidance ``[labels; null_label × B]`` ``(2B,)``, the conditional rows then the null
        rows of one batched pass."""
        if guidance_scale is None:
            return labels
        return ops.concatenate([labels, ops.full_like(labels, self.null_label)], axis=0)


class CodePicker:
    """How a sampling loop turns one position's logits into codes, prepared once per call.

    With classifier-free guidance the logits come in two halves, conditional rows ``l_c`` then
    null rows ``l_0`` (:meth:`PriorMixin.guided_labels`), combined per position into
    ``l = s·l_c + (1 − s)·l_0``, which is ``l_0 + s·(l_c − l_0)`` and exactly ``l_c`` at
    ``s = 1`` and exactly ``l_0`` at ``s = 0``. Then only the ``top_k`` largest logits are kept,
    then the nucleus of ``softmax(l / T)`` (:func:`nucleus_logits`), and the code is
    ``argmax_k(l_k + T·g_k)`` for Gumbel noise ``g``: a draw from ``softmax(l / T)`` restricted
    to the kept codes (``T = 0``: the argmax).

    Args:
        temperature: T, a float32 scalar tensor.
        top_k: keep the k largest logits (ties with the k-th kept too), or ``None``.
        top_p: float32 scalar tensor in (0, 1), or ``None``.
        guidance_scale: s, a float32 scalar tensor, or ``None`` (the logits are ``(B, K)``).
    """

    def __init__(self, temperature, top_k=None, top_p=None, guidance_scale=None):
        self.top_k, self.top_p, self.guidance_scale = top_k, top_p, guidance_scale
        if guidance_scale is not None:
            self.null_weight = 1.0 - guidance_scale
        # softmax(l / T) at T = 0 is the argmax, which every mask keeps: any scale will do.
        if top_p is not None:
            self.nucleus_temperature = ops.where(temperature > 0, temperature, 1.0)

    @property
    def guided(self) -> bool:
        return self.guidance_scale is not None

    def __call__(self, logits, noise, xops=ops):
        """Codes ``(B,)`` int32 from float32 ``logits`` ``(B or 2B, K)`` and ``noise = T·g``
        ``(B, K)``; ``xops``: the loop's ops (:func:`keras_vq.backend.ops.loop_ops`)."""
        if self.guided:
            conditional, null = xops.unstack(xops.reshape(logits, (2, -1, logits.shape[-1])))
            logits = self.guidance_scale * conditional + self.null_weight * null
        if self.top_k is not None:
            logits = top_k_logits(logits, self.top_k, xops)
        if self.top_p is not None:
            logits = nucleus_logits(logits, self.top_p, self.nucleus_temperature, xops)
        return xops.cast(xops.argmax(logits + noise, axis=-1), "int32")

    def feed(self, codes, xops=ops):
        """The drawn codes ``(B,)`` as the network's next input: the same code for a
        sample's conditional and null rows when guided, ``(2B,)``."""
        return xops.concatenate([codes, codes], axis=0) if self.guided else codes


def top_k_logits(logits, k: int, xops=ops):
    """``logits`` ``(B, K)`` with all but the ``k`` largest per row set to ``-inf``; entries
    equal to the k-th largest are all kept (ties are kept or dropped together)."""
    kth = xops.top_k(logits, k, sorted=True)[0][:, -1:]
    return xops.where(logits >= kth, logits, float("-inf"))


def nucleus_logits(logits, top_p, temperature, xops=ops):
    """``logits`` ``(B, K)`` with the codes outside the nucleus of ``softmax(logits / T)`` set
    to ``-inf`` (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration").

    The nucleus is the smallest set of most probable codes whose total probability reaches
    ``top_p``: in the order of decreasing probability, code r is kept when the codes before it
    hold less than ``top_p``, so the most probable is always kept. Codes tied with the last
    kept one are kept too, so the result depends only on the values, never on how a backend's
    sort orders ties. Masked (``-inf``) entries have probability 0.

    Args:
        logits: float32 ``(B, K)``; ``-inf`` allowed, at least one finite per row.
        top_p: scalar in (0, 1].
        temperature: T > 0, scalar.
        xops: the ops to use (:func:`keras_vq.backend.ops.loop_ops`).

    Returns:
        float32 ``(B, K)``.
    """
    descending = -xops.sort(-logits, axis=-1)
    # Unnormalised probabilities in sorted order; the largest is exp(0) = 1.
    weights = xops.exp((descending - descending[:, :1]) / temperature)
    cumulative = xops.cumsum(weights, axis=-1)
    before = xops.concatenate([xops.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], axis=-1)
    kept = before < top_p * cumulative[:, -1:]  # a prefix of the sorted codes, never empty
    threshold = xops.min(xops.where(kept, descending, float("inf")), axis=-1, keepdims=True)
    return xops.where(logits >= threshold, logits, float("-inf"))


def join_chunks(chunks: list, num_samples: int):
    """The first ``num_samples`` rows of the concatenated ``chunks``."""
    if len(chunks) == 1 and chunks[0].shape[0] == num_samples:
        return chunks[0]
    return ops.concatenate(chunks, axis=0)[:num_samples]
