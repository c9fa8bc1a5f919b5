#!/usr/bin/env bash
# Here, before a GPU call: fill the git-ignored folders the gpu/*.sh scripts carry, and say whether what travels
# fits. .whl: the Keras wheel and the two packages it needs that the GPU machine lacks (cp312, manylinux); .device:
# FER2013's bundle from ../shared/fer2013 (its arrays xz-compressed: 42 MB where the zip-compressed bundle is 45),
# its CSV builder, and the notebook's published training log (results.py draws the runs over it).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .device
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
rm -f .device/fer2013-jpeg.npz
if [ ! -s .device/fer2013-jpeg.npz.xz ] || [ ../shared/fer2013/fer2013-jpeg.npz -nt .device/fer2013-jpeg.npz.xz ]; then
    python3 - <<'PY'
import io, lzma, numpy as np
arrays = dict(np.load("../shared/fer2013/fer2013-jpeg.npz"))
plain = io.BytesIO()
np.savez(plain, **arrays)  # the same arrays, uncompressed, for xz to compress better than zip did
with open(".device/fer2013-jpeg.npz.xz.part", "wb") as f:
    f.write(lzma.compress(plain.getvalue(), preset=9 | lzma.PRESET_EXTREME))
PY
    mv .device/fer2013-jpeg.npz.xz.part .device/fer2013-jpeg.npz.xz
fi
cp -f ../shared/fer2013/make_fer2013.py ../shared/notebook/training_log.csv .device/
du -sh .whl .device
# What a call sends: the tracked files, untracked ones git does not ignore, and the carried folders; at most 64 MiB.
sent=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null;
          find .whl .device -type f -exec stat -c %s {} +; } | awk '{ s += $1 } END { print s }')
echo "a call sends $((sent / 1048576)) MiB of its 64 MiB"
[ "$sent" -le $((64 * 1048576)) ] || { echo "over the limit: send less" >&2; exit 1; }
