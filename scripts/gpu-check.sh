#!/usr/bin/env bash
# Run on a lent GPU machine, from the repository root, with .gpu/ carried (scripts/gpu-bundle.sh):
#   device run: bash scripts/gpu-check.sh     (carry: [".gpu/site-packages-2.tar.xz"], after a call that unpacked part 1; 211 s on an H100)
# Unpacks the bundle beside the machine's own CUDA PyTorch and runs benchmarks/gpu_check.py; the
# log comes back as $OUT/gpu-check.log.
set -euo pipefail
source scripts/gpu-env.sh
{ gpu_versions
  python3 benchmarks/gpu_check.py --case /tmp/gpu-check "$@"; } 2>&1 | tee "$out/gpu-check.log"
