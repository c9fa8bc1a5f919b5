"""predict.py on a real photograph (scikit-image's public-domain astronaut), a video made from it,
already-cropped 48x48 faces, the crop itself, bad files, and a webcam without a display."""
import json
import shutil
import signal
import sys

import numpy as np
import pytest
from PIL import Image

import checkpoints
import data
import detect
import evaluate
import predict
from common import TEST_SIGNAL, exit_on_user_error
from conftest import ROOT, run_script

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end

cv2 = pytest.importorskip("cv2")


def _records(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_a_photo_gets_its_face_found_scored_and_annotated(trained_run, astronaut, tmp_path):
    run_dir, _ = trained_run
    result = run_script("predict.py", "--checkpoint", run_dir / "best.keras", astronaut, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path)
    assert len(records) >= 1 and {r["source"] for r in records} == {str(astronaut)}
    height, width = cv2.imread(str(astronaut)).shape[:2]
    for record in records:
        probabilities = record["probabilities"]
        assert list(probabilities) == list(data.EMOTIONS)
        assert abs(sum(probabilities.values()) - 1) < 1e-4
        assert record["emotion"] == max(probabilities, key=probabilities.get)
        x, y, w, h = record["box"]
        assert 0 <= x < x + w <= width and 0 <= y < y + h <= height and w >= 30
    annotated = cv2.imread(str(tmp_path / "astronaut.png"))
    assert annotated.shape == (height, width, 3)
    assert not np.array_equal(annotated, cv2.imread(str(astronaut)))  # boxes and labels drawn
    assert f"[1/1] {astronaut}: {len(records)} face" in result.stdout


def test_a_video_gets_one_record_per_frame_with_a_face(trained_run, astronaut, tmp_path):
    run_dir, _ = trained_run
    photo = cv2.resize(cv2.imread(str(astronaut)), (256, 256), interpolation=cv2.INTER_AREA)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (256, 256))
    for shift in range(6):  # the face drifts a few pixels a frame
        writer.write(np.roll(photo, 3 * shift, axis=1))
    writer.release()
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(run_dir / "best.keras"), str(video), "--out", str(out)]) == 0
    records = _records(out)
    assert sorted(r["frame"] for r in records) == list(range(6))  # exactly one face in every frame
    assert all(r["source"] == str(video) for r in records)
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert frames == 6


def test_video_frames_are_searched_scaled_down_and_boxes_come_back_in_frame_pixels(astronaut):
    from config import DEFAULTS

    frame = np.full((480, 640), 90, np.uint8)
    frame[90:390, 170:470] = cv2.resize(cv2.cvtColor(cv2.imread(str(astronaut)), cv2.COLOR_BGR2GRAY), (300, 300))
    finder = detect.FaceFinder(DEFAULTS["predict"])
    [(x, y, w, h)] = finder(frame)
    [(x2, y2, w2, h2)] = finder(frame, width=320)  # half the pixels each way
    assert abs(x2 - x) <= 4 and abs(y2 - y) <= 4 and abs(w2 - w) <= 4 and w > 40
    assert finder(frame, width=1280) == finder(frame)  # never scaled up
    assert finder(frame, width=160) == []  # the 59-pixel face is below the cascade's 24-pixel window there
    predictor = predict.Predictor(lambda faces: np.zeros((len(faces), 7)), finder, margin=0.1)
    assert predictor.find(frame, video=True)[1] == [(x2, y2, w2, h2)]
    assert predictor.find(frame)[1] == [(x, y, w, h)]  # a photo narrower than predict.photo_detect_width
    photos_at_160 = detect.FaceFinder({**DEFAULTS["predict"], "photo_detect_width": 160})
    assert predict.Predictor(None, photos_at_160, margin=0.1).find(frame)[1] == []


def test_a_phone_photo_is_read_upright_and_other_pixel_formats_as_uint8(astronaut, tmp_path):
    from config import DEFAULTS

    upright = cv2.imread(str(astronaut))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
    sideways = np.ascontiguousarray(np.rot90(upright[..., ::-1]))
    Image.fromarray(sideways).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    photo = detect.read_image(str(tmp_path / "phone.jpg"))
    assert photo.shape == upright.shape and np.abs(photo.astype(int) - upright).mean() < 4
    assert len(detect.FaceFinder(DEFAULTS["predict"])(detect.to_gray(photo))) == 1
    cv2.imwrite(str(tmp_path / "deep.png"), np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    cv2.imwrite(str(tmp_path / "alpha.png"), np.full((8, 8, 4), 200, np.uint8))
    deep, alpha = detect.read_image(str(tmp_path / "deep.png")), detect.read_image(str(tmp_path / "alpha.png"))
    assert deep.dtype == np.uint8 and deep.shape == (64, 64) and deep.max() == 255
    assert alpha.shape == (8, 8, 3) and (alpha == 200).all()
    # What OpenCV cannot read, Pillow does: a PCX (as a GIF where OpenCV was built without GIF), in BGR order.
    Image.fromarray(upright[..., ::-1]).save(tmp_path / "old.pcx")
    assert cv2.imread(str(tmp_path / "old.pcx")) is None
    np.testing.assert_array_equal(detect.read_image(str(tmp_path / "old.pcx")), upright)


def test_an_iphones_heic_photo_reads_as_its_jpeg_does_and_without_pillow_heif_says_what_to_do(
        trained_run, astronaut, tmp_path, monkeypatch, capsys):
    from config import DEFAULTS

    pillow_heif = pytest.importorskip("pillow_heif")
    upright = cv2.imread(str(astronaut))
    heif = pillow_heif.from_bytes(mode="RGB", size=upright.shape[1::-1], data=upright[..., ::-1].tobytes())
    heif.save(tmp_path / "IMG_0001.HEIC", quality=90)
    shutil.copy(tmp_path / "IMG_0001.HEIC", tmp_path / "named-as-jpeg.jpg")  # read by its content, not its name
    assert cv2.imread(str(tmp_path / "IMG_0001.HEIC")) is None
    for name in ("IMG_0001.HEIC", "named-as-jpeg.jpg"):
        photo = detect.read_image(str(tmp_path / name))
        assert photo.shape == upright.shape and np.abs(photo.astype(int) - upright).mean() < 4
        assert len(detect.FaceFinder(DEFAULTS["predict"])(detect.to_gray(photo))) == 1
    # predict.py annotates it as PNG, which OpenCV writes (not HEIC, nor PCX).
    Image.fromarray(upright[..., ::-1]).save(tmp_path / "old.pcx")
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(trained_run[0] / "best.keras"), str(tmp_path / "IMG_0001.HEIC"),
                         str(tmp_path / "old.pcx"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["IMG_0001.png", "old.png", "predictions.jsonl"]
    sources = [record["source"] for record in _records(out)]
    assert sources == [str(tmp_path / "IMG_0001.HEIC"), str(tmp_path / "old.pcx")]
    (tmp_path / "broken.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    with pytest.raises(OSError, match="^not a readable HEIC image$"):
        detect.read_image(str(tmp_path / "broken.heic"))
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if it were not installed
    with pytest.raises(OSError, match="pip install pillow-heif, or convert it to JPEG"):
        detect.read_image(str(tmp_path / "broken.heic"))


def test_the_crop_fed_to_the_model_is_cv2_resize_of_the_box(trained_run):
    run_dir, _ = trained_run
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (90, 120), dtype=np.uint8)
    box = (10, 20, 30, 50)  # x, y, w, h: a tall box, so that swapped axes would show
    expected = cv2.resize(gray[20:70, 10:40], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(detect.crop_face(gray, box, margin=0.0), expected)
    # The notebook's crop: np.resize of gray[y:y+w, x:x+h] / 255 repeats the array's values, not the image.
    notebook = np.resize(gray[20:50, 10:60] / 255.0, (48, 48))
    assert not np.allclose(notebook, expected / 255.0)
    # With a margin the box grows by that fraction on each side, clipped to the image.
    np.testing.assert_array_equal(detect.crop_face(gray, box, margin=0.1),
                                  cv2.resize(gray[15:75, 7:43], (48, 48), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(detect.crop_face(gray, (100, 70, 20, 20), margin=0.5),
                                  cv2.resize(gray[60:90, 90:120], (48, 48), interpolation=cv2.INTER_AREA))
    # And the predictor scores exactly that crop: its probabilities are the model's on cv2.resize of the box.
    model = checkpoints.load_checkpoint(str(run_dir / "best.keras"))

    class OneBox:
        options = {"photo_detect_width": None}

        def __call__(self, image, width=None):
            return [box]

    boxes, probabilities = predict.Predictor(lambda faces: evaluate.predict_probabilities(model, faces), OneBox(),
                                             margin=0.0).frame(gray)
    assert boxes == [box]
    np.testing.assert_allclose(probabilities, evaluate.predict_probabilities(model, expected[None]), atol=1e-6)


def test_already_cropped_48x48_faces_without_detection(trained_run, tmp_path, synthetic_csv):
    run_dir, _ = trained_run
    faces = data.read_faces(synthetic_csv, None).select(slice(0, 5))
    folder = tmp_path / "faces"
    folder.mkdir()
    names = ["face0.png", "face1.png", "face2.png", "face3.png", "face4.gif"]  # a folder's GIFs are read too
    for name, image in zip(names, faces.images):
        Image.fromarray(image).save(folder / name)
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(run_dir / "best.keras"), "--no-detect", str(folder),
                         "--out", str(out)]) == 0
    records = _records(out)
    assert [r["source"] for r in records] == [str(folder / name) for name in names]
    assert all(r["box"] == [0, 0, 48, 48] for r in records)
    model = checkpoints.load_checkpoint(str(run_dir / "best.keras"))
    expected = evaluate.predict_probabilities(model, faces.images)
    got = np.array([[r["probabilities"][name] for name in data.EMOTIONS] for r in records])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_corrupt_image_or_an_unwritable_copy_is_reported_and_the_rest_go_on(trained_run, astronaut, tmp_path, capsys):
    run_dir, _ = trained_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = cv2.imread(str(astronaut))
    cv2.imwrite(str(inputs / "a.jpg"), good)
    (inputs / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (inputs / "b2.HEIC").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))  # an iPhone's photo
    cv2.imwrite(str(inputs / "c.png"), good)
    cv2.imwrite(str(inputs / "d.jpg"), good)
    out = tmp_path / "out"
    (out / "d.jpg").mkdir(parents=True)  # where d.jpg's annotated copy would go: a folder, which no image replaces
    assert predict.main(["--checkpoint", str(run_dir / "best.keras"), str(inputs), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"error: {inputs / 'b.jpg'}: not a readable image" in captured.err
    assert f"error: {inputs / 'b2.HEIC'}: not a readable HEIC image" in captured.err
    assert f"error: {inputs / 'd.jpg'}: its annotated copy could not be written in {out}" in captured.err
    assert "2 of 5 inputs done" in captured.out
    assert {r["source"] for r in _records(out)} == {str(inputs / "a.jpg"), str(inputs / "c.png")}  # inputs done
    assert (out / "a.jpg").is_file() and (out / "c.png").is_file() and not (out / "b.jpg").exists()


def test_ctrl_c_keeps_the_predictions_of_the_inputs_done(trained_run, astronaut, tmp_path, monkeypatch, capsys):
    run_dir, _ = trained_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in "abcd":
        shutil.copy(astronaut, inputs / f"{name}.jpg")
    out = tmp_path / "out"
    monkeypatch.setenv(TEST_SIGNAL, "SIGINT@input 3")  # Ctrl-C as the third photo starts
    # Python's own Ctrl-C handler, as in a terminal: a process started in the background (CI's) ignores SIGINT.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert predict.main(["--checkpoint", str(run_dir / "best.keras"), str(inputs), "--out", str(out)]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == (f"interrupted at input 3: 2 of 4 inputs done; annotated copies and "
                                               f"predictions.jsonl in {out}")
    assert [r["source"] for r in _records(out)] == [str(inputs / "a.jpg"), str(inputs / "b.jpg")]


def test_an_input_that_is_not_there_or_holds_no_photo_is_one_line_before_the_model_loads(astronaut, tmp_path, capsys):
    with pytest.raises(SystemExit, match="2"):
        predict.main([str(astronaut), "holiday/IMG_01.jpg", "https://example.com/face.jpg", "--out", str(tmp_path),
                      "--checkpoint", str(tmp_path / "not-a-model.keras")])
    assert capsys.readouterr().err == ("error: no such file or folder: holiday/IMG_01.jpg, https://example.com/face.jpg"
                                       " (download it first)\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    with pytest.raises(SystemExit, match="2"):
        predict.main([str(tmp_path / "empty"), "--checkpoint", str(tmp_path / "not-a-model.keras")])
    assert capsys.readouterr().err == f"error: no images or videos in {tmp_path / 'empty'}\n"


def test_a_script_stopped_by_ctrl_c_says_so_in_one_line(capsys):
    @exit_on_user_error
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130 and capsys.readouterr().err == "\ninterrupted\n"


def test_webcam_without_a_display_is_a_clear_error(trained_run, monkeypatch, capsys):
    run_dir, _ = trained_run

    class FakeCamera:  # the outside world: a camera that gives one grey frame after another
        def __init__(self, index):
            self.index = index

        def isOpened(self):
            return self.index == 0

        def read(self):
            return True, np.full((120, 160, 3), 128, np.uint8)

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(SystemExit) as exited:
        predict.main(["--checkpoint", str(run_dir / "best.keras"), "--webcam"])
    assert exited.value.code == 2
    assert "--webcam needs a display" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", str(run_dir / "best.keras"), "--webcam", "3"])
    assert "cannot open camera 3" in capsys.readouterr().err


def test_an_input_in_the_output_folder_is_not_written_over(trained_run, astronaut, tmp_path):
    run_dir, _ = trained_run
    photo = tmp_path / "photo.png"
    shutil.copy(astronaut, photo)
    (tmp_path / "link.png").symlink_to(photo)
    assert predict.main(["--checkpoint", str(run_dir / "best.keras"), str(tmp_path / "link.png"), "--out",
                         str(tmp_path)]) == 0
    assert photo.read_bytes() == astronaut.read_bytes() and (tmp_path / "link.png").is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link-2.png", "link.png", "photo.png",
                                                               "predictions.jsonl"]


def test_test_time_augmentation_scores_each_face_as_evaluate_does(trained_run, astronaut, tmp_path, capsys):
    [shipped] = sorted((ROOT / "models").glob("fer2013-*.keras"))  # trained with 44x44 crops
    assert predict.main([str(astronaut), "--out", str(tmp_path), "--set", "predict.tta=tencrop"]) == 0
    [record] = _records(tmp_path)
    gray = cv2.cvtColor(cv2.imread(str(astronaut)), cv2.COLOR_BGR2GRAY)
    face = detect.crop_face(gray, record["box"], margin=0.1)[None]
    model = checkpoints.load_checkpoint(str(shipped))
    tencrop, plain = (evaluate.predict_probabilities(model, face, tta=tta)[0] for tta in ("tencrop", None))
    got = np.array(list(record["probabilities"].values()))
    assert np.abs(got - tencrop).max() < 1e-5 < np.abs(got - plain).max()
    run_dir, _ = trained_run  # the demo network does not crop: refused before any face is scored
    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(predict.main)(["--checkpoint", str(run_dir / "best.keras"), str(astronaut), "--out",
                                          str(tmp_path / "none"), "--set", "predict.tta=tencrop"])
    assert stopped.value.code == 2 and "needs a model that crops its input" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_photo_without_a_face_says_0_faces_and_the_run_goes_on(trained_run, astronaut, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    coffee = tmp_path / "coffee.png"  # a real photo of a cup of coffee, no face in it
    cv2.imwrite(str(coffee), cv2.cvtColor(skimage_data.coffee(), cv2.COLOR_RGB2BGR))
    run_dir, _ = trained_run
    result = run_script("predict.py", "--checkpoint", run_dir / "best.keras", coffee, astronaut, "--out",
                        tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[1/2] {coffee}: 0 faces\n" in result.stdout and f"[2/2] {astronaut}: 1 face: " in result.stdout
    assert {record["source"] for record in _records(tmp_path / "out")} == {str(astronaut)}
    assert (tmp_path / "out" / "coffee.png").is_file()  # its copy, with nothing drawn on it


def test_a_live_camera_finds_its_face_again_near_where_it_was(astronaut):
    options = {"scale_factor": 1.1, "min_neighbors": 5, "min_size": 30}
    finder = detect.FaceFinder(options)
    gray = cv2.cvtColor(cv2.imread(str(astronaut)), cv2.COLOR_BGR2GRAY)
    [full] = finder(gray)
    live = detect.LiveFinder(finder, None, every=3)
    frames = [np.roll(gray, 4 * shift, axis=1) for shift in range(7)]  # the face drifts 4 pixels a frame
    found = [live(frame) for frame in frames]
    for shift, boxes in enumerate(found):
        [(x, y, w, h)] = boxes
        assert abs(x - (full[0] + 4 * shift)) <= 0.15 * full[2] and abs(y - full[1]) <= 0.15 * full[3], (shift, boxes)
    # Between full searches, the search near the face sees a small part of the frame: gone from view, it is
    # searched for in the whole frame at once.
    blank = np.full_like(gray, 128)
    assert live(blank) == [] and live.boxes == []
    assert live(gray) == [full]
