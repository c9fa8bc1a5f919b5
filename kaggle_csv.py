"""The Kaggle CSV, emotion,pixels,Usage: a reader vectorized with NumPy over blocks of rows (never a Python loop
over pixels) that names the line of any fault, and the writer.
"""
import gzip
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common import UserError, replaced_atomically
from fer2013 import PIXELS, SIZE, USAGES, Faces

COLUMNS = ("emotion", "pixels", "Usage")
SPACE, ZERO, NEWLINE, CARRIAGE_RETURN, COMMA = (np.uint8(ord(c)) for c in " 0\n\r,")
STRIPPED = b' \t\r"'  # around a field: spaces, tabs, the CR of CRLF, quotes
ROWS_PER_BLOCK = 256  # rows parsed per vectorized step: ~2 MB of text, so that its arrays stay in cache


def _read_bytes(path):
    """The file's bytes: mapped, not copied into memory (the parse goes faster), or decompressed if it is gzip."""
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                f.seek(0)
                return gzip.decompress(f.read())
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as error:
        raise UserError(f"{path}: cannot be read: {error}") from None


def _parse_header(path, raw):
    end = raw.find(b"\n")
    header = raw[: len(raw) if end < 0 else end].decode("utf-8-sig", errors="replace")
    names = [name.strip().strip('"').strip() for name in header.split(",")]
    lowered = [name.lower() for name in names]
    positions = []
    for column in COLUMNS:
        if column.lower() not in lowered:
            shown = header.strip()[:60] + ("..." if len(header.strip()) > 60 else "")
            raise UserError(f"{path}, line 1: missing column '{column}' (header is {shown!r}, "
                            f"expected {','.join(COLUMNS)})")
        positions.append(lowered.index(column.lower()))
    return positions, len(names), len(raw) if end < 0 else end + 1


def read_csv(path):
    """Parse the Kaggle file: header emotion,pixels,Usage (any order), one face per line.

    Handles CRLF, stray spaces and quotes around fields, blank lines, gzip. Any bad row raises a UserError
    that names the file, the line number and what is wrong. A file in the plain layout (Kaggle's) is parsed in
    chunks of rows on all cores with numpy alone; any other goes line by line through the tolerant reader.
    """
    raw = _read_bytes(path)
    if not re.search(rb"\S", raw):
        raise UserError(f"{path}: the file is empty")
    columns, n_columns, pos = _parse_header(path, raw)
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        faces = _read_plain_rows(raw, pos, columns, n_columns, pool)
        if faces is None:
            faces = _read_any_rows(path, raw, pos, columns, n_columns, pool, workers)
    return faces


def _read_plain_rows(raw, pos, columns, n_columns, pool):
    """All rows, if every one is in the plain layout (no quotes, spaces or blank lines; LF or CRLF), else None."""
    first_line = raw.find(b"\n", pos)
    chunk_bytes = ROWS_PER_BLOCK * ((len(raw) if first_line < 0 else first_line) - pos + 1)
    bounds = [pos]
    while bounds[-1] < len(raw):
        cut = raw.find(b"\n", bounds[-1] + chunk_bytes)
        bounds.append(len(raw) if cut < 0 else cut + 1)
    parts = list(pool.map(lambda span: _parse_plain_chunk(raw, *span, columns, n_columns), zip(bounds, bounds[1:])))
    if not parts or any(part is None for part in parts):
        return None
    return Faces(*(np.concatenate(arrays) for arrays in zip(*parts)))


def _parse_plain_chunk(raw, start, stop, columns, n_columns):
    """(images, labels, usage) of the whole lines in raw[start:stop], or None if any is not plain."""
    text = np.frombuffer(raw, np.uint8, stop - start, start)
    line_ends = np.flatnonzero(text == NEWLINE)
    if text[-1] != NEWLINE:
        line_ends = np.append(line_ends, len(text))
    line_starts = np.concatenate(([0], line_ends[:-1] + 1))
    if np.any(line_ends == line_starts):
        return None
    ends = line_ends - (text[line_ends - 1] == CARRIAGE_RETURN)
    commas = np.flatnonzero(text == COMMA)
    if len(commas) != len(line_starts) * (n_columns - 1):
        return None
    commas = commas.reshape(len(line_starts), n_columns - 1)
    if np.any(commas[:, 0] < line_starts) or np.any(commas[:, -1] >= ends):
        return None  # some line has more commas than the header, another fewer
    field_starts = np.column_stack([line_starts, commas + 1])
    field_stops = np.column_stack([commas, ends])
    (emotion_starts, pixel_starts, usage_starts) = (field_starts[:, at] for at in columns)
    (emotion_stops, pixel_stops, usage_stops) = (field_stops[:, at] for at in columns)
    if np.any(emotion_stops - emotion_starts != 1) or np.any(pixel_stops <= pixel_starts):
        return None
    labels = text[emotion_starts] - ZERO
    if np.any(labels > 6):
        return None
    usage = np.full(len(line_starts), len(USAGES), np.uint8)
    for code, name in enumerate(USAGES):
        name = np.frombuffer(name.encode(), np.uint8)
        rows = np.flatnonzero(usage_stops - usage_starts == len(name))
        matches = np.all(text[usage_starts[rows, None] + np.arange(len(name))] == name, axis=1)
        usage[rows[matches]] = code
    if np.any(usage == len(USAGES)):
        return None
    if np.any(text[pixel_starts] - ZERO > 9) or np.any(text[pixel_stops - 1] - ZERO > 9):
        return None
    view = memoryview(raw)[start:stop]
    images = _parse_pixels_fast([view[a:b] for a, b in zip(pixel_starts.tolist(), pixel_stops.tolist())])
    return None if images is None else (images, labels, usage)


def _read_any_rows(path, raw, pos, columns, n_columns, pool, workers):
    """The tolerant reader: one line at a time, naming the line of any fault; pixels parsed on the pool."""
    labels, usage, blocks = [], [], []
    pending, pending_lines = [], []
    line_no = 1
    view = memoryview(raw)  # pixel fields go to the workers as views: the 300 MB is not copied line by line
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            end = len(raw)
        line_start, pos = pos, end + 1
        line_no += 1
        row = _read_row(path, raw, line_start, end, line_no, columns, n_columns)
        if row is None:
            continue
        labels.append(row[0])
        usage.append(row[1])
        pending.append(view[row[2]:row[3]])
        pending_lines.append(line_no)
        if len(pending) == ROWS_PER_BLOCK:
            blocks.append(pool.submit(_parse_pixel_block, path, pending, pending_lines))
            pending, pending_lines = [], []
            if len(blocks) > 2 * workers:  # bound the rows held as text
                blocks[-2 * workers - 1].result()
    if pending:
        blocks.append(pool.submit(_parse_pixel_block, path, pending, pending_lines))
    if not labels:
        raise UserError(f"{path}: no data rows below the header")
    images = np.empty((len(labels), SIZE, SIZE), np.uint8)
    for i, block in enumerate(blocks):
        images[i * ROWS_PER_BLOCK:(i + 1) * ROWS_PER_BLOCK] = block.result()
    return Faces(images, np.array(labels, np.uint8), np.array(usage, np.uint8))


def _read_row(path, raw, start, end, line_no, columns, n_columns):
    """(label, usage code, start and stop of the pixel field) of the line raw[start:end]; None for a blank line.
    A UserError names the line and what is wrong with it."""
    emotion_at, pixels_at, usage_at = columns
    spans = _field_spans(raw, start, end, n_columns)
    if spans is None:
        fields = raw[start:end].split(b",")
        if len(fields) == 1 and not fields[0].strip():
            return None
        raise UserError(f"{path}, line {line_no}: {len(fields)} fields, expected {n_columns} ({','.join(COLUMNS)})")
    emotion = raw[slice(*spans[emotion_at])].strip(STRIPPED)
    if not emotion.isdigit() or int(emotion) > 6:
        raise UserError(f"{path}, line {line_no}: emotion {emotion.decode(errors='replace')!r} is not a label 0..6")
    usage_field = raw[slice(*spans[usage_at])]
    name = usage_field.strip(STRIPPED).decode(errors="replace")
    if name not in USAGES:
        raise UserError(f"{path}, line {line_no}: unknown Usage {usage_field.strip().decode(errors='replace')!r} "
                        f"(expected {', '.join(USAGES)})")
    first, stop = spans[pixels_at]
    while first < stop and raw[first] in STRIPPED:
        first += 1
    while stop > first and raw[stop - 1] in STRIPPED:
        stop -= 1
    return int(emotion), USAGES.index(name), first, stop


def _field_spans(raw, start, end, n_columns):
    """(start, stop) of each comma-separated field of raw[start:end], or None if it has another number of fields."""
    spans = []
    for _ in range(n_columns - 1):
        comma = raw.find(b",", start, end)
        if comma < 0:
            return None
        spans.append((start, comma))
        start = comma + 1
    if raw.find(b",", start, end) >= 0:
        return None
    spans.append((start, end))
    return spans


def _parse_pixel_block(path, fields, line_numbers):
    """Space-separated pixel strings -> uint8 (n, 48, 48); vectorized, with an exact per-row diagnosis on failure."""
    images = _parse_pixels_fast(fields)
    if images is None:
        images = np.stack([_parse_pixels_exact(path, field, line) for field, line in zip(fields, line_numbers)])
    return images


def _parse_pixels_fast(fields):
    """The common case (2,304 values of 0..255 a row, digits separated by spaces), else None.

    A value is read off at the last digit of its token from the (up to) three bytes before it; the
    tens and hundreds count only where they are digits, not the space before the token.
    """
    text = np.frombuffer(b" ".join([b"   ", *fields, b""]), np.uint8)
    space = text == SPACE
    if text.max() > ord("9") or np.count_nonzero(text < ZERO) != np.count_nonzero(space):
        return None  # a character other than a digit or a space
    ends = np.flatnonzero(space[4:] > space[3:-1])  # a digit followed by a space, at ends + 3
    if len(ends) != len(fields) * PIXELS:
        return None
    row_ends = np.cumsum([len(field) + 1 for field in fields])  # in text[3:]
    if np.any(np.searchsorted(ends, row_ends) != np.arange(1, len(fields) + 1) * PIXELS):
        return None
    ones, tens, hundreds, thousands = text[3:][ends], text[2:][ends], text[1:][ends], text[ends]
    has_tens = tens != SPACE
    has_hundreds = has_tens & (hundreds != SPACE)
    if np.any(has_hundreds & (thousands != SPACE)):
        return None
    values = (ones - ZERO).astype(np.uint16)
    values += ((tens - ZERO) * has_tens).astype(np.uint16) * np.uint16(10)
    values += ((hundreds - ZERO) * has_hundreds).astype(np.uint16) * np.uint16(100)
    if values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(len(fields), SIZE, SIZE)


def _parse_pixels_exact(path, field, line_no):
    tokens = bytes(field).split()
    if len(tokens) != PIXELS:
        raise UserError(f"{path}, line {line_no}: {len(tokens)} pixels, expected {PIXELS} (48x48)")
    values = []
    for token in tokens:
        try:
            value = int(token)
        except ValueError:
            raise UserError(f"{path}, line {line_no}: pixel {token.decode(errors='replace')!r} "
                            f"is not an integer") from None
        if not 0 <= value <= 255:
            raise UserError(f"{path}, line {line_no}: pixel {value} is outside 0..255")
        values.append(value)
    return np.array(values, np.uint8).reshape(SIZE, SIZE)


def write_csv(path, faces):
    """Write Faces in the Kaggle format (emotion,pixels,Usage), to a temporary name first."""
    as_text = np.array([str(value) for value in range(256)])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path) as temporary, open(temporary, "w", newline="\n") as f:
        f.write(",".join(COLUMNS) + "\n")
        for image, label, usage in zip(faces.images, faces.labels, faces.usage):
            f.write(f"{label},{' '.join(as_text[image.ravel()])},{USAGES[usage]}\n")
