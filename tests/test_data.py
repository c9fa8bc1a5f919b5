import gzip
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import data
import kaggle_csv
from common import UserError
from data import Faces
import synthetic
from conftest import assert_user_error, make_rows, pixel_text, run_script, write_rows

USAGE_ORDER = ["Training", "PrivateTest", "Training", "PublicTest", "PrivateTest", "Training", "PublicTest"]


def test_load_data_keeps_the_notebooks_contract(tmp_path):
    rows = make_rows(USAGE_ORDER)
    x_train, y_train, x_test, y_test = data.load_data(write_rows(tmp_path / "f.csv", rows))
    train_rows = [row for row in rows if row[2] != "PrivateTest"]  # Training and PublicTest, in file order
    test_rows = [row for row in rows if row[2] == "PrivateTest"]
    assert x_train.shape == (5, 48, 48, 1) and x_test.shape == (2, 48, 48, 1)
    assert y_train.shape == (5, 7) and y_test.shape == (2, 7)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.float32)}
    for x, y, expected in ((x_train, y_train, train_rows), (x_test, y_test, test_rows)):
        for i, (emotion, image, _) in enumerate(expected):
            np.testing.assert_array_equal(x[i, ..., 0], (image / 255.0).astype(np.float32))
            assert y[i].tolist() == np.eye(7)[emotion].tolist()


def test_pixel_scaling_equals_the_notebooks_float64_division_for_every_value():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ours = data.to_float(values[None])[0, ..., 0]
    notebook = (values.astype(np.uint8) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(ours, notebook)


def test_vectorized_parse_matches_a_plain_parse_across_blocks(tmp_path):
    rng = np.random.default_rng(3)
    n = kaggle_csv.ROWS_PER_BLOCK * 2 + 37
    images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    images[0, 0, :6] = [0, 9, 10, 99, 100, 255]
    rows = [(i % 7, images[i], data.USAGES[i % 3]) for i in range(n)]
    faces = data.read_faces(write_rows(tmp_path / "f.csv", rows))
    np.testing.assert_array_equal(faces.images, images)
    assert faces.labels.tolist() == [i % 7 for i in range(n)]
    assert faces.usage.tolist() == [i % 3 for i in range(n)]


def _read(path):
    faces = data.read_faces(path)
    return faces.images, faces.labels.tolist(), faces.usage.tolist()


def test_gzip_crlf_spaces_quotes_column_order_and_blank_lines_read_the_same(tmp_path):
    rows = make_rows(USAGE_ORDER)
    expected = _read(write_rows(tmp_path / "plain.csv", rows))
    variants = {}
    plain = (tmp_path / "plain.csv").read_bytes()
    (tmp_path / "f.csv.gz").write_bytes(gzip.compress(plain))
    variants["gzip"] = tmp_path / "f.csv.gz"
    variants["crlf"] = write_rows(tmp_path / "crlf.csv", rows, newline="\r\n")
    spaced = [(f" {e} ", " " + pixel_text(p) + "  ", f" {u} ") for e, p, u in rows]
    variants["spaces"] = write_rows(tmp_path / "spaces.csv", spaced, header="emotion , pixels , Usage")
    quoted = [(f'"{e}"', f'"{pixel_text(p)}"', f'"{u}"') for e, p, u in rows]
    variants["quotes"] = write_rows(tmp_path / "quotes.csv", quoted, header='"emotion","pixels","Usage"')
    lines = ["Usage,emotion,pixels"] + [f"{u},{e},{pixel_text(p)}" for e, p, u in rows]
    (tmp_path / "order.csv").write_text("\n".join(lines) + "\n\n\n")
    variants["column order, blank lines"] = tmp_path / "order.csv"
    double = [(e, pixel_text(p).replace(" ", "  "), u) for e, p, u in rows]
    variants["double spaces"] = write_rows(tmp_path / "double.csv", double)
    tabs = [(e, pixel_text(p).replace(" ", "\t"), u) for e, p, u in rows]
    variants["tabs"] = write_rows(tmp_path / "tabs.csv", tabs)
    (tmp_path / "unterminated.csv").write_bytes(plain.rstrip(b"\n"))
    variants["no newline at the end"] = tmp_path / "unterminated.csv"
    for name, path in variants.items():
        images, labels, usage = _read(path)
        np.testing.assert_array_equal(images, expected[0], err_msg=name)
        assert (labels, usage) == (expected[1], expected[2]), name


@pytest.mark.slow
def test_plain_files_take_the_chunked_reader_and_it_agrees_with_the_tolerant_one(tmp_path):
    rows = make_rows(USAGE_ORDER * 300)  # several chunks of rows
    plain = write_rows(tmp_path / "plain.csv", rows)
    files = {"plain": plain, "crlf": write_rows(tmp_path / "crlf.csv", rows, newline="\r\n"),
             "column order": tmp_path / "order.csv",
             "quoted": write_rows(tmp_path / "quoted.csv", [(e, f'"{pixel_text(p)}"', u) for e, p, u in rows])}
    files["column order"].write_text("\n".join(["Usage,pixels,emotion"] +
                                                [f"{u},{pixel_text(p)},{e}" for e, p, u in rows]))
    for name, path in files.items():
        raw = kaggle_csv._read_bytes(path)
        columns, n_columns, pos = kaggle_csv._parse_header(path, raw)
        with ThreadPoolExecutor(2) as pool:
            chunked = kaggle_csv._read_plain_rows(raw, pos, columns, n_columns, pool)
            tolerant = kaggle_csv._read_any_rows(path, raw, pos, columns, n_columns, pool, 2)
        np.testing.assert_array_equal(tolerant.images, np.stack([p for _, p, _ in rows]), err_msg=name)
        if name == "quoted":
            assert chunked is None  # quotes go to the tolerant reader
            continue
        for field in Faces._fields:
            np.testing.assert_array_equal(getattr(chunked, field), getattr(tolerant, field), err_msg=name)


def test_damaged_files_read_the_same_or_fail_the_same_through_both_readers(tmp_path):
    """The chunked reader must hand every file it cannot read exactly to the tolerant one, never guess."""
    rng = random.Random(0)
    plain = write_rows(tmp_path / "plain.csv", make_rows(["Training", "PublicTest", "PrivateTest"] * 3)).read_bytes()
    damaged = tmp_path / "damaged.csv"
    for _ in range(300):
        text = bytearray(plain)
        for _ in range(rng.randint(1, 3)):
            at, kind = rng.randrange(len(text)), rng.random()
            if kind < 0.4:
                text[at] = rng.choice(b' ,\n\r"0123456789-.xT')
            elif kind < 0.7:
                del text[at]
            else:
                text.insert(at, rng.choice(b' ,\n\r"0123456789-.xT'))
        if rng.random() < 0.3:
            del text[rng.randrange(len(text)):]
        damaged.write_bytes(text)
        outcomes = []
        for read in (data.read_csv, _tolerant_read):
            try:
                outcomes.append(read(damaged))
            except UserError as error:
                outcomes.append(str(error))
        chunked, tolerant = outcomes
        if isinstance(tolerant, str) or isinstance(chunked, str):
            assert chunked == tolerant
        else:
            for field in Faces._fields:
                np.testing.assert_array_equal(getattr(chunked, field), getattr(tolerant, field))


def _tolerant_read(path):
    raw = kaggle_csv._read_bytes(path)
    columns, n_columns, pos = kaggle_csv._parse_header(path, raw)
    with ThreadPoolExecutor(2) as pool:
        return kaggle_csv._read_any_rows(path, raw, pos, columns, n_columns, pool, 2)


def _bad_files(tmp_path):
    good = make_rows(["Training", "PublicTest", "PrivateTest"])
    image = good[0][1]
    short = pixel_text(image.ravel()[:-1])
    non_integer = pixel_text(image).replace(pixel_text(image).split()[5], "1.5", 1)
    too_big = " ".join(["256"] + pixel_text(image).split()[1:])
    negative = " ".join(["-1"] + pixel_text(image).split()[1:])

    def with_bad_row(name, row, header="emotion,pixels,Usage"):
        return write_rows(tmp_path / name, [good[0], row, good[2]], header=header)

    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blank.csv").write_text("\n \r\n\t\n")
    (tmp_path / "cut.csv").write_text(f"emotion,Usage,pixels\n1,Training,{pixel_text(image)}\n2,Training,")
    (tmp_path / "header-only.csv").write_text("emotion,pixels,Usage\n")
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)  # a binary file, no line end
    return {
        "wrong pixel count": (with_bad_row("count.csv", (1, short, "Training")), ["line 3", "2303 pixels", "2304"]),
        "non-integer pixel": (with_bad_row("float.csv", (1, non_integer, "Training")), ["line 3", "'1.5'", "not an integer"]),
        "pixel over 255": (with_bad_row("big.csv", (1, too_big, "Training")), ["line 3", "256", "outside 0..255"]),
        "negative pixel": (with_bad_row("negative.csv", (1, negative, "Training")), ["line 3", "-1", "outside 0..255"]),
        "label 7": (with_bad_row("label.csv", (7, image, "Training")), ["line 3", "'7'", "0..6"]),
        "label text": (with_bad_row("label-text.csv", ("happy", image, "Training")), ["line 3", "'happy'", "0..6"]),
        "unknown Usage": (with_bad_row("usage.csv", (1, image, "Validation")), ["line 3", "'Validation'", "Usage"]),
        "extra field": (with_bad_row("fields.csv", (1, pixel_text(image) + ",x", "Training")), ["line 3", "4 fields"]),
        "missing column": (write_rows(tmp_path / "column.csv", [(1, image, "")], header="emotion,pixels"),
                           ["line 1", "missing column 'Usage'"]),
        "not a csv": (tmp_path / "model.keras", ["line 1", "missing column 'emotion'", "(header is 'PK"]),
        "empty file": (tmp_path / "empty.csv", ["empty"]),
        "blank file": (tmp_path / "blank.csv", ["empty"]),
        "cut after the last comma": (tmp_path / "cut.csv", ["line 3", "0 pixels"]),
        "header only": (tmp_path / "header-only.csv", ["no data rows"]),
        "missing file": (tmp_path / "nowhere.csv", ["no such file"]),
    }


def test_every_bad_csv_gets_a_message_with_file_line_and_fault(tmp_path):
    for case, (path, fragments) in _bad_files(tmp_path).items():
        with pytest.raises(UserError) as caught:
            data.load_data(path)
        message = str(caught.value)
        assert str(path) in message and len(message) < len(str(path)) + 200, (case, message)
        for fragment in fragments:
            assert fragment in message, (case, fragment, message)


@pytest.mark.slow
def test_every_bad_csv_exits_2_with_one_line_from_the_command_line(tmp_path):
    for case, (path, fragments) in _bad_files(tmp_path).items():
        assert_user_error(run_script("data.py", path), str(path), *fragments)


def test_a_bad_row_deep_in_a_file_is_reported_at_its_own_line(tmp_path):
    rows = make_rows(["Training"] * 1500)
    emotion, image, usage = rows[1200]
    rows[1200] = (emotion, "x " + " ".join(pixel_text(image).split()[1:]), usage)
    with pytest.raises(UserError, match=r"line 1202: pixel 'x' is not an integer"):
        data.read_faces(write_rows(tmp_path / "deep.csv", rows))


def test_seed_protocol_holds_out_the_last_rows_exactly_as_keras_validation_split(tmp_path):
    usages = ["Training"] * 23 + ["PublicTest"] * 6 + ["PrivateTest"] * 4
    faces = data.read_faces(write_rows(tmp_path / "f.csv", make_rows(usages)))
    train, validation, test = data.split(faces, "notebook", 0.2)
    rest = faces.select(faces.usage != data.PRIVATE_TEST)
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split

    (keras_train,), (keras_validation,) = train_validation_split((rest.images,), validation_split=0.2)
    np.testing.assert_array_equal(train.images, keras_train)
    np.testing.assert_array_equal(validation.images, keras_validation)
    assert (len(train), len(validation), len(test)) == (23, 6, 4)  # floor(29 * 0.8) = 23
    np.testing.assert_array_equal(test.images, faces.images[faces.usage == data.PRIVATE_TEST])


def test_standard_protocol_uses_the_usage_column(tmp_path):
    faces = data.read_faces(write_rows(tmp_path / "f.csv", make_rows(USAGE_ORDER)))
    train, validation, test = data.split(faces, "standard")
    for part, usage in ((train, "Training"), (validation, "PublicTest"), (test, "PrivateTest")):
        expected = [i for i, u in enumerate(USAGE_ORDER) if u == usage]
        np.testing.assert_array_equal(part.images, faces.images[expected])
        assert part.labels.tolist() == [i % 7 for i in expected]


def test_retrain_protocol_trains_on_training_and_publictest_and_holds_nothing_out(tmp_path):
    faces = data.read_faces(write_rows(tmp_path / "f.csv", make_rows(USAGE_ORDER)))
    train, validation, test = data.split(faces, "retrain")
    np.testing.assert_array_equal(train.images, faces.images[[u != "PrivateTest" for u in USAGE_ORDER]])
    np.testing.assert_array_equal(test.images, faces.images[[u == "PrivateTest" for u in USAGE_ORDER]])
    assert len(validation) == 0 and validation.images.shape[1:] == (48, 48)


def test_protocol_errors_name_what_is_missing(tmp_path):
    no_test = data.read_faces(write_rows(tmp_path / "a.csv", make_rows(["Training", "PublicTest"])))
    with pytest.raises(UserError, match="no PrivateTest rows"):
        data.split(no_test, "notebook")
    no_public = data.read_faces(write_rows(tmp_path / "b.csv", make_rows(["Training", "PrivateTest"])))
    with pytest.raises(UserError, match="no PublicTest rows"):
        data.split(no_public, "standard")
    with pytest.raises(UserError, match="too few for validation_split"):
        data.split(no_public, "notebook", 0.2)  # one training row cannot be split
    only_test = data.read_faces(write_rows(tmp_path / "c.csv", make_rows(["PrivateTest"])))
    with pytest.raises(UserError, match="no Training or PublicTest rows"):
        data.split(only_test, "retrain")


def test_limit_keeps_the_first_rows_of_each_usage(tmp_path):
    usages = ["Training"] * 5 + ["PublicTest"] * 3 + ["PrivateTest"] * 3
    faces = data.read_faces(write_rows(tmp_path / "f.csv", make_rows(usages)))
    limited = data.limit_rows(faces, 2)
    np.testing.assert_array_equal(limited.images, faces.images[[0, 1, 5, 6, 8, 9]])


def _save_folders(root, items):
    for split, class_name, name, image in items:
        folder = root / split / class_name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name)


def test_image_folder_release_loads_into_the_same_arrays(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    _save_folders(tmp_path, [
        ("train", "happy", "Training_20.png", images[0]),
        ("train", "angry", "Training_10.png", images[1]),
        ("test", "sad", "PrivateTest_5.png", images[2]),
        ("test", "neutral", "PublicTest_7.png", images[3]),
        ("train", "disgust", "face.png", images[4]),   # no prefix: the folder says Training
        ("test", "surprise", "face.png", images[5]),   # no prefix: the folder says PrivateTest
    ])
    (tmp_path / "train" / "happy" / ".DS_Store").write_bytes(b"\0\0")  # hidden files are skipped
    faces = data.read_faces(tmp_path)
    # Training block sorted by name, then PublicTest, then PrivateTest.
    np.testing.assert_array_equal(faces.images, images[[1, 0, 4, 3, 2, 5]])
    assert faces.labels.tolist() == [0, 3, 1, 6, 4, 5]
    assert [data.USAGES[u] for u in faces.usage] == ["Training"] * 3 + ["PublicTest"] + ["PrivateTest"] * 2
    x_train, y_train, x_test, _ = data.load_data(tmp_path)
    assert x_train.shape == (4, 48, 48, 1) and x_test.shape == (2, 48, 48, 1)


def test_image_folder_errors_name_the_file(tmp_path):
    image = np.zeros((48, 48), np.uint8)
    _save_folders(tmp_path, [("train", "happy", "Training_1.png", image)])
    (tmp_path / "train" / "happy" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"notes\.txt: not a readable image"):
        data.read_faces(tmp_path)
    (tmp_path / "train" / "happy" / "notes.txt").unlink()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "train" / "happy" / "Training_2.png")
    with pytest.raises(UserError, match=r"Training_2\.png: image is 64x64, expected 48x48"):
        data.read_faces(tmp_path)
    (tmp_path / "train" / "happy" / "Training_2.png").unlink()
    _save_folders(tmp_path, [("train", "contempt", "Training_3.png", image)])
    with pytest.raises(UserError, match="contempt: unknown class folder"):
        data.read_faces(tmp_path)
    assert_user_error(run_script("data.py", tmp_path), "contempt", "unknown class folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images found"):
        data.read_faces(empty)


def test_synthetic_csv_from_the_command_line(tmp_path):
    out = tmp_path / "s.csv"
    result = run_script("synthetic.py", out, "--rows", 70, "--seed", 4)
    assert result.returncode == 0 and "SYNTHETIC" in result.stdout
    faces = data.read_faces(out)
    again = synthetic.make_synthetic(70, seed=4)
    np.testing.assert_array_equal(faces.images, again.images)  # the CSV round-trips, and the seed repeats
    assert faces.labels.tolist() == again.labels.tolist()
    assert np.bincount(faces.usage).tolist() == [56, 7, 7]
    assert set(faces.labels.tolist()) == set(range(7))
    assert not np.array_equal(synthetic.make_synthetic(70, seed=5).images, faces.images)
    before = out.read_bytes()  # a file that is there, perhaps the real FER2013, is kept unless --force
    with pytest.raises(SystemExit, match="2"):
        synthetic.main([str(out), "--rows", "7"])
    assert out.read_bytes() == before
    synthetic.main([str(out), "--rows", "7", "--force"])
    assert len(data.read_faces(out)) == 7


def test_counts_from_the_command_line(tmp_path):
    path = write_rows(tmp_path / "f.csv", make_rows(USAGE_ORDER))
    result = run_script("data.py", path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line.strip()}
    # Labels cycle 0..6 over USAGE_ORDER: Training rows 0, 2, 5 -> Angry, Fear, Surprise.
    assert lines["Training"] == ["1", "0", "1", "0", "0", "1", "0", "3"]
    assert lines["PublicTest"] == ["0", "0", "0", "1", "0", "0", "1", "2"]
    assert lines["PrivateTest"] == ["0", "1", "0", "0", "1", "0", "0", "2"]
    assert lines["total"][-1] == "7"


# --- the real FER2013 (FER2013_CSV, FER2013_FOLDERS) ---------------------------------------------------

def test_real_fer2013_counts(fer2013_faces):
    assert np.bincount(fer2013_faces.usage).tolist() == [28709, 3589, 3589]
    private = fer2013_faces.labels[fer2013_faces.usage == data.PRIVATE_TEST]
    assert np.bincount(private, minlength=7).tolist() == [491, 55, 528, 879, 594, 416, 626]
    # Kaggle's block order: Training, then PublicTest, then PrivateTest.
    assert np.all(np.diff(fer2013_faces.usage.astype(int)) >= 0)


@pytest.mark.slow
def test_real_fer2013_load_data_shapes_and_values(fer2013_csv):
    x_train, y_train, x_test, y_test = data.load_data(fer2013_csv)
    assert x_train.shape == (32298, 48, 48, 1) and y_train.shape == (32298, 7)
    assert x_test.shape == (3589, 48, 48, 1) and y_test.shape == (3589, 7)
    with open(fer2013_csv) as f:
        lines = f.read().splitlines()[1:]
    for row in (0, 28709, 32297):  # first Training, first PublicTest, last PublicTest
        emotion, pixels, _ = lines[row].split(",")
        expected = (np.array(pixels.split(), np.uint8).reshape(48, 48) / 255.0).astype(np.float32)
        np.testing.assert_array_equal(x_train[row, ..., 0], expected)
        assert y_train[row].argmax() == int(emotion)
    emotion, pixels, _ = lines[-1].split(",")
    np.testing.assert_array_equal(x_test[-1, ..., 0] * 255, np.array(pixels.split(), np.float32).reshape(48, 48))


def test_real_fer2013_counts_command(fer2013_csv):
    result = run_script("data.py", fer2013_csv)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert rows["Training"][-1] == "28709" and rows["PublicTest"][-1] == "3589"
    assert rows["PrivateTest"] == ["491", "55", "528", "879", "594", "416", "626", "3589"]
    assert rows["total"][-1] == "35887"


def test_real_fer2013_image_folders_hold_the_same_images_per_split(fer2013_faces, fer2013_folders):
    folders = data.read_faces(fer2013_folders)
    assert np.bincount(folders.usage).tolist() == [28709, 3589, 3589]
    for usage in range(3):
        from_csv = fer2013_faces.select(fer2013_faces.usage == usage)
        from_folders = folders.select(folders.usage == usage)
        # The folder release has no row order: compare the two as sorted collections of (label, pixels).
        a, b = (sorted(zip(faces.labels.tolist(), (image.tobytes() for image in faces.images)))
                for faces in (from_csv, from_folders))
        assert [label for label, _ in a] == [label for label, _ in b]
        difference = (np.frombuffer(b"".join(p for _, p in a), np.uint8).astype(int)
                      - np.frombuffer(b"".join(p for _, p in b), np.uint8).astype(int))
        assert np.abs(difference).max() <= 1
