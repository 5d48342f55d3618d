#!/usr/bin/env bash
# The long training (#32): the compact network on phantoms that randomise what must not matter
# (varied contrast and mimics; raw heads with skull and scalp, masked by the tool's own brain
# extraction; loose masks), resumed from its latest checkpoint on this machine or from the one
# committed in training/NAME/, so that it goes on from session to session and machine to machine.
#   scripts/train-long.sh run [NAME]    generate the data when missing, then train (nohup it: hours)
#   scripts/train-long.sh save [NAME]   the latest checkpoint (weights and progress, no optimizer state) and
#                                       the logs into training/NAME/, with the command that resumes; once
#                                       finished, the exported model (training/NAME/model) instead
# NAME: compact-t1-t2-t2s (default), from scratch; compact-t1-t2-t2s-cortex, fine-tuned from
# training/compact-t1-t2-t2s/model on phantoms with superficial cortical microbleeds too;
# compact-t2s (T2* only), from scratch on both sets; compact-t1-t2-t2s-all, fine-tuned from
# training/compact-t1-t2-t2s/model on both sets (the cortex-only fine-tune unlearned the rest);
# compact-t1-t2-t2s-small, the same with 60 phantoms of small microbleeds on thick slices too and
# patches centred on each microbleed as often (train --foreground-sampling lesion); compact-t2s-small,
# the same fine-tune of training/compact-t2s/model (T2* only), shipped as phantom-t2s v2.0.0;
# compact-t2s-raw, that model fine-tuned again with 24 more raw heads (the raw-head misses of #32);
# compact-t1-t2-t2s-raw, the same fine-tune of the three-channel v3.0.0 (models/phantom-t1-t2-t2s).
# Data and nnU-Net folders: work/train-long/. Environment: PYTHON (default .venv/bin/python),
# PROCESSES (phantoms and train --processes; default 1 and 2), DEADLINE (epoch seconds: train
# stops at the first epoch end after it, --stop-after-minutes; a lent GPU's time, scripts/gpu-train.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
tool=("$python" -c 'import sys; from mixmicrobleednet.cli import main; sys.exit(main())')
action=${1:?run or save}
name=${2:-compact-t1-t2-t2s}
# The training data, fixed seeds, so any machine makes the same set (case i of a seed is the same
# whatever the count): "folder seed count flags". Raw heads are fewer: each is registered and
# brain-extracted as at inference (minutes per case on 2 cores).
data=work/train-long/data
specs=("varied 301 30 --varied" "raw 302 10 --raw --varied" "loose 303 30 --loose-masks --varied")
cortex_specs=("cortex-varied 311 24 --varied --superficial" "cortex-raw 312 6 --raw --varied --superficial"
              "cortex-loose 313 24 --loose-masks --varied --superficial")
# Small microbleeds (2-4 mm) on thick slices and coarse grids: the ones every model missed (#32).
small_specs=("small-varied 321 36 --varied --small --superficial --cohort thickslice --cohort lowres"
             "small-loose 322 24 --loose-masks --varied --small --superficial --cohort thickslice --cohort lowres")
# Raw heads with superficial cortical microbleeds, where the T2*-only v2.0.0 misses most (#32).
raw_more_specs=("raw-more 331 24 --raw --varied --superficial")
epochs=300
iterations=100
tuning=()
case $name in
  compact-t1-t2-t2s) channels=(T1 T2 T2S) ;;
  compact-t2s)
    # Both sets: the T2*-only model learns superficial cortex from the start (124 phantoms).
    channels=(T2S)
    data=work/train-long/all-data
    specs+=("${cortex_specs[@]}") ;;
  compact-t1-t2-t2s-all)
    channels=(T1 T2 T2S)
    data=work/train-long/all-data
    specs+=("${cortex_specs[@]}")
    epochs=100
    tuning=(--init training/compact-t1-t2-t2s/model --initial-lr 1e-3) ;;
  compact-t1-t2-t2s-small)
    channels=(T1 T2 T2S)
    data=work/train-long/small-data
    specs+=("${cortex_specs[@]}" "${small_specs[@]}")
    epochs=100
    tuning=(--init training/compact-t1-t2-t2s/model --initial-lr 1e-3 --foreground-sampling lesion) ;;
  compact-t2s-small)
    channels=(T2S)
    data=work/train-long/small-data
    specs+=("${cortex_specs[@]}" "${small_specs[@]}")
    epochs=100
    tuning=(--init training/compact-t2s/model --initial-lr 1e-3 --foreground-sampling lesion) ;;
  compact-t2s-raw)
    channels=(T2S)
    data=work/train-long/raw-data
    specs+=("${cortex_specs[@]}" "${small_specs[@]}" "${raw_more_specs[@]}")
    epochs=100
    tuning=(--init models/phantom-t2s --initial-lr 1e-3 --foreground-sampling lesion) ;;
  compact-t1-t2-t2s-raw)
    channels=(T1 T2 T2S)
    data=work/train-long/raw-data
    specs+=("${cortex_specs[@]}" "${small_specs[@]}" "${raw_more_specs[@]}")
    epochs=100
    tuning=(--init models/phantom-t1-t2-t2s --initial-lr 1e-3 --foreground-sampling lesion) ;;
  compact-t1-t2-t2s-cortex)
    channels=(T1 T2 T2S)
    data=work/train-long/cortex-data
    specs=("${cortex_specs[@]}")
    epochs=60
    tuning=(--init training/compact-t1-t2-t2s/model --initial-lr 1e-3) ;;
  *) echo "unknown training $name" >&2; exit 2 ;;
esac
work=work/train-long/$name
kept=training/$name

if [ "$action" = save ]; then
  latest=$(find "$work" -name checkpoint_latest.pth | head -1)
  mkdir -p "$kept"
  if [ -z "$latest" ] && [ -f "$work-model/training.json" ]; then
    # Finished (nnU-Net replaced its latest checkpoint by the final one): keep the exported model.
    latest=$(find "$work" -name checkpoint_final.pth | head -1)
    rm -rf "$kept/model" "$kept/checkpoint_latest.pth"
    cp -r "$work-model" "$kept/model"
  elif [ -n "$latest" ]; then
    "$python" -c "import sys; from pathlib import Path; from mixmicrobleednet.train import weights_only_checkpoint
weights_only_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))" "$latest" "$kept/checkpoint_latest.pth"
  else
    echo "no checkpoint in $work" >&2; exit 1
  fi
  printf 'resume (any machine, from the checkout):\n  nohup scripts/train-long.sh run %s > work/train-long/%s.log 2>&1 &\n' \
    "$name" "$name" > "$kept/RESUME.txt"
  # Each session's logs follow those of the sessions before (committed, perhaps on another machine)
  # under a line naming the session; saving again in a session replaces its part.
  nnunet_log=$(ls -t "$(dirname "$latest")"/training_log_*.txt | head -1)
  header="=== session $(basename "$nnunet_log" .txt) ==="
  for pair in "$nnunet_log:$kept/training_log.txt" "$work.log:$kept/run.log"; do
    source_log=${pair%%:*} kept_log=${pair#*:}
    [ -f "$source_log" ] || continue
    line=$(grep -nxF -- "$header" "$kept_log" 2>/dev/null | head -1 | cut -d: -f1 || true)
    [ -z "$line" ] || sed -i "$line,\$d" "$kept_log"
    { echo "$header"; cat "$source_log"; } >> "$kept_log"
  done
  exit 0
fi
[ "$action" = run ] || { echo "run or save" >&2; exit 2; }

mkdir -p "$data"
for spec in "${specs[@]}"; do
  read -r kind seed count flags <<< "$spec"
  # shellcheck disable=SC2086
  [ -f "work/train-long/$kind/phantoms.csv" ] \
    || "${tool[@]}" phantoms --out "work/train-long/$kind" --n "$count" --seed "$seed" $flags \
         --processes "${PROCESSES:-1}"
  for i in $(seq 0 $((count - 1))); do
    for f in work/train-long/"$kind"/sub-s"${seed}"c"$(printf %03d "$i")"_*; do
      case $f in *_mimics.nii.gz|*_brainmask.nii.gz) continue ;; esac
      ln -sfn "$(realpath "$f")" "$data/$(basename "$f")"
    done
  done
done

resume=(--resume)
if [ -f "$kept/checkpoint_latest.pth" ] && [ -z "$(find "$work" -name checkpoint_latest.pth 2>/dev/null)" ]; then
  resume=(--resume "$kept/checkpoint_latest.pth")  # a new machine: go on from the committed one
fi
limit=()
[ -z "${DEADLINE:-}" ] || limit=(--stop-after-minutes "$(( (DEADLINE - $(date +%s)) / 60 ))")
exec "${tool[@]}" train --data "$data" --out "work/train-long/$name-model" --work "$work" \
  --config compact --channels "${channels[@]}" --epochs "$epochs" --iterations-per-epoch "$iterations" \
  --device auto --processes "${PROCESSES:-2}" "${tuning[@]}" "${resume[@]}" "${limit[@]}"
