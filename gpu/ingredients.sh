#!/usr/bin/env bash
# One call on a lent GPU machine (JAX, no Keras there): what each ingredient does to PublicTest, for the
# ingredients table of docs/results.md. configs/improved-gpu.yaml for EPOCHS epochs (the cosine fits them), once as
# it is and once per variant of VARIANTS (| between them, each a list of --set options), while the time lasts.
# PrivateTest stays untouched (--no-evaluate): every choice is made on PublicTest. From the repository's root:
#
#     run(command="bash gpu/ingredients.sh", carry=[".whl", ".device"], timeout_s=590)
#
# gpu/carry.sh fills .whl and .device first. Comes back: ingredients.md (per run: best and last PublicTest
# accuracy, the best epoch, seconds), histories.tgz (each run's history.csv, config.yaml, environment.json), the
# logs of failed runs. On a CPU, to try it: OUT=/tmp/out EPOCHS=4 LIMIT=600 VARIANTS="|--set train.mixup=0.2"
# bash gpu/ingredients.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
CONFIG=${CONFIG:-configs/improved-gpu.yaml}
EPOCHS=${EPOCHS:-60}
LIMIT=${LIMIT:-null}
BUDGET=${BUDGET:-540}   # seconds from the start: no variant starts unless the longest so far still fits
VARIANTS=${VARIANTS:-"|--set model.residual=true|--set train.augment.erase=0.25|--set train.mixup=0.2|--set train.ema=0.999|--set train.optimizer=sgd --set train.learning_rate=0.05 --set train.weight_decay=0.0005|--set train.cutmix=1.0"}
start=$SECONDS
source gpu/prepare.sh
IFS='|' read -r -a variants <<< "$VARIANTS"
echo "| run | settings beyond $CONFIG, $EPOCHS epochs | best PublicTest (epoch) | last PublicTest | seconds |" > "$OUT/ingredients.md"
echo "| --- | --- | --- | --- | --- |" >> "$OUT/ingredients.md"
longest=0
for i in "${!variants[@]}"; do
    if [ $((SECONDS - start + longest)) -gt "$BUDGET" ]; then
        echo "variant $i not started: $((SECONDS - start)) s gone, the longest run took $longest s"; break
    fi
    t0=$SECONDS
    # shellcheck disable=SC2086
    python3 train.py --config "$CONFIG" --set data.path=/tmp/fer2013.csv --set data.limit=$LIMIT \
        --set train.epochs=$EPOCHS ${variants[$i]} --set output.dir=/tmp/runs --set output.name=ingredient$i \
        --no-evaluate > "/tmp/runs/ingredient$i.log" 2>&1 || { echo "variant $i failed"; cp "/tmp/runs/ingredient$i.log" "$OUT/"; continue; }
    took=$((SECONDS - t0))
    longest=$((took > longest ? took : longest))
    python3 - "$i" "${variants[$i]:-(none)}" "$took" >> "$OUT/ingredients.md" <<'EOF'
import sys
import pandas as pd
index, settings, took = sys.argv[1:]
history = pd.read_csv(f"/tmp/runs/ingredient{index}/history.csv")
best = history["val_accuracy"].idxmax()
print(f"| ingredient{index} | {settings} | {history['val_accuracy'][best]:.4f} ({best + 1}) | "
      f"{history['val_accuracy'].iloc[-1]:.4f} | {took} |")
EOF
    tail -1 "$OUT/ingredients.md"
done
(cd /tmp/runs && tar czf "$OUT/histories.tgz" ingredient*/history.csv ingredient*/config.yaml ingredient*/environment.json)
cat "$OUT/ingredients.md"
echo "done in $((SECONDS - start)) s"
