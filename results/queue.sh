#!/usr/bin/env bash
# The long runs behind the Results table, one after another (two at once on two cores gain nothing), in
# $RUNS (default ~/fer2013-runs, outside the work tree). Run it again after any interruption: a finished run
# is skipped, an unfinished one resumed exactly, a run that is already training is waited for.
#
#     setsid nohup bash results/queue.sh >> ~/fer2013-runs/queue.log 2>&1 < /dev/null &
#
# Each run logs to $RUNS/<name>.log; `python results.py $RUNS/<name>` turns a run into its results/ folder.
# PYTHON names the interpreter (default: python on PATH, e.g. PYTHON=~/venv/bin/python). Without
# $RUNS/fer2013.csv it is built first from ../shared/fer2013/, where that folder exists.
RUNS=${RUNS:-$HOME/fer2013-runs}
CSV=$RUNS/fer2013.csv
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$RUNS"
if [ ! -s "$CSV" ]; then
    "$PY" "$REPO/../shared/fer2013/make_fer2013.py" csv "$CSV.part" && mv "$CSV.part" "$CSV" || exit 2
fi

run() {
    name=$1; shift
    while pgrep -f "train.py .*$RUNS/$name( |$)" >/dev/null || pgrep -f "output.dir=$RUNS --set output.name=$name( |$)" >/dev/null; do
        sleep 60
    done
    if [ -f "$RUNS/$name/state.json" ] && grep -q '"finished": true' "$RUNS/$name/state.json"; then
        echo "$(date -u +%FT%TZ) $name finished already"; return
    fi
    cd "$REPO" || exit 2
    if [ -f "$RUNS/$name/state.json" ]; then
        echo "$(date -u +%FT%TZ) resuming $name"
        "$PY" train.py --resume "$RUNS/$name" >> "$RUNS/$name.log" 2>&1
    else
        echo "$(date -u +%FT%TZ) starting $name"
        "$PY" train.py "$@" --set data.path="$CSV" --set output.dir="$RUNS" --set output.name="$name" \
            >> "$RUNS/$name.log" 2>&1
    fi
    echo "$(date -u +%FT%TZ) $name exited with $?"
}

# The faithful run: config.yaml unchanged, 100 epochs.
run seed --config config.yaml
# Pilots of the improved recipe, 10 epochs each, compared on PublicTest: as configs/improved.yaml; with 44x44
# random crops instead of shifts; at half the width (a quarter of the compute).
pilot="--config configs/improved.yaml --set train.epochs=10 --set train.warmup_epochs=1"
run pilot-improved $pilot
run pilot-crop44 $pilot --set train.augment.crop=44 --set train.augment.shift=0
run pilot-narrow $pilot --set 'model.filters=[32,64,128,256]'
