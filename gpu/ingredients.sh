#!/usr/bin/env bash
# One call on a lent GPU machine (JAX, no Keras there): what each ingredient does to PublicTest, for the
# ingredients table of docs/results.md. configs/improved-gpu.yaml for EPOCHS epochs (the cosine fits them), once as
# it is and once per variant of VARIANTS (| between them, each a list of --set options), while the time lasts,
# PARALLEL runs at once (each with its share of the GPU's memory): a network this small leaves the GPU idle between
# its kernels, which another run's fill.
# PrivateTest stays untouched (--no-evaluate): every choice is made on PublicTest. From the repository's root:
#
#     run(command="bash gpu/ingredients.sh", carry=[".whl", ".device"], timeout_s=590)
#
# gpu/carry.sh fills .whl and .device first. Comes back: ingredients.md (per run: best and last PublicTest
# accuracy, the best epoch, seconds with PARALLEL at once), histories.tgz (each run's history.csv, config.yaml,
# environment.json), the logs of failed runs. On a CPU, to try it:
# OUT=/tmp/out EPOCHS=4 LIMIT=600 VARIANTS="|--set train.mixup=0.2" PARALLEL=1 bash gpu/ingredients.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
CONFIG=${CONFIG:-configs/improved-gpu.yaml}
EPOCHS=${EPOCHS:-60}
LIMIT=${LIMIT:-null}
BUDGET=${BUDGET:-540}   # seconds from the start: no run starts unless the longest so far still fits, and one still
                        # training then is stopped with its epochs kept (the table gives how many)
PARALLEL=${PARALLEL:-3}
VARIANTS=${VARIANTS:-"|--set model.residual=true|--set train.augment.erase=0.25|--set train.mixup=0.2|--set train.ema=0.999|--set train.optimizer=sgd --set train.learning_rate=0.05 --set train.weight_decay=0.0005|--set train.cutmix=1.0"}
start=$SECONDS
source gpu/prepare.sh
if [ "$PARALLEL" -gt 1 ]; then  # JAX takes 75% of the GPU's memory unless told otherwise
    export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $PARALLEL, 3))")
fi
IFS='|' read -r -a variants <<< "$VARIANTS"

ingredient() {  # ingredient INDEX: train one variant, then its table row into /tmp/runs/row<INDEX>
    local i=$1 t0=$SECONDS
    # shellcheck disable=SC2086
    timeout -s TERM $((BUDGET - (SECONDS - start))) python3 train.py --config "$CONFIG" \
        --set data.path=/tmp/fer2013.csv --set data.limit=$LIMIT --set train.epochs=$EPOCHS ${variants[$i]} \
        --set output.dir=/tmp/runs --set output.name=ingredient$i --no-evaluate > "/tmp/runs/ingredient$i.log" 2>&1
    local status=$?
    if [ $status -ne 0 ] && [ $status -ne 124 ]; then
        echo "variant $i failed"; cp "/tmp/runs/ingredient$i.log" "$OUT/"; return
    fi
    python3 - "$i" "${variants[$i]:-(none)}" "$((SECONDS - t0))" > "/tmp/runs/row$i" <<'PY'
import sys
import pandas as pd
index, settings, took = sys.argv[1:]
history = pd.read_csv(f"/tmp/runs/ingredient{index}/history.csv")
best = history["val_accuracy"].idxmax()
print(f"| ingredient{index} | {settings} | {history['val_accuracy'][best]:.4f} ({best + 1}) | "
      f"{history['val_accuracy'].iloc[-1]:.4f} ({len(history)}) | {took} |")
PY
    tee -a "$OUT/ingredients.md" < "/tmp/runs/row$i"  # as each ends, in case the call is cut short; in order below
}

for i in "${!variants[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
    longest=$(cat /tmp/runs/row* 2>/dev/null | awk -F'|' '{ if ($6 + 0 > m) m = $6 + 0 } END { print m + 0 }')
    if [ $((SECONDS - start + (longest > 60 ? longest : 60))) -gt "$BUDGET" ]; then
        echo "variant $i not started: $((SECONDS - start)) s gone of $BUDGET, the longest run took $longest s"; break
    fi
    ingredient "$i" &
done
wait
{
    echo "| run | settings beyond $CONFIG, $EPOCHS epochs | best PublicTest (epoch) | last PublicTest (epochs run)" \
        "| seconds ($PARALLEL at once) |"
    echo "| --- | --- | --- | --- | --- |"
    for i in "${!variants[@]}"; do cat "/tmp/runs/row$i" 2>/dev/null; done
} > "$OUT/ingredients.md"
(cd /tmp/runs && tar czf "$OUT/histories.tgz" ingredient*/history.csv ingredient*/config.yaml \
    ingredient*/environment.json)
cat "$OUT/ingredients.md"
echo "done in $((SECONDS - start)) s"
