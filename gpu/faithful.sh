#!/usr/bin/env bash
# One call on a lent GPU machine (JAX, no Keras there): the faithful config, config.yaml unchanged but for its
# seed, on the fast path (train.feed auto = device on JAX with a GPU), seeds 1, 2 and 3 while the time lasts, after
# 3-epoch trials of the WAYS to call the compiled step (Keras's steps_per_execution, our scan_steps);
# train.py scores each run on PrivateTest and results.py publishes it. From the repository's root (gpu/carry.sh first):
#
#     run(command="bash gpu/faithful.sh", carry=[".whl", ".device"], timeout_s=570)
#
# gpu/carry.sh fills .whl (the keras, namex and optree wheels) and .device (FER2013 xz-compressed, make_fer2013.py
# and the notebook's training_log.csv from ../shared). On a CPU, to try it: OUT=/tmp/out RESULTS=/tmp/results
# EPOCHS=4 LIMIT=300 SEEDS=1 bash gpu/faithful.sh (with keras installed, no .whl needed).
set -uo pipefail
OUT=${OUT:-/tmp/out}
EPOCHS=${EPOCHS:-100}
LIMIT=${LIMIT:-null}
SEEDS=${SEEDS:-"1 2 3"}
BUDGET=${BUDGET:-480}        # seconds from the start: no seed starts after BUDGET - 150, none trains past BUDGET
SETTINGS=${SETTINGS:-"--set train.feed=device --set train.validation_batch_size=1024"}
# Ways to call the compiled step, tried for 3 epochs each on seed 1 (| between them); the seeds train with the one
# whose first two epochs (compiling) plus EPOCHS-2 third epochs are least. One way: no trial.
WAYS=${WAYS:-"--set train.steps_per_execution=8|--set train.scan_steps=8"}
start=$SECONDS
source gpu/prepare.sh
IFS='|' read -r -a ways <<< "$WAYS"
best=${ways[0]}
if [ ${#ways[@]} -gt 1 ]; then
    least=
    for i in "${!ways[@]}"; do
        # shellcheck disable=SC2086
        JAX_LOG_COMPILES=1 python3 train.py --config config.yaml --set data.path=/tmp/fer2013.csv \
            --set data.limit=$LIMIT --set train.epochs=3 --set train.seed=1 $SETTINGS ${ways[$i]} \
            --set output.dir=/tmp/runs --set output.name=way$i --no-evaluate > "/tmp/runs/way$i.log" 2>&1 \
            || { tail -3 "/tmp/runs/way$i.log"; continue; }
        # What compiled when (the GPU runs so far spent 6-16 s more on their second epoch than on their third).
        grep -E "^Epoch|Finished XLA compilation" "/tmp/runs/way$i.log" | sed "s/^/way $i: /" >> "$OUT/compiles.txt"
        line=$(python3 -c "import pandas as pd; s = pd.read_csv('/tmp/runs/way$i/history.csv')['seconds']
print(round(s.iloc[0] + s.iloc[1] + ($EPOCHS - 2) * s.iloc[2], 1), s.round(2).tolist())")
        projected=${line%% *}
        echo "way $i (${ways[$i]}): epochs 1-3 ${line#* } s, $EPOCHS epochs projected $projected s" | tee -a "$OUT/ways.txt"
        if [ -z "$least" ] || awk "BEGIN { exit !($projected < $least) }"; then least=$projected; best=${ways[$i]}; fi
    done
fi
echo "training the seeds with: $best $SETTINGS" | tee -a "$OUT/ways.txt"
SETTINGS="$SETTINGS $best"
published=()
for seed in $SEEDS; do
    if [ ${#published[@]} -gt 0 ] && [ $((SECONDS - start)) -gt $((BUDGET - 150)) ]; then
        echo "seed $seed not started: $((SECONDS - start)) s gone of $BUDGET"; break
    fi
    name=faithful-gpu-seed$seed
    t0=$SECONDS
    left=$((BUDGET - (SECONDS - start)))
    [ $left -ge 30 ] || { echo "seed $seed not started: $((SECONDS - start)) s gone of $BUDGET"; break; }
    # A seed still training at BUDGET is stopped (SIGTERM: its epochs kept) and published unfinished, so that a
    # call with a short timeout_s still brings back its epochs' seconds.
    # shellcheck disable=SC2086
    timeout -s TERM -k 20 $left python3 train.py --config config.yaml --set data.path=/tmp/fer2013.csv \
        --set data.limit=$LIMIT --set train.epochs=$EPOCHS --set train.seed=$seed $SETTINGS \
        --set output.dir=/tmp/runs --set output.name=$name > "/tmp/runs/$name.log" 2>&1
    status=$?
    echo "seed $seed: train.py exit $status, $((SECONDS - t0)) s in all (start-up, compile, $EPOCHS epochs, scoring)"
    tail -4 "/tmp/runs/$name.log"
    if [ $status -eq 124 ]; then
        echo "seed $seed: stopped at $BUDGET s, published unfinished"; cp "/tmp/runs/$name.log" "$OUT/"
        [ -d "/tmp/runs/$name" ] || continue  # stopped within its first epoch: nothing kept
    elif [ $status -ne 0 ]; then
        cp "/tmp/runs/$name.log" "$OUT/"; continue
    fi
    rm -rf "$RESULTS/$name"  # an earlier run's, from the checkout: this call's replaces it
    python3 results.py "/tmp/runs/$name" --out "$RESULTS/$name" --notebook-log .device/training_log.csv | tail -3
    published+=("$RESULTS/$name")
    [ -f "$RESULTS/${name}_vs_notebook.png" ] && published+=("$RESULTS/${name}_vs_notebook.png")
    tar czf "$OUT/results.tgz" "${published[@]}"  # after each seed: a call stopped at its limit still returns them
done
grep -h "s/step\|Epoch 100/100" /tmp/runs/*.log | tail -6 > "$OUT/epoch-times.txt"
echo "done in $((SECONDS - start)) s"
