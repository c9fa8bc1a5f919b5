"""The notebook's CNN, in Keras 3 (any backend).

    python model.py                 # the layer stack and parameter count (9,014,727 with the defaults)

Conv2D(64, valid, L2) - Conv2D(64, same) - BN - MaxPool - Dropout, then for f in 128, 256, 512:
3 x [Conv2D(f, same) - BN] - MaxPool - Dropout; Flatten; Dense 512, 256, 128, 64 each with Dropout;
Dense(7, softmax). `model.filters` and `model.dense` change the widths (the demo uses a small one);
`model.residual` adds a skip connection around each block's last two convolutions (same parameters).
"""
if __name__ == "__main__":  # first, before the imports below bring in Keras
    from common import start_backend

    start_backend()

import argparse
import random
import sys

import data
from common import native_stderr_held
from config import DEFAULTS

with native_stderr_held():
    import keras

INPUT_SHAPE = data.IMAGE_SHAPE
CLASSES = len(data.EMOTIONS)


def build_model(config=None):
    """The notebook's network, uncompiled (train.py compiles it); `config` is a full config dict (None:
    config.yaml's defaults)."""
    config = config or DEFAULTS
    options = config["model"]
    l2, rate, momentum = options["l2"], options["dropout"], options["batch_norm_momentum"]
    stem, *blocks = options["filters"]

    def conv(filters):
        return keras.layers.Conv2D(filters, 3, activation="relu", padding="same")

    def norm(gamma="ones"):
        return keras.layers.BatchNormalization(momentum=momentum, gamma_initializer=gamma)

    def head():
        layers = [keras.layers.Flatten()]
        for units in options["dense"]:
            layers += [keras.layers.Dense(units, activation="relu"), dropout(rate)]
        return layers + [keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")]  # float32 if mixed

    front = [*augmentation(config["train"]["augment"]),
             keras.layers.Conv2D(stem, 3, activation="relu", padding="valid",
                                 kernel_regularizer=keras.regularizers.L2(l2)),
             conv(stem), norm(), keras.layers.MaxPooling2D(2, strides=2), dropout(rate)]
    if not options["residual"]:
        layers = [keras.Input(INPUT_SHAPE), *front]
        for filters in blocks:
            for _ in range(3):
                layers += [conv(filters), norm()]
            layers += [keras.layers.MaxPooling2D(2, strides=2), dropout(rate)]
        return let_jax_compile(keras.Sequential(layers + head(), name="fer2013_cnn"))
    # The same layers, with a skip connection around each block's second and third convolutions (ResNet's, He et
    # al. 2016): the block adds what they compute to what its first one gave. The branch's last BatchNormalization
    # starts at zero, so each block starts as its first convolution alone (Goyal et al. 2017).
    x = inputs = keras.Input(INPUT_SHAPE)
    for layer in front:
        x = layer(x)
    for filters in blocks:
        x = norm()(conv(filters)(x))
        branch = norm(gamma="zeros")(conv(filters)(norm()(conv(filters)(x))))
        x = keras.layers.Add()([x, branch])
        x = dropout(rate)(keras.layers.MaxPooling2D(2, strides=2)(x))
    for layer in head():
        x = layer(x)
    return let_jax_compile(keras.Model(inputs, x, name="fer2013_resnet"))


def dropout(rate):
    """Keras's Dropout. On PyTorch, without a seed it draws from torch's global generator, which a resumed run
    cannot put back; with one (from Python's generator, which train.seed seeds) it draws from a generator of its
    own, whose state the run keeps (resume.py), as it does on the other backends without one."""
    return keras.layers.Dropout(rate, seed=random.randint(1, 10**9) if keras.backend.backend() == "torch" else None)


def augmentation(options):
    """Keras's random preprocessing layers, first in the network: they change faces while training and pass
    them through untouched at inference, so a checkpoint needs nothing extra to be evaluated or used."""
    layers = []
    if options["flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", dtype="float32"))
    if options["shift"]:
        layers.append(keras.layers.RandomTranslation(options["shift"], options["shift"], fill_mode="nearest",
                                                     dtype="float32"))
    if options["rotation"]:
        layers.append(keras.layers.RandomRotation(options["rotation"] / 360, fill_mode="nearest", dtype="float32"))
    if options["zoom"]:
        layers.append(keras.layers.RandomZoom(options["zoom"], fill_mode="nearest", dtype="float32"))
    if options.get("crop"):
        # A random crop while training (a shift of up to the margin, then the centre), the centre crop at
        # inference: the network still takes 48x48 faces, and evaluate.py --tta tencrop shifts them to score the
        # corner crops too.
        margin = (data.SIZE - options["crop"]) / 2 / data.SIZE
        layers += [keras.layers.RandomTranslation(margin, margin, fill_mode="nearest", interpolation="nearest",
                                                  dtype="float32"),
                   keras.layers.CenterCrop(options["crop"], options["crop"], dtype="float32")]
    if options.get("erase"):
        # Random erasing (Zhong et al., 2020), last, on the face as the network sees it: with this probability a
        # box of 2-33% of its area turns mid-grey. Keras draws the probability from `factor` as a range, so
        # (p, p) pins it; its default fill is clipped noise.
        layers.append(keras.layers.RandomErasing(factor=(options["erase"], options["erase"]), value_range=(0, 1),
                                                 fill_value=0.5, dtype="float32"))
    return layers


AFFINE_LAYERS = (keras.layers.RandomTranslation, keras.layers.RandomRotation, keras.layers.RandomZoom)
# The layers augmentation() adds that change faces while training.
AUGMENTATION_LAYERS = (keras.layers.RandomFlip, *AFFINE_LAYERS, keras.layers.RandomErasing)


def crop_size(model):
    """The side of the network's own centre crop (the CenterCrop train.augment.crop puts in it), or None."""
    return next((layer.height for layer in model.layers if isinstance(layer, keras.layers.CenterCrop)), None)


def forward_flops(model):
    """Floating-point operations (2 per multiply-add) of one face's forward pass through the convolutions and
    dense layers, which are nearly all of the network's arithmetic. A training step does three times as much: the
    forward pass, the gradients of the inputs and those of the weights."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_height, kernel_width = layer.kernel_size
            total += 2 * height * width * kernel_height * kernel_width * layer.input.shape[-1] * channels_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def let_jax_compile(model):
    """`model`, its affine augmentation layers marked as compiling on JAX. Keras's RandomTranslation,
    RandomRotation and RandomZoom say they do not (TensorFlow's image transform kernel has no XLA version), and one
    such layer turns XLA off for the whole model, `jit_compile: true` included: on JAX every op of every step then
    runs on its own. JAX's own affine transform compiles."""
    if keras.backend.backend() == "jax":
        for layer in model.layers:
            if isinstance(layer, AFFINE_LAYERS):
                layer.supports_jit = True
    return model


def main(argv=None):
    argparse.ArgumentParser(description="The notebook's CNN: its layers and parameter count.").parse_args(argv)
    model = build_model()
    model.summary()
    print(f"parameters: {model.count_params():,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
