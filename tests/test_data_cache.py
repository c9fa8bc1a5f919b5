"""data.py's parse cache: written once, reused, rebuilt when the source changes or the file is damaged."""
import os

import numpy as np

import data
from conftest import make_rows, write_rows


def _cache_files(directory):
    return sorted(p for p in directory.iterdir() if p.suffix == ".npz") if directory.exists() else []


def _unsampled_offset(size):
    """A byte offset that the source fingerprint's sampled blocks do not cover."""
    blocks = [max(0, min(size - data.SAMPLE_BYTES, i * size // (data.SAMPLE_BLOCKS + 1)))
              for i in range(data.SAMPLE_BLOCKS + 2)]
    covered = np.zeros(size, bool)
    for start in blocks:
        covered[start:start + data.SAMPLE_BYTES] = True
    return int(np.flatnonzero(~covered)[0])


def test_the_cache_is_written_once_and_reused(tmp_path):
    source = write_rows(tmp_path / "f.csv", make_rows(["Training", "PublicTest", "PrivateTest"] * 100))
    cache = tmp_path / "cache"
    first = data.read_faces(source, cache)
    [cache_file] = _cache_files(cache)
    written = cache_file.stat().st_mtime_ns
    second = data.read_faces(source, cache)
    assert cache_file.stat().st_mtime_ns == written  # reused, not rewritten
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # A warm read does not parse the file again: alter one pixel digit outside the sampled blocks and
    # restore size and mtime, and the cached arrays come back unchanged (a parse shows the change).
    stat = source.stat()
    text = bytearray(source.read_bytes())
    offset = _unsampled_offset(len(text))
    while not chr(text[offset]).isdigit():
        offset += 1
    text[offset] = ord("1") if text[offset] == ord("0") else ord("0")
    source.write_bytes(bytes(text))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    np.testing.assert_array_equal(data.read_faces(source, cache).images, first.images)
    assert not np.array_equal(data.read_faces(source, None).images, first.images)


def test_a_changed_source_is_detected_and_rebuilt(tmp_path):
    rows = make_rows(["Training", "PublicTest", "PrivateTest"])
    source = write_rows(tmp_path / "f.csv", rows)
    cache = tmp_path / "cache"
    data.read_faces(source, cache)
    # Same size, same mtime, other content in the first block: the sampled hash sees it.
    emotion, image, usage = rows[0]
    changed = [((emotion + 1) % 7, image, usage)] + rows[1:]
    stat = source.stat()
    write_rows(source, changed)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size
    assert data.read_faces(source, cache).labels[0] == (emotion + 1) % 7
    # A new row: size and mtime change.
    write_rows(source, changed + make_rows(["Training"], seed=9))
    assert len(data.read_faces(source, cache)) == 4
    assert len(_cache_files(cache)) == 1  # one cache file per source, replaced


def test_a_damaged_cache_is_rebuilt_not_trusted(tmp_path):
    source = write_rows(tmp_path / "f.csv", make_rows(["Training", "PublicTest", "PrivateTest"] * 2))
    cache = tmp_path / "cache"
    expected = data.read_faces(source, None)
    data.read_faces(source, cache)
    [cache_file] = _cache_files(cache)
    whole = cache_file.read_bytes()
    damages = {
        "truncated": whole[: len(whole) - 100],
        "flipped pixel": whole[:-500] + bytes([whole[-500] ^ 0xFF]) + whole[-499:],
        "bad header": b"{not json\n" + whole.split(b"\n", 1)[1],
        "empty": b"",
        "trailing bytes": whole + b"x",
    }
    for name, damaged in damages.items():
        cache_file.write_bytes(damaged)
        faces = data.read_faces(source, cache)
        np.testing.assert_array_equal(faces.images, expected.images, err_msg=name)
        assert faces.labels.tolist() == expected.labels.tolist(), name
        assert cache_file.read_bytes() == whole, name  # rewritten whole


def test_no_cache_dir_writes_nothing_and_an_unwritable_one_is_skipped(tmp_path, capsys):
    source = write_rows(tmp_path / "f.csv", make_rows(["Training", "PrivateTest"]))
    before = set(tmp_path.rglob("*"))
    data.read_faces(source, None)
    assert set(tmp_path.rglob("*")) == before
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    faces = data.read_faces(source, blocker / "cache")
    assert len(faces) == 2 and "could not write the data cache" in capsys.readouterr().err


def test_load_data_takes_the_cache_choice(tmp_path):
    source = write_rows(tmp_path / "f.csv", make_rows(["Training", "PublicTest", "PrivateTest"]))
    cached = data.load_data(source, cache_dir=tmp_path / "c")
    plain = data.load_data(source, cache_dir=None)
    assert len(_cache_files(tmp_path / "c")) == 1
    for a, b in zip(cached, plain):
        np.testing.assert_array_equal(a, b)


def test_folder_release_is_cached_and_a_new_image_invalidates_it(tmp_path):
    from PIL import Image

    folder = tmp_path / "release" / "train" / "happy"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "Training_1.png")
    cache = tmp_path / "cache"
    assert len(data.read_faces(tmp_path / "release", cache)) == 1
    [cache_file] = _cache_files(cache)
    written = cache_file.stat().st_mtime_ns
    assert len(data.read_faces(tmp_path / "release", cache)) == 1 and cache_file.stat().st_mtime_ns == written
    Image.fromarray(np.ones((48, 48), np.uint8)).save(folder / "Training_2.png")
    assert len(data.read_faces(tmp_path / "release", cache)) == 2
