"""Training options beyond the notebook: augmentation layers (flip, shift, rotation, zoom, crop), the cosine
schedule, label smoothing, and test-time augmentation (flip, ten crops) with the predictions.csv it writes."""
import copy
import json
import math

import numpy as np
import pandas as pd
import pytest

import checkpoints
import keras2
import data
import evaluate
import model as model_lib
from model import keras
import train
from common import UserError, sha256
from config import DEFAULTS, load_config
from conftest import ROOT

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end


def small_config(**train_options):
    config = copy.deepcopy(DEFAULTS)
    config["model"].update(filters=[4, 8], dense=[8], dropout=0.1)
    config["train"].update(train_options)
    return config


def faces(n=8, seed=0):
    return np.random.default_rng(seed).random((n, 48, 48, 1)).astype(np.float32)


def test_augmentation_acts_in_training_and_changes_nothing_at_inference():
    import keras

    augmented = model_lib.build_model(small_config(augment={"flip": True, "shift": 0.1, "rotation": 10, "zoom": 0.1}))
    plain = model_lib.build_model(small_config())
    kinds = [type(layer).__name__ for layer in augmented.layers[:4]]
    assert kinds == ["RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom"]
    assert augmented.layers[2].factor == (-10 / 360, 10 / 360)
    plain.set_weights(augmented.get_weights())  # the augmentation layers have no weights
    x = faces()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(augmented(x, training=False)),
                               keras.ops.convert_to_numpy(plain(x, training=False)), rtol=1e-6, atol=1e-6)
    flip = augmented.layers[0]
    changed = keras.ops.convert_to_numpy(flip(x, training=True))
    mirrored = [np.array_equal(changed[i], x[i, :, ::-1]) for i in range(len(x))]
    untouched = [np.array_equal(changed[i], x[i]) for i in range(len(x))]
    assert all(m or u for m, u in zip(mirrored, untouched)) and any(mirrored)
    # model.py still recognises its own network under the augmentation
    assert keras2.compare_with_model_py(augmented).startswith("model.py's layer stack with model.filters=[4, 8]")


def test_weight_decay_is_the_optimizers_default_unless_set():
    for optimizer, setting, expected in (("adamw", None, 0.004), ("sgd", None, None), ("sgd", 5e-4, 5e-4),
                                         ("adam", 0.01, 0.01)):
        config = small_config(optimizer=optimizer, weight_decay=setting)
        compiled = train.compile_model(model_lib.build_model(config), config)
        decay = compiled.optimizer.weight_decay
        assert decay is None if expected is None else decay == pytest.approx(expected)
        assert type(compiled.optimizer).__name__ == {"adamw": "AdamW", "sgd": "SGD", "adam": "Adam"}[optimizer]


def test_cosine_schedule_warms_up_then_decays():
    rates = [train.cosine_learning_rate(epoch, 1e-3, 10, warmup_epochs=2) for epoch in range(10)]
    assert rates[0] == pytest.approx(5e-4) and rates[1] == pytest.approx(1e-3)
    assert rates[2] == pytest.approx(1e-3) and all(a > b for a, b in zip(rates[2:], rates[3:]))
    assert rates[-1] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 7 / 8)))


def test_a_cosine_run_logs_the_rates_it_used(tmp_path, synthetic_csv):
    config = load_config(ROOT / "configs/demo.yaml", [f"data.path={synthetic_csv}", "data.limit=60", "train.epochs=3",
                                                      "train.schedule=cosine", "train.warmup_epochs=1",
                                                      "train.label_smoothing=0.1", "train.precision=float32",
                                                      "train.augment.flip=true", f"output.dir={tmp_path}",
                                                      "output.name=cosine"])
    run_dir = train.train(config, evaluate_after=False)
    history = pd.read_csv(f"{run_dir}/history.csv")
    expected = [train.cosine_learning_rate(epoch, 1e-3, 3, 1) for epoch in range(3)]
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-6)


def test_a_loss_that_turns_nan_ends_training_in_that_epoch(tmp_path, synthetic_csv, capsys):
    config = load_config(ROOT / "configs/demo.yaml", [f"data.path={synthetic_csv}", "data.limit=60", "train.epochs=4",
                                                      "train.precision=float32", "train.optimizer=sgd",
                                                      f"output.dir={tmp_path}", "output.name=diverged"])
    config["train"]["learning_rate"] = 1e9
    run_dir = train.train(config, evaluate_after=False)
    history = pd.read_csv(f"{run_dir}/history.csv")
    assert "Invalid loss, terminating training" in capsys.readouterr().out
    assert len(history) == 1 and not np.isfinite(history["loss"].iloc[0])  # of 4 epochs asked


def test_no_callback_makes_each_step_wait_for_the_device(tmp_path):
    # Keras calls batch-end callbacks from a thread of its own (JAX, PyTorch) unless one of them has a batch-end
    # hook and is not marked async_safe: then it converts every step's logs on the spot, waiting for the device.
    # (output.tensorboard's callback does: it writes every batch's logs.)
    config = load_config(ROOT / "configs/improved-gpu.yaml",
                         ["train.ema=0.999", "callbacks.early_stopping.enabled=true"])
    base = keras.callbacks.Callback
    for callback in train.make_callbacks(config, str(tmp_path)):
        hooked = (type(callback).on_batch_end is not base.on_batch_end
                  or type(callback).on_train_batch_end is not base.on_train_batch_end)
        assert not hooked or getattr(callback, "async_safe", False), type(callback).__name__


def test_distillation_mixes_the_teachers_probabilities_into_the_targets(trained_run, synthetic_csv, tmp_path):
    import keras

    teacher = trained_run[0] / "best.keras"
    config = load_config(ROOT / "configs/demo.yaml", [
        f"data.path={synthetic_csv}", "data.limit=60", "train.epochs=1", f"train.distill.teachers=[{teacher}]",
        "train.distill.weight=0.3", f"output.dir={tmp_path}", "output.name=student"])
    run_dir = train.train(config, evaluate_after=False)
    recorded = json.loads(open(f"{run_dir}/environment.json").read())["teachers"]
    assert recorded == [{"path": str(teacher), "sha256": sha256(teacher)}]
    # The targets, computed here with plain Keras: 0.7 x the one-hot label + 0.3 x the teacher's probabilities,
    # the mean of each face's and its mirror image's (the demo's network does not crop).
    training = data.split(data.limit_rows(data.read_faces(synthetic_csv), 60), "notebook", 0.2)[0]
    network = keras.saving.load_model(teacher)
    images = data.to_float(training.images)
    probabilities = (network.predict(images, verbose=0) + network.predict(images[:, :, ::-1], verbose=0)) / 2
    targets = train.distilled_targets(config["train"], training)
    np.testing.assert_allclose(targets, 0.7 * np.eye(7)[training.labels] + 0.3 * probabilities, atol=1e-5)
    assert train.distilled_targets(small_config()["train"], training) is None
    # The same teacher as a soft-label file: the same targets, up to float16, found by each face's pixels.
    assert evaluate.main(["--checkpoint", str(teacher), "--data", str(synthetic_csv),
                          "--soft-labels", str(tmp_path / "teacher.npz")]) == 0
    from_file = copy.deepcopy(config["train"])
    from_file["distill"]["teachers"] = [str(tmp_path / "teacher.npz")]
    np.testing.assert_allclose(train.distilled_targets(from_file, training), targets, atol=2e-3)
    reversed_faces = training.select(np.arange(len(training))[::-1])
    np.testing.assert_allclose(train.distilled_targets(from_file, reversed_faces), targets[::-1], atol=2e-3)
    altered = training.images.copy()
    altered[0, 0, 0] ^= 1
    with pytest.raises(UserError, match=f"has no probabilities for 1 of the {len(training)} training faces"):
        evaluate.read_soft_labels(str(tmp_path / "teacher.npz"), altered)


def test_label_smoothing_is_in_the_loss():
    import keras

    config = small_config(label_smoothing=0.1)
    network = train.compile_model(model_lib.build_model(config), config)
    truth = np.eye(7, dtype=np.float32)[[0, 3]]
    predicted = np.full((2, 7), 0.05, np.float32)
    predicted[[0, 1], [0, 3]] = 0.7
    smoothed = truth * 0.9 + 0.1 / 7
    expected = float(np.mean(-(smoothed * np.log(predicted)).sum(axis=1)))
    assert float(keras.ops.convert_to_numpy(network.loss(truth, predicted))) == pytest.approx(expected, rel=1e-5)


def test_flip_tta_averages_a_face_and_its_mirror_image():
    network = model_lib.build_model(small_config())
    images = np.random.default_rng(1).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    averaged = evaluate.predict_probabilities(network, images, tta=True)
    expected = (evaluate.predict_probabilities(network, images)
                + evaluate.predict_probabilities(network, images[:, :, ::-1])) / 2
    np.testing.assert_allclose(averaged, expected, rtol=1e-6)
    symmetric = np.concatenate([images[:, :, :24], images[:, :, :24][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(evaluate.predict_probabilities(network, symmetric, tta=True),
                               evaluate.predict_probabilities(network, symmetric), rtol=1e-5, atol=1e-7)


def test_evaluate_tta_writes_predictions_that_recompute_the_accuracy(trained_run, synthetic_csv, tmp_path):
    run_dir, _ = trained_run
    assert evaluate.main(["--checkpoint", str(run_dir / "best.keras"), "--tta", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics-tta.json").read_text())
    assert metrics["tta"] is True and metrics["split"] == "PrivateTest"
    table = pd.read_csv(tmp_path / "predictions-tta.csv")
    test = data.read_faces(str(synthetic_csv), None)
    test = test.select(test.usage == data.USAGES.index("PrivateTest"))
    assert len(table) == metrics["n"] == len(test)
    np.testing.assert_array_equal(table["true"], test.labels)  # file order
    probabilities = table[[f"p_{name}" for name in data.EMOTIONS]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    np.testing.assert_array_equal(table["predicted"], probabilities.argmax(axis=1))
    assert (table["predicted"] == table["true"]).mean() == pytest.approx(metrics["accuracy"])
    # train.py's own scoring wrote the same files, without TTA, for both checkpoints
    plain = pd.read_csv(run_dir / "predictions.csv")
    assert len(plain) == len(table) and (run_dir / "predictions-last.csv").is_file()
    assert (plain["predicted"] == plain["true"]).mean() == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["accuracy"])


def test_a_crop_is_random_in_training_and_central_at_inference():
    import keras

    config = small_config(augment={"flip": False, "shift": 0.0, "rotation": 0.0, "zoom": 0.0, "crop": 44})
    network = model_lib.build_model(config)
    assert network.input_shape == (None, 48, 48, 1)
    crop = next(layer for layer in network.layers if isinstance(layer, keras.layers.CenterCrop))
    images = faces(4)
    cropped = keras.Sequential([layer for layer in network.layers[:network.layers.index(crop) + 1]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(cropped(images, training=False)), images[:, 2:46, 2:46])
    training = [keras.ops.convert_to_numpy(cropped(images, training=True)) for _ in range(4)]
    windows = {(dy, dx) for dy in range(5) for dx in range(5)}
    for crop_out in training:
        assert crop_out.shape == (4, 44, 44, 1)
        for face, image in zip(crop_out, images):  # each face its own window of the 48x48 image
            assert any(np.array_equal(face, image[dy:dy + 44, dx:dx + 44]) for dy, dx in windows)
    assert any(not np.array_equal(out, images[:, 2:46, 2:46]) for out in training)


def test_random_erasing_greys_one_box_with_the_configured_probability():
    """erase=1 greys every face in training (Keras's default factor would draw the probability from [0, 1]),
    erase=0.5 about half, and at inference none."""
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(5).random((200, 48, 48, 1)).astype(np.float32) * 0.4  # never 0.5
    for probability in (1.0, 0.5):
        augment = {**DEFAULTS["train"]["augment"], "crop": 44, "erase": probability}
        network = model_lib.build_model(small_config(augment=augment))
        erasing = network.layers[2]
        assert isinstance(erasing, keras.layers.RandomErasing) and isinstance(network.layers[1], keras.layers.CenterCrop)
        crops = images[:, 2:46, 2:46]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(erasing(crops, training=False)), crops)
        out = keras.ops.convert_to_numpy(erasing(crops, training=True))
        grey = out == 0.5
        assert np.array_equal(out[~grey], crops[~grey])  # only the box changed
        erased = [face for face in range(len(images)) if grey[face].any()]
        for face in erased:  # one box, 2-33% of the face
            rows, columns = np.flatnonzero(grey[face].any(axis=(1, 2))), np.flatnonzero(grey[face].any(axis=(0, 2)))
            assert grey[face].sum() == len(rows) * len(columns) and 0.01 <= grey[face].mean() <= 0.36
            assert np.ptp(rows) + 1 == len(rows) and np.ptp(columns) + 1 == len(columns)
        if probability == 1.0:
            assert len(erased) == len(images)
        else:
            assert 60 <= len(erased) <= 140


def test_tencrop_tta_averages_the_centre_and_corner_crops_and_their_mirrors():
    config = small_config(augment={"flip": False, "shift": 0.0, "rotation": 0.0, "zoom": 0.0, "crop": 44})
    network = model_lib.build_model(config)
    images = np.random.default_rng(3).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    crops = [images[:, top:top + 44, left:left + 44] for top, left in ((2, 2), (0, 0), (0, 4), (4, 0), (4, 4))]

    def scored(crop):  # the network after its crop layer, on 44x44 faces
        padded = np.pad(crop, ((0, 0), (2, 2), (2, 2)))  # the centre crop takes these 44x44 back out
        return evaluate.predict_probabilities(network, padded)

    expected = np.mean([scored(crop) + scored(crop[:, :, ::-1]) for crop in crops], axis=0) / 2
    np.testing.assert_allclose(evaluate.predict_probabilities(network, images, tta="tencrop"), expected, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(UserError, match="--tta tencrop needs a model that crops its input"):
        evaluate.predict_probabilities(model_lib.build_model(small_config()), images, tta="tencrop")


def test_the_improved_config_and_its_bad_values():
    config = load_config(ROOT / "configs/improved.yaml")
    assert config["data"]["protocol"] == "standard" and config["train"]["schedule"] == "cosine"
    assert config["train"]["augment"] == {"flip": True, "shift": 0.0, "rotation": 0.0, "zoom": 0.0, "crop": 44,
                                         "erase": 0.0}
    model = model_lib.build_model(config)
    assert model.count_params() == 2_247_975  # the notebook's network at half its width
    assert model.output_shape == (None, 7) and any(isinstance(layer, keras.layers.CenterCrop) for layer in model.layers)
    for override, message in (("train.augment.rotation=270", "must be in [0, 180]"),
                              ("train.label_smoothing=1", "must be in [0, 1)"),
                              ("train.warmup_epochs=200", "must be >= 0 and below train.epochs"),
                              ("train.schedule=step", "must be one of plateau, cosine")):
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_config(ROOT / "configs/improved.yaml", [override])


def test_the_second_cycle_starts_from_the_first_cycles_weights(tmp_path):
    first, second = (load_config(ROOT / f"configs/{name}.yaml") for name in ("improved", "improved-cycle2"))
    assert second["model"] == first["model"] and second["data"] == first["data"]
    assert {key for key in first["train"] if first["train"][key] != second["train"][key]} == {
        "epochs", "learning_rate", "warmup_epochs", "seed"}
    assert second["train"]["learning_rate"] < first["train"]["learning_rate"]
    trained = model_lib.build_model(first)
    trained.save(tmp_path / "best.keras")
    restarted = model_lib.build_model(second)
    checkpoints.copy_weights(checkpoints.load_checkpoint(str(tmp_path / "best.keras"), None), restarted,
                             str(tmp_path / "best.keras"))
    for mine, theirs in zip(restarted.weights, trained.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs))
