"""Fingerprints of faces, so that a prediction names its face in any copy of FER2013, whatever its row order.

Kaggle's fer2013.csv, the image-folder release and our rebuilt CSV hold the same faces in other orders, and their
pixels differ by a few grey levels (JPEG). A fingerprint is 256 bits: the signs of fixed random projections of the
face at 24x24, less its mean grey. Moving every pixel of PrivateTest by up to 3 grey levels flipped at most 8 of
them; for 99% of its faces, the nearest face with another label differs in 32 or more. evaluate.py writes each
face's fingerprint beside its prediction, and results.py --check matches them to the faces of the user's copy.
"""
import base64

import numpy as np

from common import UserError

BITS = 256
MAX_DISTANCE = 40  # bits: the same face through ±3 grey levels of noise differed in at most 8 (PrivateTest)
FLAT = 3.0  # grey levels: a face whose 24x24 pixels vary less is blank (FER2013 has a few)
SWAP_MARGIN = 24  # bits: two matches closer than this to their swap are told apart by noise, not by the face
LOST = 10_000  # the cost of a face matched to one that is not near it


def projections():
    return np.random.default_rng(2013).standard_normal((24 * 24, BITS)).astype(np.float32)


def fingerprints(images, chunk=4096):
    """(N, 4) uint64 fingerprints of uint8 faces (N, 48, 48)."""
    matrix, found = projections(), []
    for start in range(0, len(images), chunk):
        small = images[start:start + chunk].astype(np.float32).reshape(-1, 24, 2, 24, 2).mean(axis=(2, 4))
        small = small.reshape(len(small), -1)
        flat = small.std(axis=1) < FLAT  # a blank face: its fingerprint is all zeros, whatever its noise
        bits = ((small - small.mean(axis=1, keepdims=True)) @ matrix > 0) & ~flat[:, None]
        found.append(np.packbits(bits, axis=1).view(np.uint64))
    return np.concatenate(found) if found else np.zeros((0, BITS // 64), np.uint64)


def encode(prints):
    """Fingerprints as short text (43 characters each, URL-safe base64), for a CSV column."""
    return [base64.urlsafe_b64encode(row.tobytes()).decode().rstrip("=") for row in prints]


def decode(texts):
    try:
        raw = b"".join(base64.urlsafe_b64decode(text + "=") for text in texts)
    except (ValueError, TypeError):
        raise UserError("a face fingerprint is not readable") from None
    if len(raw) != len(texts) * BITS // 8:
        raise UserError("a face fingerprint has the wrong length")
    return np.frombuffer(raw, np.uint64).reshape(len(texts), BITS // 64)


def distances(ours, theirs, chunk=512):
    """Hamming distances (len(ours), len(theirs)) between two sets of fingerprints."""
    rows = [np.bitwise_count(ours[start:start + chunk, None, :] ^ theirs[None, :, :]).sum(axis=2, dtype=np.int16)
            for start in range(0, len(ours), chunk)]
    return np.concatenate(rows) if rows else np.zeros((0, len(theirs)), np.int16)


def match(prints, predicted, images, labels, where):
    """For each fingerprinted prediction, the index of its face among `images` (with their `labels`).

    Each group of predictions and faces linked by fingerprints within MAX_DISTANCE is matched one to one at the
    least total distance. Raises UserError for a prediction whose face is not there, or for two matches that
    swapped would change the scores (different labels and different predictions) and that the fingerprints
    cannot tell apart by SWAP_MARGIN bits."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    table = distances(prints, fingerprints(images))
    near = table <= MAX_DISTANCE
    n = len(prints)
    rows, columns = np.nonzero(near)
    graph = coo_matrix((np.ones(len(rows)), (rows, n + columns)), shape=(n + len(images),) * 2)
    _, component = connected_components(graph, directed=False)
    found = np.full(n, -1)
    for group in np.unique(component[:n]):
        ours = np.flatnonzero(component[:n] == group)
        theirs = np.flatnonzero(component[n:] == group)
        costs = np.where(near[np.ix_(ours, theirs)], table[np.ix_(ours, theirs)], LOST)
        picked_ours, picked_theirs = linear_sum_assignment(costs)
        kept = costs[picked_ours, picked_theirs] < LOST
        found[ours[picked_ours[kept]]] = theirs[picked_theirs[kept]]
        check_swaps(ours[picked_ours[kept]], theirs[picked_theirs[kept]], table, predicted, labels, where)
    lost = np.flatnonzero(found < 0)
    if len(lost):
        raise UserError(f"{len(lost)} of the {n} faces predicted are not in {where} (the first: row {lost[0]} of "
                        "the predictions); is it FER2013?")
    return found


def check_swaps(ours, theirs, table, predicted, labels, where):
    """Raise UserError where two matches of one group could be swapped, changing the scores, at a cost within
    SWAP_MARGIN bits."""
    for i in range(len(ours)):
        for j in range(i + 1, len(ours)):
            a, b, x, y = ours[i], ours[j], theirs[i], theirs[j]
            if predicted[a] == predicted[b] or labels[x] == labels[y]:
                continue
            if int(table[a, y]) + int(table[b, x]) - int(table[a, x]) - int(table[b, y]) < SWAP_MARGIN:
                raise UserError(f"rows {a} and {b} of the predictions match two faces of {where} that look alike "
                                "and carry different labels; the fingerprints cannot tell which is which")
