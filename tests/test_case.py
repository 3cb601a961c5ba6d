"""A battery every keras_vq layer and model goes through (KerasHub's ``TestCase`` idea)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def to_numpy(x) -> np.ndarray:
    """Any backend tensor (torch ones with grad included) as NumPy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(ops.convert_to_numpy(x))


class TestCase:
    """Mix into a pytest class: ``class TestFoo(TestCase): ...``."""

    def assertAllClose(self, a, b, atol=1e-6, rtol=1e-6, msg=None):
        np.testing.assert_allclose(
            to_numpy(a), to_numpy(b), atol=atol, rtol=rtol, err_msg=msg or ""
        )

    def run_layer_test(
        self,
        layer_cls,
        init_kwargs: dict,
        input_data,
        expected_output_shape: tuple,
        expected_output_dtype: str | None = None,
        tmp_path=None,
        call_kwargs: dict | None = None,
    ):
        """Config round trip, eager + symbolic call, and a ``.keras`` round trip."""
        call_kwargs = call_kwargs or {}
        layer = layer_cls(**init_kwargs)
        config = layer.get_config()
        for key, value in init_kwargs.items():
            if key in config and not isinstance(value, keras.initializers.Initializer):
                assert config[key] == value, (
                    f"get_config()[{key!r}] = {config[key]!r} != {value!r}"
                )
        revived = layer_cls.from_config(config)
        assert revived.get_config() == config

        output = layer(input_data, **call_kwargs)
        assert tuple(output.shape) == tuple(expected_output_shape)
        if expected_output_dtype is not None:
            assert keras.backend.standardize_dtype(output.dtype) == expected_output_dtype

        symbolic_in = _symbolic_like(input_data)
        symbolic_out = layer_cls(**init_kwargs)(symbolic_in, **call_kwargs)
        assert tuple(symbolic_out.shape)[1:] == tuple(expected_output_shape)[1:]

        if tmp_path is not None:
            model = keras.Model(symbolic_in, layer_cls(**init_kwargs)(symbolic_in, **call_kwargs))
            self.run_model_saving_test(model, input_data, tmp_path)
        return layer

    def run_model_saving_test(self, model, input_data, tmp_path, atol=1e-6):
        """``model.save`` → ``load_model(safe_mode=True)`` gives identical outputs."""
        expected = model(input_data)
        path = str(tmp_path / "model.keras")
        model.save(path)
        revived = keras.saving.load_model(path, safe_mode=True)
        actual = revived(input_data)
        for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(actual)):
            self.assertAllClose(a, b, atol=atol, rtol=atol)
        return revived


def _symbolic_like(data):
    if isinstance(data, list | tuple):
        return [keras.Input(shape=tuple(d.shape)[1:], dtype=str(d.dtype)) for d in data]
    return keras.Input(
        shape=tuple(data.shape)[1:], dtype=keras.backend.standardize_dtype(data.dtype)
    )
