import copy

import keras
import numpy as np

from config import DEFAULTS
from model import build_model


def _conv(filters, padding="same", l2=None):
    return ("Conv2D", filters, padding, l2)


def _expected_stack():
    stack = [_conv(64, "valid", 0.01), _conv(64), ("BatchNormalization",), ("MaxPooling2D",), ("Dropout", 0.5)]
    for filters in (128, 256, 512):
        for _ in range(3):
            stack += [_conv(filters), ("BatchNormalization",)]
        stack += [("MaxPooling2D",), ("Dropout", 0.5)]
    stack.append(("Flatten",))
    for units in (512, 256, 128, 64):
        stack += [("Dense", units, "relu"), ("Dropout", 0.5)]
    stack.append(("Dense", 7, "softmax"))
    return stack


def _describe(layer):
    name = layer.__class__.__name__
    config = layer.get_config()
    if name == "Conv2D":
        regularizer = layer.kernel_regularizer
        assert tuple(config["kernel_size"]) == (3, 3) and config["activation"] == "relu"
        return (name, config["filters"], config["padding"],
                None if regularizer is None else round(float(regularizer.l2), 6))
    if name == "Dense":
        return (name, config["units"], config["activation"])
    if name == "Dropout":
        return (name, config["rate"])
    if name == "MaxPooling2D":
        assert tuple(config["pool_size"]) == (2, 2) and tuple(config["strides"]) == (2, 2)
    return (name,)


def test_the_notebooks_exact_layer_stack_and_parameter_count():
    model = build_model()
    assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, 7)
    assert [_describe(layer) for layer in model.layers] == _expected_stack()
    assert model.count_params() == 9_014_727


def test_compiled_as_the_notebook():
    model = build_model()
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert np.isclose(float(model.optimizer.learning_rate), 0.001)
    assert model.loss == "categorical_crossentropy"
    x = np.random.default_rng(0).random((2, 48, 48, 1), dtype=np.float32)
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_widths_and_rates_come_from_the_config():
    config = copy.deepcopy(DEFAULTS)
    config["model"].update(filters=[8, 16], dense=[32], dropout=0.25, l2=0.001)
    config["train"]["learning_rate"] = 0.01
    model = build_model(config)
    described = [_describe(layer) for layer in model.layers]
    assert described[0] == ("Conv2D", 8, "valid", 0.001)
    assert ("Conv2D", 16, "same", None) in described and ("Dense", 32, "relu") in described
    assert {rate for name, *rest in described if name == "Dropout" for rate in rest} == {0.25}
    assert np.isclose(float(model.optimizer.learning_rate), 0.01)


def test_the_published_model_json_head_is_one_config_away():
    # The author's published model.json has a 256-128-48 head (8,356,679 parameters), not the code's.
    config = copy.deepcopy(DEFAULTS)
    config["model"]["dense"] = [256, 128, 48]
    assert build_model(config).count_params() == 8_356_679
