"""checkpoints.py and keras2.py: the 2018 notebook's own files (Keras 2.1.6 model.json, save_weights .h5, whole-model .hd5) load,
evaluate, convert and fine-tune. The weights files are written here with h5py in Keras 2's layout from known
arrays; the model.json is the author's published one (../shared/notebook/model.json; skipped without it)."""
import copy
import hashlib
import json
import re

import h5py
import numpy as np
import pytest

import checkpoints
import common
import evaluate
import keras2
import model as model_lib
import predict
import ship
from common import UserError
from config import DEFAULTS
from conftest import ROOT, assert_user_error, needs, run_script

PUBLISHED_JSON = ROOT.parent / "shared" / "notebook" / "model.json"


@pytest.fixture(scope="module")
def published_json():
    if not PUBLISHED_JSON.is_file():
        pytest.skip("../shared/notebook/model.json is not here")
    return PUBLISHED_JSON.read_text()


@pytest.fixture(scope="module")
def published_network():
    """model.py's network with the published file's 256-128-48 head, its weights drawn at random."""
    import keras

    config = copy.deepcopy(DEFAULTS)
    config["model"]["dense"] = [256, 128, 48]
    keras.utils.set_random_seed(7)
    network = model_lib.build_model(config)
    for layer in network.layers:  # BatchNorm statistics away from 0 and 1, so that they are checked too
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([np.random.default_rng(1).uniform(0.5, 1.5, w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    return network


def keras2_layer_names(json_text):
    return [layer["config"]["name"] for layer in json.loads(json_text)["config"]]


def write_keras2_weights(group, json_text, network, drop=None, reshape=None):
    """Keras 2's save_weights layout: layer_names, then per layer weight_names and one dataset each."""
    names = keras2_layer_names(json_text)
    weighted = iter([layer for layer in network.layers if layer.weights])
    group.attrs["layer_names"] = [name.encode() for name in names if name != drop]
    group.attrs["backend"], group.attrs["keras_version"] = b"tensorflow", b"2.1.6"
    kinds = {layer["config"]["name"]: layer["class_name"] for layer in json.loads(json_text)["config"]}
    for name in names:
        arrays = next(weighted).get_weights() if kinds[name] in ("Conv2D", "Dense", "BatchNormalization") else []
        if name == drop:
            continue
        suffixes = (["gamma", "beta", "moving_mean", "moving_variance"] if kinds[name] == "BatchNormalization"
                    else ["kernel", "bias"])[:len(arrays)]
        layer_group = group.create_group(name)
        layer_group.attrs["weight_names"] = [f"{name}/{suffix}:0".encode() for suffix in suffixes]
        for suffix, array in zip(suffixes, arrays):
            if name == reshape and suffix == "kernel":
                array = array[..., :-1]
            layer_group.create_dataset(f"{name}/{suffix}:0", data=array)


@pytest.fixture()
def notebook_files(tmp_path, published_json, published_network):
    (tmp_path / "model.json").write_text(published_json)
    with h5py.File(tmp_path / "model.h5", "w") as f:
        write_keras2_weights(f, published_json, published_network)
    return tmp_path


def _inputs():
    return np.random.default_rng(3).random((6, 48, 48, 1)).astype(np.float32)


def _same_predictions(a, b):
    import keras

    np.testing.assert_allclose(keras.ops.convert_to_numpy(a(_inputs(), training=False)),
                               keras.ops.convert_to_numpy(b(_inputs(), training=False)), rtol=1e-5, atol=1e-6)


def test_the_published_model_json_builds_the_network_it_describes(published_json, capsys):
    network = keras2.from_keras2_json(published_json)
    assert network.count_params() == 8_356_679
    assert [layer.name for layer in network.layers] == keras2_layer_names(published_json)
    first = network.layers[0]
    assert first.padding == "valid" and abs(float(first.kernel_regularizer.l2) - 0.01) < 1e-9
    assert [layer.units for layer in network.layers if hasattr(layer, "units")] == [256, 128, 48, 7]
    assert keras2.compare_with_model_py(network) == (
        "model.py's layer stack with model.dense=[256, 128, 48] (model.py: [512, 256, 128, 64]): "
        "8,356,679 parameters")


def test_model_json_plus_keras2_weights_round_trip_value_for_value(notebook_files, published_network, capsys):
    loaded = checkpoints.load_checkpoint(str(notebook_files / "model.json"), str(notebook_files / "model.h5"))
    assert "model.dense=[256, 128, 48]" in capsys.readouterr().out
    for a, b in zip(loaded.get_weights(), published_network.get_weights()):
        np.testing.assert_array_equal(a, b)
    _same_predictions(loaded, published_network)
    # Without --weights, the .h5 beside the JSON is found.
    _same_predictions(checkpoints.load_checkpoint(str(notebook_files / "model.json")), published_network)


def test_a_keras2_whole_model_file_with_any_extension(tmp_path, published_json, published_network):
    for name in ("weights.hd5", "model.hdf5", "model.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            f.attrs["model_config"] = published_json.encode()
            f.attrs["keras_version"], f.attrs["backend"] = b"2.1.6", b"tensorflow"
            write_keras2_weights(f.create_group("model_weights"), published_json, published_network)
        _same_predictions(checkpoints.load_checkpoint(str(tmp_path / name)), published_network)


@pytest.mark.slow
def test_evaluate_and_convert_from_the_command_line(notebook_files, published_network, synthetic_csv, tmp_path):
    result = run_script("evaluate.py", "--checkpoint", notebook_files / "model.json", "--weights",
                        notebook_files / "model.h5", "--data", synthetic_csv, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the notebook's Keras 2 format; model.py's layer stack with model.dense=[256, 128, 48]" in result.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics-model.json").read_text())
    assert metrics["n"] == 200
    out = tmp_path / "converted.keras"
    assert keras2.main([str(notebook_files / "model.json"), str(notebook_files / "model.h5"), str(out)]) == 0
    import keras

    _same_predictions(keras.saving.load_model(out), published_network)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_notebooks_weights(notebook_files, published_network, synthetic_csv, tmp_path):
    import keras

    import train

    config = copy.deepcopy(DEFAULTS)
    config["data"].update(path=str(synthetic_csv), limit=40, cache_dir=None)
    config["model"]["dense"] = [256, 128, 48]
    config["train"].update(epochs=1, learning_rate=1e-12, precision="float32")
    config["output"].update(dir=str(tmp_path), name="tuned")
    run_dir = train.train(config, evaluate_after=False,
                          init_weights=(str(notebook_files / "model.json"), str(notebook_files / "model.h5")))
    tuned = keras.saving.load_model(f"{run_dir}/last.keras")
    kernel, start = tuned.layers[0].get_weights()[0], published_network.layers[0].get_weights()[0]
    np.testing.assert_allclose(kernel, start, atol=1e-6)  # a learning rate of 1e-12 leaves them where they began
    # The run says where its weights came from: environment.json, results.py's summary, the card of a model shipped from it.
    recorded = json.loads((tmp_path / "tuned" / "environment.json").read_text())["init_weights"]
    assert recorded == {"path": str(notebook_files / "model.json"),
                        "sha256": hashlib.sha256((notebook_files / "model.json").read_bytes()).hexdigest()}
    import results

    assert results.summarize(run_dir, results.read_history(f"{run_dir}/history.csv"), None)["init_weights"] == recorded
    card = ship.write_model_card(f"{run_dir}/last.keras", str(tmp_path / "m.keras"), "agreed")
    assert (f"Its weights started from {notebook_files / 'model.json'} (`train.py --init-weights`), the end of an "
            "earlier training") in open(card).read()
    # A run started from this run's checkpoint: its card names this run, its epochs and hours.
    assert f"the end of run `tuned` (1 epochs, " in ship._started_from({"path": f"{run_dir}/last.keras"})
    config["model"]["dense"] = [512, 256, 128, 64]
    config["output"]["name"] = "mismatch"
    with pytest.raises(UserError, match="--init-weights .*model.json: its layer dense_1 has weights"):
        train.train(config, evaluate_after=False,
                    init_weights=(str(notebook_files / "model.json"), str(notebook_files / "model.h5")))
    assert not (tmp_path / "mismatch").exists()


@pytest.mark.slow
def test_bad_notebook_files_get_one_line(notebook_files, published_json, published_network, tmp_path):
    other = json.loads(published_json)
    next(layer for layer in other["config"] if layer["config"]["name"] == "dense_3")["config"]["units"] = 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    with h5py.File(tmp_path / "missing.h5", "w") as f:
        write_keras2_weights(f, published_json, published_network, drop="dense_3")
    with h5py.File(tmp_path / "shape.h5", "w") as f:
        write_keras2_weights(f, published_json, published_network, reshape="dense_2")
    whole = (notebook_files / "model.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(whole[: len(whole) // 3])
    json_path = str(notebook_files / "model.json")
    cases = [((str(tmp_path / "other.json"), str(notebook_files / "model.h5")), "layer dense_3 has weights of shapes"),
             ((json_path, str(tmp_path / "missing.h5")), "no weights for layer dense_3"),
             ((json_path, str(tmp_path / "shape.h5")), "layer dense_2 has weights of shapes [(256, 127), (128,)]"),
             ((json_path, str(tmp_path / "truncated.h5")), "truncated or not an HDF5 file"),
             ((str(notebook_files / "model.h5"), None), "holds weights only: give the model.json as --checkpoint")]
    for (checkpoint, weights), fragment in cases:
        with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            checkpoints.load_checkpoint(checkpoint, weights)
    # A mismatch found after the model is built (TensorFlow started) is still one line, from both scripts.
    assert_user_error(run_script("evaluate.py", "--checkpoint", json_path, "--weights", tmp_path / "shape.h5"),
                      "shape.h5", "layer dense_2 has weights of shapes")
    assert_user_error(run_script("keras2.py", tmp_path / "other.json", notebook_files / "model.h5",
                                 tmp_path / "out.keras"), "layer dense_3 has weights of shapes")
    assert not (tmp_path / "out.keras").exists()


@pytest.mark.slow
def test_the_shipped_model_is_the_default_checkpoint(tmp_path, trained_run, capsys):
    run_dir, _ = trained_run
    with pytest.raises(UserError, match="no model is shipped in .* yet"):
        common.shipped_model(str(tmp_path))
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / "fer2013-demo.keras").write_bytes((run_dir / "best.keras").read_bytes())
    assert common.shipped_model(str(tmp_path)) == str(tmp_path / "fer2013-demo.keras")
    # The scripts without --checkpoint: the repository's own models/ folder, shipped or not yet.
    if list((ROOT / "models").glob("fer2013-*.keras")):
        result = run_script("evaluate.py", "--data", run_dir.parent / "none.csv")
        assert result.stdout.splitlines()[0].startswith("using the shipped model")
    else:
        for script, args in ((evaluate, []), (predict, ["photo.jpg"])):
            with pytest.raises(SystemExit) as stopped:
                script.main(args)
            assert stopped.value.code == 2
            assert "no --checkpoint given" in capsys.readouterr().err


@pytest.mark.slow
def test_ship_makes_a_float32_model_with_half_size_weights_that_loads_on_every_backend(tmp_path, trained_run,
                                                                                       synthetic_csv, capsys):
    import keras
    import h5py
    import zipfile

    run_dir, _ = trained_run
    # A checkpoint that computes in bfloat16, as a mixed_bfloat16 run writes it.
    config = copy.deepcopy(DEFAULTS)
    config["model"].update(filters=[8, 16], dense=[16])
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(3)
        mixed = model_lib.build_model(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.save(tmp_path / "mixed.keras")
    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    ship.ship(str(tmp_path / "mixed.keras"), str(tmp_path / "shipped.keras"), faces)
    shipped = checkpoints.load_checkpoint(str(tmp_path / "shipped.keras"))
    assert {layer.dtype_policy.name for layer in shipped.layers} == {"float32"}
    with zipfile.ZipFile(tmp_path / "shipped.keras") as archive, archive.open("model.weights.h5") as stored:
        with h5py.File(stored) as weights:
            kinds = set()
            weights.visititems(lambda name, item: kinds.add(item.dtype) if isinstance(item, h5py.Dataset) else None)
    assert kinds == {np.dtype(np.float16)}
    # Its answers are the mixed model's weights, rounded to float16, computed in float32.
    rounded = model_lib.build_model(config)
    rounded.set_weights([w.astype(np.float16).astype(np.float32) for w in mixed.get_weights()])
    np.testing.assert_allclose(shipped.predict(faces[..., None] / 255, verbose=0),
                               rounded.predict(faces[..., None] / 255, verbose=0), atol=1e-6)

    with pytest.raises(SystemExit) as stopped:
        ship.main([str(tmp_path / "mixed.keras"), str(tmp_path / "x.h5")])
    assert stopped.value.code == 2 and "must be a .keras file" in capsys.readouterr().err

    # A trained float32 run, through the command line, into a models/ folder not made yet: about half the file, the
    # same answers.
    out = tmp_path / "models" / "fer2013-demo.keras"
    result = run_script("ship.py", run_dir / "best.keras", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the same top emotion as" in result.stdout and "100.00% of 2,000 synthetic faces" in result.stdout
    assert out.stat().st_size < 0.6 * (run_dir / "best.keras").stat().st_size and "README.md" in result.stdout
    # Beside it, its card: what it was made from, on which CPU, and what the run's checkpoints scored.
    card = (tmp_path / "models" / "README.md").read_text()
    original = json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    assert card.startswith(ship.CARD_MARK) and "# fer2013-demo.keras" in card
    assert "Run `demo`: 6 of 6 epochs" in card and "`train.precision=float32`" in card and "`train.epochs=6`" in card
    assert f"| best.keras | PrivateTest | none | {original:.4f} |" in card and "FER2013's own terms" in card
    # With --data, as gpu/recipe.sh ships: the agreement on its PublicTest, and the file scored on both test splits.
    again = tmp_path / "with-data" / "fer2013-demo.keras"
    capsys.readouterr()
    assert ship.main([str(run_dir / "best.keras"), str(again), "--data", str(synthetic_csv)]) == 0
    assert f"100.00% of {synthetic_csv} PublicTest" in capsys.readouterr().out
    for split in ("PublicTest", "PrivateTest"):
        assert re.search(rf"\| fer2013-demo.keras \(this file\) \| {split} \| none \| 0\.\d{{4}} \|",
                         (again.parent / "README.md").read_text()), split
    # It is written again by the next ship.py, but a README.md of another kind is never overwritten.
    card_path = tmp_path / "models" / "README.md"
    assert ship.write_model_card(str(run_dir / "best.keras"), str(out), "again",
                                        [("PrivateTest", 0.61234)]) == str(card_path)
    assert "| fer2013-demo.keras (this file) | PrivateTest | none | 0.6123 |" in card_path.read_text()
    card_path.write_text("# my folder\n")
    assert ship.write_model_card(str(run_dir / "best.keras"), str(out), "again") is None
    assert card_path.read_text() == "# my folder\n"
    # TensorFlow loaded it above (the agreement); JAX and PyTorch score it as the run scored its own checkpoint.
    for backend in ("jax", "torch"):
        needs(backend)
        scored = run_script("evaluate.py", "--checkpoint", out, "--data", synthetic_csv, "--out", tmp_path / backend,
                            env={"KERAS_BACKEND": backend})
        assert scored.returncode == 0, scored.stderr[-3000:]
        score = json.loads((tmp_path / backend / "metrics-fer2013-demo.json").read_text())["accuracy"]
        assert abs(score - original) <= 0.005, (backend, score, original)
