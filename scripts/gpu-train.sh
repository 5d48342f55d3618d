#!/usr/bin/env bash
# Run on a lent GPU machine, from the repository root, with .gpu/ carried (scripts/gpu-bundle.sh):
#   device run: bash scripts/gpu-train.sh NAME [MINUTES]   (carry: [".gpu/site-packages-2.tar.xz"], after a call that unpacked part 1)
# One of scripts/train-long.sh's trainings (#32) at GPU speed: its phantoms regenerated with every
# core, the training resumed from the checkpoint committed in training/NAME/ (or started as
# train-long.sh starts it), stopped at the first epoch end after MINUTES (default 7; phantoms and
# preparation included, so that the call ends within its 10 minutes), and training/NAME/
# (weights-only checkpoint, logs, RESUME.txt) brought back under $OUT/NAME. Here: copy it over
# training/NAME/ and commit; any machine resumes.
set -euo pipefail
name=${1:?the training name, as scripts/train-long.sh takes it}
minutes=${2:-7}
source scripts/gpu-env.sh
{ gpu_versions
  start=$(date +%s)
  PYTHON=python3 PROCESSES=$(nproc) DEADLINE=$((start + minutes * 60)) bash scripts/train-long.sh run "$name" \
    > "$out/train.log" 2>&1 || { tail -n 40 "$out/train.log"; exit 1; }
  echo "train-long.sh run: $(( $(date +%s) - start )) s"
  PYTHON=python3 bash scripts/train-long.sh save "$name"
  grep -E "Epoch time|Epoch [0-9]+ *$|training .* epochs|stopped after" "$out/train.log" | tail -n 12
} 2>&1 | tee "$out/gpu-train.log"
cp -r "training/$name" "$out/$name"
