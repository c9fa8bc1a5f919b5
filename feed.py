"""How faces reach the network: the (train, validation, test) splits a config names, and Batches, which forms
each batch from the uint8 faces, on the host or on the accelerator (train.feed), mixing pairs of faces when
train.mixup or train.cutmix asks for it.
"""
import os
import time

import numpy as np

import data
import synthetic
from common import UserError, native_stderr_held

with native_stderr_held():
    import keras


class Batches(keras.utils.PyDataset):
    """uint8 faces -> float32 batches (/ 255) with one-hot labels, or with `targets` (N, 7) where given
    (train.distill's).

    Images stay uint8 until a batch is formed. With `shuffle`, epoch e visits the faces in the order of a
    permutation drawn from (seed, e) alone, so a resumed run sees the same batches (fit tells it e through
    FollowEpochs). Where `multiple` devices split each batch (JAX data parallelism), the last batch is cut to a
    multiple of them; `share` = (index, count) keeps this process's part of each batch (multi-process JAX).

    `on_device`: the faces go to the accelerator once, scaled as on the host (265 MB for FER2013's training
    set), and each batch is gathered and one-hot encoded there: only its row numbers cross from the host, and the
    batches are the host's, bit for bit. `mixup` > 0: each batch is mixed with itself in another order, images
    and labels alike, by a weight drawn from Beta(mixup, mixup) (Zhang et al., 2018), the order and weight drawn
    from (seed, epoch, batch) alone. `cutmix` > 0: instead, a box of the other face replaces the same box of each,
    its share of the face drawn as 1 - Beta(cutmix, cutmix) and its place at random, and the labels mix by the
    shares of the face each one shows (Yun et al., 2019). `group` > 1: an item holds `group` consecutive batches
    of one size, one after the other, where they remain, which scan_steps trains as that many steps in one call.
    """

    def __init__(self, faces, batch_size, shuffle=False, seed=None, multiple=1, epoch=0, share=(0, 1),
                 on_device=False, mixup=0.0, cutmix=0.0, group=1, targets=None, **kwargs):
        super().__init__(**kwargs)
        self.faces, self.batch_size, self.shuffle, self.multiple = faces, batch_size, shuffle, multiple
        self.share, self.on_device, self.mixup, self.group = share, on_device, mixup, group
        self.targets, self.cutmix = targets, cutmix
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**32)
        self.epoch = epoch
        self.order = self._order()
        if on_device:
            self.images = keras.ops.convert_to_tensor(data.to_float(faces.images))
            self.labels = keras.ops.convert_to_tensor(faces.labels.astype(np.int32))
            if targets is not None:
                self.targets = keras.ops.convert_to_tensor(targets.astype(np.float32))
        self.items = self._items()

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.faces))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.faces))

    def batch_count(self):
        full, rest = divmod(len(self.faces), self.batch_size)
        return full + (rest - rest % self.multiple > 0)

    def _items(self):
        """(first batch, batch count) of each item: runs of `group` batches of one size, then single batches
        (each count of batches is one more program to compile)."""
        sizes = [len(self.rows(index)) for index in range(self.batch_count())]
        items, index = [], 0
        while index < len(sizes):
            run = sizes[index:index + self.group]
            count = self.group if len(run) == self.group and len(set(run)) == 1 else 1
            items.append((index, count))
            index += count
        return items

    def __len__(self):
        return len(self.items)

    def rows(self, index):
        """The rows of batch `index` that this process feeds."""
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rows = rows[:len(rows) - len(rows) % self.multiple]
        part, count = self.share
        return rows[part * len(rows) // count:(part + 1) * len(rows) // count]

    def __getitem__(self, index):
        first, count = self.items[index]
        rows = [self.rows(batch) for batch in range(first, first + count)]
        size, rows = len(rows[0]), np.concatenate(rows)
        if self.on_device:
            rows = keras.ops.convert_to_tensor(rows.astype(np.int32))
            x = keras.ops.take(self.images, rows, axis=0)
            y = (keras.ops.one_hot(keras.ops.take(self.labels, rows, axis=0), len(data.EMOTIONS))
                 if self.targets is None else keras.ops.take(self.targets, rows, axis=0))
        else:
            x = data.to_float(self.faces.images[rows])
            y = data.one_hot(self.faces.labels[rows]) if self.targets is None else self.targets[rows].astype(np.float32)
        if self.mixup or self.cutmix:
            x, y = self._mix(x, y, first, count, size)
        return x, y

    def _mix(self, x, y, first, count, size):
        """Each batch of the item mixed with itself in another order: mixup's weighted sum of whole faces, or
        cutmix's box of the other face; the order, weight and box drawn from (seed, epoch, batch) alone."""
        keep, others = [], []  # per batch: the share of each pixel that stays the face's own (mixup: one weight)
        for batch in range(first, first + count):
            rng = np.random.default_rng([self.seed, self.epoch, batch, 1])
            if self.mixup:
                keep.append(np.full((1, 1, 1), rng.beta(self.mixup, self.mixup), np.float32))
            else:
                half = data.SIZE * np.sqrt(1 - rng.beta(self.cutmix, self.cutmix)) / 2
                top, left = rng.integers(0, data.SIZE, 2)
                mask = np.ones((data.SIZE, data.SIZE, 1), np.float32)
                mask[max(0, int(top - half)):int(top + half), max(0, int(left - half)):int(left + half)] = 0
                keep.append(mask)
            others.append((batch - first) * size + rng.permutation(size))
        keep = np.stack(keep)
        share = keep.reshape(count, -1).mean(axis=1, keepdims=True)
        ops = keras.ops if self.on_device else np  # on the device, one mask a batch crosses from the host
        keep, share, other = ops.repeat(keep, size, axis=0), ops.repeat(share, size, axis=0), np.concatenate(others)
        return (x * keep + ops.take(x, other, axis=0) * (1 - keep),
                y * share + ops.take(y, other, axis=0) * (1 - share))

    def set_epoch(self, epoch):
        """Visit the faces in epoch `epoch`'s order from the next batch on (FollowEpochs calls it)."""
        self.epoch = epoch
        self.order = self._order()


def scan_steps(model, batch_size):
    """`model` (on JAX), its training step also taking items of k full batches one after the other (Batches'
    `group`), which it trains as k steps in one compiled call (keras.ops.scan, unrolled): Python and the host run
    once per k steps (Keras's own steps_per_execution calls the compiled step from Python for each batch). Unrolled,
    the steps compute as k separate calls would (a rolled loop trained otherwise, 7x slower on a CPU), at the cost
    of compiling k steps. Items stay shaped as one batch, so Keras builds its metrics from them as from any batch.
    The checkpoints stay plain Keras models: only this instance's step changes."""
    step = type(model).train_step

    def train_step(state, data):
        x, y = data
        steps = x.shape[0] // batch_size if x.shape[0] % batch_size == 0 else 1
        if steps == 1:
            return step(model, state, data)

        def one(state, batch):
            logs, state = step(model, state, batch)
            return state, logs

        batches = tuple(keras.ops.reshape(t, (steps, batch_size, *t.shape[1:])) for t in (x, y))
        state, logs = keras.ops.scan(one, state, batches, unroll=True)
        return {name: value[-1] for name, value in logs.items()}, state

    model.train_step = train_step
    return model


def steps_per_call(most, steps):
    """The largest number of steps, at most `most`, that divides an epoch's `steps`: Keras (3.15) trains an epoch
    whose last call into the compiled function is partial differently from one step a call, so such a number
    keeps every setting of train.steps_per_execution step for step the same training."""
    return max(n for n in range(1, min(most, steps) + 1) if steps % n == 0)


class FollowEpochs(keras.callbacks.Callback):
    """Hands fit's epoch number to the training Batches before that epoch's first batch is asked for. Counting
    PyDataset.on_epoch_end calls instead would skip orders: Keras (3.15) makes one more at the start of fit, and
    one more after an epoch whose last call into the compiled function is partial (steps_per_execution)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


def prepare_data(config):
    """(train, validation, test) Faces for the config's data and protocol."""
    options = config["data"]
    path = options["path"]
    if not os.path.exists(path):
        if options["synthetic"]:
            print(f"{path} is missing and data.synthetic is set: drawing {options['synthetic']} SYNTHETIC faces "
                  f"(a stand-in for demos, not FER2013)")
            data.write_csv(path, synthetic.make_synthetic(options["synthetic"], seed=0))
        else:
            raise UserError(f"no dataset at {path}: `{data.download_command(path)}` fetches FER2013 from Kaggle, or "
                            f"download fer2013.csv from {data.FER2013_URL} (or point data.path at it: --set "
                            "data.path=...)")
    started = time.time()
    faces = data.limit_rows(data.read_faces(path, options["cache_dir"]), options["limit"])
    train, validation, test = data.split(faces, options["protocol"], options["validation_split"], path)
    kind = "SYNTHETIC faces" if options["synthetic"] else "faces"
    print(f"data: {path} ({kind}, read in {time.time() - started:.1f} s), protocol {options['protocol']}: "
          f"{len(train)} train, {len(validation)} validation, {len(test)} test")
    return train, validation, test
