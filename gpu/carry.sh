#!/usr/bin/env bash
# Here, before a GPU call: fill the git-ignored folders the gpu/*.sh scripts carry. .whl: the Keras wheel and the
# two packages it needs that the GPU machine lacks (cp312, manylinux); .device: FER2013 as ../shared/fer2013 keeps
# it, its CSV builder, and the notebook's published training log (results.py draws the runs over it).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .device
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
cp ../shared/fer2013/fer2013-jpeg.npz ../shared/fer2013/make_fer2013.py ../shared/notebook/training_log.csv .device/
du -sh .whl .device
