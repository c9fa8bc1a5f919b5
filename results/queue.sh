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

# The improved recipe (about 2 hours on 2 cores), its second cycle from the first one's best checkpoint (about
# 1.5 hours), then the faithful run on the CPU: config.yaml unchanged, 100 epochs in float32 (10-25 hours on 2
# cores, so it goes on across sessions wherever $RUNS outlasts them). It is named seed-cpu: results/seed/ holds
# the faithful run that finished on a GPU, which this one repeats on the CPU path rather than replaces.
run improved --config configs/improved.yaml
run improved-cycle2 --config configs/improved-cycle2.yaml --init-weights "$RUNS/improved/best.keras"
run seed-cpu --config config.yaml
