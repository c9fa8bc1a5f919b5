"""The notebook's CNN, in Keras 3 (any backend).

    python model.py                 # the layer stack and parameter count (9,014,727 with the defaults)

Conv2D(64, valid, L2) - Conv2D(64, same) - BN - MaxPool - Dropout, then for f in 128, 256, 512:
3 x [Conv2D(f, same) - BN] - MaxPool - Dropout; Flatten; Dense 512, 256, 128, 64 each with Dropout;
Dense(7, softmax). `model.filters` and `model.dense` change the widths (the demo uses a small one).
"""
import sys

from common import native_stderr_held
from config import DEFAULTS
import data

with native_stderr_held():
    import keras

INPUT_SHAPE = data.IMAGE_SHAPE
CLASSES = len(data.EMOTIONS)


def build_model(config=None):
    """The compiled notebook model; `config` is a full config dict (None: config.yaml's defaults)."""
    config = config or DEFAULTS
    options, train = config["model"], config["train"]
    l2, rate = options["l2"], options["dropout"]
    stem, *blocks = options["filters"]
    layers = [
        keras.Input(INPUT_SHAPE),
        keras.layers.Conv2D(stem, 3, activation="relu", padding="valid",
                            kernel_regularizer=keras.regularizers.L2(l2)),
        keras.layers.Conv2D(stem, 3, activation="relu", padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(2, strides=2),
        keras.layers.Dropout(rate),
    ]
    for filters in blocks:
        for _ in range(3):
            layers += [keras.layers.Conv2D(filters, 3, activation="relu", padding="same"),
                       keras.layers.BatchNormalization()]
        layers += [keras.layers.MaxPooling2D(2, strides=2), keras.layers.Dropout(rate)]
    layers.append(keras.layers.Flatten())
    for units in options["dense"]:
        layers += [keras.layers.Dense(units, activation="relu"), keras.layers.Dropout(rate)]
    layers.append(keras.layers.Dense(CLASSES, activation="softmax", dtype="float32"))  # float32 under mixed precision
    model = keras.Sequential(layers, name="fer2013_cnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=train["learning_rate"]),
                  loss="categorical_crossentropy", metrics=["accuracy"], jit_compile=train["jit_compile"])
    return model


def main(argv=None):
    model = build_model()
    model.summary()
    print(f"parameters: {model.count_params():,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
