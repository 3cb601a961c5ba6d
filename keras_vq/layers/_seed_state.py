"""Save a layer's random-stream position with its weights.

Keras keeps ``SeedGenerator`` states out of ``model.save``/``save_weights``, so a model restored
from a checkpoint (``BackupAndRestore``) would replay the noise it drew from the start. Layers
that mix this in store the state next to their variables, and a resumed run draws exactly what
an uninterrupted one would.
"""

_KEY = "seed_generator_state"


class SeedStateMixin:
    """For layers with a ``seed_generator`` attribute (``None`` when they draw no noise)."""

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if getattr(self, "seed_generator", None) is not None:
            store[_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _KEY in keys and getattr(self, "seed_generator", None) is not None:
            self.seed_generator.state.assign(store[_KEY])
        super().load_own_variables({k: store[k] for k in keys if k != _KEY})
