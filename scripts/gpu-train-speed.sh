#!/usr/bin/env bash
# Run on a lent GPU machine, from the repository root, with .gpu/ carried (scripts/gpu-bundle.sh):
#   device run: bash scripts/gpu-train-speed.sh    (carry: [".gpu/site-packages-2.tar.xz"], after a call that unpacked part 1; not yet run on a GPU)
# Training iterations per second on the GPU (#32): benchmarks/train_speed.py for the compact network
# and the 2021 plans' 3d_fullres, two epochs of ITERATIONS (default 50) each, on 4 phantoms made
# there; the CPU's figure comes from the long training's log on our machines. The log comes back as
# $OUT/gpu-train-speed.log.
set -uo pipefail
source scripts/gpu-env.sh
{ gpu_versions
  timeout 300 python3 benchmarks/train_speed.py --device cuda --config compact mixmicrobleednet-v1 \
    --iterations "${ITERATIONS:-50}" --work /tmp/train-speed
} 2>&1 | tee "$out/gpu-train-speed.log"
