#!/usr/bin/env bash
# One call on a lent GPU machine (JAX, no Keras there): configs/improved-gpu.yaml with as many epochs as fit the
# time left after a 3-epoch probe (at most MAX_EPOCHS), the checkpoint chosen on PublicTest, PrivateTest scored
# once plain and once with ten crops, the run published with results.py and the best checkpoint shipped. From the
# repository's root:
#
#     run(command="bash gpu/recipe.sh", carry=[".whl", ".device"], timeout_s=590)
#
# gpu/carry.sh fills .whl and .device first. Comes back: results.tgz (results/<name>/, with teacher.npz, what the
# run's best checkpoint says of each training face), the shipped model and its card, the logs. On a CPU, to try it:
# OUT=/tmp/out RESULTS=/tmp/results TRAIN_SECONDS=60 MAX_EPOCHS=4 LIMIT=300 bash gpu/recipe.sh
# Once a recipe is chosen, its retrain on Training+PublicTest with the same epochs and no checkpoint choice:
# EPOCHS=<the chosen run's> NAME=improved-gpu-retrain EXTRA="<its extras> --set data.protocol=retrain
#     --set callbacks.checkpoint.save_best_only=false" bash gpu/recipe.sh
set -uo pipefail
start=$SECONDS
OUT=${OUT:-/tmp/out}
CONFIG=${CONFIG:-configs/improved-gpu.yaml}
NAME=${NAME:-improved-gpu}
CALL_SECONDS=${CALL_SECONDS:-590}     # the call's timeout_s: the main run must end in time for what follows it
AFTER=${AFTER:-120}                   # seconds kept for scoring, publishing and shipping after the main run
TRAIN_SECONDS=${TRAIN_SECONDS:-}      # the main run's epochs, compile excluded; empty: what the call has left
MAX_EPOCHS=${MAX_EPOCHS:-300}
LIMIT=${LIMIT:-null}
EXTRA=${EXTRA:-}                      # more --set options, e.g. "--set train.mixup=0.2"
EPOCHS=${EPOCHS:-}                    # set: train this many epochs, with no probe
source gpu/prepare.sh
common=(--config "$CONFIG" --set data.path=/tmp/fer2013.csv --set data.limit=$LIMIT --set output.dir=/tmp/runs)
if [ -n "$EPOCHS" ]; then
    epochs=$EPOCHS
else
    # Three epochs: the GPU runs so far spent 6-16 s more on their second epoch than on their third (a compile,
    # whose JAX logs the probe's log keeps, JAX_LOG_COMPILES), so the fastest epoch after the first is the pace.
    # shellcheck disable=SC2086
    JAX_LOG_COMPILES=1 python3 train.py "${common[@]}" --set train.epochs=3 --set train.warmup_epochs=1 \
        --set output.name=probe $EXTRA --no-evaluate > /tmp/runs/probe.log 2>&1
    probed=$?
    cp /tmp/runs/probe.log "$OUT/"
    [ $probed -eq 0 ] || exit 1
    seconds=$(python3 -c "import pandas as pd
print(pd.read_csv('/tmp/runs/probe/history.csv')['seconds'].iloc[1:].min())")
    # Left for training: the call's time less what is gone, what follows, and 40 s for start-up, the compile (cached
    # by now) and the run's own scoring.
    budget=${TRAIN_SECONDS:-$((CALL_SECONDS - AFTER - (SECONDS - start) - 40))}
    epochs=$(python3 -c "print(max(4, min($MAX_EPOCHS, int($budget / $seconds))))")
    echo "probe: an epoch after the first took $seconds s; training $epochs epochs in about $budget s"
fi
# A backstop: if the run is still training when only AFTER seconds are left, SIGTERM stops it with its epochs kept
# (train.py's resume state, best.keras so far), and what it chose is scored and published as an unfinished run.
# shellcheck disable=SC2086
timeout -s TERM $((CALL_SECONDS - AFTER - (SECONDS - start))) python3 train.py "${common[@]}" \
    --set train.epochs=$epochs --set output.name=$NAME $EXTRA > /tmp/runs/$NAME.log 2>&1
status=$?
tail -5 /tmp/runs/$NAME.log
cp /tmp/runs/$NAME.log "$OUT/"
if [ $status -eq 124 ]; then
    echo "the main run was stopped at the time limit: scoring and publishing what it chose so far"
    python3 evaluate.py --checkpoint /tmp/runs/$NAME/best.keras | head -1
elif [ $status -ne 0 ]; then
    exit 1
fi
for checkpoint in best last; do
    [ -f /tmp/runs/$NAME/$checkpoint.keras ] || continue
    python3 evaluate.py --checkpoint /tmp/runs/$NAME/$checkpoint.keras --tta tencrop | head -1
done
rm -rf "$RESULTS/$NAME"  # a folder of that name from the checkout is an earlier run's: this call's replaces it
python3 results.py /tmp/runs/$NAME --out $RESULTS/$NAME --notebook-log .device/training_log.csv | tail -3
publish() {  # results.tgz: what results.py published (again, once teacher.npz is there), replaced whole
    { tar czf /tmp/results.tgz $RESULTS/$NAME $RESULTS/${NAME}_vs_notebook.png 2>/dev/null \
        || tar czf /tmp/results.tgz $RESULTS/$NAME; } && mv /tmp/results.tgz "$OUT/results.tgz"
}
publish
python3 ship.py /tmp/runs/$NAME/best.keras /tmp/ship/fer2013-$NAME.keras --data /tmp/fer2013.csv
cp /tmp/ship/fer2013-$NAME.keras /tmp/ship/README.md "$OUT/"
# The best checkpoint as a teacher file (a few hundred kB), so that a later call distils from this run without
# carrying its checkpoint: EXTRA="--set train.distill.teachers=[results/<run>/teacher.npz,...]".
python3 evaluate.py --checkpoint /tmp/runs/$NAME/best.keras --soft-labels $RESULTS/$NAME/teacher.npz | tail -1 \
    && publish
echo "done in $((SECONDS - start)) s"
