import copy

import keras
import numpy as np
import pytest

import train
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


def test_batch_norm_momentum_is_the_notebooks_unless_configured():
    def momenta(model):
        return {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}

    assert momenta(build_model()) == {0.99}  # Keras 2.1.6's default, which the notebook used
    config = copy.deepcopy(DEFAULTS)
    config["model"].update(filters=[8, 16], dense=[8], batch_norm_momentum=0.9)
    assert momenta(build_model(config)) == {0.9}


def test_compiled_as_the_notebook():
    assert not build_model().compiled  # model.py builds; train.py compiles
    model = train.compile_model(build_model(), DEFAULTS)
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
    model = train.compile_model(build_model(config), config)
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


def _tiny_config():
    config = copy.deepcopy(DEFAULTS)
    config["model"].update(filters=[8, 16], dense=[16])
    return config


def _numbers(tensor):
    return keras.ops.convert_to_numpy(tensor).astype("float32")


def _small_bn_model():
    return keras.Sequential([keras.Input((5, 5, 3)), keras.layers.Conv2D(8, 3, padding="same"),
                             keras.layers.BatchNormalization(momentum=0.5), keras.layers.Flatten(),
                             keras.layers.Dense(7, activation="softmax", dtype="float32")])


@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 1e-2)])
def test_fused_batch_normalization_computes_what_keras_does(policy, tolerance):
    """Outputs, moving statistics and gradients of the fused layers match Keras's own BatchNormalization."""
    import tensorflow as tf

    from backends import fuse_batch_normalization, uses_fused_batch_norm

    rng = np.random.default_rng(0)
    faces, labels = rng.normal(2, 3, (16, 5, 5, 3)).astype("float32"), np.eye(7)[rng.integers(0, 7, 16)]
    keras.mixed_precision.set_global_policy(policy)
    try:
        ours, theirs = _small_bn_model(), _small_bn_model()
        theirs.set_weights(ours.get_weights())
        assert fuse_batch_normalization(ours) is ours
        assert uses_fused_batch_norm(ours) and not uses_fused_batch_norm(theirs)  # what environment.json records
        results = []
        for model in (ours, theirs):
            with tf.GradientTape() as tape:
                loss = keras.losses.categorical_crossentropy(labels, model(faces, training=True))
            gradients = tape.gradient(loss, model.trainable_variables)
            results.append([_numbers(gradient) for gradient in gradients]
                           + [_numbers(variable) for variable in model.layers[1].non_trainable_variables]
                           + [_numbers(loss), _numbers(model(faces, training=False))])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    gradient_names = [variable.path for variable in ours.trainable_variables]
    for name, mine, keras_own in zip(gradient_names + ["moving_mean", "moving_variance", "loss", "inference"],
                                     *results):
        if "conv2d" in name and name.endswith("bias"):
            continue  # zero up to rounding: BatchNormalization takes every channel's mean away
        scale = np.abs(keras_own).max()
        assert np.abs(mine - keras_own).max() <= tolerance * scale, name
    assert not np.allclose(results[0][-3], 0)  # the loss depends on the batch


def test_fused_batch_normalization_leaves_checkpoints_keras_own(tmp_path):
    config = _tiny_config()
    model = train.compile_model(build_model(config), config)
    assert keras.backend.backend() != "tensorflow" or any(
        "call" in vars(layer) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    normalizations = [layer for layer in reloaded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert normalizations and all(type(layer) is keras.layers.BatchNormalization and "call" not in vars(layer)
                                  for layer in normalizations)
    faces = np.random.default_rng(1).random((4, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(faces, verbose=0), model.predict(faces, verbose=0), atol=1e-5)


def test_a_frozen_fused_batch_normalization_stays_in_inference_mode():
    from backends import fuse_batch_normalization

    faces = np.random.default_rng(2).normal(1, 2, (6, 5, 5, 3)).astype("float32")
    frozen, learning, keras_own = _small_bn_model(), _small_bn_model(), _small_bn_model()
    for model in (learning, keras_own):
        model.set_weights(frozen.get_weights())
    fuse_batch_normalization(frozen)
    fuse_batch_normalization(learning)
    frozen.layers[1].trainable = False
    before = _numbers(frozen.layers[1].moving_variance)
    outputs = _numbers(frozen(faces, training=True))
    np.testing.assert_allclose(outputs, _numbers(keras_own(faces, training=False)), atol=1e-6)
    np.testing.assert_array_equal(_numbers(frozen.layers[1].moving_variance), before)
    assert not np.allclose(outputs, _numbers(learning(faces, training=True)), atol=1e-3)  # batch statistics differ


def test_residual_adds_a_skip_connection_around_each_blocks_last_two_convolutions(tmp_path):
    import evaluate

    config = copy.deepcopy(DEFAULTS)
    config["model"].update(filters=[8, 16, 32], dense=[16])
    config["train"]["augment"].update(flip=True, crop=44)
    plain = build_model(config)
    config["model"]["residual"] = True
    residual = build_model(config)
    assert residual.count_params() == plain.count_params()
    assert [tuple(w.shape) for w in residual.weights] == [tuple(w.shape) for w in plain.weights]
    adds = [layer for layer in residual.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 2 and not any(isinstance(layer, keras.layers.Add) for layer in plain.layers)
    faces = np.random.default_rng(4).random((3, 48, 48, 1)).astype("float32")
    for add, filters in zip(adds, (16, 32)):
        skip, branch = (tensor._keras_history[0] for tensor in add.input)
        # The skip comes from the block's first convolution, the branch from two more, whose last normalization
        # starts at zero, so that each block starts as its first convolution alone.
        assert isinstance(skip, keras.layers.BatchNormalization) and isinstance(branch, keras.layers.BatchNormalization)
        assert skip.input._keras_history[0].filters == filters
        last = branch.input._keras_history[0]
        first = last.input._keras_history[0].input._keras_history[0]  # before the normalization between them
        assert all(isinstance(conv, keras.layers.Conv2D) and conv.filters == filters for conv in (first, last))
        assert np.all(_numbers(branch.gamma) == 0) and np.all(_numbers(skip.gamma) == 1)
        inputs, outputs = keras.Model(residual.inputs, [skip.output, add.output]).predict(faces, verbose=0)
        np.testing.assert_allclose(outputs, inputs, atol=1e-6)
    # A plain Keras file like any other: it loads without our code, and ten-crop finds its crop.
    residual.save(tmp_path / "residual.keras")
    reloaded = keras.saving.load_model(tmp_path / "residual.keras")
    np.testing.assert_allclose(reloaded.predict(faces, verbose=0), residual.predict(faces, verbose=0), atol=1e-6)
    assert evaluate.crop_size(reloaded) == 44 and len(evaluate.crop_shifts(reloaded)) == 5
