#!/usr/bin/env bash
# Run on a lent GPU machine, from the repository root, with .gpu/ carried (scripts/gpu-bundle.sh):
#   device run: bash scripts/gpu-cohort.sh    (carry: [".gpu/site-packages-2.tar.xz"], after a call that unpacked part 1; not yet run on a GPU)
# The cohort benchmark of #37 in one go: benchmarks/predict_speed.py on CASES phantoms (default 20,
# made there from the carried atlases) against nnUNetv2_predict_from_modelfolder on the same GPU:
# the shipped model without and with mirroring, then the 2021 plans' 30.8 M network (random
# weights) without. Each step has its own time limit so that what finished comes back in
# $OUT/gpu-cohort.log even when a later one runs out.
set -uo pipefail
source scripts/gpu-env.sh
cases=${CASES:-20} work=/tmp/gpu-cohort
bench=(python3 benchmarks/predict_speed.py --device cuda --cases "$cases" --work "$work" --skip-regions)
{ gpu_versions
  echo "== shipped compact model, mirroring off"; timeout 210 "${bench[@]}"
  echo "== shipped compact model, mirroring on"; timeout 200 "${bench[@]}" --mirroring
  python3 -c "import sys; from pathlib import Path; from mixmicrobleednet.train import write_random_model
write_random_model(Path(sys.argv[1]), 'mixmicrobleednet-v1')" "$work/paper-network"
  echo "== 2021 plans' network (30.8 M parameters, random weights), mirroring off"
  timeout 120 "${bench[@]}" --model "$work/paper-network"
} 2>&1 | tee "$out/gpu-cohort.log"
cp "$work"/*.log "$out/" 2>/dev/null || true
