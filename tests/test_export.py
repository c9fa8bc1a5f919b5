"""export.py: ONNX, LiteRT and SavedModel files that answer as Keras does, checked here with each format's own
runtime (onnxruntime, LiteRT's interpreter, tf.saved_model.load), and predict.py running an .onnx file without
TensorFlow or Keras."""
import json

import numpy as np
import pytest

import checkpoints
import data
import evaluate
import export
import predict
import train
from common import UserError
from config import load_config
from conftest import ROOT, assert_user_error, needs, run_script
from model import build_model

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end

FORMATS = {"model.onnx": "onnx", "model.tflite": "litert", "saved_model": "tf_saved_model"}


def _faces(synthetic_csv):
    """Faces export.py's own check did not see: the synthetic set's PrivateTest rows."""
    faces = data.read_faces(synthetic_csv, None)
    return faces.select(faces.usage == data.PRIVATE_TEST)


def _assert_same_answers(keras_probabilities, exported):
    agreement = np.mean(keras_probabilities.argmax(axis=1) == exported.argmax(axis=1))
    assert agreement >= 0.999 and np.abs(keras_probabilities - exported).max() <= 1e-4


@pytest.fixture(scope="module")
def mixed_precision_checkpoint(tmp_path_factory, synthetic_csv):
    """The demo network after a few training steps in mixed_bfloat16 (as `train.precision=mixed_bfloat16` trains on a CPU)."""
    import keras

    config = load_config(ROOT / "configs" / "demo.yaml")
    faces = data.read_faces(synthetic_csv, None).select(slice(0, 128))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = train.compile_model(build_model(config), config)
        for _ in range(3):
            model.train_on_batch(data.to_float(faces.images), data.one_hot(faces.labels))
        path = tmp_path_factory.mktemp("mixed") / "mixed.keras"
        model.save(path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return path


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_answers_as_keras_does(trained_run, synthetic_csv, tmp_path, name, capsys):
    run_dir, _ = trained_run
    assert export.main([str(run_dir / "best.keras"), str(tmp_path / name)]) == 0
    output = capsys.readouterr().out
    assert f"wrote {tmp_path / name}" in output and "largest probability gap" in output
    faces = _faces(synthetic_csv)
    expected = evaluate.predict_probabilities(checkpoints.load_checkpoint(str(run_dir / "best.keras")), faces.images)
    _assert_same_answers(expected, export.run_exported(str(tmp_path / name), FORMATS[name],
                                                       data.to_float(faces.images)))
    assert not list(tmp_path.glob("*.writing*"))


def test_on_pytorch_litert_is_written_through_tensorflow(trained_run, synthetic_csv, tmp_path):
    needs("torch")
    run_dir, _ = trained_run
    result = run_script("export.py", run_dir / "best.keras", tmp_path / "model.tflite", env={"KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "litert is written with Keras on TensorFlow" in result.stdout
    faces = _faces(synthetic_csv)
    expected = evaluate.predict_probabilities(checkpoints.load_checkpoint(str(run_dir / "best.keras")), faces.images)
    _assert_same_answers(expected, export.run_litert(str(tmp_path / "model.tflite"), data.to_float(faces.images)))


def test_a_mixed_precision_model_is_exported_in_float32(mixed_precision_checkpoint, synthetic_csv, tmp_path):
    faces = data.to_float(_faces(synthetic_csv).images)
    mixed = checkpoints.load_checkpoint(str(mixed_precision_checkpoint))
    assert mixed.layers[0].dtype_policy.name == "mixed_bfloat16"
    in_float32 = export.float32_copy(mixed)
    assert {layer.dtype_policy.name for layer in in_float32.layers} == {"float32"}
    expected = in_float32.predict(faces, verbose=0)
    assert np.abs(expected - mixed.predict(faces, verbose=0)).max() < 0.05  # the same network, rounded less
    for name, kind in FORMATS.items():
        export.export(str(mixed_precision_checkpoint), str(tmp_path / name))
        _assert_same_answers(expected, export.run_exported(str(tmp_path / name), kind, faces))
    assert export.OnnxModel(str(tmp_path / "model.onnx")).session.get_inputs()[0].type == "tensor(float)"


NO_TENSORFLOW = "raise ImportError('this test runs without {name}')\n"


def test_predict_runs_an_onnx_file_with_opencv_and_onnxruntime_alone(trained_run, astronaut, synthetic_csv, tmp_path):
    run_dir, _ = trained_run
    onnx_file = tmp_path / "best.onnx"
    assert export.main([str(run_dir / "best.keras"), str(onnx_file)]) == 0
    # evaluate.py scores the export as it does the checkpoint, into files of its own name (not best.keras's).
    for checkpoint in (run_dir / "best.keras", onnx_file):
        evaluate.main(["--checkpoint", str(checkpoint), "--data", str(synthetic_csv), "--tta", "--out",
                       str(tmp_path / "scores")])
    scores = {path.name: json.loads(path.read_text()) for path in (tmp_path / "scores").glob("*.json")}
    assert sorted(scores) == ["metrics-best-onnx-tta.json", "metrics-tta.json"]
    assert scores["metrics-best-onnx-tta.json"]["accuracy"] == scores["metrics-tta.json"]["accuracy"]
    blocked = tmp_path / "blocked"
    for name in ("tensorflow", "keras", "jax"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(NO_TENSORFLOW.format(name=name))
    result = run_script("predict.py", "--checkpoint", onnx_file, astronaut, "--out", tmp_path / "onnx",
                        env={"PYTHONPATH": str(blocked)})
    assert result.returncode == 0, result.stderr[-3000:]
    keras_result = run_script("predict.py", "--checkpoint", run_dir / "best.keras", astronaut, "--out",
                              tmp_path / "keras")
    assert keras_result.returncode == 0, keras_result.stderr[-3000:]
    records = {folder: [json.loads(line) for line in (tmp_path / folder / "predictions.jsonl").read_text().splitlines()]
               for folder in ("onnx", "keras")}
    assert records["onnx"] and [r["box"] for r in records["onnx"]] == [r["box"] for r in records["keras"]]
    for ours, theirs in zip(records["onnx"], records["keras"]):
        assert ours["emotion"] == theirs["emotion"]
        for name in data.EMOTIONS:
            assert abs(ours["probabilities"][name] - theirs["probabilities"][name]) <= 1e-4
    assert (tmp_path / "onnx" / "astronaut.png").is_file()
    # The demo's network does not crop: no ten crops, from the file as from its checkpoint.
    with pytest.raises(UserError, match=rf"^predict.tta tencrop needs a model that crops .*{onnx_file} records no "):
        predict.load_probabilities(str(onnx_file), tta="tencrop")


def test_bad_input_is_one_line_and_exit_status_2(trained_run, tmp_path):
    run_dir, _ = trained_run
    assert_user_error(run_script("export.py", tmp_path / "missing.keras", tmp_path / "m.onnx"),
                      "missing.keras", "not found")
    assert_user_error(run_script("export.py", run_dir / "best.keras", tmp_path / "m.pb"), "unknown output format")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_user_error(run_script("export.py", run_dir / "best.keras", blocker / "m.onnx"), "cannot write")
    (tmp_path / "not-onnx.onnx").write_text("hello")
    assert_user_error(run_script("predict.py", "--checkpoint", tmp_path / "not-onnx.onnx", blocker),
                      "not a loadable ONNX model")
    folder = tmp_path / "notes"  # a SavedModel is a folder: an existing one of other files is not replaced
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match="not an earlier SavedModel"):
        export.export(str(run_dir / "best.keras"), str(folder))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "not-onnx.onnx", "notes"]
    assert [path.name for path in folder.iterdir()] == ["thesis.tex"]


@pytest.mark.parametrize("name", ["model.onnx", "model.tflite"])
def test_the_shipped_model_exports_and_answers_as_keras_does(tmp_path, synthetic_csv, name):
    # Its BatchNormalization variances lie near the layer's epsilon: exported as called in training mode (with
    # each batch's own statistics), the ONNX file answered otherwise for 16% of faces.
    [shipped] = sorted((ROOT / "models").glob("fer2013-*.keras"))
    assert export.main([str(shipped), str(tmp_path / name)]) == 0
    faces = data.to_float(_faces(synthetic_csv).images)
    got = (export.OnnxModel(str(tmp_path / name)).predict(faces) if name.endswith(".onnx")
           else export.run_litert(str(tmp_path / name), faces))
    model, images = checkpoints.load_checkpoint(str(shipped)), _faces(synthetic_csv).images
    _assert_same_answers(evaluate.predict_probabilities(model, images), got)
    if name.endswith(".onnx"):  # its 44x44 crop is in the file's metadata: ten crops in evaluate.py and predict.py
        onnx = export.OnnxModel(str(tmp_path / name))
        assert onnx.crop == 44 == evaluate.crop_size(model)
        tencrop = evaluate.predict_probabilities(model, images, tta="tencrop")
        _assert_same_answers(tencrop, evaluate.predict_probabilities(onnx, images, tta="tencrop"))
        _assert_same_answers(tencrop, predict.load_probabilities(str(tmp_path / name), tta="tencrop")(images))
