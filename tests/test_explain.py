"""explain.py: occlusion maps, exactly on a model whose answer depends on one corner, roughly on the demo network,
whose evidence lies on the synthetic faces' features; the photo and split figures; bad options."""
import json

import numpy as np
import pytest

import data
import explain
import predict

pytestmark = pytest.mark.slow  # uses the trained demo run


def test_a_map_is_positive_exactly_where_the_squares_hid_what_the_answer_depends_on():
    def corner_model(faces):  # the first emotion's probability: the brightness of the top-left 8x8 corner
        first = faces[:, :8, :8].reshape(len(faces), -1).mean(axis=1) / 255 * 0.9
        return np.column_stack([first] + [(1 - first) / 6] * 6)

    faces = np.zeros((3, 48, 48), np.uint8)
    faces[:, :8, :8] = 255
    maps, classes, scores = explain.occlusion_maps(corner_model, faces, patch=8, stride=4)
    assert classes.tolist() == [0, 0, 0] and np.allclose(scores[:, 0], 0.9)
    # Squares start at 0, 4, ..., 40: those at 0 and 4 (rows and columns) overlap the corner, and cover 0-11.
    assert (maps[:, :12, :12] > 0).all() and (maps[:, 12:, :] == 0).all() and (maps[:, :, 12:] == 0).all()
    hidden = 255 - round(255 * 64 / 2304)  # the square's grey is the face's mean
    assert maps[0, 0, 0] == pytest.approx(0.9 * hidden / 255, rel=1e-5)  # one square covers (0, 0), all of the corner
    assert np.isclose(explain.thirds(maps[0]), [1, 0, 0]).all()
    # Another emotion per face: the second one's probability rises as the corner is hidden, a negative map.
    maps, classes, _ = explain.occlusion_maps(corner_model, faces, classes=[0, 1, 0], patch=8, stride=4)
    assert classes.tolist() == [0, 1, 0] and (maps[1, :12, :12] < 0).all() and (maps[[0, 2], :12, :12] > 0).all()
    assert maps[1, 0, 0] == pytest.approx(-maps[0, 0, 0] / 6, rel=1e-4)


def test_the_demo_network_looks_at_the_synthetic_faces_features(trained_run, synthetic_csv, astronaut, tmp_path,
                                                                capsys):
    run_dir, _ = trained_run
    checkpoint = str(run_dir / "best.keras")
    faces = data.load_split(str(synthetic_csv), "PrivateTest")
    faces = faces.select(np.arange(len(faces)) < 70)
    maps, _, _ = explain.occlusion_maps(predict.load_probabilities(checkpoint), faces.images, faces.labels)
    evidence = np.maximum(maps, 0).mean(axis=0)
    features = np.zeros((48, 48), bool)  # brows, eyes, nose and mouth lie here; 39% of the face's area
    features[10:41, 10:39] = True
    assert evidence[features].sum() / evidence.sum() > 0.75  # an untrained network of the same shape: 0.49
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    assert explain.main([str(broken), str(astronaut), "--checkpoint", checkpoint, "--out", str(tmp_path)]) == 1
    printed = capsys.readouterr()
    assert f"{broken}: not a readable image" in printed.err and "astronaut.png: face 1 of 1, " in printed.out
    assert (tmp_path / "astronaut.png").stat().st_size and not (tmp_path / "broken.png").exists()
    assert explain.main([str(astronaut), "--checkpoint", checkpoint, "--out", str(tmp_path), "--emotion", "Sad"]) == 0
    assert "astronaut.png: face 1 of 1, Sad (" in capsys.readouterr().out  # what in it speaks for Sad, and against
    assert explain.main(["--data", str(synthetic_csv), "--checkpoint", checkpoint, "--per-class", "2",
                         "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "PrivateTest-by-emotion.json").read_text())
    assert list(summary["emotions"]) == list(data.EMOTIONS) and summary["patch"] == 8
    for emotion in summary["emotions"].values():
        assert emotion["faces"] == 2 and sum(emotion["thirds"].values()) == pytest.approx(1, abs=0.01)
        assert emotion["peak"] > 0
    assert (tmp_path / "PrivateTest-by-emotion.png").stat().st_size


@pytest.mark.parametrize("arguments, line", [
    ([], "give photos (or folders of photos) to explain, or --data fer2013.csv\n"),
    (["x.jpg", "--data", "fer2013.csv"], "give photos (or folders of photos) to explain, or --data fer2013.csv, "
                                         "not both"),
    (["--data", "fer2013.csv", "--patch", "4", "--stride", "8"], "--patch 4 --stride 8: need 1 <= stride <= patch"),
    (["--data", "fer2013.csv", "--per-class", "0"], "--per-class must be at least 1, got 0"),
    (["--data", "fer2013.csv", "--emotion", "Sad"], "--emotion goes with photos"),
    (["holiday/IMG_01.jpg"], "no such file or folder: holiday/IMG_01.jpg"),
])
def test_bad_options_are_one_line_before_the_model_loads(arguments, line, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        explain.main([*arguments, "--checkpoint", str(tmp_path / "not-a-model.keras")])
    assert capsys.readouterr().err.startswith(f"error: {line}")
